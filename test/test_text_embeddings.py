"""Text classifier: official prompt ensemble, truncated encoding, persistent cache, cheap swaps."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.paths import TEST_DIR
from helpers.text_tower import ByteTower, byte_tokenizer
from torch import nn

from fcclip_ros.text_embeddings import (
    MAX_QUERY_SYNONYMS,
    TEMPLATES,
    QueryError,
    TextEmbedder,
    TextQueries,
    encode_text_truncated,
    rank_segments,
    segment_scores,
    text_tower_fingerprint,
)
from fcclip_ros.vocabulary import ActiveVocabulary, Vocabulary

pytestmark = pytest.mark.fast

# VILD_PROMPT as printed in reference §4 (fcclip/fcclip.py).
OFFICIAL_TEMPLATES = [
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
]

SYNONYMS = ["cat", "traffic light", "a rather long name for a very particular kind of object"]


def tiny_clip(seed: int, text_cfg: dict | None = None) -> nn.Module:
    """An open_clip CLIP at random weights: a real text tower layout, small unless text_cfg."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(seed)
    text = text_cfg or dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2)
    vision = CLIPVisionCfg(layers=1, width=32, head_width=32, patch_size=16, image_size=32)
    return CLIP(embed_dim=32, vision_cfg=vision, text_cfg=CLIPTextCfg(**text)).eval()


class CountingTokenizer:
    """A tokenizer that counts the synonyms sent to the text tower (one prompt per template)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.encoded = 0

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        self.encoded += len(prompts) // len(TEMPLATES)
        return self.tokenizer(prompts)


def damage_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]


@pytest.fixture(scope="module")
def tokenizer():
    import open_clip

    return open_clip.get_tokenizer("convnext_large_d_320")


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return tiny_clip(seed=0)


def official_classifier(model: nn.Module, tokenizer, synonyms: list[str]) -> torch.Tensor:
    """FCCLIP.get_text_classifier: chunks of 128 prompts, normalise, mean over 14, normalise."""
    prompts = [template.format(s) for s in synonyms for template in OFFICIAL_TEMPLATES]
    with torch.no_grad():
        features = torch.cat(
            [
                model.encode_text(tokenizer(prompts[i : i + 128]))
                for i in range(0, len(prompts), 128)
            ]
        )
    features /= features.norm(dim=-1, keepdim=True)
    features = features.reshape(len(synonyms), len(OFFICIAL_TEMPLATES), -1).mean(1)
    return features / features.norm(dim=-1, keepdim=True)


def test_templates_are_the_fourteen_official_ones() -> None:
    assert list(TEMPLATES) == OFFICIAL_TEMPLATES


@pytest.mark.parametrize("pool_type", ["argmax", "eos"])
def test_truncated_encoding_equals_full_length_encode_text(model, tokenizer, pool_type) -> None:
    model.text_pool_type, model.text_eos_id = pool_type, 49407
    prompts = [t.format(s) for s in SYNONYMS for t in OFFICIAL_TEMPLATES] + ["word " * 100]
    tokens = tokenizer(prompts)
    try:
        with torch.no_grad():
            truncated = encode_text_truncated(model, tokens)
            full = model.encode_text(tokens)
    finally:
        model.text_pool_type = "argmax"
    assert tokens.shape[1] == 77
    assert truncated.shape == full.shape
    assert torch.allclose(truncated, full, rtol=0, atol=1e-5)


def test_truncated_encoding_equals_encode_text_on_the_convnext_large_d_320_text_tower(
    tokenizer,
) -> None:
    import open_clip

    text_cfg = open_clip.get_model_config("convnext_large_d_320")["text_cfg"]
    big = tiny_clip(seed=0, text_cfg=text_cfg)
    assert sum(p.numel() for n, p in big.named_parameters() if not n.startswith("visual")) > 150e6
    tokens = tokenizer(["a photo of a cat.", "There is a large traffic light in the scene."])
    with torch.no_grad():
        assert torch.allclose(
            encode_text_truncated(big, tokens), big.encode_text(tokens), rtol=0, atol=1e-5
        )


def test_classifier_equals_official_procedure(model, tokenizer) -> None:
    vocabulary = Vocabulary.from_entries(["cat, traffic light", "robot arm, manipulator, arm"])
    classifier = TextEmbedder(model, tokenizer, "tiny", chunk_size=16).classifier(vocabulary)
    synonyms = ["cat", "traffic light", "robot arm", "manipulator", "arm"]
    expected = official_classifier(model, tokenizer, synonyms)
    assert torch.allclose(classifier.embeddings, expected, rtol=0, atol=1e-5)
    assert torch.allclose(classifier.embeddings.norm(dim=-1), torch.ones(5))
    assert classifier.class_of_row.tolist() == [0, 0, 1, 1, 1]
    assert classifier.seen.tolist() == [True, False]


def test_swap_back_to_a_cached_vocabulary_encodes_nothing(model, tokenizer, tmp_path) -> None:
    counting = CountingTokenizer(tokenizer)
    embedder = TextEmbedder(model, counting, "tiny", tmp_path)
    initial = Vocabulary.from_entries(["car, automobile", "sky, clouds [stuff]", "robot arm"])
    active = ActiveVocabulary(embedder, initial)
    first = active.current
    assert counting.encoded == len({s for c in first.vocabulary.classes for s in c.synonyms})

    active.replace(Vocabulary.from_entries(["robot arm", "cable, wire"]))
    encoded = counting.encoded
    back = active.replace(initial)
    assert counting.encoded == encoded
    assert back.version == 3
    assert torch.equal(back.classifier.embeddings, first.classifier.embeddings)
    assert torch.equal(back.classifier.seen, first.classifier.seen)


def test_a_new_embedder_reads_everything_from_the_disk_cache(model, tokenizer, tmp_path) -> None:
    vocabulary = Vocabulary.from_entries(["car, automobile", "sky, clouds", "robot arm"])
    cold = TextEmbedder(model, tokenizer, "tiny", tmp_path)
    expected = cold.classifier(vocabulary).embeddings
    counting = CountingTokenizer(tokenizer)
    warm = TextEmbedder(model, counting, "tiny", tmp_path)
    assert torch.equal(warm.classifier(vocabulary).embeddings, expected)
    assert counting.encoded == 0


def _single_shard(embedder: TextEmbedder) -> Path:
    (shard,) = embedder.cache_path.glob("*.emb")
    return shard


@pytest.mark.parametrize("damage", ["truncated", "flipped byte", "empty", "foreign"])
def test_a_damaged_cache_file_is_detected_and_rebuilt(
    model, tokenizer, tmp_path, caplog, damage: str
) -> None:
    cold = TextEmbedder(model, tokenizer, "tiny", tmp_path)
    expected = cold.embed(SYNONYMS)
    shard = _single_shard(cold)
    blob = bytearray(shard.read_bytes())
    if damage == "truncated":
        blob = blob[: len(blob) // 2]
    elif damage == "flipped byte":
        blob[len(blob) // 2] ^= 0x01
    elif damage == "empty":
        blob = bytearray()
    else:
        blob = bytearray(b"not an embedding file" * 10)
    shard.write_bytes(bytes(blob))

    counting = CountingTokenizer(tokenizer)
    rebuilt = TextEmbedder(model, counting, "tiny", tmp_path)
    with caplog.at_level(logging.WARNING, logger="fcclip_ros.text_embeddings"):
        rows = rebuilt.embed(SYNONYMS)
    (warning,) = damage_warnings(caplog)
    assert shard.name in warning
    assert counting.encoded == len(SYNONYMS)
    assert torch.allclose(rows, expected, rtol=0, atol=1e-6)
    assert not shard.exists()

    caplog.clear()
    counting = CountingTokenizer(tokenizer)
    with caplog.at_level(logging.WARNING, logger="fcclip_ros.text_embeddings"):
        TextEmbedder(model, counting, "tiny", tmp_path).embed(SYNONYMS)
    assert counting.encoded == 0 and damage_warnings(caplog) == []


def test_an_unfinished_write_is_ignored(model, tokenizer, tmp_path, caplog) -> None:
    cold = TextEmbedder(model, tokenizer, "tiny", tmp_path)
    cold.embed(SYNONYMS)
    (cold.cache_path / ".crashed-writer.tmp").write_bytes(b"half a shard")
    counting = CountingTokenizer(tokenizer)
    warm = TextEmbedder(model, counting, "tiny", tmp_path)
    with caplog.at_level(logging.WARNING):
        warm.embed(SYNONYMS)
    assert counting.encoded == 0
    assert caplog.text == ""


def test_an_unusable_cache_directory_degrades_to_memory(model, tokenizer, tmp_path, caplog):
    blocker = tmp_path / "not a directory"
    blocker.write_text("")
    counting = CountingTokenizer(tokenizer)
    embedder = TextEmbedder(model, counting, "tiny", blocker)
    with caplog.at_level(logging.WARNING, logger="fcclip_ros.text_embeddings"):
        rows = embedder.embed(SYNONYMS)
        assert torch.equal(embedder.embed(SYNONYMS), rows)
    assert "unusable" in caplog.text
    assert counting.encoded == len(SYNONYMS)  # the second call was served from memory


def test_a_text_tower_with_other_weights_does_not_reuse_the_cache(tokenizer, tmp_path) -> None:
    first = TextEmbedder(tiny_clip(seed=0), tokenizer, "tiny", tmp_path)
    rows = first.embed(SYNONYMS)
    counting = CountingTokenizer(tokenizer)
    other = TextEmbedder(tiny_clip(seed=1), counting, "tiny", tmp_path)
    assert other.fingerprint != first.fingerprint
    assert other.cache_path != first.cache_path
    assert not torch.allclose(other.embed(SYNONYMS), rows)
    assert counting.encoded == len(SYNONYMS)


def test_the_cache_key_names_the_model_and_ignores_the_image_tower(model, tokenizer) -> None:
    fingerprint = text_tower_fingerprint(model)
    changed = tiny_clip(seed=0)
    with torch.no_grad():
        next(changed.visual.parameters()).add_(1.0)
        changed.logit_scale.add_(1.0)
    assert text_tower_fingerprint(changed) == fingerprint
    with torch.no_grad():
        changed.ln_final.bias.add_(1e-3)
    assert text_tower_fingerprint(changed) != fingerprint
    a = TextEmbedder(model, tokenizer, "tiny", "cache").cache_path
    b = TextEmbedder(model, tokenizer, "other/name", "cache").cache_path
    assert a.parent == b.parent == Path("cache")
    assert a.name.startswith("tiny-") and b.name.startswith("other_name-")
    assert a.name.split("-")[1] != b.name.split("-")[1]


WRITER = """
import sys, time
from pathlib import Path
sys.path.insert(0, {test_dir!r})
from fcclip_ros.text_embeddings import TextEmbedder
from helpers.text_tower import ByteTower, byte_tokenizer

cache, name = Path({cache!r}), {name!r}
embedder = TextEmbedder(ByteTower(), byte_tokenizer, "bytes", cache)
(cache / f"ready-{{name}}").touch()
while not (cache / "go").exists():
    time.sleep(0.01)
for i in range({count}):
    embedder.embed([f"{{name}} thing {{i}}", "shared thing"])
"""


def test_concurrent_writer_processes_leave_a_readable_cache(tmp_path, caplog) -> None:
    count = 24  # more shards than the merge threshold: both processes also merge concurrently
    writers = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WRITER.format(test_dir=str(TEST_DIR), cache=str(tmp_path), name=name, count=count),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("left", "right")
    ]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready-{n}").exists() for n in ("left", "right")):
        assert time.monotonic() < deadline and all(w.poll() is None for w in writers)
        time.sleep(0.05)
    (tmp_path / "go").touch()
    for writer in writers:
        _, err = writer.communicate(timeout=120)
        assert writer.returncode == 0, err
        assert "is damaged" not in err  # logging's last-resort handler prints warnings here

    synonyms = [f"{n} thing {i}" for n in ("left", "right") for i in range(count)]
    synonyms.append("shared thing")
    counting = CountingTokenizer(byte_tokenizer)
    reader = TextEmbedder(ByteTower(), counting, "bytes", tmp_path)
    with caplog.at_level(logging.WARNING, logger="fcclip_ros.text_embeddings"):
        rows = reader.embed(synonyms)
    assert counting.encoded == 0 and damage_warnings(caplog) == []
    expected = TextEmbedder(ByteTower(), byte_tokenizer, "bytes").embed(synonyms)
    assert torch.allclose(rows, expected, rtol=0, atol=1e-6)


def test_a_vocabulary_entry_queried_as_text_gives_its_classifier_rows(model, tokenizer, tmp_path):
    vocabulary = Vocabulary.from_entries(["cat, kitten", "traffic light", "robot arm, arm"])
    counting = CountingTokenizer(tokenizer)
    embedder = TextEmbedder(model, counting, "tiny", tmp_path)
    classifier = embedder.classifier(vocabulary)
    encoded = counting.encoded
    queries = embedder.queries(vocabulary.entries)
    assert counting.encoded == encoded  # the vocabulary's cache serves the query
    assert queries.texts == vocabulary.entries
    np.testing.assert_array_equal(queries.embeddings, classifier.embeddings.numpy())
    np.testing.assert_array_equal(queries.text_of_row, classifier.class_of_row.numpy())
    counting = CountingTokenizer(tokenizer)
    restarted = TextEmbedder(model, counting, "tiny", tmp_path)  # a new process: from disk
    np.testing.assert_array_equal(restarted.queries(["robot arm, arm"]).embeddings,
                                  classifier.embeddings[3:].numpy())
    assert counting.encoded == 0


def test_a_text_scores_the_best_of_its_synonyms() -> None:
    generator = np.random.default_rng(0)
    rows = generator.normal(size=(5, 4)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    queries = TextQueries(("a, b", "c", "d, e, f"), rows, np.array([0, 0, 1, 2, 2]))
    segments = generator.normal(size=(6, 4)).astype(np.float32)
    segments /= np.linalg.norm(segments, axis=1, keepdims=True)
    scores = segment_scores(queries, segments)
    assert scores.shape == (3, 6) and scores.dtype == np.float32
    for text, synonym_rows in enumerate(([0, 1], [2], [3, 4])):
        for n in range(6):
            assert scores[text, n] == pytest.approx(max(rows[r] @ segments[n]
                                                        for r in synonym_rows))
    assert segment_scores(queries, np.zeros((0, 4), np.float32)).shape == (3, 0)
    with pytest.raises(ValueError, match=r"shape \(6, 3\) do not match the 4-d"):
        segment_scores(queries, segments[:, :3])


def test_ranking_is_best_first_and_keeps_segment_order_on_ties() -> None:
    queries = TextQueries(("x", "y"), np.eye(2, dtype=np.float32), np.array([0, 1]))
    segments = np.array([[0.6, 0.8], [1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], np.float32)
    order, scores = rank_segments(queries, segments)
    assert order.tolist() == [[1, 0, 2, 3], [3, 0, 2, 1]]
    np.testing.assert_allclose(scores, [[1.0, 0.6, 0.6, 0.0], [1.0, 0.8, 0.8, 0.0]])


def test_too_many_synonyms_in_one_query_are_refused(model, tokenizer) -> None:
    counting = CountingTokenizer(tokenizer)
    embedder = TextEmbedder(model, counting, "tiny")
    texts = [", ".join(f"thing {i} {j}" for j in range(8)) for i in range(33)]
    with pytest.raises(QueryError, match=f"264 synonyms over all texts; at most "
                                         f"{MAX_QUERY_SYNONYMS}"):
        embedder.queries(texts)
    assert counting.encoded == 0


def test_a_query_is_answered_while_a_long_vocabulary_encodes(model, tokenizer) -> None:
    counting = CountingTokenizer(tokenizer)
    embedder = TextEmbedder(model, counting, "tiny")
    encode = embedder._encode
    started, release = threading.Event(), threading.Event()

    def slow_for_the_vocabulary(synonyms):
        if "a huge vocabulary" in synonyms:
            started.set()
            assert release.wait(timeout=30)
        return encode(synonyms)

    embedder._encode = slow_for_the_vocabulary
    swap = threading.Thread(target=embedder.embed, args=(["a huge vocabulary"],))
    swap.start()
    assert started.wait(timeout=30)
    answers = []
    query = threading.Thread(target=lambda: answers.append(embedder.queries(["a red mug"])))
    query.start()
    query.join(timeout=30)
    answered_during_the_swap = not query.is_alive()
    release.set()
    swap.join(timeout=30)
    query.join(timeout=30)
    assert answered_during_the_swap
    np.testing.assert_allclose(answers[0].embeddings,
                               official_classifier(model, tokenizer, ["a red mug"]).numpy(),
                               rtol=0, atol=1e-5)
    assert counting.encoded == 2
