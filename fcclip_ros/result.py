"""What the engine returns for one image: maps at the input resolution plus the segment list."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

UNLABELED = 65535  # labels-image value of pixels no segment owns (vision_msgs uint16 convention)
NO_INSTANCE = 0  # instances-image value of pixels no segment owns


@dataclass(frozen=True)
class Segment:
    """One segment; the fields of fcclip_ros/msg/Segment (bbox as x, y, width, height)."""

    id: int  # pixel value in the instances image, 1..65534
    class_id: int  # index into the vocabulary; pixel value in the labels image
    label: str  # display name of the class (its first synonym)
    score: float  # class probability of the segment, 0..1
    is_thing: bool
    area: int  # pixels at the input resolution
    bbox: tuple[int, int, int, int]  # x_offset, y_offset, width, height of the tight box
    track_id: int = 0  # the object's id across frames (fcclip_ros.tracking); 0: not tracked


@dataclass
class Segmentation:
    """Result for one image, every map at the input image's resolution.

    `embeddings` (when requested) has one row per segment, in the order of `segments` (ids
    ascending): the L2-normalised CLIP image embedding FC-CLIP's out-of-vocabulary classifier
    scored for the segment's query, in CLIP's joint image-text space (compare with text by
    cosine). A segment merged from several queries (stuff; every semantic-mode segment) has the
    mean of their normalised embeddings weighted by each query's share of the segment,
    re-normalised (see fcclip_ros.postprocess).
    """

    labels: np.ndarray  # (H, W) uint16 class id, UNLABELED where no segment
    instances: np.ndarray  # (H, W) uint16 segment id, NO_INSTANCE where none
    confidence: np.ndarray | None  # (H, W) float32 in 0..1, None when not requested
    segments: list[Segment]
    vocabulary_version: int = 0
    embeddings: np.ndarray | None = None  # (N, D) float32, None when not requested
