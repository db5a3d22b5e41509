"""The single frozen convolutional CLIP: multi-scale features, dense CLIP map, region embeddings.

FC-CLIP's point is that one frozen CLIP serves as both mask-generator backbone and
open-vocabulary classifier. It never trains and must stay in eval mode: the ConvNeXt trunk was
built with stochastic depth, which would randomly drop blocks in train mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fcclip_ros.model.classification import mask_pool

FEATURE_NAMES = ("res2", "res3", "res4", "res5")


class CLIPBackbone(nn.Module):
    """Wraps an open_clip ConvNeXt or ModifiedResNet CLIP (both towers) for FC-CLIP.

    Args:
        clip_model: the open_clip model; kept as attribute `clip_model` so that state-dict keys
            read `backbone.clip_model.*` as in the official checkpoints.
        family: "convnext" (timm trunk, MLP head) or "resnet" (OpenAI ModifiedResNet).
    """

    def __init__(self, clip_model: nn.Module, family: str) -> None:
        super().__init__()
        if family not in ("convnext", "resnet"):
            raise ValueError(f"family must be 'convnext' or 'resnet', got {family!r}")
        self.clip_model = clip_model
        self.family = family
        self.clip_model.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> CLIPBackbone:
        """Always eval: a frozen CLIP must not turn on dropout, drop-path or batch-norm updates."""
        return super().train(False)

    @property
    def out_channels(self) -> dict[str, int]:
        """Channels of res2..res5, read off the network (what the pixel decoder consumes)."""
        visual = self.clip_model.visual
        if self.family == "convnext":
            channels = [info["num_chs"] for info in visual.trunk.feature_info]
        else:
            channels = [layer[-1].bn3.num_features for layer in self._resnet_layers()]
        return dict(zip(FEATURE_NAMES, channels, strict=True))

    def _resnet_layers(self) -> tuple[nn.Module, ...]:
        visual = self.clip_model.visual
        return visual.layer1, visual.layer2, visual.layer3, visual.layer4

    @property
    def embed_dim(self) -> int:
        """Dimension of the joint image-text space."""
        return self.clip_model.text_projection.shape[-1]

    @property
    def logit_scale(self) -> nn.Parameter:
        """CLIP's own (log) temperature, used by the out-of-vocabulary classifier."""
        return self.clip_model.logit_scale

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Normalised images (B, 3, H, W), H and W multiples of 32 -> feature maps.

        Returns res2..res5 at strides 4..32 and `clip_vis_dense`, the stride-32 map the region
        embeddings pool from (ConvNeXt: after the trunk's pre-head norm; ResNet: layer4 itself).
        """
        visual = self.clip_model.visual
        features = {}
        if self.family == "convnext":
            x = visual.trunk.stem(images)
            for name, stage in zip(FEATURE_NAMES, visual.trunk.stages, strict=True):
                x = stage(x)
                features[name] = x
            features["clip_vis_dense"] = visual.trunk.norm_pre(x)
        else:
            x = visual.stem(images)  # three 3x3 convs and a 2x2 average pool: stride 4
            for name, layer in zip(FEATURE_NAMES, self._resnet_layers(), strict=True):
                x = layer(x)
                features[name] = x
            features["clip_vis_dense"] = x
        return features

    @torch.no_grad()
    def region_embeddings(self, dense: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
        """CLIP image embeddings of mask regions, for the out-of-vocabulary classifier.

        dense (B, C, h, w) `clip_vis_dense`, mask_logits (B, Q, h, w) -> (B, Q, embed_dim).
        ConvNeXt: average the dense map inside each mask, then apply CLIP's own pooled-feature
        head (LayerNorm + MLP), which is exactly what CLIP does to a whole image. ResNet: CLIP's
        attention pooling, restricted to the mask's pixels.
        """
        if self.family == "resnet":
            return self._masked_attention_pool(dense, mask_logits)
        batch, queries = mask_logits.shape[:2]
        pooled = mask_pool(dense, mask_logits)  # (B, Q, C)
        x = self.clip_model.visual.trunk.head(pooled.reshape(batch * queries, -1, 1, 1))
        x = self.clip_model.visual.head(x)
        return x.reshape(batch, queries, -1)

    def _masked_attention_pool(self, dense: torch.Tensor,
                               mask_logits: torch.Tensor) -> torch.Tensor:
        """ModifiedResNet's AttentionPool2d with one query per mask, attending inside the mask.

        The query is the global mean token (as in CLIP), keys/values are the pixels plus the
        positional embedding resized to the map. A query whose mask is empty would attend to
        nothing: officially NaN (old PyTorch) or the output bias alone (new PyTorch), which the
        valid-mask ensemble of the ResNet configs discards. Here it attends everywhere, so that
        the embedding stays finite whatever the PyTorch version.
        """
        pool = self.clip_model.visual.attnpool
        _, channels, height, width = dense.shape
        queries = mask_logits.shape[1]
        positions = pool.positional_embedding.to(dense.dtype)  # (1 + s*s, C), s = 224/32 etc.
        side = int((positions.shape[0] - 1) ** 0.5)
        grid = positions[1:].T.reshape(1, channels, side, side)
        grid = F.interpolate(grid, size=(height, width), mode="bilinear", align_corners=False)
        tokens = dense.flatten(2).permute(2, 0, 1)  # (HW, B, C)
        keys = tokens + grid.flatten(2).permute(2, 0, 1)
        query = tokens.mean(0, keepdim=True) + positions[:1, None, :]  # (1, B, C)
        outside = (mask_logits <= 0).flatten(2)  # (B, Q, HW), True = may not attend
        outside = outside & ~outside.all(-1, keepdim=True)
        attn_mask = outside.repeat_interleave(pool.num_heads, dim=0)  # (B*heads, Q, HW)
        pooled, _ = F.multi_head_attention_forward(
            query=query.expand(queries, -1, -1), key=keys, value=keys,
            embed_dim_to_check=channels, num_heads=pool.num_heads,
            in_proj_weight=None,
            in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
            bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
            out_proj_weight=pool.c_proj.weight, out_proj_bias=pool.c_proj.bias,
            training=False, need_weights=False, attn_mask=attn_mask,
            use_separate_proj_weight=True, q_proj_weight=pool.q_proj.weight,
            k_proj_weight=pool.k_proj.weight, v_proj_weight=pool.v_proj.weight,
        )  # (Q, B, embed_dim)
        return pooled.permute(1, 0, 2)
