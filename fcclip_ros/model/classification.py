"""Open-vocabulary classification against text embeddings (shared by both FC-CLIP classifiers)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
        return int(self.seen.shape[0])

    def to(self, device: torch.device | str) -> TextClassifier:
        return TextClassifier(
            self.embeddings.to(device), self.class_of_row.to(device), self.seen.to(device)
        )
