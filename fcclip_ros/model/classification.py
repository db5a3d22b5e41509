"""Open-vocabulary classification against text embeddings (shared by both FC-CLIP classifiers)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class TextClassifier:
    """The text side of FC-CLIP's classifiers for one vocabulary.

    Rows are synonyms, in vocabulary order; a class's logit is the max over its synonyms' rows.
    """

    embeddings: torch.Tensor  # (S, D) one L2-normalised row per synonym
    class_of_row: torch.Tensor  # (S,) int64, the class index of each row (non-decreasing)
    seen: torch.Tensor  # (C,) bool, class shares a synonym with the COCO training vocabulary

    @property
    def num_classes(self) -> int:
        # The shape entry itself, not int() of it: an exporter tracing a dynamic class count
        # would otherwise bake the traced vocabulary's size into the graph.
        return self.seen.shape[0]

    def followed_by(self, other: TextClassifier) -> TextClassifier:
        """This vocabulary's classes, then `other`'s (its class indices shifted past ours): the
        classifier of the two vocabularies as one list, so their classes compete in one softmax."""
        return TextClassifier(
            torch.cat([self.embeddings, other.embeddings.to(self.embeddings)]),
            torch.cat([self.class_of_row, other.class_of_row.to(self.class_of_row)
                       + self.num_classes]),
            torch.cat([self.seen, other.seen.to(self.seen)]),
        )

    def to(self, device: torch.device | str) -> TextClassifier:
        return TextClassifier(
            self.embeddings.to(device), self.class_of_row.to(device), self.seen.to(device)
        )


def mask_pool(features: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """Average of `features` inside each binarised mask (logit > 0): the region's descriptor.

    features (B, C, H, W), mask_logits (B, Q, H, W) at the same resolution -> (B, Q, C).
    An empty mask gives a zero vector, as in the official code (ODISE's MaskPooling).
    """
    masks = (mask_logits > 0).to(features.dtype)
    weights = masks / (masks.sum(dim=(-2, -1), keepdim=True) + 1e-8)
    return torch.einsum("bchw,bqhw->bqc", features, weights)


def classification_logits(
    x: torch.Tensor,
    classifier: TextClassifier,
    void_embedding: torch.Tensor | None,
    logit_scale: torch.Tensor,
) -> torch.Tensor:
    """Cosine-similarity logits of region embeddings against a vocabulary.

    x (B, Q, D) -> (B, Q, C + 1) with the void logit last, or (B, Q, C) when `void_embedding`
    (1, D), unnormalised as stored, is None. The scale is exp(logit_scale) capped at 100, and a
    class scores the max over its synonyms (OpenSeg/ODISE max ensemble).
    """
    x = F.normalize(x, dim=-1)
    scale = logit_scale.exp().clamp(max=100)
    synonym_logits = scale * x @ classifier.embeddings.to(x.dtype).T  # (B, Q, S)
    index = classifier.class_of_row.expand_as(synonym_logits)
    initial = synonym_logits.new_full((*x.shape[:-1], classifier.num_classes), float("-inf"))
    logits = initial.scatter_reduce(-1, index, synonym_logits, "amax", include_self=False)
    if void_embedding is None:
        return logits
    void = F.normalize(void_embedding.to(x.dtype), dim=-1)  # (1, D)
    return torch.cat([logits, scale * x @ void.T], dim=-1)
