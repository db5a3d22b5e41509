"""Sine positional encoding of feature-map coordinates (DETR / Mask2Former style).

FC-CLIP computes it afresh from each map's size with normalised coordinates, so any input
resolution works without interpolating a learned table.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class PositionEmbeddingSine(nn.Module):
    """Fixed sin/cos encoding of the (row, column) of every pixel of a feature map.

    Output channels are ``[y-features, x-features]``, each ``num_pos_feats`` long and interleaving
    ``sin, cos`` of the same frequency, as in the official code. No padding mask: FC-CLIP never
    masks the padded border, so every pixel is valid and coordinates run over the whole map.
    """

    def __init__(
        self,
        num_pos_feats: int = 128,
        temperature: int = 10000,
        normalize: bool = True,
        scale: float | None = None,
    ) -> None:
        super().__init__()
        if scale is not None and not normalize:
            raise ValueError("scale only applies to normalized coordinates (normalize=True)")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale

    def _encode_axis(self, length: int, device: torch.device) -> Tensor:
        """(length, num_pos_feats) encoding of the 1-based positions along one axis."""
        coords = torch.arange(1, length + 1, dtype=torch.float32, device=device)
        if self.normalize:
            coords = coords / (coords[-1:] + 1e-6) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=device)
        dim_t = self.temperature ** (2 * (dim_t // 2) / self.num_pos_feats)
        angles = coords[:, None] / dim_t
        return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=2).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) map -> (B, 2*num_pos_feats, H, W) float32 encoding (only the shape is used).

        The result is a view broadcast over the batch; it is float32 whatever ``x``'s dtype is.
        """
        batch, _, height, width = x.shape
        pos_y = self._encode_axis(height, x.device)  # (H, F)
        pos_x = self._encode_axis(width, x.device)  # (W, F)
        features = self.num_pos_feats
        pos = torch.cat(
            (pos_y[:, None, :].expand(height, width, features),
             pos_x[None, :, :].expand(height, width, features)),
            dim=2,
        )  # (H, W, 2F)
        return pos.permute(2, 0, 1).unsqueeze(0).expand(batch, -1, -1, -1)
