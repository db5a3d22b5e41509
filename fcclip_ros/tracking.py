"""Track ids for the segments of one camera, so a consumer (a map, a planner) knows that this
frame's chair is the last frame's chair, also after a passer-by hid it for a second.

Things are matched to tracks as an assignment problem (scipy's linear_sum_assignment) on
appearance (cosine of the segment embeddings against a track's running mean) plus mask overlap
(IoU on a coarse grid), with two gates, so that two far-apart or dissimilar segments never
match:

- overlap: IoU ≥ `min_iou` with the track's last mask, and (when both have embeddings) a cosine
  ≥ `min_cosine`;
- appearance (re-identification once overlap is gone): cosine ≥ `reid_cosine` and the segment's
  centre within max(`reid_radius`, half the object's size) + `reid_radius_growth` * frames
  missed (in units of the image's long side) of the track's last centre. There is no motion
  model: centres of partly hidden masks make velocities wrong exactly when they would matter.

Identity is appearance and position, not class: a thing whose class flips (a vocabulary swap, a
close call between two classes) keeps its id; a different class only costs `class_penalty`.
Stuff keeps one id per class id, forever (up to `max_tracks` classes, the least recently seen
forgotten first): there is one wall, and a wall seen again is the same wall.

Ids start at 1 and come from one counter per Tracker that `reset()` does not rewind, so an id is
never given to two objects in the Tracker's lifetime (a lifecycle cleanup resets the tracks, and
a consumer that kept an old id must not see it reused). Everything is deterministic: the same
input sequence gives the same ids.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import numpy as np
from scipy.optimize import linear_sum_assignment

from fcclip_ros.result import Segmentation
from fcclip_ros.settings import TRACKER_SETTINGS

_FORBIDDEN = 1e6  # cost of a gated pair; larger than any score difference


# A thing track's per-slot arrays: what state() saves of each live slot.
_SLOT_ARRAYS = ("ids", "classes", "last_seen", "centres", "extents", "seen", "areas", "masks",
                "boxes", "appearance")


class _Masks(NamedTuple):
    """A frame's segment masks however they came (an array of masks, or an id image)."""

    shape: tuple[int, int]  # (H, W)
    coarse: Callable[[np.ndarray, int], np.ndarray]  # (rows, step) -> bool [len(rows), h, w]
    full: Callable[[int], np.ndarray]  # row -> bool (H, W)


@dataclass(frozen=True)
class TrackerConfig:
    """How a Tracker matches; every field has a default that suits 15-30 Hz cameras."""

    # 60 frames: 2 s at 30 Hz, 4 s at 15 Hz, long enough for a person to walk past an object,
    # short enough that the gate (which grows with the frames missed) stays local.
    max_lost_frames: int = 60
    max_tracks: int = 256  # thing tracks kept (the oldest lost dropped first); also stuff classes
    grid_cells: int = 96  # long side of the coarse grid that overlap is computed on
    min_iou: float = 0.1
    min_cosine: float = 0.3
    reid_cosine: float = 0.6
    reid_radius: float = 0.05
    reid_radius_growth: float = 0.01
    overlap_weight: float = 1.0  # 0: overlap neither scores nor opens the gate
    class_penalty: float = 0.1
    appearance_momentum: float = 0.9  # running mean: weight of the old appearance

    @classmethod
    def from_settings(cls, values: Mapping[str, Any]) -> TrackerConfig:
        """The config of the `tracking_*` settings (fcclip_ros.settings) in `values`."""
        return cls(**{field: values[name] for name, field in TRACKER_SETTINGS.items()
                      if name in values})


class Tracker:
    """Track ids for one camera's segments; see the module docstring for how they are matched."""

    def __init__(self, config: TrackerConfig | None = None) -> None:
        self.config = config or TrackerConfig()
        if self.config.max_tracks < 1 or self.config.grid_cells < 1:
            raise ValueError("max_tracks and grid_cells must be at least 1")
        self._next_id = 1
        self.reset()

    def reset(self) -> None:
        """Forget every track; the id counter keeps counting, so no id is ever given twice."""
        capacity = self.config.max_tracks
        self._frame = 0
        self._ids = np.zeros(capacity, np.uint32)  # 0: a free slot
        self._classes = np.zeros(capacity, np.int64)
        self._last_seen = np.zeros(capacity, np.int64)
        self._centres = np.zeros((capacity, 2))
        self._extents = np.zeros(capacity)  # the longer side of the box
        self._seen = np.zeros(capacity, np.int64)  # frames with an embedding
        self._areas = np.zeros(capacity, np.float32)
        self._grid: tuple[int, int] | None = None
        self._masks = np.zeros((capacity, 0, 0), bool)
        self._boxes = np.zeros((capacity, 4), np.int64)
        self._appearance = np.zeros((capacity, 0), np.float32)
        self._stuff: OrderedDict[int, int] = OrderedDict()

    @property
    def track_count(self) -> int:
        """Thing tracks and stuff classes remembered (memory is bounded by 2 * max_tracks)."""
        return int(np.count_nonzero(self._ids)) + len(self._stuff)

    def update(self, masks: np.ndarray, class_ids: np.ndarray, is_thing: np.ndarray,
               embeddings: np.ndarray | None) -> np.ndarray:
        """The track ids (uint32 [N], ≥ 1) of one frame's N segments.

        masks bool [N, H, W], class_ids int [N], is_thing bool [N], embeddings float32 [N, D]
        unit-norm or None (then overlap alone matches). Anything np.asarray takes (CPU torch
        tensors too) will do. Every call is one frame, also one without segments.
        """
        masks = np.asarray(masks, bool)
        return self._update(_Masks(masks.shape[1:], lambda rows, step: masks[rows, ::step, ::step],
                                   lambda row: masks[row]),
                            masks.shape[0], class_ids, is_thing, embeddings)

    def update_image(self, instances: np.ndarray, segment_ids: np.ndarray,
                     class_ids: np.ndarray, is_thing: np.ndarray,
                     embeddings: np.ndarray | None) -> np.ndarray:
        """update() for segments given as an id image ((H, W), segment_ids [N] its values), as
        the engine returns them: only the coarse grid is compared, no [N, H, W] masks made."""
        instances = np.asarray(instances)
        segment_ids = np.asarray(segment_ids).reshape(-1)

        def coarse(rows: np.ndarray, step: int) -> np.ndarray:
            return instances[None, ::step, ::step] == segment_ids[rows, None, None]

        return self._update(_Masks(instances.shape, coarse,
                                   lambda row: instances == segment_ids[row]),
                            segment_ids.size, class_ids, is_thing, embeddings)

    def _update(self, masks: _Masks, count: int, class_ids: np.ndarray, is_thing: np.ndarray,
                embeddings: np.ndarray | None) -> np.ndarray:
        class_ids = np.asarray(class_ids, np.int64).reshape(count)
        is_thing = np.asarray(is_thing, bool).reshape(count)
        if embeddings is not None:
            embeddings = np.asarray(embeddings, np.float32)
            if embeddings.ndim != 2 or len(embeddings) != count:
                raise ValueError(f"embeddings of shape {embeddings.shape} for {count} segments")
        self._frame += 1
        self._expire()
        ids = np.zeros(count, np.uint32)
        for index in np.flatnonzero(~is_thing):
            ids[index] = self._stuff_id(int(class_ids[index]))
        things = np.flatnonzero(is_thing)
        if things.size:
            ids[things] = self._match_things(
                masks, things, class_ids[things],
                None if embeddings is None else embeddings[things])
        return ids

    def state(self) -> dict[str, np.ndarray]:
        """Everything the next update() depends on, as plain arrays (np.savez stores them without
        pickle): restore() on a Tracker of the same config goes on exactly as this one would."""
        live = np.flatnonzero(self._ids)
        return {
            "counters": np.array([self._next_id, self._frame], np.int64),
            "max_tracks": np.array(self.config.max_tracks, np.int64),
            "grid": np.array(self._grid or (0, 0), np.int64),
            "slots": live.astype(np.int64),
            **{name: getattr(self, f"_{name}")[live] for name in _SLOT_ARRAYS},
            "masks": np.packbits(self._masks[live], axis=-1),  # 8 cells a byte
            "stuff": np.array(list(self._stuff.items()), np.int64).reshape(-1, 2),
        }

    def restore(self, state: dict[str, np.ndarray]) -> None:
        """Continue from a state() (ValueError, and nothing changed, when it does not fit)."""
        restored = Tracker(self.config)
        capacity = self.config.max_tracks
        try:
            restored._next_id, restored._frame = (int(v) for v in np.reshape(state["counters"], 2))
            grid = tuple(int(v) for v in np.reshape(state["grid"], 2))
            slots = np.asarray(state["slots"], np.int64).reshape(-1)
            if int(state["max_tracks"]) != capacity:  # slots and eviction depend on it
                raise ValueError(f"made with max_tracks {int(state['max_tracks'])}")
            if (np.unique(slots).size != slots.size or restored._next_id < 1
                    or not np.all((slots >= 0) & (slots < capacity))):
                raise ValueError("slots or counters out of range")
            restored._grid = grid if grid != (0, 0) else None
            restored._masks = np.zeros((capacity, *grid), bool)
            restored._appearance = np.zeros((capacity, np.shape(state["appearance"])[1]),
                                            np.float32)
            columns = {name: np.asarray(state[name]) for name in _SLOT_ARRAYS}
            columns["masks"] = np.unpackbits(columns["masks"].astype(np.uint8, copy=False),
                                             axis=-1, count=grid[1]).astype(bool)
            for name, values in columns.items():
                column = getattr(restored, f"_{name}")
                if values.shape != column[slots].shape:
                    raise ValueError(f"{name} has shape {values.shape}")
                column[slots] = values
            if np.any(restored._ids[slots] == 0):
                raise ValueError("a track without an id")
            stuff = np.asarray(state["stuff"], np.int64).reshape(-1, 2)
            if len(stuff) > capacity:
                raise ValueError(f"{len(stuff)} stuff classes")
            restored._stuff = OrderedDict((int(key), int(value)) for key, value in stuff)
        except (KeyError, IndexError, TypeError, ValueError) as error:
            raise ValueError(f"the tracker state does not fit this tracker: {error}") from error
        vars(self).update(vars(restored))

    def _new_id(self) -> int:
        track_id = self._next_id
        self._next_id += 1
        return track_id

    def _stuff_id(self, class_id: int) -> int:
        if class_id not in self._stuff:
            if len(self._stuff) >= self.config.max_tracks:
                self._stuff.popitem(last=False)
            self._stuff[class_id] = self._new_id()
        self._stuff.move_to_end(class_id)
        return self._stuff[class_id]

    def _expire(self) -> None:
        missed = self._frame - self._last_seen - 1
        self._ids[missed > self.config.max_lost_frames] = 0

    def _match_things(self, masks: _Masks, things: np.ndarray, class_ids: np.ndarray,
                      embeddings: np.ndarray | None) -> np.ndarray:
        """Ids of the segments `things` of `masks` (only their coarse grid is ever made)."""
        config = self.config
        count, (height, width) = things.size, masks.shape
        step = max(1, -(-max(height, width) // config.grid_cells))
        coarse = masks.coarse(things, step)
        if coarse.shape[1:] != self._grid:  # a new image size: old masks cannot be compared
            self._grid = coarse.shape[1:]
            self._masks = np.zeros((config.max_tracks, *self._grid), bool)
            self._boxes[:] = 0
            self._areas[:] = 0
        scale = max(height, width)
        areas = coarse.sum(axis=(1, 2)).astype(np.float32)
        boxes = _boxes(coarse)
        centres = _centres(masks, things, coarse, areas, step)
        extents = np.maximum(boxes[:, 1] - boxes[:, 0], boxes[:, 3] - boxes[:, 2]) * step / scale
        if embeddings is not None and embeddings.shape[1] != self._appearance.shape[1]:
            self._appearance = np.zeros((config.max_tracks, embeddings.shape[1]), np.float32)
            self._seen[:] = 0  # another embedding model: old appearances say nothing

        live = np.flatnonzero(self._ids)
        matches: dict[int, int] = {}
        if live.size:
            intersection = _intersections(coarse, boxes, self._masks[live], self._boxes[live])
            union = areas[:, None] + self._areas[live][None, :] - intersection
            iou = intersection / np.maximum(union, 1.0)
            missed = self._frame - self._last_seen[live] - 1
            distance = np.linalg.norm(centres[:, None, :] - self._centres[live][None], axis=2)
            radius = (np.maximum(config.reid_radius, 0.5 * self._extents[live])
                      + config.reid_radius_growth * missed)
            near = distance <= radius
            overlapping = (config.overlap_weight > 0) & (iou >= config.min_iou)
            known = np.zeros((count, live.size), bool)
            cosine = np.zeros((count, live.size), np.float32)
            if embeddings is not None:
                # Only pairs that a gate could let through: no BLAS product (see _intersections).
                rows, cols = np.nonzero((overlapping | near) & (self._seen[live] > 0)[None])
                known[rows, cols] = True
                cosine[rows, cols] = np.einsum("pd,pd->p", embeddings[rows],
                                               self._appearance[live[cols]])
            by_overlap = overlapping & (~known | (cosine >= config.min_cosine))
            by_appearance = known & (cosine >= config.reid_cosine) & near
            allowed = by_overlap | by_appearance
            score = (config.overlap_weight * iou + np.where(known, cosine, 0.0)
                     - config.class_penalty * (class_ids[:, None] != self._classes[live][None]))
            rows, cols = linear_sum_assignment(np.where(allowed, -score, _FORBIDDEN))
            matches = {int(row): int(live[col]) for row, col in zip(rows, cols, strict=True)
                       if allowed[row, col]}

        ids = np.zeros(count, np.uint32)
        for index in range(count):
            slot = matches.get(index)
            if slot is None:
                ids[index] = self._new_id()
                slot = self._free_slot()
                if slot is None:  # more things in one frame than max_tracks: not kept
                    continue
                self._ids[slot] = ids[index]
                self._seen[slot] = 0
                self._extents[slot] = 0.0
            else:
                ids[index] = self._ids[slot]
            self._classes[slot] = class_ids[index]
            self._last_seen[slot] = self._frame
            self._centres[slot] = centres[index]
            # The object's size, not of its visible part: a partly hidden object keeps it a while.
            self._extents[slot] = max(extents[index], 0.9 * self._extents[slot])
            self._masks[slot] = coarse[index]
            self._boxes[slot] = boxes[index]
            self._areas[slot] = areas[index]
            if embeddings is not None:
                self._blend_appearance(slot, embeddings[index])
        return ids

    def _free_slot(self) -> int | None:
        """A free slot, else the one of the longest-lost track (the oldest id on a tie)."""
        free = np.flatnonzero(self._ids == 0)
        if free.size:
            return int(free[0])
        lost = np.flatnonzero(self._last_seen < self._frame)
        if not lost.size:
            return None
        order = np.lexsort((self._ids[lost], self._last_seen[lost]))
        return int(lost[order[0]])

    def _blend_appearance(self, slot: int, embedding: np.ndarray) -> None:
        self._seen[slot] += 1
        new_weight = max(1.0 / self._seen[slot], 1.0 - self.config.appearance_momentum)
        blended = (1.0 - new_weight) * self._appearance[slot] + new_weight * embedding
        self._appearance[slot] = blended / max(float(np.linalg.norm(blended)), 1e-12)


class SegmentTracker:
    """A camera's Tracker fed with the engine's results: sets `Segment.track_id`.

    Classes are told apart by name, not by class id, so that a vocabulary swap (which renumbers
    the classes) keeps every stuff id and costs no thing its identity. In semantic mode every
    segment is all of one class in the image, so each is tracked as stuff: one id per class.
    """

    def __init__(self, config: TrackerConfig | None = None, panoptic: bool = True) -> None:
        self.tracker = Tracker(config)
        self.panoptic = panoptic

    @property
    def needs_embeddings(self) -> bool:
        """Things are matched by appearance too (panoptic only)."""
        return self.panoptic

    def track(self, result: Segmentation) -> Segmentation:
        """`result` with every segment's track_id set (the other fields untouched)."""
        segments = result.segments
        ids = self.tracker.update_image(
            result.instances, np.array([s.id for s in segments], np.int64),
            np.array([class_key(s.label) for s in segments], np.int64),
            np.array([s.is_thing and self.panoptic for s in segments], bool),
            result.embeddings if self.panoptic else None)
        tracked = [replace(s, track_id=int(i)) for s, i in zip(segments, ids, strict=True)]
        return replace(result, segments=tracked)

    def reset(self) -> None:
        self.tracker.reset()


def class_key(name: str) -> int:
    """A class's identity for the tracker: the same for the same name in every vocabulary."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=7).digest(), "little")


def _boxes(coarse: np.ndarray) -> np.ndarray:
    """(top, bottom, left, right) of each mask on the coarse grid, ends excluded; all 0 for an
    empty mask."""
    sides = []
    for occupied in (coarse.any(axis=2), coarse.any(axis=1)):
        first = occupied.argmax(axis=1)
        end = occupied.shape[1] - occupied[:, ::-1].argmax(axis=1)
        present = occupied.any(axis=1)
        sides += [np.where(present, first, 0), np.where(present, end, 0)]
    return np.stack(sides, axis=1)


def _intersections(coarse: np.ndarray, boxes: np.ndarray, track_masks: np.ndarray,
                   track_boxes: np.ndarray) -> np.ndarray:
    """Cells shared by each segment and each track, counted only where their boxes meet: a few
    small slices instead of a matrix product over every cell (BLAS threads fight a busy CPU)."""
    top = np.maximum(boxes[:, None, 0], track_boxes[None, :, 0])
    bottom = np.minimum(boxes[:, None, 1], track_boxes[None, :, 1])
    left = np.maximum(boxes[:, None, 2], track_boxes[None, :, 2])
    right = np.minimum(boxes[:, None, 3], track_boxes[None, :, 3])
    shared = np.zeros(top.shape, np.float32)
    for row, col in zip(*np.nonzero((top < bottom) & (left < right)), strict=True):
        window = np.s_[top[row, col]:bottom[row, col], left[row, col]:right[row, col]]
        shared[row, col] = np.count_nonzero(coarse[row][window] & track_masks[col][window])
    return shared


def _centres(masks: _Masks, things: np.ndarray, coarse: np.ndarray, areas: np.ndarray,
             step: int) -> np.ndarray:
    """(x, y) centre of each mask in units of the image's long side; a mask too small for the
    coarse grid is measured at full resolution."""
    rows = (coarse.sum(axis=2) * (np.arange(coarse.shape[1]) * step + (step - 1) / 2)).sum(1)
    cols = (coarse.sum(axis=1) * (np.arange(coarse.shape[2]) * step + (step - 1) / 2)).sum(1)
    centres = np.stack([cols, rows], axis=1) / np.maximum(areas, 1.0)[:, None]
    for index in np.flatnonzero(areas == 0):
        ys, xs = np.nonzero(masks.full(int(things[index])))
        centres[index] = (xs.mean(), ys.mean()) if xs.size else (0.0, 0.0)
    return centres / max(masks.shape)
