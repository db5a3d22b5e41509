"""The images mapping stacks read as they are: Hydra's packed semantic image and Kimera's colour
labels. ROS-free: pixels only (fcclip_ros.ros.messages makes them messages).

Packed semantic image (`semantic`, 32SC1), what Hydra's instance-image receiver decodes as
`label = v & 0xFFFF`, `instance = v >> 16`:

    v = (object_id << 16) | class_id

with class_id the labels image's value (65535 = unlabeled) and object_id the segment's track id
when tracking is on, else its segment id; 0 where no segment is. Object ids are folded into
1..32767 so that v stays positive as a signed 32-bit integer (an arithmetic `>> 16` of a
negative value would give a negative instance): track 32768 shares the packed id of track 1,
which only matters if both are in view of the map at once.
"""

from __future__ import annotations

import numpy as np

from fcclip_ros.overlay import class_color
from fcclip_ros.result import NO_INSTANCE, Segmentation

MAX_PACKED_ID = 0x7FFF
UNLABELED_COLOR = (0, 0, 0)  # label_colors where no segment is


def packed_object_id(segment_id: int, track_id: int = 0) -> int:
    """The object id of a segment in the packed image: its track id (or segment id), 1..32767."""
    object_id = track_id or segment_id
    return (object_id - 1) % MAX_PACKED_ID + 1


def _per_segment(result: Segmentation, values: dict[int, object], empty: object,
                 dtype: np.dtype | str) -> np.ndarray:
    """A lookup table indexed by segment id (row 0: pixels of no segment)."""
    size = max((segment.id for segment in result.segments), default=NO_INSTANCE) + 1
    table = np.empty((size, *np.shape(empty)), dtype)
    table[...] = empty
    for segment_id, value in values.items():
        table[segment_id] = value
    return table


def semantic_image(result: Segmentation) -> np.ndarray:
    """(H, W) int32: `(object_id << 16) | class_id` per pixel (see the module docstring)."""
    ids = _per_segment(result, {s.id: packed_object_id(s.id, s.track_id) for s in result.segments},
                       0, np.uint32)
    packed = (ids[result.instances] << 16) | result.labels.astype(np.uint32)
    return packed.view(np.int32)


def label_color_image(result: Segmentation) -> np.ndarray:
    """(H, W, 3) uint8: each pixel in its class's colour (overlay.class_color of the class name,
    the colour `fcclip-ros labelspace` writes to the CSV), unblended; black where unlabeled."""
    colors = _per_segment(result, {s.id: class_color(s.label) for s in result.segments},
                          UNLABELED_COLOR, np.uint8)
    return colors[result.instances]
