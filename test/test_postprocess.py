"""Post-processing reproduces FC-CLIP's semantic / panoptic / instance inference.

The chunked post-processing is compared with `reference_panoptic` / `reference_semantic` (in
helpers/reference.py), the previous implementation that upsampled every query's mask at once and
built the C x H x W scores.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.reference import full_size, owners, reference_panoptic, reference_semantic

from fcclip_ros import postprocess
from fcclip_ros.postprocess import (
    PanopticResult,
    QueryMasks,
    masks_to_original,
    panoptic_inference,
    semantic_inference,
    semantic_to_segmentation,
    to_segmentation,
)
from fcclip_ros.result import UNLABELED, Segmentation

pytestmark = pytest.mark.fast

NUM_QUERIES, NUM_CLASSES, HEIGHT, WIDTH = 20, 5, 48, 64
IS_THING = torch.tensor([True, True, False, True, False])
NAMES = ["person", "car", "sky", "dog", "road"]


def at_full_size(masks: torch.Tensor) -> QueryMasks:
    """(Q, H, W) masks already at the image size (bilinear resizing to the same size is exact)."""
    size = tuple(masks.shape[-2:])
    return QueryMasks(masks, size, size, size)


def random_outputs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q, C+1) class logits with four void queries and (Q, H, W) mask logits of noisy discs.

    Discs of random centre and radius overlap, so queries compete for pixels as real ones do.
    """
    generator = torch.Generator().manual_seed(seed)
    class_logits = torch.randn(NUM_QUERIES, NUM_CLASSES + 1, generator=generator) * 3
    class_logits[:4, -1] += 20  # these queries are void
    return class_logits, noisy_discs(generator, NUM_QUERIES, (HEIGHT, WIDTH), (6, 14))


def noisy_discs(generator: torch.Generator, num_queries: int, size: tuple[int, int],
                radii: tuple[float, float]) -> torch.Tensor:
    """(Q, H, W) mask logits: a disc per query, of random centre and of radius in
    radii[0] + [0, radii[1]), plus unit noise."""
    height, width = size
    centres = torch.rand(num_queries, 2, 1, 1, generator=generator) * torch.tensor(
        [height, width]
    ).view(1, 2, 1, 1)
    radius = radii[0] + radii[1] * torch.rand(num_queries, 1, 1, generator=generator)
    ys = torch.arange(height, dtype=torch.float32).view(1, -1, 1)
    xs = torch.arange(width, dtype=torch.float32).view(1, 1, -1)
    distance = ((ys - centres[:, 0]) ** 2 + (xs - centres[:, 1]) ** 2).sqrt()
    noise = torch.randn(num_queries, height, width, generator=generator)
    return 8 * (radius - distance) / radius + noise


def official_panoptic(
    class_logits: torch.Tensor,
    masks: torch.Tensor,
    is_thing: torch.Tensor,
    object_mask_threshold: float,
    overlap_threshold: float,
) -> tuple[torch.Tensor, list[tuple[int, int, bool, float]]]:
    """Test oracle: the official algorithm query by query, with boolean masks and no shortcuts."""
    scores, labels = class_logits.softmax(-1).max(-1)
    sigmoid = masks.sigmoid()
    void = class_logits.shape[1] - 1
    kept = [
        q for q in range(len(scores)) if labels[q] != void and scores[q] > object_mask_threshold
    ]
    ids = torch.zeros(masks.shape[1:], dtype=torch.int32)
    if not kept:
        return ids, []
    winner = torch.stack([scores[q] * sigmoid[q] for q in kept]).argmax(0)
    segments: dict[int, list] = {}  # id -> [class, is_thing, score x pixels, pixels]
    stuff_id: dict[int, int] = {}
    for k, q in enumerate(kept):
        won, own = winner == k, sigmoid[q] >= 0.5
        region = won & own
        if won.sum() == 0 or own.sum() == 0 or region.sum() == 0:
            continue
        if won.sum() / own.sum() < overlap_threshold:
            continue
        label = int(labels[q])
        thing = bool(is_thing[label])
        if not thing and label in stuff_id:
            segment_id = stuff_id[label]
        else:
            segment_id = len(segments) + 1
            segments[segment_id] = [label, thing, 0.0, 0]
            if not thing:
                stuff_id[label] = segment_id
        ids[region] = segment_id
        segments[segment_id][2] += float(scores[q]) * int(region.sum())
        segments[segment_id][3] += int(region.sum())
    return ids, [(i, c, t, s / n) for i, (c, t, s, n) in segments.items()]


def check_areas_and_boxes(segmentation: Segmentation) -> None:
    ids = segmentation.instances
    assert sorted(s.id for s in segmentation.segments) == sorted(set(np.unique(ids)) - {0})
    for segment in segmentation.segments:
        ys, xs = np.nonzero(ids == segment.id)
        assert segment.area == len(xs)
        x0, y0 = xs.min(), ys.min()
        assert segment.bbox == (x0, y0, xs.max() - x0 + 1, ys.max() - y0 + 1)
        assert np.all(segmentation.labels[ids == segment.id] == segment.class_id)
        assert segment.label == NAMES[segment.class_id]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("object_mask_threshold", "overlap_threshold"), [(0.0, 0.8), (0.4, 0.5)])
def test_panoptic_matches_the_official_per_query_algorithm(
    seed: int, object_mask_threshold: float, overlap_threshold: float
) -> None:
    class_logits, masks = random_outputs(seed)
    result = panoptic_inference(
        class_logits, at_full_size(masks), IS_THING, object_mask_threshold, overlap_threshold
    )
    expected_ids, expected_segments = official_panoptic(
        class_logits, masks, IS_THING, object_mask_threshold, overlap_threshold
    )
    assert result.ids.dtype == torch.int32
    assert torch.equal(result.ids, expected_ids)
    assert len(expected_segments) > 1
    assert [(s.id, s.class_id, s.is_thing) for s in result.segments] == [
        (i, c, t) for i, c, t, _ in expected_segments
    ]
    assert [s.score for s in result.segments] == pytest.approx([s for *_, s in expected_segments])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_panoptic_segments_pass_both_thresholds(seed: int) -> None:
    class_logits, masks = random_outputs(seed)
    result = panoptic_inference(class_logits, at_full_size(masks), IS_THING, 0.0, 0.8)
    scores, labels = class_logits.softmax(-1).max(-1)
    winner = owners(class_logits, masks, 0.0)
    sigmoid = masks.sigmoid()
    stuff_classes = [s.class_id for s in result.segments if not s.is_thing]
    assert len(stuff_classes) == len(set(stuff_classes))  # one segment per stuff class
    for segment in result.segments:
        queries = winner[result.ids == segment.id].unique()
        assert segment.is_thing == bool(IS_THING[segment.class_id])
        if segment.is_thing:
            assert len(queries) == 1
        for q in queries.tolist():
            assert labels[q] == segment.class_id != NUM_CLASSES  # never a void query
            assert scores[q] > 0.0
            own = sigmoid[q] >= 0.5
            assert torch.all(own[(result.ids == segment.id) & (winner == q)])
            assert (winner == q).sum() / own.sum() >= 0.8
    # Pixels no segment owns are those whose winner failed a test, or lies outside its own mask.
    assert (result.ids == 0).any()


def quadrant_outputs() -> tuple[torch.Tensor, torch.Tensor]:
    """(5, 3) class logits and (5, 8, 8) masks: q0 top-left and q1 bottom-right predict stuff
    class 0, q2 top-right and q3 bottom-left predict thing class 1; q4 is void everywhere."""
    class_logits = torch.full((5, 3), -5.0)
    class_logits[[0, 1], 0] = torch.tensor([5.0, 3.0])
    class_logits[[2, 3], 1] = 4.0
    class_logits[4, 2] = 9.0
    masks = torch.full((5, 8, 8), -8.0)
    masks[0, :4, :4] = masks[1, 4:, 4:] = masks[2, :4, 4:] = masks[3, 4:, :4] = 8.0
    masks[4] = 8.0
    return class_logits, masks


def test_panoptic_merges_stuff_of_one_class_and_numbers_in_query_order() -> None:
    # Quadrants: q0 top-left and q1 bottom-right predict stuff class 0,
    # q2 top-right and q3 bottom-left predict thing class 1; q4 is void.
    class_logits, masks = quadrant_outputs()
    result = panoptic_inference(class_logits, at_full_size(masks), torch.tensor([False, True]))
    assert [(s.id, s.class_id, s.is_thing) for s in result.segments] == [
        (1, 0, False),
        (2, 1, True),
        (3, 1, True),
    ]
    expected = torch.tensor([[1, 2], [3, 1]], dtype=torch.int32).repeat_interleave(4, 0)
    assert torch.equal(result.ids, expected.repeat_interleave(4, 1))
    scores = class_logits.softmax(-1).max(-1).values
    assert result.segments[0].score == pytest.approx(float(scores[:2].mean()))  # equal areas
    assert result.segments[1].score == pytest.approx(float(scores[2]))


def test_void_queries_never_produce_segments() -> None:
    class_logits, masks = random_outputs(0)
    class_logits[:, -1] += 50
    result = panoptic_inference(class_logits, at_full_size(masks), IS_THING)
    assert result.segments == []
    assert not result.ids.any()
    segmentation = to_segmentation(result, NAMES, with_confidence=True)
    assert np.all(segmentation.labels == UNLABELED)
    assert not segmentation.instances.any() and not segmentation.confidence.any()


def test_raising_object_mask_threshold_removes_low_score_segments() -> None:
    class_logits, masks = random_outputs(1)
    before = panoptic_inference(
        class_logits, at_full_size(masks), IS_THING, object_mask_threshold=0.0
    )
    threshold = float(np.median([s.score for s in before.segments]))
    assert any(s.score <= threshold for s in before.segments)
    after = panoptic_inference(
        class_logits, at_full_size(masks), IS_THING, object_mask_threshold=threshold
    )
    assert after.segments
    assert all(s.score > threshold for s in after.segments)
    scores = class_logits.softmax(-1).max(-1).values
    winner = owners(class_logits, masks, threshold)
    assert torch.all(scores[winner[after.ids > 0]] > threshold)


@pytest.mark.parametrize("seed", [0, 1])
def test_to_segmentation_maps_areas_boxes_and_confidence(seed: int) -> None:
    class_logits, masks = random_outputs(seed)
    result = panoptic_inference(class_logits, at_full_size(masks), IS_THING)
    segmentation = to_segmentation(result, NAMES, with_confidence=True)
    assert segmentation.labels.dtype == segmentation.instances.dtype == np.uint16
    assert segmentation.confidence.dtype == np.float32
    assert segmentation.labels.shape == (HEIGHT, WIDTH)
    np.testing.assert_array_equal(segmentation.instances, result.ids.numpy())
    assert np.all(segmentation.labels[segmentation.instances == 0] == UNLABELED)
    check_areas_and_boxes(segmentation)
    for segment in segmentation.segments:
        np.testing.assert_allclose(
            segmentation.confidence[segmentation.instances == segment.id], segment.score, rtol=1e-6
        )
        assert segment.is_thing == bool(IS_THING[segment.class_id])
    assert not segmentation.confidence[segmentation.instances == 0].any()
    assert to_segmentation(result, NAMES).confidence is None


def test_semantic_inference_is_the_argmax_of_the_probability_weighted_sum_of_masks() -> None:
    class_logits, masks = random_outputs(0)
    semantic = semantic_inference(class_logits, at_full_size(masks))
    probs = class_logits.softmax(-1)
    expected = sum(probs[q, :-1, None, None] * masks[q].sigmoid() for q in range(NUM_QUERIES))
    assert semantic.num_classes == NUM_CLASSES
    assert torch.equal(semantic.labels, expected.argmax(0))
    torch.testing.assert_close(semantic.confidence, expected.max(0).values / expected.sum(0))


@pytest.mark.parametrize("seed", [0, 1])
def test_semantic_segmentation_labels_every_pixel_with_its_share_of_scores(seed: int) -> None:
    class_logits, masks = random_outputs(seed)
    semseg = torch.einsum("qc,qhw->chw", class_logits.softmax(-1)[:, :-1], masks.sigmoid())
    semantic = semantic_inference(class_logits, at_full_size(masks))
    segmentation = semantic_to_segmentation(semantic, NAMES, IS_THING, with_confidence=True)
    assert not np.any(segmentation.labels == UNLABELED)
    assert segmentation.instances.min() >= 1
    np.testing.assert_array_equal(segmentation.labels, semseg.argmax(0).numpy())
    share = (semseg.max(0).values / semseg.sum(0)).numpy()
    np.testing.assert_allclose(segmentation.confidence, share, rtol=1e-6)
    assert segmentation.confidence.min() >= 0.0 and segmentation.confidence.max() <= 1.0
    check_areas_and_boxes(segmentation)
    classes = [s.class_id for s in segmentation.segments]
    assert classes == sorted(np.unique(segmentation.labels).tolist())  # ids in class order
    for segment in segmentation.segments:
        pixels = segmentation.instances == segment.id
        mean = float(segmentation.confidence[pixels].mean())
        assert segment.score == pytest.approx(mean, rel=1e-5)
        assert segment.is_thing == bool(IS_THING[segment.class_id])
    assert semantic_to_segmentation(semantic, NAMES, IS_THING).confidence is None


def test_masks_to_original_crops_the_padding_before_resizing() -> None:
    # Network input 64x96 (padded) holding a 50x70 resize of a 100x140 image; stride-4 logits.
    logits = torch.full((3, 16, 24), -10.0)
    logits[0, :, 19:] = 10.0  # only in the padding (columns >= 76 after upsampling)
    logits[1, 13:, :] = 10.0  # only in the padding (rows >= 52)
    logits[2, :4, :4] = 10.0  # inside the image
    out = masks_to_original(logits, (64, 96), (50, 70), (100, 140))
    assert out.shape == (3, 100, 140)
    padded = F.interpolate(logits[None], size=(64, 96), mode="bilinear", align_corners=False)[0]
    assert (padded[:2] > 0).any()
    assert not (out[:2] > 0).any()
    expected = F.interpolate(padded[None, :, :50, :70], size=(100, 140), mode="bilinear")[0]
    torch.testing.assert_close(out, expected)
    assert (out[2, :20, :20] > 0).all()


def test_masks_to_original_without_resize_is_the_cropped_upsampling() -> None:
    logits = torch.randn(2, 16, 24)
    out = masks_to_original(logits, (64, 96), (50, 70), (50, 70))
    padded = F.interpolate(logits[None], size=(64, 96), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(out, padded[:, :50, :70])


def test_wrong_number_of_thing_flags_is_an_error() -> None:
    class_logits, masks = random_outputs(0)
    with pytest.raises(ValueError, match="is_thing"):
        panoptic_inference(class_logits, at_full_size(masks), IS_THING[:3])


def test_empty_panoptic_result_gives_no_segments() -> None:
    empty = PanopticResult(torch.zeros(4, 6, dtype=torch.int32), [])
    segmentation = to_segmentation(empty, NAMES)
    assert segmentation.segments == []
    assert np.all(segmentation.labels == UNLABELED)


# Sizes as the engine sees them: stride-4 logits of a padded network input holding a resized
# image, mapped back to an original image that is larger, smaller or equal to the resized one.
GEOMETRIES = {
    "upsampled": ((24, 32), (96, 128), (90, 125), (151, 209)),
    "downsampled": ((24, 32), (96, 128), (90, 125), (61, 85)),
    "not resized": ((24, 32), (96, 128), (90, 125), (90, 125)),
    # Below height + width = 128 PyTorch's CPU resize vectorises over channels: the previous
    # (1, Q, h, w) layout may then differ by 1 ulp, so this one is only checked for chunking.
    "thumbnail": ((8, 10), (32, 40), (30, 37), (20, 25)),
}
EXACT = [name for name in GEOMETRIES if name != "thumbnail"]


def stride4_outputs(
    seed: int, num_queries: int, logits_size: tuple[int, int], num_classes: int = NUM_CLASSES
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q, C+1) class logits and (Q, h, w) stride-4 mask logits of overlapping noisy blobs.

    A quarter of the queries are void. Queries 2 and 5 are copied into 10 and 6 (class and mask):
    exact ties between queries, within one chunk of 8 and across two, which the official argmax
    resolves in favour of the first.
    """
    generator = torch.Generator().manual_seed(seed)
    class_logits = torch.randn(num_queries, num_classes + 1, generator=generator) * 3
    class_logits[: num_queries // 4, -1] += 20
    masks = noisy_discs(generator, num_queries, logits_size, (2, 5))
    for source, copy in ((2, 10), (5, 6)):
        class_logits[copy], masks[copy] = class_logits[source], masks[source]
    return class_logits, masks


def query_masks(logits: torch.Tensor, geometry: str, chunk_size: int) -> QueryMasks:
    _, padded, resized, original = GEOMETRIES[geometry]
    return QueryMasks(logits, padded, resized, original, chunk_size)


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("chunk_size", [1, 3, 8, 100])
@pytest.mark.parametrize("threads", [1, 2])
def test_query_mask_chunks_are_the_full_upsampling_bit_for_bit(geometry, chunk_size, threads):
    _, logits = stride4_outputs(0, 24, GEOMETRIES[geometry][0])
    masks = query_masks(logits, geometry, chunk_size)
    queries = torch.tensor([0, 3, 4, 9, 10, 11, 12, 17, 23])
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)  # one thread and 3 masks is where the (1, Q) layout differs
    try:
        chunks = list(masks.chunks(queries))
        everything = masks_to_original(logits, *GEOMETRIES[geometry][1:])
        official = full_size(masks)
    finally:
        torch.set_num_threads(previous_threads)
    assert [len(c) for c in chunks] == [
        min(chunk_size, len(queries) - start) for start in range(0, len(queries), chunk_size)
    ]
    assert all(c.is_contiguous() for c in chunks)
    assert torch.equal(torch.cat(chunks), everything[queries])
    if geometry in EXACT:
        assert torch.equal(everything, official)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("geometry", EXACT)
@pytest.mark.parametrize("chunk_size", [1, 3, 8, 100])
@pytest.mark.parametrize(("object_mask_threshold", "overlap_threshold"), [(0.0, 0.8), (0.4, 0.5)])
def test_chunked_panoptic_equals_the_previous_implementation(
    seed, geometry, chunk_size, object_mask_threshold, overlap_threshold
):
    class_logits, logits = stride4_outputs(seed, 24, GEOMETRIES[geometry][0])
    masks = query_masks(logits, geometry, chunk_size)
    result = panoptic_inference(
        class_logits, masks, IS_THING, object_mask_threshold, overlap_threshold
    )
    expected = reference_panoptic(
        class_logits, full_size(masks), IS_THING, object_mask_threshold, overlap_threshold
    )
    assert len(expected.segments) > 1
    assert torch.equal(result.ids, expected.ids)
    assert result.segments == expected.segments  # scores equal to the last bit


def test_chunked_panoptic_ranks_nan_like_the_previous_implementation():
    class_logits, logits = stride4_outputs(3, 24, GEOMETRIES["upsampled"][0])
    class_logits[:, -1] = -20  # every query kept
    logits[9, 4:12, 5:15] = torch.nan  # a NaN in a later chunk beats earlier queries' values
    logits[17, 8:16, 10:20] = torch.nan  # the first NaN (query 9) keeps the pixels both cover
    masks = query_masks(logits, "upsampled", 8)
    result = panoptic_inference(class_logits, masks, IS_THING)
    expected = reference_panoptic(class_logits, full_size(masks), IS_THING)
    assert torch.equal(result.ids, expected.ids)
    assert result.segments == expected.segments


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("geometry", EXACT)
# (300, 1) and (5000, 8): more classes than chunk_size x rows, so bands are parts of one row.
@pytest.mark.parametrize(("num_classes", "chunk_size"), [
    (5, 8), (300, 8), (300, 1), pytest.param(5000, 8, marks=pytest.mark.slow), (5, 100),
])
def test_banded_semantic_equals_the_previous_implementation(
    seed, geometry, num_classes, chunk_size
):
    class_logits, logits = stride4_outputs(seed, 24, GEOMETRIES[geometry][0], num_classes)
    masks = query_masks(logits, geometry, chunk_size)
    result = semantic_inference(class_logits, masks)
    expected = reference_semantic(class_logits, full_size(masks))
    assert result.num_classes == expected.num_classes == num_classes
    assert torch.equal(result.labels, expected.labels)
    # The sum over classes of a band may round differently from that of the full tensor.
    torch.testing.assert_close(result.confidence, expected.confidence, rtol=1e-6, atol=0)
    is_thing = torch.arange(num_classes) % 2 == 0
    names = [f"class {c}" for c in range(num_classes)]
    published = semantic_to_segmentation(result, names, is_thing, with_confidence=True)
    previous = semantic_to_segmentation(expected, names, is_thing, with_confidence=True)
    np.testing.assert_array_equal(published.labels, previous.labels)
    np.testing.assert_array_equal(published.instances, previous.instances)
    assert [s.score for s in published.segments] == pytest.approx(
        [s.score for s in previous.segments], rel=1e-6
    )


def test_panoptic_upsamples_only_surviving_queries_a_chunk_at_a_time(monkeypatch):
    upsampled: list[int] = []

    def counting(logits, *sizes):
        upsampled.append(logits.shape[0])
        return masks_to_original(logits, *sizes)

    monkeypatch.setattr(postprocess, "masks_to_original", counting)
    for num_queries in (20, 200):
        class_logits, logits = stride4_outputs(0, num_queries, GEOMETRIES["upsampled"][0])
        class_logits[:, -1] = 20.0  # all void ...
        class_logits[[1, 4, 7, 8, 12, 13, 15, 16, 18, 19, 11], -1] = -20.0  # ... but 11 queries
        upsampled.clear()
        panoptic_inference(class_logits, query_masks(logits, "upsampled", 4), IS_THING)
        assert upsampled == [4, 4, 3]  # the same work and memory for 20 or 200 queries


def peak_rss_growth(run: Callable[[], object]) -> int:
    """Bytes by which the peak resident memory during `run` exceeds the memory before (Linux)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the RSS
    except OSError:
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak RSS")

    def status_bytes(field: str) -> int:
        line = next(line for line in Path("/proc/self/status").read_text().splitlines()
                    if line.startswith(field + ":"))
        return int(line.split()[1]) * 1024

    before = status_bytes("VmRSS")
    run()
    return status_bytes("VmHWM") - before


def test_post_processing_memory_does_not_grow_with_queries_or_classes():
    # A 480x640 frame. Previously: 200 queries' masks at full size, their sigmoid and weighted
    # copies, 0.75 GB for panoptic; 1203 x H x W class scores, 1.5 GB for semantic.
    geometry = ((30, 40), (120, 160), (120, 160), (480, 640))
    class_logits, logits = stride4_outputs(0, 200, geometry[0])
    class_logits[:, -1] = -20.0  # every query kept
    masks = QueryMasks(logits, *geometry[1:])
    panoptic = peak_rss_growth(lambda: panoptic_inference(class_logits, masks, IS_THING))
    assert panoptic < 100e6
    class_logits, logits = stride4_outputs(0, 20, geometry[0], num_classes=1203)
    masks = QueryMasks(logits, *geometry[1:])
    semantic = peak_rss_growth(lambda: semantic_inference(class_logits, masks))
    assert semantic < 100e6  # 20 sigmoid maps (25 MB) and bands of scores


@pytest.mark.slow
def test_semantic_memory_stays_bounded_with_tens_of_thousands_of_classes():
    # One row of scores for 60000 classes would be 154 MB at 640 pixels wide; a band is at most
    # chunk_size x H x W = 9.8 MB, beside 20 sigmoid maps (25 MB) and the maps (18 MB).
    geometry = ((30, 40), (120, 160), (120, 160), (480, 640))
    class_logits, logits = stride4_outputs(0, 20, geometry[0], num_classes=60000)
    masks = QueryMasks(logits, *geometry[1:])
    assert peak_rss_growth(lambda: semantic_inference(class_logits, masks)) < 90e6


def region_embeddings(seed: int, num_queries: int, dim: int = 8) -> torch.Tensor:
    """(Q, D) unnormalised query embeddings of unequal norms, as the CLIP head gives them."""
    generator = torch.Generator().manual_seed(seed)
    norms = 0.5 + 20 * torch.rand(num_queries, 1, generator=generator)
    return norms * F.normalize(torch.randn(num_queries, dim, generator=generator), dim=-1)


def test_panoptic_embeddings_are_the_pixel_weighted_mean_of_each_segments_queries() -> None:
    merged = 0
    for seed in range(8):
        class_logits, masks = random_outputs(seed)
        embeddings = region_embeddings(seed, NUM_QUERIES)
        result = panoptic_inference(class_logits, at_full_size(masks), IS_THING, 0.0, 0.8,
                                    embeddings)
        winner = owners(class_logits, masks, 0.0)
        assert result.embeddings.shape == (len(result.segments), 8)
        for row, segment in enumerate(result.segments):
            pixels = torch.bincount(winner[result.ids == segment.id], minlength=NUM_QUERIES)
            expected = F.normalize(pixels.float() @ F.normalize(embeddings, dim=-1), dim=0)
            torch.testing.assert_close(result.embeddings[row], expected)
            merged += int((pixels > 0).sum() > 1)
        plain = panoptic_inference(class_logits, at_full_size(masks), IS_THING, 0.0, 0.8)
        assert plain.embeddings is None
        assert torch.equal(plain.ids, result.ids) and plain.segments == result.segments
        published = to_segmentation(result, NAMES)
        assert published.embeddings.dtype == np.float32
        np.testing.assert_array_equal(published.embeddings, result.embeddings.numpy())
        assert to_segmentation(plain, NAMES).embeddings is None
    assert merged >= 2


def test_merged_stuff_embedding_is_the_mean_of_normalised_query_embeddings() -> None:
    # The quadrant layout above: stuff segment 1 = q0 + q1 (equal areas), things 2 = q2, 3 = q3.
    class_logits, masks = quadrant_outputs()
    embeddings = torch.tensor([[10.0, 0, 0], [0, 1, 0], [0, 0, 3], [4, 0, 3], [1, 1, 1]])
    result = panoptic_inference(class_logits, at_full_size(masks), torch.tensor([False, True]),
                                region_embeddings=embeddings)
    half = 0.5**0.5  # q0 and q1 count alike whatever their norms
    expected = torch.tensor([[half, half, 0], [0, 0, 1], [0.8, 0, 0.6]])
    torch.testing.assert_close(result.embeddings, expected)


def test_void_only_panoptic_result_has_an_empty_embedding_matrix() -> None:
    class_logits, masks = random_outputs(0)
    class_logits[:, -1] += 50
    result = panoptic_inference(class_logits, at_full_size(masks), IS_THING,
                                region_embeddings=region_embeddings(0, NUM_QUERIES))
    assert result.embeddings.shape == (0, 8)
    assert to_segmentation(result, NAMES).embeddings.shape == (0, 8)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("geometry", EXACT)
@pytest.mark.parametrize("chunk_size", [1, 8])  # bands of a few rows, or the whole image
def test_semantic_embeddings_weight_queries_by_their_share_of_the_class_score(
    seed, geometry, chunk_size
):
    class_logits, logits = stride4_outputs(seed, 24, GEOMETRIES[geometry][0])
    masks = query_masks(logits, geometry, chunk_size)
    embeddings = region_embeddings(seed, 24)
    result = semantic_inference(class_logits, masks, embeddings)
    # A class's pixels are scored by sum_q P_q(class) sigmoid(mask_q); query q's share of the
    # segment is its term summed over the segment's pixels.
    class_probs = class_logits.softmax(-1)[:, :-1]
    sigmoid = full_size(masks).sigmoid()
    present = result.labels.unique()
    expected = torch.stack([
        F.normalize(class_probs[:, c] * sigmoid[:, result.labels == c].sum(-1)
                    @ F.normalize(embeddings, dim=-1), dim=0)
        for c in present
    ])
    assert len(present) > 1
    # Float32 sums over thousands of pixels, in another order: weights agree to ~1e-5.
    torch.testing.assert_close(result.embeddings, expected, rtol=0, atol=1e-5)
    plain = semantic_inference(class_logits, masks)
    assert plain.embeddings is None and torch.equal(plain.labels, result.labels)
    names = [f"class {c}" for c in range(NUM_CLASSES)]
    published = semantic_to_segmentation(result, names, IS_THING)
    assert [s.class_id for s in published.segments] == present.tolist()  # rows in id order
    np.testing.assert_array_equal(published.embeddings, result.embeddings.numpy())
