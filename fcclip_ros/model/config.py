"""FC-CLIP hyper-parameters per released variant, and how to build the frozen CLIP they use.

Values come from the official configs (`configs/coco/panoptic-segmentation/fcclip/*.yaml`, their
Mask2Former base and `fcclip/config.py`); one frozen dataclass per variant, no config tree.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import open_clip
import torch
from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

# OpenAI CLIP mean/std on the 0-255 scale, RGB (MODEL.PIXEL_MEAN / PIXEL_STD of every config).
PIXEL_MEAN = (122.7709383, 116.7460125, 104.09373615)
PIXEL_STD = (68.5005327, 66.6321579, 70.32316305)

# Architectures that open_clip does not ship, in open_clip's own model-config format.
CUSTOM_CLIP_ARCHITECTURES: dict[str, dict] = {
    # A ConvNeXt CLIP with the ConvNeXt-L layout (timm trunk, no pooling, MLP projection), shrunk
    # to a timm `convnext_atto` trunk and a 2-layer text tower so that tests run in seconds.
    "fcclip-tiny": {
        "embed_dim": 64,
        "vision_cfg": {
            "timm_model_name": "convnext_atto",
            "timm_model_pretrained": False,
            "timm_pool": "",
            "timm_proj": "mlp",
            "timm_drop": 0.0,
            "timm_drop_path": 0.1,
            "image_size": 64,
        },
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2,
                     "layers": 2},
    },
}


@dataclass(frozen=True)
class FCCLIPConfig:
    """Hyper-parameters of one FC-CLIP variant (defaults: the main ConvNeXt-L model)."""

    name: str = "convnext_large"
    # Frozen CLIP backbone (MODEL.FC_CLIP.*).
    clip_model_name: str = "convnext_large_d_320"
    clip_pretrained: str | None = "laion2b_s29b_b131k_ft_soup"
    family: str = "convnext"  # "convnext" | "resnet": decides the feature taps and OOV pooling
    quick_gelu: bool = False  # the OpenAI ResNet weights were trained with QuickGELU
    embed_dim: int = 768
    backbone_channels: tuple[int, int, int, int] = (192, 384, 768, 1536)  # res2..res5
    # Pixel decoder (MSDeformAttnPixelDecoder).
    conv_dim: int = 256
    mask_dim: int = 256
    encoder_layers: int = 6
    encoder_dim_feedforward: int = 1024
    encoder_points: int = 4
    common_stride: int = 4
    # Masked-attention transformer decoder (heads are shared with the pixel decoder).
    num_queries: int = 250
    decoder_layers: int = 9  # DEC_LAYERS 10 in the yaml, minus the learnable-query "layer"
    hidden_dim: int = 256
    num_heads: int = 8
    dim_feedforward: int = 2048
    # Geometric ensemble of the in-vocabulary and out-of-vocabulary classifiers.
    ensemble_alpha: float = 0.4  # weight of the CLIP classifier for classes seen in training
    ensemble_beta: float = 0.8  # ... and for unseen classes
    ensemble_on_valid_mask: bool = False  # ResNets: CLIP votes only for non-empty masks

    def __post_init__(self) -> None:
        if self.family not in ("convnext", "resnet"):
            raise ValueError(f"family must be 'convnext' or 'resnet', got {self.family!r}")
        if self.conv_dim != self.hidden_dim:
            # The official decoder would add 1x1 input projections here; no released model has them.
            raise ValueError("conv_dim must equal hidden_dim (the decoder has no input projection)")


def _resnet(name: str, clip_model_name: str, embed_dim: int, width: int) -> FCCLIPConfig:
    """An OpenAI ResNet CLIP variant: `width` is the stem width, res2..res5 have 4x..32x it."""
    return FCCLIPConfig(
        name=name,
        clip_model_name=clip_model_name,
        clip_pretrained="openai",
        family="resnet",
        quick_gelu=True,
        embed_dim=embed_dim,
        backbone_channels=(4 * width, 8 * width, 16 * width, 32 * width),
        ensemble_on_valid_mask=True,
    )


VARIANTS: dict[str, FCCLIPConfig] = {
    "convnext_large": FCCLIPConfig(),
    "rn50": _resnet("rn50", "RN50", 1024, 64),
    "rn101": _resnet("rn101", "RN101", 512, 64),
    "rn50x4": _resnet("rn50x4", "RN50x4", 640, 80),
    "rn50x16": _resnet("rn50x16", "RN50x16", 768, 96),
    "rn50x64": _resnet("rn50x64", "RN50x64", 1024, 128),
    "tiny": replace(
        FCCLIPConfig(),
        name="tiny",
        clip_model_name="fcclip-tiny",
        clip_pretrained=None,
        embed_dim=64,
        backbone_channels=(40, 80, 160, 320),
        conv_dim=64,
        mask_dim=64,
        encoder_layers=1,
        encoder_dim_feedforward=128,
        num_queries=20,
        decoder_layers=3,
        hidden_dim=64,
        num_heads=4,
        dim_feedforward=128,
    ),
}


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


def create_clip_model(
    config: FCCLIPConfig,
    pretrained: str | None,
    cache_dir: str | None = None,
    seed: int = 0,
) -> open_clip.CLIP:
    """Build the variant's open_clip model, in eval mode.

    `pretrained` is an open_clip tag (read from its local cache; no download ever happens at run
    time), a weight file, or None for random weights drawn reproducibly from `seed`.
    """
    architecture = dict(CUSTOM_CLIP_ARCHITECTURES.get(config.clip_model_name)
                        or open_clip.get_model_config(config.clip_model_name) or {})
    if not architecture:
        raise ValueError(f"open_clip has no model called {config.clip_model_name!r}")
    architecture["quick_gelu"] = config.quick_gelu or architecture.get("quick_gelu", False)
    # Same class and arguments as open_clip.create_model(), minus its download logic.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.CLIP(**architecture)
    if pretrained is not None:
        path = pretrained if os.path.isfile(pretrained) else cached_clip_weights(
            config.clip_model_name, pretrained, cache_dir)
        # torch.load refuses TorchScript with weights_only=True; it then uses torch.jit.load, which
        # does not unpickle arbitrary objects.
        open_clip.load_checkpoint(model, path, strict=True,
                                  weights_only=not _is_torchscript_archive(path))
    return model.eval()
