"""FC-CLIP post-processing as it was before the chunked implementation: every query's mask
upsampled at once and the full C x H x W scores, the references the chunked code must equal."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fcclip_ros.postprocess import PanopticResult, PanopticSegment, QueryMasks, SemanticResult


def reference_panoptic(
    class_logits: torch.Tensor,
    masks: torch.Tensor,
    is_thing: torch.Tensor,
    object_mask_threshold: float = 0.0,
    overlap_threshold: float = 0.8,
) -> PanopticResult:
    """The previous panoptic_inference, verbatim: every kept (K, H, W) mask at once."""
    num_classes = class_logits.shape[-1] - 1
    scores, labels = F.softmax(class_logits, dim=-1).max(-1)
    keep = labels.ne(num_classes) & (scores > object_mask_threshold)
    scores, labels = scores[keep], labels[keep]
    probs = masks[keep].sigmoid()  # (K, H, W)
    height, width = masks.shape[-2:]
    num_kept = probs.shape[0]
    if num_kept == 0:
        return PanopticResult(torch.zeros(height, width, dtype=torch.int32), [])
    owner = (scores.view(-1, 1, 1) * probs).argmax(0)
    in_own_mask = probs.gather(0, owner[None])[0] >= 0.5
    won_area = torch.bincount(owner.flatten(), minlength=num_kept)
    mask_area = (probs >= 0.5).flatten(1).sum(1)
    final_area = torch.bincount(owner[in_own_mask], minlength=num_kept)
    won, own, final = torch.stack([won_area, mask_area, final_area]).tolist()
    thing_of_class = is_thing.tolist()
    segment_of_query = [0] * num_kept
    classes: list[int] = []
    score_sums: list[float] = []
    pixel_sums: list[int] = []
    stuff_segment: dict[int, int] = {}
    for k, (class_id, score) in enumerate(zip(labels.tolist(), scores.tolist(), strict=True)):
        if final[k] == 0 or won[k] / own[k] < overlap_threshold:
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
    lookup = torch.tensor(segment_of_query, dtype=torch.int32)
    ids = torch.where(in_own_mask, lookup[owner], 0).to(torch.int32)
    segments = [
        PanopticSegment(i + 1, c, bool(thing_of_class[c]), score_sums[i] / pixel_sums[i])
        for i, c in enumerate(classes)
    ]
    return PanopticResult(ids, segments)


def reference_semantic(class_logits: torch.Tensor, masks: torch.Tensor) -> SemanticResult:
    """The previous semantic path: the full (C, H, W) scores, their argmax and its share."""
    class_probs = F.softmax(class_logits, dim=-1)[:, :-1]
    semseg = torch.einsum("qc,qhw->chw", class_probs, masks.sigmoid())
    best, labels = semseg.max(0)
    total = semseg.sum(0, dtype=torch.float32)
    confidence = best.float() / total.clamp_min(torch.finfo(torch.float32).tiny)
    return SemanticResult(labels, confidence, semseg.shape[0])


def owners(class_logits: torch.Tensor, masks: torch.Tensor, threshold: float) -> torch.Tensor:
    """(H, W) index of the query that wins each pixel among non-void queries above threshold."""
    scores, labels = class_logits.softmax(-1).max(-1)
    eligible = (labels != class_logits.shape[1] - 1) & (scores > threshold)
    weighted = scores.view(-1, 1, 1) * masks.sigmoid()
    weighted[~eligible] = -1
    return weighted.argmax(0)


def full_size(masks: QueryMasks) -> torch.Tensor:
    """(Q, H, W) every mask at once, as the previous masks_to_original did: one (1, Q, h, w)
    image, as the official code does."""
    resized = masks.resized_size
    upsampled = F.interpolate(
        masks.logits[None], size=masks.padded_size, mode="bilinear", align_corners=False
    )[..., : resized[0], : resized[1]]
    if resized != masks.original_size:
        upsampled = F.interpolate(
            upsampled, size=masks.original_size, mode="bilinear", align_corners=False
        )
    return upsampled[0]
