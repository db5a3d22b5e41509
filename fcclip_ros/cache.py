"""Where fcclip_ros keeps its files: one cache folder for checkpoints, text embeddings and exports.

`fcclip-ros download` writes the official FC-CLIP checkpoints to `checkpoint_path`, and
`weights: auto` reads them from there, so both must agree on the names.
"""

from __future__ import annotations

import os
from pathlib import Path

# File names of the official checkpoints (README "Model Zoo" of bytedance/fc-clip), as its demos
# name them.
OFFICIAL_CHECKPOINTS: dict[str, str] = {
    "convnext_large": "fcclip_cocopan.pth",
    "rn50": "fcclip_cocopan_r50.pth",
    "rn101": "fcclip_cocopan_r101.pth",
    "rn50x4": "fcclip_cocopan_r50x4.pth",
    "rn50x16": "fcclip_cocopan_r50x16.pth",
    "rn50x64": "fcclip_cocopan_r50x64.pth",
}


def default_cache_dir() -> Path:
    """`$FCCLIP_ROS_CACHE`, else `$XDG_CACHE_HOME/fcclip_ros`, else `~/.cache/fcclip_ros`."""
    if os.environ.get("FCCLIP_ROS_CACHE"):
        return Path(os.environ["FCCLIP_ROS_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "fcclip_ros"


def checkpoint_path(model: str, cache_dir: str | Path | None = None) -> Path:
    """Where `fcclip-ros download` puts (and `weights: auto` finds) a variant's checkpoint."""
    if model not in OFFICIAL_CHECKPOINTS:
        raise ValueError(f"no official checkpoint exists for model {model!r}")
    return Path(cache_dir or default_cache_dir()) / "checkpoints" / OFFICIAL_CHECKPOINTS[model]
