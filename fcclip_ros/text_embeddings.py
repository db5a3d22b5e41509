"""FC-CLIP's text classifier (prompt ensemble per synonym) with a persistent embedding cache.

Each synonym is written into the 14 official templates, encoded by the CLIP text tower, each
prompt embedding L2-normalised, averaged over the templates and normalised again: one row per
synonym. A synonym's row depends only on the text tower and the templates, so rows are cached
per synonym: in memory, and on disk under ``cache_dir`` in a directory keyed by the model name,
a hash of every text-tower weight and the templates.

Disk cache layout: append-only shard files, each written under a temporary name and renamed into
place (atomic), so concurrent writers never share a file; every shard ends in a SHA-256 of its
contents, so a damaged one is detected, removed with a warning and its rows re-encoded.

Text queries (``TextEmbedder.queries``, ``segment_scores``, ``rank_segments``) embed free texts
the same way, with the same cache, so that a segment's embedding (``Segmentation.embeddings``)
can be asked about any text without running the network again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fcclip_ros.model.classification import TextClassifier
from fcclip_ros.vocabulary import MAX_ENTRY_CHARS, Vocabulary, split_synonyms

logger = logging.getLogger(__name__)

# VILD_PROMPT of fcclip/fcclip.py, verbatim (templates 2-5 have no final period).
TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
)

MAX_QUERY_TEXTS = 64  # texts per query: a robot's questions about a frame, not a vocabulary
MAX_QUERY_SYNONYMS = 256  # over all texts of a query: bounds the text-tower work of one call

_SHARD_MAGIC = b"FCCLIP-TEXT-EMB-1\n"
_SHARD_SUFFIX = ".emb"
_MAX_SHARDS = 16  # more than this many shards are merged into one when the cache is read
_STALE_TEMP_SECONDS = 3600.0  # temporary files older than this were left by a crashed writer


def encode_text_truncated(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text(tokens)`` (un-normalised), run only up to the last pooled token.

    The causal mask lets a position attend only to earlier ones, so the pooled (EOT) embedding
    does not depend on the padding after it: dropping the columns past the longest prompt's EOT
    gives the same result for a fraction of the work. Models without a causal mask or with
    another pooling fall back to the full ``encode_text``.
    """
    pool_type = getattr(model, "text_pool_type", None)
    if getattr(model, "attn_mask", None) is None or pool_type not in ("argmax", "eos"):
        return model.encode_text(tokens)
    if pool_type == "argmax":  # EOT has the largest token id
        pooled_at = tokens.argmax(dim=-1)
    else:
        pooled_at = (tokens == model.text_eos_id).int().argmax(dim=-1)
    length = int(pooled_at.max()) + 1
    cast_dtype = model.transformer.get_cast_dtype()

    x = model.token_embedding(tokens[:, :length]).to(cast_dtype)  # (N, L, width)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), pooled_at]  # (N, width)
    if isinstance(model.text_projection, nn.Linear):
        return model.text_projection(x)
    if model.text_projection is not None:
        return x @ model.text_projection
    return x


def text_tower_fingerprint(model: nn.Module) -> str:
    """SHA-256 over every text-tower tensor (names, shapes, dtypes, bytes).

    Anything else in the model (the image tower, the logit scale) does not change text
    embeddings and is left out, so a cache survives e.g. a different FC-CLIP head.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if name.startswith("visual.") or name.startswith("logit_"):
            continue
        flat = tensor.detach().reshape(-1).contiguous().cpu()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(flat.view(torch.uint8).numpy())
    return digest.hexdigest()


class QueryError(ValueError):
    """Query texts that cannot be used; the message says exactly why."""


@dataclass(frozen=True)
class TextQueries:
    """Free texts embedded for comparison with segment embeddings.

    A text is "name" or "name, synonym, ..." like a vocabulary entry (no kind tag: "[stuff]" is
    just text). Each synonym is embedded exactly as a vocabulary synonym is, and a text scores
    the best of its synonyms, as a class does in FC-CLIP's classifiers; so the query of a
    vocabulary entry reproduces that class's classifier rows.
    """

    texts: tuple[str, ...]
    embeddings: np.ndarray  # (S, D) float32, one L2-normalised row per synonym
    text_of_row: np.ndarray  # (S,) int64, the text of each row (non-decreasing)


def parse_query_texts(texts: Iterable[str]) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """The texts and the synonyms of each; QueryError for anything that cannot be a query."""
    if isinstance(texts, str) or not isinstance(texts, Iterable):
        raise QueryError(f"texts must be a list of texts, not {type(texts).__name__}")
    texts = tuple(texts)
    if not texts:
        raise QueryError("no text given: ask for at least one")
    if len(texts) > MAX_QUERY_TEXTS:
        raise QueryError(f"{len(texts)} texts given; at most {MAX_QUERY_TEXTS} per query")
    parsed = []
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise QueryError(f"text {index} is not a string: {text!r}")
        if len(text) > MAX_ENTRY_CHARS:
            raise QueryError(f"text {index} ({text[:40]!r}...) is {len(text)} characters long "
                             f"(limit {MAX_ENTRY_CHARS})")
        if not text.strip():
            raise QueryError(f"text {index} is blank")
        synonyms = split_synonyms(text)
        if "" in synonyms:
            raise QueryError(f"text {index} ({text!r}) has a blank synonym "
                             f"(number {synonyms.index('') + 1})")
        parsed.append(synonyms)
    total = sum(len(synonyms) for synonyms in parsed)
    if total > MAX_QUERY_SYNONYMS:
        raise QueryError(f"{total} synonyms over all texts; at most {MAX_QUERY_SYNONYMS} "
                         "per query")
    return texts, parsed


def segment_scores(queries: TextQueries, segment_embeddings: np.ndarray) -> np.ndarray:
    """(T, N) float32 cosine of each text with each segment, in segment order.

    A text's score is the max over its synonyms, so scaled by CLIP's logit scale it is the
    out-of-vocabulary classifier's logit for a class with those synonyms.
    """
    embeddings = np.asarray(segment_embeddings, dtype=np.float32)
    dim = queries.embeddings.shape[1]
    if embeddings.ndim != 2 or embeddings.shape[1] != dim:
        raise ValueError(f"segment embeddings of shape {embeddings.shape} do not match the "
                         f"{dim}-d text embeddings (another model?)")
    cosines = queries.embeddings @ embeddings.T  # (S, N)
    first_row = np.searchsorted(queries.text_of_row, np.arange(len(queries.texts)))
    return np.maximum.reduceat(cosines, first_row, axis=0)


def rank_segments(
    queries: TextQueries, segment_embeddings: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Segments best first for each text: (T, N) int64 row indices into the segment list, and
    (T, N) float32 their cosine scores in that order (ties keep segment order)."""
    scores = segment_scores(queries, segment_embeddings)
    order = np.argsort(-scores, axis=1, kind="stable")
    return order, np.take_along_axis(scores, order, axis=1)


class TextEmbedder:
    """Builds ``TextClassifier``s for vocabularies, encoding each synonym once ever.

    ``tokenizer`` is open_clip's tokenizer for the model (a list of strings to (N, 77) ids).
    ``cache_dir`` None keeps the cache in memory only. Thread-safe; other processes may share
    ``cache_dir``. The text-tower weights are fingerprinted here, so load them before.
    """

    def __init__(
        self,
        clip_model: nn.Module,
        tokenizer: Callable[[list[str]], torch.Tensor],
        model_name: str,
        cache_dir: str | Path | None = None,
        device: torch.device | str | None = None,
        chunk_size: int = 128,
    ) -> None:
        self.model = clip_model.eval()
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.device = torch.device(device) if device is not None else _device_of(clip_model)
        self.chunk_size = chunk_size
        self.fingerprint = text_tower_fingerprint(clip_model)
        key = hashlib.sha256(
            json.dumps([model_name, self.fingerprint, TEMPLATES]).encode()
        ).hexdigest()[:16]
        safe_name = re.sub(r"[^A-Za-z0-9._-]", "_", model_name)
        self.cache_path = None if cache_dir is None else Path(cache_dir) / f"{safe_name}-{key}"
        self._rows: dict[str, torch.Tensor] = {}  # synonym -> (D,) float32 on CPU
        self._shards_read: set[str] = set()
        self._lock = threading.Lock()

    def classifier(self, vocabulary: Vocabulary) -> TextClassifier:
        """The text classifier for ``vocabulary``, on this embedder's device."""
        rows = self.embed([s for c in vocabulary.classes for s in c.synonyms])
        synonyms_per_class = torch.tensor([len(c.synonyms) for c in vocabulary.classes])
        class_of_row = torch.repeat_interleave(torch.arange(len(vocabulary)), synonyms_per_class)
        seen = torch.tensor(vocabulary.seen_mask(), dtype=torch.bool)
        return TextClassifier(rows, class_of_row, seen).to(self.device)

    def queries(self, texts: Iterable[str]) -> TextQueries:
        """Embed query texts (see ``TextQueries``); QueryError for unusable ones."""
        texts, synonyms_per_text = parse_query_texts(texts)
        rows = self.embed([s for synonyms in synonyms_per_text for s in synonyms])
        counts = [len(synonyms) for synonyms in synonyms_per_text]
        return TextQueries(texts, rows.numpy(), np.repeat(np.arange(len(counts)), counts))

    def embed(self, synonyms: Sequence[str]) -> torch.Tensor:
        """(S, D) float32: one normalised, template-averaged row per synonym, in order.

        The text tower runs outside the lock, so a short request (a query) is not held up by a
        long one (a vocabulary of thousands of classes) encoding meanwhile; a synonym that two
        requests encode at once is encoded twice, with the same result.
        """
        unique = list(dict.fromkeys(synonyms))
        with self._lock:
            missing = [s for s in unique if s not in self._rows]
            if missing and self.cache_path is not None:
                self._use_disk(self._read_disk_cache)
                missing = [s for s in missing if s not in self._rows]
        if missing:
            rows = self._encode(missing)
            with self._lock:
                for synonym, row in zip(missing, rows, strict=True):
                    self._rows.setdefault(synonym, row)
                if self.cache_path is not None:
                    self._use_disk(self._write_shard, missing, rows)
        with self._lock:
            return torch.stack([self._rows[s] for s in synonyms])

    def _use_disk(self, operation: Callable, *args) -> None:
        """Run a cache-directory operation; a broken directory only costs re-encoding later."""
        try:
            operation(*args)
        except OSError as error:
            logger.warning(
                "text embedding cache %s unusable (%s); keeping rows in memory only",
                self.cache_path,
                error,
            )

    @torch.no_grad()
    def _encode(self, synonyms: list[str]) -> torch.Tensor:
        prompts = [template.format(s) for s in synonyms for template in TEMPLATES]
        tokens = self.tokenizer(prompts)
        # Similar lengths in a chunk let truncation cut more; rows are independent of the order.
        order = torch.argsort(tokens.argmax(dim=-1), stable=True)
        chunks = [
            encode_text_truncated(self.model, tokens[index].to(self.device)).float().cpu()
            for index in order.split(self.chunk_size)
        ]
        embeddings = torch.cat(chunks)[torch.argsort(order)]  # (14 * S, D) in prompt order
        per_template = F.normalize(embeddings, dim=-1).view(len(synonyms), len(TEMPLATES), -1)
        return F.normalize(per_template.mean(dim=1), dim=-1)

    def _read_disk_cache(self) -> None:
        """Load shards not read yet (other processes may have added some); merge if many."""
        if not self.cache_path.is_dir():
            return
        shards = sorted(p for p in self.cache_path.iterdir() if p.suffix == _SHARD_SUFFIX)
        for path in shards:
            if path.name not in self._shards_read:
                self._read_shard(path)
        self._remove_stale_temporaries()
        if len(shards) > _MAX_SHARDS:
            self._merge_shards(shards)

    def _read_shard(self, path: Path) -> None:
        try:
            synonyms, rows = _decode_shard(path.read_bytes())
        except FileNotFoundError:  # merged away by another process meanwhile
            return
        except ValueError as error:
            logger.warning("text embedding cache file %s is damaged (%s); rebuilding", path, error)
            path.unlink(missing_ok=True)
            return
        self._shards_read.add(path.name)
        for synonym, row in zip(synonyms, rows, strict=True):
            self._rows.setdefault(synonym, row)

    def _merge_shards(self, shards: list[Path]) -> None:
        """Write every known row into one shard, then remove the shards it replaces."""
        merged = self._write_shard(list(self._rows), torch.stack(list(self._rows.values())))
        for path in shards:
            if path != merged:
                path.unlink(missing_ok=True)
        self._shards_read = {merged.name}

    def _write_shard(self, synonyms: list[str], rows: torch.Tensor) -> Path:
        self.cache_path.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        temporary = self.cache_path / f".{name}.tmp"
        final = self.cache_path / f"{name}{_SHARD_SUFFIX}"
        with open(temporary, "wb") as file:
            file.write(_encode_shard(synonyms, rows))
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, final)
        self._shards_read.add(final.name)
        return final

    def _remove_stale_temporaries(self) -> None:
        deadline = time.time() - _STALE_TEMP_SECONDS
        for path in self.cache_path.glob(".*.tmp"):
            try:
                if path.stat().st_mtime < deadline:
                    path.unlink()
            except FileNotFoundError:
                pass


def _encode_shard(synonyms: list[str], rows: torch.Tensor) -> bytes:
    """magic | header length (u32) | JSON header | float32 rows | SHA-256 of all before."""
    data = rows.to(torch.float32).contiguous().numpy().astype("<f4", copy=False).tobytes()
    header = json.dumps({"synonyms": synonyms, "dim": int(rows.shape[1])}).encode()
    body = _SHARD_MAGIC + struct.pack("<I", len(header)) + header + data
    return body + hashlib.sha256(body).digest()


def _decode_shard(blob: bytes) -> tuple[list[str], torch.Tensor]:
    """Inverse of ``_encode_shard``; raises ValueError for anything but an intact shard."""
    body, digest = blob[:-32], blob[-32:]
    if not body.startswith(_SHARD_MAGIC):
        raise ValueError("not a text embedding cache file")
    if hashlib.sha256(body).digest() != digest:
        raise ValueError("checksum mismatch")
    start = len(_SHARD_MAGIC) + 4
    (header_length,) = struct.unpack("<I", body[len(_SHARD_MAGIC) : start])
    header = json.loads(body[start : start + header_length])
    rows = np.frombuffer(body[start + header_length :], dtype="<f4")
    synonyms = header["synonyms"]
    return synonyms, torch.from_numpy(rows.copy()).view(len(synonyms), header["dim"])


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
