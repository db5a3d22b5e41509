"""FC-CLIP: frozen convolutional CLIP + Mask2Former head + geometric ensemble of two classifiers.

Module names match the official meta-architecture (`backbone`, `sem_seg_head.pixel_decoder`,
`sem_seg_head.predictor`, `void_embedding`) so that its checkpoints load key for key.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fcclip_ros.model.backbone import FEATURE_NAMES, CLIPBackbone
from fcclip_ros.model.classification import TextClassifier, classification_logits
from fcclip_ros.model.config import FCCLIPConfig, create_clip_model
from fcclip_ros.model.pixel_decoder import MSDeformAttnPixelDecoder
from fcclip_ros.model.transformer_decoder import MaskedTransformerDecoder


class FCCLIPHead(nn.Module):
    """The trained part of FC-CLIP's mask generator: pixel decoder, then transformer decoder."""

    def __init__(self, config: FCCLIPConfig) -> None:
        super().__init__()
        self.pixel_decoder = MSDeformAttnPixelDecoder(
            dict(zip(FEATURE_NAMES, config.backbone_channels, strict=True)),
            conv_dim=config.conv_dim,
            mask_dim=config.mask_dim,
            num_heads=config.num_heads,
            num_encoder_layers=config.encoder_layers,
            encoder_dim_feedforward=config.encoder_dim_feedforward,
            num_points=config.encoder_points,
            common_stride=config.common_stride,
        )
        self.predictor = MaskedTransformerDecoder(
            hidden_dim=config.hidden_dim,
            num_queries=config.num_queries,
            num_heads=config.num_heads,
            dim_feedforward=config.dim_feedforward,
            num_layers=config.decoder_layers,
            mask_dim=config.mask_dim,
            embed_dim=config.embed_dim,
        )

    def forward(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone maps -> mask logits (B, Q, H/4, W/4) and class embeddings (B, Q, embed_dim).

        The pixel decoder always runs in float32, also under autocast, as in the official code.
        """
        mask_features, multi_scale_features = self.pixel_decoder(features)
        return self.predictor(multi_scale_features, mask_features)


def geometric_ensemble(
    in_vocab_logits: torch.Tensor,
    out_vocab_logits: torch.Tensor,
    seen: torch.Tensor,
    alpha: float,
    beta: float,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Combine the head's and CLIP's class predictions into FC-CLIP's final class logits.

    in_vocab_logits (B, Q, C + 1) with void last, out_vocab_logits (B, Q, C), seen (C,) bool,
    valid (B, Q) bool or None -> (B, Q, C + 1) = log(probabilities + 1e-8).
    Per class, p = p_in^(1 - w) * p_out^w with w = alpha for classes seen in training and beta
    for unseen ones (CLIP generalises better to classes the head never saw); w = 0 for queries
    whose mask is not `valid`. The void probability of the head is then re-attached.
    Computed in log space: equal to the official formula wherever that is finite, and finite
    where a probability underflows to 0 (the official gives -inf or NaN there).
    """
    in_vocab_logits = in_vocab_logits.float()
    weight = torch.where(seen, alpha, beta).to(in_vocab_logits)  # (C,)
    if valid is not None:
        weight = weight * valid[..., None].to(weight)  # (B, Q, C)
    log_probs = ((1 - weight) * in_vocab_logits[..., :-1].log_softmax(-1)
                 + weight * out_vocab_logits.float().log_softmax(-1))
    void_prob = in_vocab_logits.softmax(-1)[..., -1:]
    probs = torch.cat([log_probs.softmax(-1) * (1 - void_prob), void_prob], dim=-1)
    return torch.log(probs + 1e-8)


class FCCLIP(nn.Module):
    """The FC-CLIP network for inference.

    Args:
        config: the variant's hyper-parameters.
        clip_model: its open_clip model (`create_clip_model`); None builds one with random
            weights. Random weights are drawn reproducibly from `seed`.
    """

    def __init__(self, config: FCCLIPConfig, clip_model: nn.Module | None = None,
                 seed: int = 0) -> None:
        super().__init__()
        self.config = config
        if clip_model is None:
            clip_model = create_clip_model(config, seed=seed)
        self.backbone = CLIPBackbone(clip_model, config.family)
        built = (self.backbone.embed_dim, tuple(self.backbone.out_channels.values()))
        if built != (config.embed_dim, config.backbone_channels):
            raise ValueError(f"{config.clip_model_name} has embed_dim {built[0]} and res2..res5 "
                             f"channels {built[1]}, but the {config.name} config expects "
                             f"{config.embed_dim} and {config.backbone_channels}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.sem_seg_head = FCCLIPHead(config)
            self.void_embedding = nn.Embedding(1, config.embed_dim)  # learned "no object" text

    def forward(self, images: torch.Tensor, classifier: TextClassifier,
                with_region_embeddings: bool = False) -> tuple[torch.Tensor, ...]:
        """Normalised, padded images (B, 3, H, W) -> mask logits (B, Q, H/4, W/4) and class
        logits (B, Q, C + 1), void last: the official model's final `pred_logits`.

        With `with_region_embeddings`, a third output: the (B, Q, embed_dim) region embeddings
        the out-of-vocabulary classifier scored, unnormalised, in CLIP's joint image-text space.
        They are computed either way; the flag only keeps them for the caller. (ResNets: a query
        whose mask is empty at stride 32 pools the whole image; the valid-mask ensemble gives
        CLIP no vote on its class.)
        """
        features = self.backbone(images)
        mask_logits, class_embeddings = self.sem_seg_head(features)
        in_vocab_logits = classification_logits(class_embeddings, classifier,
                                                self.void_embedding.weight,
                                                self.sem_seg_head.predictor.logit_scale)

        # Out-of-vocabulary classifier: CLIP's own embedding of each mask region.
        dense = features["clip_vis_dense"]  # (B, C, H/32, W/32)
        region_masks = F.interpolate(mask_logits, size=dense.shape[-2:], mode="bilinear",
                                     align_corners=False)
        region_embeddings = self.backbone.region_embeddings(dense, region_masks)
        out_vocab_logits = classification_logits(region_embeddings, classifier, None,
                                                 self.backbone.logit_scale)

        valid = None
        if self.config.ensemble_on_valid_mask:
            valid = (region_masks > 0).flatten(2).any(-1)  # (B, Q): mask not empty at stride 32
        class_logits = geometric_ensemble(in_vocab_logits, out_vocab_logits, classifier.seen,
                                          self.config.ensemble_alpha, self.config.ensemble_beta,
                                          valid)
        if with_region_embeddings:
            return mask_logits, class_logits, region_embeddings
        return mask_logits, class_logits
