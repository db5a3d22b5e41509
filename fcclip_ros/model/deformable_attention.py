"""Multi-scale deformable attention (Deformable DETR) without the compiled CUDA op.

The official op has no CPU kernel and must be compiled against CUDA; bilinear sampling with
``F.grid_sample`` computes the same thing on any device and dtype, and exports cleanly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def multi_scale_deformable_attention(
    value: Tensor,
    spatial_shapes: Sequence[tuple[int, int]] | Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Weighted sum of bilinearly sampled values, over all levels and points of each head.

    Args:
        value: (B, S, M, D) per-head values of all levels flattened row-major, S = sum(H_l * W_l).
        spatial_shapes: (H_l, W_l) of each of the L levels, in the order they appear in ``value``.
        sampling_locations: (B, Q, M, L, P, 2) normalised (x, y); (0, 0) is the top-left corner
            and (1, 1) the bottom-right corner of the map. Outside points read zeros.
        attention_weights: (B, Q, M, L, P), normally summing to one over (L, P).

    Returns:
        (B, Q, M * D), heads concatenated. Computed in ``value``'s dtype.
    """
    if isinstance(spatial_shapes, Tensor):
        spatial_shapes = spatial_shapes.tolist()
    batch, _, heads, head_dim = value.shape
    queries = sampling_locations.shape[1]
    # grid_sample wants [-1, 1] coordinates, one image per (batch, head): (B*M, Q, L, P, 2)
    grids = (2 * sampling_locations - 1).to(value.dtype).transpose(1, 2).flatten(0, 1)
    weights = attention_weights.to(value.dtype).transpose(1, 2).flatten(0, 1)  # (B*M, Q, L, P)
    level_values = value.split([height * width for height, width in spatial_shapes], dim=1)

    output = value.new_zeros(batch * heads, head_dim, queries)
    for level, (height, width) in enumerate(spatial_shapes):
        # (B, H*W, M, D) -> (B*M, D, H, W)
        level_map = level_values[level].permute(0, 2, 3, 1).reshape(-1, head_dim, height, width)
        sampled = F.grid_sample(
            level_map, grids[:, :, level], mode="bilinear", padding_mode="zeros",
            align_corners=False,
        )  # (B*M, D, Q, P)
        output = output + (sampled * weights[:, None, :, level]).sum(-1)
    return output.view(batch, heads * head_dim, queries).transpose(1, 2)


class MultiScaleDeformableAttention(nn.Module):
    """Each query attends to ``n_points`` learned locations per head and level around its
    reference point, instead of to every pixel: linear in the number of pixels, which is what
    lets the pixel decoder run attention over the stride-8 map of an 800x1333 image.
    """

    def __init__(
        self, d_model: int = 256, n_levels: int = 3, n_heads: int = 8, n_points: int = 4
    ) -> None:
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """Official initialisation: head h starts sampling along the direction of angle
        2*pi*h/n_heads (scaled so the larger component is 1), point p at distance p+1 pixels,
        with uniform attention over all levels and points.
        """
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2 * math.pi / self.n_heads)
        directions = torch.stack([angles.cos(), angles.sin()], dim=-1)
        directions = directions / directions.abs().max(dim=-1, keepdim=True).values  # (M, 2)
        distances = torch.arange(1, self.n_points + 1, dtype=torch.float32)
        offsets = directions[:, None, None, :] * distances[None, None, :, None]  # (M, 1, P, 2)
        offsets = offsets.expand(self.n_heads, self.n_levels, self.n_points, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(offsets.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for projection in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(projection.weight)
            nn.init.zeros_(projection.bias)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        value: Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
    ) -> Tensor:
        """Attend from each query to the multi-scale ``value`` maps.

        Args:
            query: (B, Q, C).
            reference_points: (B, Q, L, 2) normalised (x, y) per query and level; any dimension
                of size one broadcasts.
            value: (B, S, C) all levels flattened row-major, S = sum(H_l * W_l).
            spatial_shapes: (H_l, W_l) of each level, in the order of ``value``.

        Returns:
            (B, Q, C).
        """
        batch, queries, _ = query.shape
        heads, levels, points = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(value).view(batch, value.shape[1], heads, -1)  # (B, S, M, D)
        offsets = self.sampling_offsets(query).view(batch, queries, heads, levels, points, 2)
        weights = self.attention_weights(query).view(batch, queries, heads, levels * points)
        weights = weights.softmax(-1).view(batch, queries, heads, levels, points)
        # offsets are in pixels of each level: divide by that level's (W, H)
        level_sizes = torch.tensor(
            [[width, height] for height, width in spatial_shapes],
            dtype=offsets.dtype,
            device=offsets.device,
        )  # (L, 2)
        locations = reference_points[:, :, None, :, None, :] + offsets / level_sizes[:, None, :]
        output = multi_scale_deformable_attention(value, spatial_shapes, locations, weights)
        return self.output_proj(output)
