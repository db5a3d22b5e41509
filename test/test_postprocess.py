"""Post-processing reproduces FC-CLIP's semantic / panoptic / instance inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fcclip_ros.postprocess import (
    PanopticResult,
    instance_inference,
    masks_to_original,
    panoptic_inference,
    semantic_inference,
    semantic_to_segmentation,
    to_segmentation,
)
from fcclip_ros.result import UNLABELED, Segmentation

NUM_QUERIES, NUM_CLASSES, HEIGHT, WIDTH = 20, 5, 48, 64
IS_THING = torch.tensor([True, True, False, True, False])
NAMES = ["person", "car", "sky", "dog", "road"]


def random_outputs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q, C+1) class logits with four void queries and (Q, H, W) mask logits of noisy discs.

    Discs of random centre and radius overlap, so queries compete for pixels as real ones do.
    """
    generator = torch.Generator().manual_seed(seed)
    class_logits = torch.randn(NUM_QUERIES, NUM_CLASSES + 1, generator=generator) * 3
    class_logits[:4, -1] += 20  # these queries are void
    centres = torch.rand(NUM_QUERIES, 2, 1, 1, generator=generator) * torch.tensor(
        [HEIGHT, WIDTH]
    ).view(1, 2, 1, 1)
    radii = 6 + 14 * torch.rand(NUM_QUERIES, 1, 1, generator=generator)
    ys = torch.arange(HEIGHT, dtype=torch.float32).view(1, -1, 1)
    xs = torch.arange(WIDTH, dtype=torch.float32).view(1, 1, -1)
    distance = ((ys - centres[:, 0]) ** 2 + (xs - centres[:, 1]) ** 2).sqrt()
    noise = torch.randn(NUM_QUERIES, HEIGHT, WIDTH, generator=generator)
    return class_logits, 8 * (radii - distance) / radii + noise


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


def owners(class_logits: torch.Tensor, masks: torch.Tensor, threshold: float) -> torch.Tensor:
    """(H, W) index of the query that wins each pixel among non-void queries above threshold."""
    scores, labels = class_logits.softmax(-1).max(-1)
    eligible = (labels != class_logits.shape[1] - 1) & (scores > threshold)
    weighted = scores.view(-1, 1, 1) * masks.sigmoid()
    weighted[~eligible] = -1
    return weighted.argmax(0)


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
        class_logits, masks, IS_THING, object_mask_threshold, overlap_threshold
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
    result = panoptic_inference(class_logits, masks, IS_THING, 0.0, 0.8)
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


def test_panoptic_merges_stuff_of_one_class_and_numbers_in_query_order() -> None:
    # Quadrants: q0 top-left and q1 bottom-right predict stuff class 0,
    # q2 top-right and q3 bottom-left predict thing class 1; q4 is void.
    class_logits = torch.full((5, 3), -5.0)
    class_logits[[0, 1], 0] = torch.tensor([5.0, 3.0])
    class_logits[[2, 3], 1] = 4.0
    class_logits[4, 2] = 9.0
    masks = torch.full((5, 8, 8), -8.0)
    masks[0, :4, :4] = masks[1, 4:, 4:] = masks[2, :4, 4:] = masks[3, 4:, :4] = 8.0
    masks[4] = 8.0
    result = panoptic_inference(class_logits, masks, torch.tensor([False, True]))
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
    result = panoptic_inference(class_logits, masks, IS_THING)
    assert result.segments == []
    assert not result.ids.any()
    segmentation = to_segmentation(result, NAMES, with_confidence=True)
    assert np.all(segmentation.labels == UNLABELED)
    assert not segmentation.instances.any() and not segmentation.confidence.any()


def test_raising_object_mask_threshold_removes_low_score_segments() -> None:
    class_logits, masks = random_outputs(1)
    before = panoptic_inference(class_logits, masks, IS_THING, object_mask_threshold=0.0)
    threshold = float(np.median([s.score for s in before.segments]))
    assert any(s.score <= threshold for s in before.segments)
    after = panoptic_inference(class_logits, masks, IS_THING, object_mask_threshold=threshold)
    assert after.segments
    assert all(s.score > threshold for s in after.segments)
    scores = class_logits.softmax(-1).max(-1).values
    winner = owners(class_logits, masks, threshold)
    assert torch.all(scores[winner[after.ids > 0]] > threshold)


@pytest.mark.parametrize("seed", [0, 1])
def test_to_segmentation_maps_areas_boxes_and_confidence(seed: int) -> None:
    class_logits, masks = random_outputs(seed)
    result = panoptic_inference(class_logits, masks, IS_THING)
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


def test_semantic_inference_is_the_probability_weighted_sum_of_masks() -> None:
    class_logits, masks = random_outputs(0)
    semseg = semantic_inference(class_logits, masks)
    probs = class_logits.softmax(-1)
    expected = sum(probs[q, :-1, None, None] * masks[q].sigmoid() for q in range(NUM_QUERIES))
    torch.testing.assert_close(semseg, expected)


@pytest.mark.parametrize("seed", [0, 1])
def test_semantic_segmentation_labels_every_pixel_with_its_share_of_scores(seed: int) -> None:
    class_logits, masks = random_outputs(seed)
    semseg = semantic_inference(class_logits, masks)
    segmentation = semantic_to_segmentation(semseg, NAMES, IS_THING, with_confidence=True)
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
    assert semantic_to_segmentation(semseg, NAMES, IS_THING).confidence is None


@pytest.mark.parametrize("top_k", [7, 100])
def test_instances_are_the_top_k_thing_pairs_scored_by_mask_quality(top_k: int) -> None:
    class_logits, masks = random_outputs(2)
    result = instance_inference(class_logits, masks, IS_THING, top_k=top_k)
    probs = class_logits.softmax(-1)[:, :-1]
    top = probs.flatten().topk(min(top_k, probs.numel())).indices
    expected = [(int(i) // NUM_CLASSES, int(i) % NUM_CLASSES) for i in top]
    expected = [(q, c) for q, c in expected if IS_THING[c]]
    assert 0 < len(result.scores) <= top_k
    assert list(zip(result.query_ids.tolist(), result.class_ids.tolist(), strict=True)) == expected
    assert IS_THING[result.class_ids].all()
    for n, (q, c) in enumerate(expected):
        inside = masks[q] > 0
        assert torch.equal(result.masks[n], inside)
        mask_quality = masks[q].sigmoid()[inside].sum() / (inside.sum() + 1e-6)
        torch.testing.assert_close(result.scores[n], probs[q, c] * mask_quality)


def test_instances_without_panoptic_keep_every_class() -> None:
    class_logits, masks = random_outputs(2)
    result = instance_inference(class_logits, masks, IS_THING, panoptic_on=False, top_k=50)
    assert len(result.scores) == 50
    assert not IS_THING[result.class_ids].all()


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
        panoptic_inference(class_logits, masks, IS_THING[:3])


def test_empty_panoptic_result_gives_no_segments() -> None:
    empty = PanopticResult(torch.zeros(4, 6, dtype=torch.int32), [])
    segmentation = to_segmentation(empty, NAMES)
    assert segmentation.segments == []
    assert np.all(segmentation.labels == UNLABELED)
