"""FC-CLIP's post-processing: mask logits and class logits of the queries to per-pixel results.

`semantic_inference` and `panoptic_inference` follow the official
`FCCLIP.semantic_inference / panoptic_inference` (same formulas, thresholds and id order; the
official instance output is not offered: the node's modes are panoptic and semantic). They take
the final (Q, C+1) "logits" of the geometric ensemble, whose last column is void.
`to_segmentation` and `semantic_to_segmentation` turn a result into the maps and segment
list the node publishes. Everything stays on the input's device until the final maps are copied
to numpy; no step loops over pixels.

Memory. The official code upsamples all Q masks to the caller's H x W at once (then takes
their sigmoid and weighted copies) and semantic inference builds C x H x W class scores:
+1.1 GB for a VGA frame with 200 surviving queries, +1.5 GB for a VGA frame with LVIS's 1203
classes. Here `QueryMasks.chunks` upsamples k = chunk_size queries at a time (each mask resized
as an image of its own, so that its bits do not depend on the chunk; see masks_to_original);
panoptic inference upsamples only the K queries that pass the thresholds and keeps a running
per-pixel winner; semantic inference builds the class scores of a band of rows at a time. Peak
extra memory of one frame's post-processing in bytes (float32, CPU or GPU), with (Hp, Wp) the
padded network input, which input_short_side / max_long_side bound (at most 800 x 1344 with
the official 800 / 1333) whatever the camera:

    panoptic:  4*k*Hp*Wp + (4*k + 60)*H*W              independent of Q, K and C
    semantic:  4*k*Hp*Wp + (4*k + 60)*H*W + 4*Q*H*W    independent of C

4*k*Hp*Wp is one chunk upsampled to the padded input; 4*k*H*W the chunk at full size (turned
into probabilities, then weighted, in place), or one band of class scores (C x rows x cols
floats, at most k*H*W: whole rows, or parts of a row with over k*H classes); 60*H*W the
per-pixel winner and its bookkeeping, the label, id and confidence maps and their box
reductions. Semantic inference also keeps every query's sigmoid at full size, 4*Q*H*W (0.3 GB
for VGA with Q = 250): each pixel's class scores sum over all queries, and computing them from
anything smaller would change their rounding and with it the argmax. bench/bench_memory.py
measures these figures against the formula.

Segment embeddings (only when the caller passes the queries' region embeddings, the (Q, D)
vectors FC-CLIP's out-of-vocabulary branch classified): one L2-normalised row per segment, the
mean of its queries' normalised embeddings weighted by each query's share of the segment, then
normalised again. Panoptic: the share is the pixels the query contributes to the final segment,
so a thing segment, or a stuff segment of one query, has exactly its query's embedding.
Semantic: a class's pixels are scored by sum_q P_q(class) x sigmoid(mask_q); a query's share is
its part of that score summed over the segment's pixels. Extra memory: Q x N floats, plus a band
within the chunk_size x H x W floats of the bound above (semantic).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fcclip_ros.result import UNLABELED, Segment, Segmentation

MASK_CHUNK_SIZE = 8  # queries upsampled to the full size at once; see "Memory" above


@dataclass(frozen=True)
class PanopticSegment:
    """One panoptic segment (the official segments_info entry plus a score)."""

    id: int  # value in the id map, 1..N in the order the official code assigns them
    class_id: int
    is_thing: bool
    # Class probability of the query; for stuff merged from several queries, the mean of their
    # probabilities weighted by the pixels each contributes (= the mean over the segment's pixels).
    score: float


@dataclass(frozen=True)
class PanopticResult:
    ids: torch.Tensor  # (H, W) int32 segment id per pixel, 0 where no segment
    segments: list[PanopticSegment]
    embeddings: torch.Tensor | None = None  # (N, D) float32 per segment, in id order


@dataclass(frozen=True)
class SemanticResult:
    """The per-pixel outcome of the official C x H x W semantic scores, without storing them."""

    labels: torch.Tensor  # (H, W) int64 argmax class
    confidence: torch.Tensor  # (H, W) float32 argmax score / sum of the pixel's scores
    num_classes: int
    embeddings: torch.Tensor | None = None  # (N, D) float32 per present class, ascending


def masks_to_original(
    mask_logits: torch.Tensor,
    padded_size: tuple[int, int],
    resized_size: tuple[int, int],
    original_size: tuple[int, int],
) -> torch.Tensor:
    """Bring (Q, h, w) stride-4 mask logits to the caller's image, (Q, H, W).

    Bilinear upsampling to the padded network input, crop of the padding, bilinear resize to
    the original size (FC-CLIP's upsampling followed by detectron2's sem_seg_postprocess).
    Each mask is resized as an image of its own, (Q, 1, h, w), rather than as one channel of a
    (1, Q, h, w) image as the official code does: PyTorch's CPU kernel rounds differently for
    exactly 3 channels on one thread, so a mask's result would depend on how many are resized
    together. Both layouts give the same bits whenever each output's height + width exceeds 128;
    below that (thumbnails) PyTorch vectorises over channels and they may differ by 1 ulp.
    """
    masks = F.interpolate(
        mask_logits[:, None], size=tuple(padded_size), mode="bilinear", align_corners=False
    )  # (Q, 1, Hp, Wp)
    masks = masks[..., : resized_size[0], : resized_size[1]]
    if tuple(resized_size) != tuple(original_size):
        # At equal sizes bilinear interpolation is the identity, so skipping it changes nothing.
        masks = F.interpolate(
            masks, size=tuple(original_size), mode="bilinear", align_corners=False
        )
    return masks[:, 0]


@dataclass(frozen=True)
class QueryMasks:
    """One image's stride-4 mask logits and the sizes that bring them to the caller's image.

    Post-processing asks for the masks of the queries it needs, a few at a time, so that its
    memory does not grow with the number of queries.
    """

    logits: torch.Tensor  # (Q, h, w) stride-4 mask logits
    padded_size: tuple[int, int]  # (Hp, Wp) of the network input
    resized_size: tuple[int, int]  # (h', w') of the image inside the padding
    original_size: tuple[int, int]  # (H, W) of the caller's image
    chunk_size: int = MASK_CHUNK_SIZE

    def chunks(self, queries: torch.Tensor) -> Iterator[torch.Tensor]:
        """Full-size mask logits of `queries` (K,), in order, as contiguous (k, H, W) blocks.

        k <= chunk_size. Every mask equals masks_to_original of all queries at once, bit for bit.
        """
        for start in range(0, queries.numel(), self.chunk_size):
            chunk = self.logits[queries[start : start + self.chunk_size]]  # (k, h, w)
            yield masks_to_original(
                chunk, self.padded_size, self.resized_size, self.original_size
            ).contiguous()


def semantic_inference(
    class_logits: torch.Tensor,
    masks: QueryMasks,
    region_embeddings: torch.Tensor | None = None,
) -> SemanticResult:
    """Argmax class and its share of the official scores sum_q P(class) x sigmoid(mask_q).

    The void probability is dropped without renormalising, as in the official code. The (C, H, W)
    scores exist for a band of rows (or part of a row) at a time, at most chunk_size x H x W
    floats; each band comes from the same matrix product as the full tensor, so scores and
    argmax are the official ones, while the band's sum over classes may round differently
    (relative 1e-6). With the queries' (Q, D) `region_embeddings`, each present class also gets
    an embedding (module docstring).
    """
    class_probs = F.softmax(class_logits, dim=-1)[:, :-1]  # (Q, C)
    num_queries, num_classes = class_probs.shape
    height, width = masks.original_size
    device = class_logits.device
    probs = torch.empty(num_queries, height, width, device=device)  # (Q, H, W) every sigmoid
    start = 0
    for chunk in masks.chunks(torch.arange(num_queries, device=device)):  # (k, H, W) logits
        torch.sigmoid(chunk, out=probs[start : start + chunk.shape[0]])
        start += chunk.shape[0]
        del chunk  # freed before the next chunk is upsampled

    labels = torch.empty(height, width, dtype=torch.long, device=device)
    best = torch.empty(height, width, device=device)
    total = torch.empty(height, width, device=device)
    # C x rows x cols <= chunk x H x W: whole rows while C <= chunk x H, else parts of one row.
    rows = max(1, masks.chunk_size * height // num_classes)
    cols = min(width, max(1, masks.chunk_size * height * width // (num_classes * rows)))
    for top, left in itertools.product(range(0, height, rows), range(0, width, cols)):
        band = (slice(top, top + rows), slice(left, left + cols))
        scores = torch.einsum("qc,qhw->chw", class_probs, probs[:, band[0], band[1]])
        best[band], labels[band] = torch.max(scores, 0)
        total[band] = torch.sum(scores, 0, dtype=torch.float32)
        del scores  # freed before the next band is computed
    confidence = best / total.clamp_min(torch.finfo(torch.float32).tiny)
    embeddings = None
    if region_embeddings is not None:
        embeddings = _semantic_embeddings(labels, probs, class_probs, region_embeddings,
                                          masks.chunk_size)
    return SemanticResult(labels, confidence, num_classes, embeddings)


def _semantic_embeddings(
    labels: torch.Tensor,
    probs: torch.Tensor,
    class_probs: torch.Tensor,
    region_embeddings: torch.Tensor,
    chunk_size: int,
) -> torch.Tensor:
    """(N, D) embeddings of the present classes, ascending: query q weighs P_q(class) x its
    sigmoid summed over the class's pixels (its part of the class's scores there).

    The sums are one-hot matrix products over bands of rows, whose one-hot matrix and indices
    stay within chunk_size x H x W floats, like the bands of class scores.
    """
    num_queries, num_classes = class_probs.shape
    height = labels.shape[0]
    device = labels.device
    present = torch.bincount(labels.flatten(), minlength=num_classes).nonzero().flatten()
    count = present.numel()
    segment_of_class = torch.zeros(num_classes, dtype=torch.long, device=device)
    segment_of_class[present] = torch.arange(count, device=device)
    mass = probs.new_zeros(num_queries, count)  # (Q, N) sigmoid summed over each segment
    rows = max(1, chunk_size * height // (count + 2))  # one-hot: N floats, index: 2 per pixel
    for top in range(0, height, rows):
        segment = segment_of_class[labels[top : top + rows]].view(-1, 1)  # (rows x W, 1)
        one_hot = probs.new_zeros(segment.shape[0], count).scatter_(1, segment, 1.0)
        mass.addmm_(probs[:, top : top + rows].reshape(num_queries, -1), one_hot)
        del segment, one_hot  # freed before the next band
    return mean_embedding((mass * class_probs[:, present]).T, region_embeddings)


def mean_embedding(weights: torch.Tensor, region_embeddings: torch.Tensor) -> torch.Tensor:
    """(N, K) non-negative weights of (K, D) region embeddings -> (N, D) segment embeddings.

    Each row is the weighted mean of the L2-normalised embeddings, normalised again: a direction
    in CLIP's joint space, comparable by cosine with text embeddings.
    """
    normalised = F.normalize(region_embeddings.float(), dim=-1)
    return F.normalize(weights.to(normalised) @ normalised, dim=-1)


def panoptic_inference(
    class_logits: torch.Tensor,
    masks: QueryMasks,
    is_thing: torch.Tensor,
    object_mask_threshold: float = 0.0,
    overlap_threshold: float = 0.8,
    region_embeddings: torch.Tensor | None = None,
    class_thresholds: torch.Tensor | None = None,
    reported_classes: int | None = None,
) -> PanopticResult:
    """Official panoptic merging of (Q, C+1) class logits and the queries' masks.

    Queries whose best class is not void and whose probability exceeds `object_mask_threshold`
    (or their class's entry of the (C,) `class_thresholds`, where that is not 0) compete per
    pixel on probability x sigmoid(mask). A query becomes a segment where it wins and
    its own sigmoid is >= 0.5, if that region is not empty and it wins at least
    `overlap_threshold` of its own mask; stuff queries of one class share one segment.
    Classes from `reported_classes` on (negative classes) compete like the others, but their
    queries yield no segment: the pixels they win stay without one.
    Only those queries' masks are upsampled, a chunk at a time, into a running per-pixel winner.
    With the queries' (Q, D) `region_embeddings`, each segment also gets an embedding (module
    docstring).
    """
    num_classes = class_logits.shape[-1] - 1
    _check_is_thing(is_thing, num_classes)
    scores, labels = F.softmax(class_logits, dim=-1).max(-1)
    threshold = torch.full_like(scores, object_mask_threshold)
    if class_thresholds is not None:
        if class_thresholds.shape != (num_classes,):
            raise ValueError(f"class_thresholds needs one value per class ({num_classes}), got "
                             f"{tuple(class_thresholds.shape)}")
        own = F.pad(class_thresholds.to(scores), (0, 1))[labels]  # void: 0, the global one
        threshold = torch.where(own > 0, own, threshold)
    kept = (labels.ne(num_classes) & (scores > threshold)).nonzero().flatten()
    scores, labels = scores[kept], labels[kept]  # (K,) each, in query order
    height, width = masks.original_size
    device = class_logits.device
    num_kept = kept.numel()
    if num_kept == 0:
        embeddings = None if region_embeddings is None else mean_embedding(
            class_logits.new_zeros(0, 0), region_embeddings[kept])
        return PanopticResult(
            torch.zeros(height, width, dtype=torch.int32, device=device), [], embeddings
        )

    # The official argmax over all K queries keeps the first maximum (a NaN counts as the
    # maximum), so a later chunk takes a pixel only with a strictly larger value or a first NaN.
    best = torch.full((height, width), -torch.inf, device=device)  # winning prob x sigmoid
    owner = torch.zeros(height, width, dtype=torch.long, device=device)  # kept query winning
    in_own_mask = torch.zeros(height, width, dtype=torch.bool, device=device)  # its sigmoid >= 0.5
    mask_area = torch.empty(num_kept, dtype=torch.long, device=device)
    start = 0
    for chunk in masks.chunks(kept):  # (k, H, W) logits, turned in place into probabilities
        stop = start + chunk.shape[0]
        own_mask = chunk.sigmoid_() >= 0.5  # (k, H, W) each query's own mask
        # count_nonzero per mask: a sum over a dimension would first copy them all as int64.
        mask_area[start:stop] = torch.stack([mask.count_nonzero() for mask in own_mask])
        weighted = chunk.mul_(scores[start:stop].view(-1, 1, 1))  # prob x sigmoid, (k, H, W)
        chunk_best, chunk_owner = weighted.max(0)  # (H, W) each
        better = (chunk_best > best) | (chunk_best.isnan() & ~best.isnan())
        best = torch.where(better, chunk_best, best)
        owner = torch.where(better, chunk_owner + start, owner)
        in_own_mask = torch.where(better, own_mask.gather(0, chunk_owner[None])[0], in_own_mask)
        start = stop
        del chunk, own_mask, weighted  # freed before the next chunk is upsampled
    won_area = torch.bincount(owner.flatten(), minlength=num_kept)
    final_area = torch.bincount(owner[in_own_mask], minlength=num_kept)
    won, own, final = torch.stack([won_area, mask_area, final_area]).tolist()
    thing_of_class = is_thing.tolist()
    reported = num_classes if reported_classes is None else reported_classes

    segment_of_query = [0] * num_kept  # 0: the query yields no segment
    classes: list[int] = []
    score_sums: list[float] = []  # per segment, sum of query score x contributed pixels
    pixel_sums: list[int] = []
    stuff_segment: dict[int, int] = {}  # stuff class -> its segment id
    for k, (class_id, score) in enumerate(zip(labels.tolist(), scores.tolist(), strict=True)):
        # The official code also requires won and own > 0; final > 0 implies both.
        if final[k] == 0 or won[k] / own[k] < overlap_threshold or class_id >= reported:
            continue
        segment_id = len(classes) + 1
        if not thing_of_class[class_id]:
            segment_id = stuff_segment.setdefault(class_id, segment_id)
        if segment_id > len(classes):
            classes.append(class_id)
            score_sums.append(0.0)
            pixel_sums.append(0)
        segment_of_query[k] = segment_id
        score_sums[segment_id - 1] += score * final[k]
        pixel_sums[segment_id - 1] += final[k]

    lookup = torch.tensor(segment_of_query, dtype=torch.int32, device=device)
    ids = torch.where(in_own_mask, lookup[owner], 0).to(torch.int32)
    segments = [
        PanopticSegment(i + 1, c, bool(thing_of_class[c]), score_sums[i] / pixel_sums[i])
        for i, c in enumerate(classes)
    ]
    embeddings = None
    if region_embeddings is not None:
        weights = torch.zeros(len(classes), num_kept)  # (N, K) pixels each query contributes
        for k, segment_id in enumerate(segment_of_query):
            if segment_id:
                weights[segment_id - 1, k] = final[k]
        embeddings = mean_embedding(weights, region_embeddings[kept])
    return PanopticResult(ids, segments, embeddings)


def to_segmentation(
    panoptic: PanopticResult, class_names: Sequence[str], with_confidence: bool = False
) -> Segmentation:
    """The published form of a panoptic result.

    labels = class of the pixel's segment (UNLABELED where none), instances = segment id,
    confidence = the segment's score (0 where none), only when `with_confidence`; embeddings
    when the result has them.
    """
    device = panoptic.ids.device
    ids = panoptic.ids.long()
    class_of_id = torch.tensor(
        [UNLABELED] + [s.class_id for s in panoptic.segments], dtype=torch.int32, device=device
    )
    confidence = None
    if with_confidence:
        score_of_id = torch.tensor(
            [0.0] + [s.score for s in panoptic.segments], dtype=torch.float32, device=device
        )
        confidence = score_of_id[ids]
    return _publish(
        ids,
        class_of_id,
        [s.score for s in panoptic.segments],
        [s.is_thing for s in panoptic.segments],
        class_names,
        confidence,
        panoptic.embeddings,
    )


def semantic_to_segmentation(
    semantic: SemanticResult,
    class_names: Sequence[str],
    is_thing: torch.Tensor,
    with_confidence: bool = False,
    reported_classes: int | None = None,
) -> Segmentation:
    """The published form of a semantic result.

    Every pixel gets its argmax class; each class present is one segment, ids 1.. in ascending
    class id. Confidence = the argmax score's share of the pixel's summed scores (0..1); a
    segment's score is the mean confidence over its pixels. Embeddings when the result has them.
    Pixels of classes from `reported_classes` on (negative classes) are left unlabeled, with
    confidence 0 and no segment.
    """
    num_classes = semantic.num_classes
    _check_is_thing(is_thing, num_classes)
    reported = num_classes if reported_classes is None else reported_classes
    labels = semantic.labels.flatten()
    device = labels.device
    confidence = torch.where(semantic.labels < reported, semantic.confidence, 0.0)
    pixels = torch.bincount(labels, minlength=num_classes)
    pixels[reported:] = 0  # negative classes: no segment
    classes = (pixels > 0).nonzero().flatten()  # (N,) present classes, ascending
    id_of_class = torch.zeros(num_classes, dtype=torch.long, device=device)
    id_of_class[classes] = torch.arange(1, classes.numel() + 1, device=device)
    confidence_sums = torch.bincount(labels, weights=confidence.flatten(), minlength=num_classes)
    mean_confidence = (confidence_sums[classes] / pixels[classes]).tolist()
    class_list = classes.tolist()
    thing_of_class = is_thing.tolist()
    class_of_id = torch.cat([classes.new_tensor([UNLABELED]), classes]).to(torch.int32)
    return _publish(
        id_of_class[labels].view(semantic.labels.shape),
        class_of_id,
        mean_confidence,
        [bool(thing_of_class[c]) for c in class_list],
        class_names,
        confidence if with_confidence else None,
        # Rows of the present classes, ascending: the negatives' come last.
        None if semantic.embeddings is None else semantic.embeddings[: classes.numel()],
    )


def _publish(
    ids: torch.Tensor,
    class_of_id: torch.Tensor,
    scores: Sequence[float],
    is_thing: Sequence[bool],
    class_names: Sequence[str],
    confidence: torch.Tensor | None,
    embeddings: torch.Tensor | None,
) -> Segmentation:
    """Maps and segment list from an (H, W) id map with segments 1..N; areas/boxes by reduction."""
    num_ids = class_of_id.shape[0]  # N + 1, id 0 = no segment
    if num_ids > UNLABELED:
        raise ValueError(f"{num_ids - 1} segments do not fit the uint16 instances image")
    height, width = ids.shape
    flat = ids.flatten()
    xs = torch.arange(width, device=ids.device).repeat(height)
    ys = torch.arange(height, device=ids.device).repeat_interleave(width)
    stats = torch.stack(
        [
            torch.bincount(flat, minlength=num_ids),
            _reduce_by_id(flat, xs, num_ids, "amin", width),
            _reduce_by_id(flat, ys, num_ids, "amin", height),
            _reduce_by_id(flat, xs, num_ids, "amax", -1),
            _reduce_by_id(flat, ys, num_ids, "amax", -1),
        ],
        dim=1,
    )[1:].tolist()  # (N, 5): area, x0, y0, x1, y1
    segments = []
    for i, ((area, x0, y0, x1, y1), class_id) in enumerate(
        zip(stats, class_of_id[1:].tolist(), strict=True)
    ):
        segments.append(
            Segment(
                id=i + 1,
                class_id=class_id,
                label=class_names[class_id],
                score=float(scores[i]),
                is_thing=bool(is_thing[i]),
                area=int(area),
                bbox=(x0, y0, x1 - x0 + 1, y1 - y0 + 1) if area else (0, 0, 0, 0),
            )
        )
    return Segmentation(
        labels=class_of_id[ids].cpu().numpy().astype(np.uint16),
        instances=ids.cpu().numpy().astype(np.uint16),
        confidence=None if confidence is None else confidence.float().cpu().numpy(),
        segments=segments,
        embeddings=None if embeddings is None else embeddings.float().cpu().numpy(),
    )


def _reduce_by_id(
    ids: torch.Tensor, values: torch.Tensor, num_ids: int, reduce: str, empty: int
) -> torch.Tensor:
    """Per-id min or max of `values` over pixels; `empty` for ids without pixels."""
    initial = torch.full((num_ids,), empty, dtype=values.dtype, device=values.device)
    return initial.scatter_reduce(0, ids, values, reduce=reduce, include_self=True)


def _check_is_thing(is_thing: torch.Tensor, num_classes: int) -> None:
    if is_thing.shape != (num_classes,):
        raise ValueError(
            f"is_thing needs one flag per class ({num_classes}), got {tuple(is_thing.shape)}"
        )
