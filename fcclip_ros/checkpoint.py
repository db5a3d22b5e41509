"""Loading the official FC-CLIP checkpoints (detectron2 `.pth` files) into `FCCLIP`.

The released files hold the trained head (`sem_seg_head.*`, `void_embedding.weight`) and may
hold some CLIP weights (`backbone.clip_model.*`); the CLIP comes from open_clip otherwise. The
head is loaded strictly: a file for another variant or a truncated file is refused with a message
that says what is wrong, instead of silently running a half-initialised network.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fcclip_ros.model.config import VARIANTS, FCCLIPConfig
from fcclip_ros.model.fcclip import FCCLIP

logger = logging.getLogger(__name__)

CLIP_PREFIX = "backbone.clip_model."
TRAINING_ONLY_KEYS = ("criterion.", "pixel_mean", "pixel_std")  # loss buffers, input constants
NUM_TRAIN_CLASSES = 133  # COCO panoptic, the training vocabulary of every released model


class CheckpointError(ValueError):
    """The file cannot be read, or its weights do not fit the model."""


@dataclass(frozen=True)
class LoadReport:
    """What `load_fcclip_weights` took from the file, for the log."""

    path: str
    head_keys: int  # sem_seg_head.* and void_embedding.weight, all of them
    clip_keys: int  # backbone.clip_model.* entries that replaced open_clip's weights
    ignored: tuple[str, ...]  # training-only entries
    unexpected: tuple[str, ...]  # entries the model has no use for
    unsafe_pickle: bool  # the file needed torch.load(weights_only=False)


def _is_head_key(key: str) -> bool:
    return key.startswith("sem_seg_head.") or key == "void_embedding.weight"


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], bool]:
    """The state dict of a detectron2 checkpoint (under "model") or of a bare state-dict file.

    Returns it with a flag saying whether the file needed full unpickling, which can run code:
    only files holding more than tensors and plain containers need it, and are logged.
    """
    try:
        try:
            content, unsafe = torch.load(path, map_location="cpu", weights_only=True), False
        except pickle.UnpicklingError as error:
            logger.warning("%s holds more than tensors (%s); loading it with full unpickling, "
                           "which is only safe for files you trust", path,
                           str(error).splitlines()[0])
            content, unsafe = torch.load(path, map_location="cpu", weights_only=False), True
    except FileNotFoundError as error:
        raise CheckpointError(f"no FC-CLIP checkpoint at {path}") from error
    except Exception as error:  # a corrupt or foreign file fails in many different ways
        raise CheckpointError(f"cannot read {path} as a PyTorch checkpoint: {error}") from error
    if isinstance(content, Mapping) and isinstance(content.get("model"), Mapping):
        content = content["model"]
    if not isinstance(content, Mapping) or not content:
        raise CheckpointError(f"{path} holds no state dict (neither a 'model' entry nor tensors)")
    state = {}
    for key, value in content.items():
        if isinstance(value, np.ndarray):  # detectron2's pickled model-zoo format
            value = torch.from_numpy(value)
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: entry {key!r} is a {type(value).__name__}, "
                                  "not a tensor")
        state[key] = value
    return state, unsafe


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
    state, unsafe = read_state_dict(path)
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
    return LoadReport(str(path), len(head), len(clip), ignored, unexpected, unsafe)


def official_state_dict(model: FCCLIP,
                        num_train_classes: int = NUM_TRAIN_CLASSES) -> dict[str, torch.Tensor]:
    """The model's weights as the official training run saves them (detectron2's "model").

    Includes the loss's class weights (`criterion.empty_weight`: 1 per training class, 0.1 for
    void), which inference never uses; tests write files in this layout.
    """
    state = dict(model.state_dict())
    empty_weight = torch.ones(num_train_classes + 1)
    empty_weight[-1] = 0.1
    state["criterion.empty_weight"] = empty_weight
    return state
