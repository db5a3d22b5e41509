"""Mask2Former's masked-attention transformer decoder with FC-CLIP's class-embedding head.

Learned queries attend to the pixel decoder's s32, s16 and s8 maps in turn; each cross-attention
only sees the pixels inside the query's current mask estimate. The class head predicts a CLIP-space
embedding per query, to be compared with text embeddings (the in-vocabulary classifier).
Submodule names follow the official code so that checkpoints load under
`sem_seg_head.predictor.*`.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from fcclip_ros.model.classification import mask_pool
from fcclip_ros.model.position_encoding import PositionEmbeddingSine


def _xavier_init(module: nn.Module) -> None:
    for parameter in module.parameters():
        if parameter.dim() > 1:
            nn.init.xavier_uniform_(parameter)


class CrossAttentionLayer(nn.Module):
    """Queries attend to one feature level, restricted by the attention mask; post-norm."""

    def __init__(self, d_model: int, num_heads: int) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, num_heads, batch_first=True)
        self.norm = nn.LayerNorm(d_model)
        _xavier_init(self)

    def forward(self, queries: torch.Tensor, query_pos: torch.Tensor, memory: torch.Tensor,
                memory_pos: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        """queries (B, Q, D), memory (B, HW, D), attn_mask (B*heads, Q, HW) True = blocked."""
        attended = self.multihead_attn(queries + query_pos, memory + memory_pos, memory,
                                       attn_mask=attn_mask, need_weights=False)[0]
        return self.norm(queries + attended)


class SelfAttentionLayer(nn.Module):
    """Queries exchange information with each other; post-norm."""

    def __init__(self, d_model: int, num_heads: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, num_heads, batch_first=True)
        self.norm = nn.LayerNorm(d_model)
        _xavier_init(self)

    def forward(self, queries: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        q = k = queries + query_pos
        attended = self.self_attn(q, k, queries, need_weights=False)[0]
        return self.norm(queries + attended)


class FFNLayer(nn.Module):
    """Two-layer ReLU feed-forward block; post-norm."""

    def __init__(self, d_model: int, dim_feedforward: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        _xavier_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.linear2(F.relu(self.linear1(x))))


class MLP(nn.Module):
    """Linear layers with ReLU between them (none after the last)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in itertools.pairwise(dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return self.layers[-1](x)


class MaskedTransformerDecoder(nn.Module):
    """FC-CLIP's transformer decoder (the official `MultiScaleMaskedTransformerDecoder`).

    Args:
        hidden_dim: width of queries and of the pixel decoder's maps (256).
        num_queries: number of mask proposals (250).
        num_heads: attention heads (8).
        dim_feedforward: FFN width (2048).
        num_layers: decoder layers, cycling through the feature levels (9).
        mask_dim: channels of the per-pixel mask features (256).
        embed_dim: CLIP embedding width that class embeddings live in (768 for ConvNeXt-L).
        num_levels: feature levels attended to, low resolution first (3).
    """

    def __init__(
        self,
        hidden_dim: int = 256,
        num_queries: int = 250,
        num_heads: int = 8,
        dim_feedforward: int = 2048,
        num_layers: int = 9,
        mask_dim: int = 256,
        embed_dim: int = 768,
        num_levels: int = 3,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, num_heads) for _ in range(num_layers))
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, num_heads) for _ in range(num_layers))
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, dim_feedforward) for _ in range(num_layers))
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.query_feat = nn.Embedding(num_queries, hidden_dim)  # learned query content
        self.query_embed = nn.Embedding(num_queries, hidden_dim)  # learned query position
        self.level_embed = nn.Embedding(num_levels, hidden_dim)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)
        # FC-CLIP class head: mask-pooled pixel features plus the query, mapped into CLIP space.
        self._mask_pooling_proj = nn.Sequential(nn.LayerNorm(hidden_dim),
                                                nn.Linear(hidden_dim, hidden_dim))
        self.class_embed = MLP(hidden_dim, hidden_dim, embed_dim, 3)
        # Temperature of the in-vocabulary classifier, CLIP's initial value ln(1/0.07).
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, multi_scale_features: list[torch.Tensor],
                mask_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[s32, s16, s8] maps (B, hidden, h_l, w_l) and mask features (B, mask_dim, H/4, W/4)
        -> final mask logits (B, Q, H/4, W/4) and class embeddings (B, Q, embed_dim).

        Class embeddings of intermediate layers are never used at inference, so only the final
        one is computed; intermediate masks are, since they build the next attention mask.
        """
        batch = mask_features.shape[0]
        sizes, memories, positions = [], [], []
        for level, x in enumerate(multi_scale_features):
            sizes.append(x.shape[-2:])
            positions.append(self.pe_layer(x).to(x.dtype).flatten(2).transpose(1, 2))  # (B, HW, D)
            level_embed = self.level_embed.weight[level][:, None]  # (D, 1)
            memories.append((x.flatten(2) + level_embed).transpose(1, 2))
        query_pos = self.query_embed.weight.expand(batch, -1, -1)  # (B, Q, D)
        queries = self.query_feat.weight.expand(batch, -1, -1)

        mask_logits = self._mask_logits(queries, mask_features)
        layers = zip(self.transformer_cross_attention_layers,
                     self.transformer_self_attention_layers,
                     self.transformer_ffn_layers, strict=True)
        for i, (cross_attention, self_attention, ffn) in enumerate(layers):
            level = i % len(memories)
            attn_mask = self._attention_mask(mask_logits, sizes[level])
            queries = cross_attention(queries, query_pos, memories[level], positions[level],
                                      attn_mask)
            queries = self_attention(queries, query_pos)
            queries = ffn(queries)
            mask_logits = self._mask_logits(queries, mask_features)
        return mask_logits, self._class_embeddings(queries, mask_logits, mask_features)

    def _mask_logits(self, queries: torch.Tensor, mask_features: torch.Tensor) -> torch.Tensor:
        """(B, Q, D) queries -> (B, Q, H/4, W/4): a mask embedding dotted with every pixel."""
        mask_embed = self.mask_embed(self.decoder_norm(queries))
        return torch.einsum("bqc,bchw->bqhw", mask_embed, mask_features)

    def _attention_mask(self, mask_logits: torch.Tensor, size: torch.Size) -> torch.Tensor:
        """(B*heads, Q, h*w) bool, True where a query may not attend: outside its current mask.

        A query whose mask is empty at this level attends everywhere instead of nowhere.
        """
        resized = F.interpolate(mask_logits, size=size, mode="bilinear", align_corners=False)
        outside = (resized.sigmoid() < 0.5).flatten(2)  # (B, Q, hw)
        outside = outside & ~outside.all(-1, keepdim=True)
        return outside.repeat_interleave(self.num_heads, dim=0).detach()

    def _class_embeddings(self, queries: torch.Tensor, mask_logits: torch.Tensor,
                          mask_features: torch.Tensor) -> torch.Tensor:
        """CLIP-space embedding per query: pooled mask features plus the normalised query."""
        pooled = self._mask_pooling_proj(mask_pool(mask_features, mask_logits))
        return self.class_embed(pooled + self.decoder_norm(queries))
