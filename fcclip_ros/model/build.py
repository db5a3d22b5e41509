"""`build_fcclip`: an FC-CLIP variant with its weights, ready for inference. All loading is here.

Two sets of weights make the model: the FC-CLIP checkpoint (the trained head, sometimes some CLIP
weights too) and the frozen CLIP's own weights from open_clip. Each is "auto" (the local cache:
building never touches the network, `fcclip-ros download` does), a file, or "random" (drawn from a
seed, for pipeline tests).

The official checkpoints are detectron2 `.pth` files. Their head is loaded strictly: a file for
another variant or a truncated file is refused with a message that says what is wrong, instead of
silently running a half-initialised network. Reading a file never runs code from it: only torch's
restricted unpickler is used, allowing besides tensors and plain values just the numeric numpy
arrays and scalars detectron2 checkpoints may hold. A file that needs anything else is refused,
naming what its pickle would call.
"""

from __future__ import annotations

import os
import pickle
import threading
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

from fcclip_ros.cache import OFFICIAL_CHECKPOINTS, checkpoint_path
from fcclip_ros.model.config import VARIANTS, FCCLIPConfig, create_clip_model
from fcclip_ros.model.fcclip import FCCLIP

AUTO = "auto"
RANDOM = "random"
CLIP_PREFIX = "backbone.clip_model."
TRAINING_ONLY_KEYS = ("criterion.", "pixel_mean", "pixel_std")  # loss buffers, input constants


class BuildError(ValueError):
    """The model cannot be built as asked (unknown variant, weights missing or unfit)."""


class CheckpointError(BuildError):
    """The FC-CLIP checkpoint cannot be read, or its weights do not fit the model."""


@dataclass(frozen=True)
class LoadReport:
    """What `load_fcclip_weights` took from the file, for the log."""

    path: str
    head_keys: int  # sem_seg_head.* and void_embedding.weight, all of them
    clip_keys: int  # backbone.clip_model.* entries that replaced open_clip's weights
    ignored: tuple[str, ...]  # training-only entries
    unexpected: tuple[str, ...]  # entries the model has no use for


@dataclass(frozen=True)
class BuiltModel:
    """A model from `build_fcclip`, and where its weights came from."""

    model: FCCLIP
    report: LoadReport | None  # what the FC-CLIP checkpoint gave; None for weights "random"
    random_weights: bool  # weights or clip_weights "random": masks and labels are meaningless


def build_fcclip(
    variant: str,
    weights: str = AUTO,
    clip_weights: str = AUTO,
    device: torch.device | str = "cpu",
    cache_dir: str | Path | None = None,
    seed: int = 0,
) -> BuiltModel:
    """Build `variant` (a key of VARIANTS) with its weights, in eval mode on `device`.

    `weights` is the FC-CLIP checkpoint: "auto" (the official one in `cache_dir`, default
    fcclip_ros.cache.default_cache_dir()), a path, or "random". `clip_weights` is CLIP's: "auto"
    (the variant's open_clip tag, from open_clip's local cache; random for the tiny test
    variant), a path, or "random". Random weights are drawn reproducibly from `seed`. Both
    files are found before the slow build; any problem is a BuildError that says what to do.
    """
    if variant not in VARIANTS:
        raise BuildError(f"model {variant!r}: use one of {', '.join(VARIANTS)}")
    config = VARIANTS[variant]
    checkpoint = checkpoint_file(config, weights, cache_dir)
    clip_path = clip_file(config, clip_weights)
    clip_model = create_clip_model(config, seed=seed)
    if clip_path is not None:
        _load_clip_weights(clip_model, clip_path, config)
    model = FCCLIP(config, clip_model, seed=seed)
    report = None if checkpoint is None else load_fcclip_weights(model, checkpoint)
    random_weights = checkpoint is None or clip_weights == RANDOM
    return BuiltModel(model.to(device).eval(), report, random_weights)


def checkpoint_file(config: FCCLIPConfig, weights: str, cache_dir: str | Path | None
                    ) -> Path | None:
    """The FC-CLIP checkpoint that `weights` names; None for random weights."""
    if weights == RANDOM:
        return None
    if weights == AUTO:
        if config.name not in OFFICIAL_CHECKPOINTS:
            raise BuildError(f"weights: auto: no official FC-CLIP checkpoint exists for "
                             f"{config.name}; give a path, or use weights: random")
        path = checkpoint_path(config.name, cache_dir)
        if not path.is_file():
            raise BuildError(
                f"weights: auto found no FC-CLIP checkpoint for {config.name} "
                f"(expected {path}); run `fcclip-ros download --model {config.name}`, "
                "give a path, or use weights: random for pipeline tests"
            )
        return path
    path = Path(weights).expanduser()
    if not path.is_file():
        raise BuildError(f"weights {weights!r}: no such file")
    return path


def clip_file(config: FCCLIPConfig, clip_weights: str) -> str | None:
    """The CLIP weight file to load; None for random weights."""
    if clip_weights == RANDOM or (clip_weights == AUTO and config.clip_pretrained is None):
        return None
    if clip_weights != AUTO:
        if not os.path.isfile(clip_weights):
            raise BuildError(f"clip_weights {clip_weights!r}: no such file (or use auto / random)")
        return clip_weights
    try:
        return cached_clip_weights(config.clip_model_name, config.clip_pretrained)
    except (FileNotFoundError, ValueError) as error:
        raise BuildError(f"cannot load CLIP weights for {config.name}: {error}") from error


def cached_clip_weights(model_name: str, tag: str, cache_dir: str | None = None) -> str:
    """Path of open_clip's download of `model_name`/`tag`, from the local caches only.

    open_clip itself would go to the network when the file is missing; a robot must not stall
    on that, so this looks where open_clip stores its downloads (Hugging Face hub cache, or
    ~/.cache/clip for URL downloads) and raises FileNotFoundError if the file is not there.
    """
    source = open_clip.get_pretrained_cfg(model_name, tag)
    if not source:
        known = open_clip.list_pretrained_tags_by_model(model_name)
        raise ValueError(f"{tag!r} is neither a file nor an open_clip tag of {model_name} "
                         f"(tags: {', '.join(known) or 'none'})")
    looked_in = []
    if source.get("hf_hub"):
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        repo_id, filename = os.path.split(source["hf_hub"])
        filename = filename or HF_WEIGHTS_NAME
        candidates = [HF_SAFE_WEIGHTS_NAME] if filename == HF_WEIGHTS_NAME else []
        for candidate in [*candidates, filename]:
            try:
                return hf_hub_download(repo_id, candidate, cache_dir=cache_dir,
                                       local_files_only=True)
            except LocalEntryNotFoundError:
                looked_in.append(f"Hugging Face cache: {repo_id}/{candidate}")
    if source.get("url"):
        path = Path(cache_dir or "~/.cache/clip").expanduser() / os.path.basename(source["url"])
        if path.is_file():
            return str(path)
        looked_in.append(str(path))
    raise FileNotFoundError(
        f"CLIP weights {model_name}/{tag} are not in the local cache (looked in "
        f"{'; '.join(looked_in)}); download them once with `fcclip-ros download`"
    )


def _is_torchscript_archive(path: str) -> bool:
    """OpenAI's original CLIP files (open_clip's URL downloads) are TorchScript archives."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def _load_clip_weights(clip_model: open_clip.CLIP, path: str, config: FCCLIPConfig) -> None:
    """open_clip's strict loader. torch.load refuses TorchScript with weights_only=True; such an
    archive goes to torch.jit.load, which does not unpickle arbitrary objects."""
    try:
        open_clip.load_checkpoint(clip_model, path, strict=True,
                                  weights_only=not _is_torchscript_archive(path))
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as error:
        raise BuildError(f"cannot load CLIP weights for {config.name}: {error}") from error


def _is_head_key(key: str) -> bool:
    return key.startswith("sem_seg_head.") or key == "void_embedding.weight"


def _numpy_globals() -> list[Callable[..., Any] | tuple[Callable[..., Any], str]]:
    """What unpickling numeric numpy arrays and scalars calls, under the names pickles use.

    The rebuild functions are taken from numpy's own pickles and named both ways: numpy 1 wrote
    them as ``numpy.core.multiarray.*``, numpy 2 as ``numpy._core.multiarray.*``. Only numeric
    and bool dtypes may be built, so no array of arbitrary Python objects can come out.
    """
    rebuilders = (np.zeros(0).__reduce__()[0], np.float32(0).__reduce__()[0])
    dtypes = (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
              np.uint64, np.float16, np.float32, np.float64)
    return [np.ndarray, np.dtype, *{type(np.dtype(t)) for t in dtypes},
            *((function, f"{module}.multiarray.{function.__name__}")
              for function in rebuilders for module in ("numpy.core", "numpy._core"))]


_NUMPY_GLOBALS = _numpy_globals()
# torch.serialization.safe_globals widens the allowlist process-wide until it exits and then
# removes its entries, so overlapping loads in two threads would cut each other short.
_LOAD_LOCK = threading.Lock()
_DAMAGED = "it is truncated, damaged or not a PyTorch checkpoint"


def _unreadable(path: str | Path, why: str) -> CheckpointError:
    return CheckpointError(f"cannot read {path}: {why}; download it again")


def _load_without_running_code(path: str | Path) -> Any:
    """``torch.load`` restricted to tensors, plain values and numeric numpy data."""
    with _LOAD_LOCK, torch.serialization.safe_globals(_NUMPY_GLOBALS):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise CheckpointError(f"no FC-CLIP checkpoint at {path}") from None
        except OSError as error:
            raise CheckpointError(f"cannot open {path}: {error.strerror}") from None
        except pickle.UnpicklingError:
            try:  # reads the pickle's instructions without running them
                offending = torch.serialization.get_unsafe_globals_in_checkpoint(path)
            except (ValueError, RuntimeError):  # not a torch.save zip file
                offending = []
        except Exception as error:  # a truncated or foreign file fails in many different ways
            torch_says = str(error).splitlines()[0].split(". ")[0] if str(error) else ""
            raise _unreadable(path, f"{_DAMAGED} ({torch_says or type(error).__name__})") from None
    if not offending:  # not a torch.save zip file, or objects built from allowed names only
        raise _unreadable(path, f"{_DAMAGED}, or it holds objects other than tensors, numeric "
                                "numpy data and plain values, which only unpickling that can run "
                                "code could build")
    raise CheckpointError(
        f"{path} was not loaded: unpickling it would call {', '.join(sorted(offending))}, which "
        "could run code from the file. FC-CLIP checkpoints hold only tensors, numpy arrays and "
        "plain values; use the official file, or re-save just the weights "
        "(torch.save({'model': state_dict}, path)) from a copy you trust")


def _read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a detectron2 checkpoint (under "model") or of a bare state-dict file."""
    content = _load_without_running_code(path)
    if isinstance(content, Mapping) and isinstance(content.get("model"), Mapping):
        content = content["model"]
    if not isinstance(content, Mapping) or not content:
        raise CheckpointError(f"{path} holds no state dict (neither a 'model' entry nor tensors)")
    state = {}
    for key, value in content.items():
        if isinstance(value, np.ndarray | np.generic):  # detectron2's model-zoo format
            value = torch.from_numpy(np.asarray(value))
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: entry {key!r} is a {type(value).__name__}, "
                                  "not a tensor")
        state[key] = value
    return state


def _layout(state: Mapping[str, torch.Tensor]) -> tuple[int, tuple[int, ...]] | None:
    """(embed_dim, res2..res5 channels) that a checkpoint's head was built for, if readable."""
    keys = ("void_embedding.weight",
            "sem_seg_head.pixel_decoder.adapter_1.weight",
            "sem_seg_head.pixel_decoder.input_proj.2.0.weight",
            "sem_seg_head.pixel_decoder.input_proj.1.0.weight",
            "sem_seg_head.pixel_decoder.input_proj.0.0.weight")
    if not all(key in state and state[key].dim() >= 2 for key in keys):
        return None
    void, *levels = (state[key] for key in keys)
    return void.shape[1], tuple(level.shape[1] for level in levels)


def _describe_mismatch(config: FCCLIPConfig, state: Mapping[str, torch.Tensor],
                       mismatched: list[str], own: Mapping[str, torch.Tensor]) -> str:
    layout = _layout(state)
    for variant in VARIANTS.values():
        if layout == (variant.embed_dim, variant.backbone_channels) and variant != config:
            return (f"this checkpoint fits {variant.name} (embed_dim {layout[0]}, res5 "
                    f"{layout[1][-1]} channels), not {config.name} (embed_dim {config.embed_dim}, "
                    f"res5 {config.backbone_channels[-1]} channels)")
    key = mismatched[0]
    return (f"its weights do not fit the {config.name} model: {key} has shape "
            f"{tuple(state[key].shape)} in the file but {tuple(own[key].shape)} in the model"
            f" ({len(mismatched) - 1} more mismatches)")


def load_fcclip_weights(model: FCCLIP, path: str | Path) -> LoadReport:
    """Load an official FC-CLIP checkpoint into `model`; raise CheckpointError if it does not fit.

    Every head weight must be present with the model's shape. CLIP weights in the file replace
    open_clip's; training-only entries are ignored; anything else is reported as unexpected.
    """
    state = _read_state_dict(path)
    own = model.state_dict()
    mismatched = [key for key in state if key in own and state[key].shape != own[key].shape]
    if mismatched:
        raise CheckpointError(f"{path}: {_describe_mismatch(model.config, state, mismatched, own)}")
    head = [key for key in own if _is_head_key(key)]
    missing = [key for key in head if key not in state]
    if missing:
        raise CheckpointError(f"{path} lacks {missing[0]} (and {len(missing) - 1} other head "
                              f"weights of the {model.config.name} model)")
    clip = [key for key in state if key.startswith(CLIP_PREFIX) and key in own]
    ignored = tuple(key for key in state if key.startswith(TRAINING_ONLY_KEYS))
    unexpected = tuple(key for key in state
                       if key not in own and not key.startswith(TRAINING_ONLY_KEYS))
    model.load_state_dict({key: state[key] for key in head + clip}, strict=False)
    return LoadReport(str(path), len(head), len(clip), ignored, unexpected)
