"""`fcclip-ros download`: the only code path that touches the network.

CLIP weights go where open_clip looks for them (its Hugging Face hub cache), so that
`clip_weights: auto` finds them offline afterwards; FC-CLIP checkpoints go to
`<cache_dir>/checkpoints/`, where `weights: auto` looks.
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import TextIO

from fcclip_ros.cache import OFFICIAL_CHECKPOINTS, checkpoint_path

# The official release hosts every checkpoint on Google Drive; these are the files' ids.
DRIVE_IDS: dict[str, str] = {
    "convnext_large": "1-91PIns86vyNaL3CzMmDD39zKGnPMtvj",
    "rn50": "1tcB-8FNON-LwckXQbUyKcBA2G7TU65Zh",
    "rn101": "1P0mdgftReWzVbPQ0O0CSBfW3krHhTOj0",
    "rn50x4": "1nUpUsNUE22eOV9skxv9IyIkmCbg5jrIF",
    "rn50x16": "1rJu2UwwtI0VLDl9CyB8Mkgw9qHlnX70W",
    "rn50x64": "1rvfFVp5p3PZQsHp2NGVEBeYYcqgVVaZX",
}
DRIVE_URL = "https://drive.usercontent.google.com/download?id={}&export=download&confirm=t"
HOSTS = ("huggingface.co", "drive.usercontent.google.com")


class DownloadError(RuntimeError):
    """A download that could not be done, with what to do about it."""


def _check_network() -> None:
    """Fail in a second with a clear message instead of minutes of library retries."""
    for host in HOSTS:
        try:
            socket.getaddrinfo(host, 443)
        except OSError as error:
            raise DownloadError(
                f"cannot reach {host} ({error}); `fcclip-ros download` needs network access. "
                "Alternatively copy the files by hand to the paths printed above."
            ) from error


def _fetch(url: str, destination: Path, out: TextIO) -> None:
    """Download to a .part file with a progress line, then rename (no half file is ever used)."""
    partial = destination.with_name(destination.name + ".part")
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=30) as response, partial.open("wb") as sink:
            if "text/html" in response.headers.get("Content-Type", ""):
                raise DownloadError(f"{url} sent a web page, not the file (quota? moved?)")
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            while chunk := response.read(1 << 20):
                sink.write(chunk)
                done += len(chunk)
                share = f" {100 * done / total:5.1f}%" if total else ""
                out.write(f"\r  {done / 1e6:8.1f} MB{share}")
                out.flush()
        out.write("\n")
    except (urllib.error.URLError, OSError) as error:
        partial.unlink(missing_ok=True)
        raise DownloadError(f"downloading {url} failed: {error}") from error
    partial.replace(destination)


def download(
    models: list[str],
    cache_dir: str | Path | None = None,
    clip: bool = True,
    checkpoints: bool = True,
    out: TextIO | None = None,
) -> list[Path]:
    """Fetch the CLIP weights and FC-CLIP checkpoints of `models`; returns the files' paths.

    Progress and destinations go to `out` (default: standard output).
    """
    out = out or sys.stdout
    import open_clip

    from fcclip_ros.model.config import VARIANTS

    unknown = [m for m in models if m not in OFFICIAL_CHECKPOINTS]
    if unknown:
        raise DownloadError(
            f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(OFFICIAL_CHECKPOINTS)}"
        )
    for model in models:
        config = VARIANTS[model]
        if clip:
            out.write(f"{model}: CLIP {config.clip_model_name}/{config.clip_pretrained} -> "
                      "open_clip's Hugging Face cache "
                      f"({os.environ.get('HF_HUB_CACHE', '~/.cache/huggingface/hub')})\n")
        if checkpoints:
            out.write(f"{model}: FC-CLIP checkpoint -> {checkpoint_path(model, cache_dir)}\n")
    _check_network()
    written = []
    for model in models:
        config = VARIANTS[model]
        if clip:
            source = open_clip.get_pretrained_cfg(config.clip_model_name, config.clip_pretrained)
            written.append(Path(open_clip.pretrained.download_pretrained(source)))
            out.write(f"  saved {written[-1]}\n")
        if checkpoints:
            target = checkpoint_path(model, cache_dir)
            if target.is_file():
                out.write(f"  {target} already present\n")
            else:
                _fetch(DRIVE_URL.format(DRIVE_IDS[model]), target, out)
                out.write(f"  saved {target} ({target.stat().st_size / 1e6:.1f} MB)\n")
            written.append(target)
    return written
