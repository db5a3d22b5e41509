"""A text tower and tokenizer without open_clip, for subprocesses that must start fast."""

from __future__ import annotations

import torch
from torch import nn


class ByteTower(nn.Module):
    """A stand-in text tower: the mean of its tokens' embeddings."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.token_embedding = nn.Embedding(256, 8)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.token_embedding(tokens).mean(dim=1)


def byte_tokenizer(texts: list[str]) -> torch.Tensor:
    """Each text's first 77 UTF-8 bytes as its tokens, zero-padded."""
    return torch.tensor([list(text.encode()[:77].ljust(77, b"\0")) for text in texts])
