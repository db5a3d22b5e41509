"""FC-CLIP hyper-parameters per released variant, and the frozen CLIP architecture they use.

Values come from the official configs (`configs/coco/panoptic-segmentation/fcclip/*.yaml`, their
Mask2Former base and `fcclip/config.py`); one frozen dataclass per variant, no config tree.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import open_clip
import torch

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


def create_clip_model(config: FCCLIPConfig, seed: int = 0) -> open_clip.CLIP:
    """The variant's open_clip model with random weights drawn from `seed`, in eval mode.

    Same class and arguments as open_clip.create_model(), minus its download logic; weights are
    loaded by fcclip_ros.model.build.
    """
    architecture = dict(CUSTOM_CLIP_ARCHITECTURES.get(config.clip_model_name)
                        or open_clip.get_model_config(config.clip_model_name) or {})
    if not architecture:
        raise ValueError(f"open_clip has no model called {config.clip_model_name!r}")
    architecture["quick_gelu"] = config.quick_gelu or architecture.get("quick_gelu", False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.CLIP(**architecture)
    return model.eval()
