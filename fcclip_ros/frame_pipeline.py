"""What happens to a camera's frame after the network, for the node, `fcclip-ros bag` and
`fcclip-ros segment` alike. ROS-free (messages are duck-typed).

    colour frame arrives ──▶ add_colour: its depth candidates start to gather (DepthPairing)
    network ──▶ Segmentation ──▶ track ids (SegmentTracker, when tracking)
    depth_for ──▶ the chosen depth, registered to the frame (or None: 2D only, counted)
    frame ──▶ 3D boxes and points (a failure here costs the 3D only, counted) ──▶ Frame
    Frame ──▶ outputs: messages (fcclip_ros.ros.messages) or files (write_files)

One FramePipeline per camera, with the camera's tracker; its `counts` are the 3D counters that
diagnostics and the bag report show.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from fcclip_ros.depth_pairing import DepthPairing, PendingDepth
from fcclip_ros.geometry import (
    MIN_BOX_DEPTH_PIXELS,
    NO_GEOMETRY,
    DepthError,
    DepthFrame,
    SegmentGeometry,
    point_cloud,
    registered_depth,
    segment_geometry,
    write_ply,
)
from fcclip_ros.image_conversion import DEFAULT_MAX_INPUT_PIXELS, ImageConversionError
from fcclip_ros.overlay import OverlayStyle, draw_overlay
from fcclip_ros.result import Segmentation
from fcclip_ros.tracking import SegmentTracker

logger = logging.getLogger(__name__)
MAX_REASONS_LOGGED = 32  # distinct 3D failure reasons logged per camera; later ones only counted


def header_stamp_ns(header: Any) -> int:
    """A std_msgs/Header's stamp in nanoseconds: the key colour and depth are paired by."""
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


@dataclass(frozen=True)
class DepthSource:
    """Where a camera's 3D comes from, and how colour and depth pair."""

    info_topic: str  # named in the reason when no CameraInfo came
    rectified: bool  # back-project through P, else K with the distortion undone (images_rectified)
    max_delay_s: float
    wait_s: float  # how long after a colour frame arrived a depth for it is waited for


@dataclass
class ThreeDCounts:
    frames_3d: int = 0  # with depth, boxes and points
    frames_without_depth: int = 0  # no depth within max_delay_s: 2D only
    frames_depth_refused: int = 0  # depth or CameraInfo unusable (frame, size, encoding): 2D only
    frames_3d_failed: int = 0  # the 3D step raised: 2D only

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class Frame:
    """One segmented frame and everything derived from it; what every output is built from."""

    header: Any  # the input's header, unchanged (None for an image file)
    rgb: np.ndarray  # (H, W, 3) uint8
    result: Segmentation
    model: str
    style: OverlayStyle = field(default_factory=OverlayStyle)
    geometry: Mapping[int, SegmentGeometry] | None = None  # segment id -> 3D box; None: no 3D
    cloud: np.ndarray | None = None  # geometry.POINT_DTYPE; None: no 3D or not asked for

    @cached_property
    def overlay(self) -> np.ndarray:
        """(H, W, 3) uint8, drawn on first use."""
        return draw_overlay(self.rgb, self.result.instances, self.result.segments, self.style)

    def box(self, segment_id: int) -> SegmentGeometry:
        return (self.geometry or {}).get(segment_id, NO_GEOMETRY)


class FramePipeline:
    """One camera's frames from the network's result to a Frame."""

    def __init__(self, model: str, points_stride: int, style: OverlayStyle | None = None,
                 depth: DepthSource | None = None,
                 max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS,
                 tracker: SegmentTracker | None = None,
                 warn: Callable[[str], None] = logger.warning,
                 min_box_depth_pixels: int = MIN_BOX_DEPTH_PIXELS) -> None:
        """`min_box_depth_pixels`: the fewest depth readings a segment's 3D box is made from
        (the setting's default, so every caller that does not pass it agrees)."""
        self.model, self.points_stride = model, points_stride
        self.min_box_depth_pixels = min_box_depth_pixels
        self.tracker = tracker
        self.style = style or OverlayStyle()
        self.depth = depth
        self.max_input_pixels = max_input_pixels
        self.pairing = DepthPairing(depth.max_delay_s, depth.wait_s) if depth else None
        self.camera_info: Any = None  # the latest; replaced whole
        self.counts = ThreeDCounts()
        self._warn = warn
        self._reasons_logged: set[str] = set()

    @property
    def needs_embeddings(self) -> bool:
        """Whether the tracker needs the segments' embeddings (ask the engine for them)."""
        return self.tracker is not None and self.tracker.needs_embeddings

    # ---- depth in ----------------------------------------------------------------------------

    def add_depth(self, msg: Any, now_ns: int) -> None:
        """A depth image (sensor_msgs/Image) has come."""
        if self.pairing is not None:
            self.pairing.add_depth(header_stamp_ns(msg.header), msg, now_ns, len(msg.data))

    def add_camera_info(self, msg: Any) -> None:
        self.camera_info = msg

    def add_colour(self, header: Any, now_ns: int) -> PendingDepth | None:
        """A colour frame has arrived (before the network runs); None without a depth topic."""
        if self.pairing is None:
            return None
        pending = self.pairing.add_colour(header_stamp_ns(header), now_ns)
        pending.colour_frame = header.frame_id  # its depth must be in the same frame
        return pending

    def depth_for(self, pending: PendingDepth | None, image_shape: tuple[int, ...],
                  clock_ns: Callable[[], int] | None = None) -> DepthFrame | None:
        """The depth chosen for a colour frame of `image_shape`, registered to it; None when
        there is none in time or it cannot be used (counted, and logged once per reason).
        With `clock_ns` it waits for a depth that may still come (see DepthPairing)."""
        if self.pairing is None or pending is None:
            return None
        if clock_ns is None:
            msg = self.pairing.take(pending)
        else:
            msg = self.pairing.wait(pending, clock_ns)
        if msg is None:
            self.counts.frames_without_depth += 1
            return None
        try:
            return registered_depth(msg, self.camera_info, image_shape, self.max_input_pixels,
                                    self.depth.info_topic, self.depth.rectified,
                                    pending.colour_frame, self._log_once)
        except (DepthError, ImageConversionError) as error:
            self.counts.frames_depth_refused += 1
            self._log_once(f"no 3D (published in 2D): {error}")
            return None

    # ---- the frame ---------------------------------------------------------------------------

    def frame(self, header: Any, rgb: np.ndarray, result: Segmentation,
              depth: DepthFrame | None = None, with_points: bool = True) -> Frame:
        """The Frame of a result, tracked; with `depth`, its 3D boxes (and points,
        `with_points`). Call it for every segmented frame of the camera, in order."""
        if self.tracker is not None:
            result = self.tracker.track(result)
        geometry = cloud = None
        if depth is not None:
            try:
                geometry = segment_geometry(result.instances, depth.metres, depth.intrinsics,
                                            self.min_box_depth_pixels)
                if with_points:
                    cloud = point_cloud(rgb, result, depth.metres, depth.intrinsics,
                                        self.points_stride)
            except Exception as error:  # whatever the 3D step did, the 2D outputs go out
                geometry = cloud = None
                self.counts.frames_3d_failed += 1
                self._log_once(f"the 3D step failed (published in 2D): {error!r}")
            else:
                self.counts.frames_3d += 1
        return Frame(header, rgb, result, self.model, self.style, geometry, cloud)

    def _log_once(self, reason: str) -> None:
        if reason not in self._reasons_logged and len(self._reasons_logged) < MAX_REASONS_LOGGED:
            self._reasons_logged.add(reason)
            self._warn(reason)


# ---- files (fcclip-ros segment) -----------------------------------------------------------


def segment_records(frame: Frame) -> list[dict[str, Any]]:
    """The Segment message fields of every segment, as JSON-ready dicts."""
    records = []
    for segment in frame.result.segments:
        fields = asdict(segment)
        x, y, width, height = segment.bbox
        fields["bbox"] = {"x_offset": x, "y_offset": y, "width": width, "height": height}
        box = frame.box(segment.id)
        fields["center"] = dict(zip("xyz", box.center, strict=True))
        fields["size"] = dict(zip("xyz", box.size, strict=True))
        fields["depth_pixels"] = box.depth_pixels
        records.append(fields)
    return records


def write_files(prefix: Path, frame: Frame, with_embeddings: bool = True) -> None:
    """`<prefix>_labels.png`, `_instances.png`, `_overlay.png`, `_segments.json`, and where the
    frame has them `_embeddings.npy` (unless not `with_embeddings`) and `_points.ply`."""
    result = frame.result
    cv2.imwrite(f"{prefix}_labels.png", result.labels)
    cv2.imwrite(f"{prefix}_instances.png", result.instances)
    cv2.imwrite(f"{prefix}_overlay.png", frame.overlay[:, :, ::-1])
    document = {"image_size": list(frame.rgb.shape[:2]),
                "vocabulary_version": result.vocabulary_version,
                "segments": segment_records(frame)}
    Path(f"{prefix}_segments.json").write_text(json.dumps(document, indent=2))
    if with_embeddings and result.embeddings is not None:
        np.save(f"{prefix}_embeddings.npy", result.embeddings)
    if frame.cloud is not None:
        write_ply(f"{prefix}_points.ply", frame.cloud)
