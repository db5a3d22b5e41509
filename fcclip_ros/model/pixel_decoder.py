"""FC-CLIP pixel decoder: a deformable-attention encoder over res3-res5 plus one FPN step.

Turns the frozen CLIP backbone's res2..res5 maps into the per-pixel embeddings that masks are
read from (stride 4) and the three maps the transformer decoder attends to (strides 32, 16, 8).
Module and parameter names follow the official checkpoint (``sem_seg_head.pixel_decoder.*``)
so its weights load without renaming.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .deformable_attention import MultiScaleDeformableAttention
from .position_encoding import PositionEmbeddingSine

# Backbone maps the encoder runs on, low resolution first (the official level order).
ENCODER_FEATURES = ("res5", "res4", "res3")


def pixel_centres(spatial_shapes: Sequence[tuple[int, int]], device: torch.device) -> Tensor:
    """(S, 2) normalised (x, y) centre of every pixel of every level, flattened row-major.

    These are the encoder's reference points: each pixel attends around its own position, at the
    same relative position on every level.
    """
    centres = []
    for height, width in spatial_shapes:
        y = (torch.arange(height, dtype=torch.float32, device=device) + 0.5) / height
        x = (torch.arange(width, dtype=torch.float32, device=device) + 0.5) / width
        grid_y, grid_x = torch.meshgrid(y, x, indexing="ij")
        centres.append(torch.stack((grid_x.flatten(), grid_y.flatten()), dim=-1))
    return torch.cat(centres)


class DeformableEncoderLayer(nn.Module):
    """Post-norm transformer layer with deformable self-attention (dropout 0: inference only)."""

    def __init__(self, d_model: int, n_heads: int, dim_feedforward: int, n_levels: int,
                 n_points: int) -> None:
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(d_model, n_levels, n_heads, n_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        nn.init.xavier_uniform_(self.linear1.weight)
        nn.init.xavier_uniform_(self.linear2.weight)

    def forward(self, src: Tensor, pos: Tensor, reference_points: Tensor,
                spatial_shapes: Sequence[tuple[int, int]]) -> Tensor:
        """(B, S, C) tokens of all levels -> same shape; ``pos`` only enters the queries."""
        src = self.norm1(src + self.self_attn(src + pos, reference_points, src, spatial_shapes))
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


class DeformableEncoder(nn.Module):
    """Stack of deformable encoder layers over the flattened tokens of all levels."""

    def __init__(self, num_layers: int, d_model: int, n_heads: int, dim_feedforward: int,
                 n_levels: int, n_points: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DeformableEncoderLayer(d_model, n_heads, dim_feedforward, n_levels, n_points)
            for _ in range(num_layers)
        )

    def forward(self, src: Tensor, pos: Tensor,
                spatial_shapes: Sequence[tuple[int, int]]) -> Tensor:
        """(B, S, C) -> (B, S, C)."""
        reference_points = pixel_centres(spatial_shapes, src.device)[None, :, None, :]  # (1,S,1,2)
        for layer in self.layers:
            src = layer(src, pos, reference_points, spatial_shapes)
        return src


class MultiScaleDeformableTransformer(nn.Module):
    """Runs the encoder jointly over several maps and hands back maps of the same shapes.

    A learned per-level embedding is added to the sine position encoding (not to the features),
    so tokens know which scale they come from.
    """

    def __init__(self, d_model: int, n_heads: int, num_encoder_layers: int, dim_feedforward: int,
                 n_levels: int, n_points: int) -> None:
        super().__init__()
        self.pe_layer = PositionEmbeddingSine(d_model // 2, normalize=True)
        self.encoder = DeformableEncoder(
            num_encoder_layers, d_model, n_heads, dim_feedforward, n_levels, n_points
        )
        self.level_embed = nn.Parameter(torch.empty(n_levels, d_model))
        nn.init.normal_(self.level_embed)

    def forward(self, maps: Sequence[Tensor]) -> list[Tensor]:
        """L maps (B, C, H_l, W_l) -> L encoded maps of the same shapes."""
        spatial_shapes = [(m.shape[2], m.shape[3]) for m in maps]
        src = torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1)  # (B, S, C)
        pos = torch.cat(
            [self.pe_layer(m).flatten(2).transpose(1, 2) + self.level_embed[level]
             for level, m in enumerate(maps)],
            dim=1,
        )  # (B, S, C)
        memory = self.encoder(src, pos, spatial_shapes)
        tokens = memory.split([height * width for height, width in spatial_shapes], dim=1)
        return [
            t.transpose(1, 2).reshape(t.shape[0], -1, height, width)
            for t, (height, width) in zip(tokens, spatial_shapes, strict=True)
        ]


class ConvGroupNorm(nn.Conv2d):
    """Bias-free convolution followed by GroupNorm(32) and optionally ReLU.

    The norm is a child of the conv (as in detectron2's ``Conv2d``), which gives the checkpoint's
    ``<name>.weight`` / ``<name>.norm.*`` keys.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 relu: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2,
                         bias=False)
        self.norm = nn.GroupNorm(32, out_channels)
        self.relu = relu
        nn.init.kaiming_uniform_(self.weight, a=1)  # detectron2's c2_xavier_fill

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(super().forward(x))
        return F.relu(x) if self.relu else x


class MSDeformAttnPixelDecoder(nn.Module):
    """Pixel decoder of FC-CLIP / Mask2Former.

    Args:
        in_channels: channels of the backbone maps ``res2``..``res5`` (strides 4, 8, 16, 32).
        conv_dim: width of the encoder and of the multi-scale outputs.
        mask_dim: channels of the per-pixel mask embeddings.
        num_heads, num_encoder_layers, encoder_dim_feedforward, num_points: deformable encoder.
        common_stride: stride of the mask features; 4 adds the FPN step with res2, 8 uses the
            encoder's finest map directly.
    """

    def __init__(
        self,
        in_channels: dict[str, int],
        conv_dim: int = 256,
        mask_dim: int = 256,
        num_heads: int = 8,
        num_encoder_layers: int = 6,
        encoder_dim_feedforward: int = 1024,
        num_points: int = 4,
        common_stride: int = 4,
    ) -> None:
        super().__init__()
        if common_stride not in (4, 8):
            raise ValueError(f"common_stride must be 4 or 8, got {common_stride}")
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_channels[name], conv_dim, 1), nn.GroupNorm(32, conv_dim))
            for name in ENCODER_FEATURES
        )
        for projection in self.input_proj:
            nn.init.xavier_uniform_(projection[0].weight)
            nn.init.zeros_(projection[0].bias)
        self.transformer = MultiScaleDeformableTransformer(
            conv_dim, num_heads, num_encoder_layers, encoder_dim_feedforward,
            n_levels=len(ENCODER_FEATURES), n_points=num_points,
        )
        self.with_res2 = common_stride == 4
        if self.with_res2:
            self.adapter_1 = ConvGroupNorm(in_channels["res2"], conv_dim, 1)
            self.layer_1 = ConvGroupNorm(conv_dim, conv_dim, 3, relu=True)
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, 1)
        nn.init.kaiming_uniform_(self.mask_features.weight, a=1)
        nn.init.zeros_(self.mask_features.bias)

    def forward(self, features: dict[str, Tensor]) -> tuple[Tensor, list[Tensor]]:
        """Backbone maps -> (mask features (B, mask_dim, H/4, W/4), [s32, s16, s8] maps).

        Always runs in float32, also under autocast (the official code does the same: deformable
        attention was never trained in half precision).
        """
        with torch.autocast(features["res5"].device.type, enabled=False):
            maps = [proj(features[name].float())
                    for proj, name in zip(self.input_proj, ENCODER_FEATURES, strict=True)]
            multi_scale_features = self.transformer(maps)  # [s32, s16, s8], (B, conv_dim, h, w)
            finest = multi_scale_features[-1]
            if self.with_res2:
                lateral = self.adapter_1(features["res2"].float())
                upsampled = F.interpolate(finest, size=lateral.shape[-2:], mode="bilinear",
                                          align_corners=False)
                finest = self.layer_1(lateral + upsampled)
            return self.mask_features(finest), multi_scale_features
