"""Depth and camera geometry for the 3D outputs, without ROS: depth images in metres, pinhole
intrinsics, per-segment 3D boxes, labelled point clouds and PLY files.

Depth must be registered to the colour image (one depth reading per colour pixel, in the colour
camera's optical frame: x right, y down, z forward), as RealSense `aligned_depth_to_color`, ZED
and Orbbec publish it. 0, NaN and infinity mean "no reading". Same size is not enough: the depth
image's and the CameraInfo's header frame_id must be the colour image's (check_same_frame).

A segment's 3D box comes from its *interior* depth pixels: the segment mask is eroded by
`EROSION_PX` pixels (a square window), because the pixels at object borders are where depth
cameras put "flying pixels" halfway between the object and the background. On each axis the box
spans the `BOX_PERCENTILES` of the interior points (not their min/max, which one stray reading
would stretch), and `center` is the middle of that span. A segment too thin to keep
`MIN_INTERIOR_PIXELS` after erosion uses its valid pixels that are not on a depth step instead
(on_depth_step: a reading between its two opposite neighbours' is a flying pixel; a thin
object's own pixels stand in front of both). A segment with fewer than `min_pixels` readings so
chosen (MIN_BOX_DEPTH_PIXELS by default) has no box.

Lens distortion follows REP 104 (CameraInfo describes the *raw* image): pixels of a raw image
from a camera with distortion (non-zero D) are undistorted through K and D before
back-projection; a rectified image (`rectified`: an `image_rect*` topic, see
fcclip_ros.topics.is_rectified_topic), or a camera without distortion, is a pinhole image of
P (K where P is unset). Points are in the image's own optical frame; R (stereo rectification)
is not applied. CameraInfo's binning and region of interest scale and shift K and P to the
image as sent, as image_geometry does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from fcclip_ros.image_conversion import DEFAULT_MAX_INPUT_PIXELS, check_pixel_count
from fcclip_ros.result import NO_INSTANCE, Segmentation

EROSION_PX = 2  # pixels peeled off every segment border before its depth is used
BOX_PERCENTILES = (5.0, 95.0)  # the box's extent on each axis, over the interior points
MIN_INTERIOR_PIXELS = 10  # below this, a segment's box uses its valid pixels off depth steps
DEPTH_STEP = 0.05  # a jump, as a fraction of the reading's depth, that marks a depth step
MIN_BOX_DEPTH_PIXELS = 20  # a segment with fewer usable depth pixels gets no box
DEPTH_ENCODINGS = {"16UC1": 1e-3, "mono16": 1e-3, "32FC1": 1.0}  # encoding -> metres per unit
# The coefficient counts OpenCV's lens model takes: k1 k2 p1 p2 [k3 [k4 k5 k6 [s1 s2 s3 s4
# [tau_x tau_y]]]]; plumb_bob and rational_polynomial are that one model (OAK/depthai publishes
# 14 coefficients as rational_polynomial).
OPENCV_COEFFICIENT_COUNTS = (4, 5, 8, 12, 14)
# CameraInfo distortion_model -> the numbers of coefficients OpenCV's model of it takes.
DISTORTION_MODELS = {"plumb_bob": OPENCV_COEFFICIENT_COUNTS,
                     "rational_polynomial": OPENCV_COEFFICIENT_COUNTS, "equidistant": (4,)}
UNDISTORT_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-10)
POINT_DTYPE = np.dtype([
    ("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
    ("r", "u1"), ("g", "u1"), ("b", "u1"),
    ("label", "<u2"), ("instance", "<u2"),
])


class DepthError(ValueError):
    """A depth image or camera calibration that cannot give 3D; the message says why."""


@dataclass(frozen=True)
class Intrinsics:
    """Intrinsics of an image of `width` x `height` pixels: a pinhole camera matrix and, for a
    raw image of a camera with lens distortion, the distortion to undo (see the module
    docstring)."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    distortion_model: str = ""  # "" when the pixels need no undistortion
    distortion: tuple[float, ...] = ()

    @classmethod
    def from_camera_info(cls, width: int, height: int, k: Sequence[float],
                         p: Sequence[float] = (), d: Sequence[float] = (),
                         distortion_model: str = "", rectified: bool = False,
                         binning: tuple[int, int] = (1, 1),
                         roi: tuple[int, int, int, int] = (0, 0, 0, 0)) -> Intrinsics:
        """From sensor_msgs/CameraInfo fields (row-major 3x3 K, 3x4 P, D and its model), for a
        raw image or, with `rectified`, for the rectified image P describes. `width` and
        `height` are the calibrated (full) resolution; the image is the region `roi` (x_offset,
        y_offset, width, height; all 0: the whole) of it, downsampled by `binning` (x, y; 0
        means 1), as image_geometry's PinholeCameraModel reads them."""
        distortion = tuple(float(v) for v in d)
        distorted = not rectified and any(v != 0.0 for v in distortion)
        if distorted:
            counts = DISTORTION_MODELS.get(distortion_model)
            if counts is None:
                raise DepthError(
                    f"camera info has distortion model {distortion_model!r}, which is not one of "
                    f"{', '.join(DISTORTION_MODELS)}: segment rectified images (image_rect) instead"
                )
            if len(distortion) not in counts:
                *others, last = map(str, counts)
                expected = f"{', '.join(others)} or {last}" if others else last
                raise DepthError(f"camera info has {len(distortion)} {distortion_model} distortion "
                                 f"coefficients, not {expected}")
            if not all(np.isfinite(distortion)):
                raise DepthError(f"camera info has non-finite distortion coefficients {d}")
        if not distorted and len(p) == 12 and p[0] > 0 and p[5] > 0:
            fx, cx, fy, cy = p[0], p[2], p[5], p[6]
        elif len(k) == 9:
            fx, cx, fy, cy = k[0], k[2], k[4], k[5]
        else:
            raise DepthError(f"camera info has no camera matrix (K has {len(k)} values)")
        values = [float(v) for v in (fx, fy, cx, cy)]
        if not all(np.isfinite(values)) or values[0] <= 0 or values[1] <= 0:
            raise DepthError(f"camera info has no usable focal length (fx={fx}, fy={fy})")
        if width <= 0 or height <= 0:
            raise DepthError(f"camera info gives no image size ({width}x{height})")
        fx, fy, cx, cy, width, height = _binned_region(*values, int(width), int(height),
                                                       binning, roi)
        return cls(fx, fy, cx, cy, width=width, height=height,
                   distortion_model=distortion_model if distorted else "",
                   distortion=distortion if distorted else ())

    def check_image(self, width: int, height: int) -> None:
        if (width, height) != (self.width, self.height):
            raise DepthError(
                f"camera info is for {self.width}x{self.height} images but the colour image is "
                f"{width}x{height}"
            )


def _binned_region(fx: float, fy: float, cx: float, cy: float, width: int, height: int,
                   binning: tuple[int, int], roi: tuple[int, int, int, int]
                   ) -> tuple[float, float, float, float, int, int]:
    """The camera matrix and size of a region of interest of the calibrated image, binned: the
    principal point moves by the region's offset, then focal lengths and principal point scale
    by 1 / binning (sensor_msgs/CameraInfo's definition, as image_geometry applies it)."""
    binning_x, binning_y = (max(int(b), 1) for b in binning)
    x_offset, y_offset, roi_width, roi_height = (int(v) for v in roi)
    if not any((x_offset, y_offset, roi_width, roi_height)):
        roi_width, roi_height = width, height
    if x_offset + roi_width > width or y_offset + roi_height > height:
        raise DepthError(
            f"camera info's roi ({roi_width}x{roi_height} at {x_offset},{y_offset}) does not lie "
            f"within its {width}x{height} image"
        )
    binned = (roi_width // binning_x, roi_height // binning_y)
    if 0 in binned:
        raise DepthError(f"camera info's roi {roi_width}x{roi_height} binned "
                         f"{binning_x}x{binning_y} leaves no image")
    return (fx / binning_x, fy / binning_y, (cx - x_offset) / binning_x,
            (cy - y_offset) / binning_y, *binned)


@dataclass(frozen=True)
class DepthFrame:
    """A depth image registered to a colour image, and the intrinsics of their pixels."""

    metres: np.ndarray  # (H, W) float32, NaN where there is no reading
    intrinsics: Intrinsics


def read_camera_info_yaml(path: str | Path, rectified: bool = False) -> Intrinsics:
    """The intrinsics in a ROS camera calibration YAML (camera_calibration_parsers' format:
    image_width, image_height, camera_matrix, distortion_model, distortion_coefficients,
    projection_matrix, ...) for a raw image, or a rectified one. Parsed as plain data."""
    try:
        document = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise DepthError(f"cannot read camera info {path}: {error}") from None
    if not isinstance(document, Mapping):
        raise DepthError(f"{path} is not a camera calibration YAML")

    def matrix(name: str, size: int | None) -> list[float]:
        data = document.get(name, {})
        data = data.get("data") if isinstance(data, Mapping) else None
        if data is None:
            return []
        shape = f"{size} numbers" if size else "numbers"
        if not isinstance(data, list) or (size is not None and len(data) != size):
            raise DepthError(f"{path}: {name}.data must hold {shape}")
        try:
            return [float(value) for value in data]
        except (TypeError, ValueError):
            raise DepthError(f"{path}: {name}.data must hold {shape}") from None

    try:
        width, height = int(document["image_width"]), int(document["image_height"])
    except (KeyError, TypeError, ValueError):
        raise DepthError(f"{path}: image_width and image_height are required") from None
    return Intrinsics.from_camera_info(
        width, height, matrix("camera_matrix", 9), matrix("projection_matrix", 12),
        matrix("distortion_coefficients", None), str(document.get("distortion_model", "")),
        rectified,
    )


def depth_in_metres(depth: np.ndarray, metres_per_unit: float) -> np.ndarray:
    """(H, W) float32 metres, NaN where there is no reading (0, NaN, infinity, negative)."""
    metres = depth.astype(np.float32) * np.float32(metres_per_unit)
    metres[~(np.isfinite(metres) & (metres > 0))] = np.nan
    return metres


def depth_from_message(msg: Any, max_pixels: int = DEFAULT_MAX_INPUT_PIXELS) -> np.ndarray:
    """Metres (H, W) float32 of a sensor_msgs/Image (duck-typed) in 16UC1 (mm) or 32FC1 (m)."""
    if msg.encoding not in DEPTH_ENCODINGS:
        raise DepthError(
            f"depth encoding {msg.encoding!r} is not one of {', '.join(DEPTH_ENCODINGS)}"
        )
    check_pixel_count(msg.width, msg.height, max_pixels)
    itemsize = 4 if msg.encoding == "32FC1" else 2
    row = msg.width * itemsize
    if msg.step < row or len(msg.data) < msg.step * msg.height or msg.width * msg.height == 0:
        raise DepthError(
            f"depth image {msg.width}x{msg.height} {msg.encoding} with step {msg.step} does not "
            f"fit its {len(msg.data)} bytes"
        )
    dtype = np.dtype("f4" if itemsize == 4 else "u2").newbyteorder(
        ">" if msg.is_bigendian else "<")
    rows = np.frombuffer(memoryview(msg.data)[: msg.step * msg.height], np.uint8)
    rows = rows.reshape(msg.height, msg.step)[:, :row]
    return depth_in_metres(rows.copy().view(dtype), DEPTH_ENCODINGS[msg.encoding])


def check_registered(depth_shape: tuple[int, ...], shape: tuple[int, ...]) -> None:
    """Refuse depth that is not pixel-aligned with the colour image ((height, width) each)."""
    if tuple(depth_shape[:2]) != tuple(shape[:2]):
        (height, width), (depth_height, depth_width) = shape[:2], depth_shape[:2]
        raise DepthError(
            f"depth image is {depth_width}x{depth_height} but the colour image is "
            f"{width}x{height}: the depth must be registered to the colour image (e.g. "
            "RealSense aligned_depth_to_color)"
        )


def check_same_frame(colour_frame: str, depth_frame: str, info_frame: str) -> list[str]:
    """Refuse (DepthError) a depth image or CameraInfo whose header names another frame than
    the colour image's: registered depth, and the colour camera's CameraInfo, are in the colour
    camera's optical frame (RealSense aligned_depth_to_color, OAK depth aligned to RGB). A
    leading "/" is ignored, as tf2 does. Returns the messages without a frame_id, whose
    registration cannot be checked."""
    colour, depth, info = (frame.lstrip("/") for frame in (colour_frame, depth_frame, info_frame))
    registered = ("the depth must be registered to the colour image, in its optical frame (e.g. "
                  "RealSense: use aligned_depth_to_color, not depth)")
    if depth and colour and depth != colour:
        raise DepthError(f"the depth image is in frame {depth!r} but the colour image in "
                         f"{colour!r}: {registered}")
    if info and colour and info != colour:
        raise DepthError(f"the camera info is for frame {info!r} but the colour image is in "
                         f"{colour!r}: give the colour camera's CameraInfo (camera_info_topics)")
    if depth and info and depth != info:
        raise DepthError(f"the depth image is in frame {depth!r} but the camera info in "
                         f"{info!r}: {registered}")
    names = {"colour image": colour, "depth image": depth, "camera info": info}
    return [name for name, frame in names.items() if not frame]


def registered_depth(depth_msg: Any, camera_info: Any | None, image_shape: tuple[int, ...],
                     max_pixels: int = DEFAULT_MAX_INPUT_PIXELS,
                     info_topic: str = "camera_info", rectified: bool = False,
                     colour_frame: str | None = None,
                     warn: Callable[[str], None] | None = None) -> DepthFrame:
    """The depth (sensor_msgs/Image) and CameraInfo (duck-typed) of a colour image of
    `image_shape` (`rectified` or raw) and header frame_id `colour_frame` (None: frames not
    compared), checked against it before decoding; DepthError or ImageConversionError says why
    they cannot be used. An empty frame_id cannot be checked: the depth is taken as registered
    and `warn` is told why."""
    if camera_info is None:
        raise DepthError(f"no CameraInfo received on {info_topic} yet")
    if colour_frame is not None:
        unnamed = check_same_frame(colour_frame, depth_msg.header.frame_id,
                                   camera_info.header.frame_id)
        if unnamed and warn is not None:
            warn(f"cannot check that the depth is registered to the colour image: the "
                 f"{' and the '.join(unnamed)} {'have' if len(unnamed) > 1 else 'has'} no "
                 "frame_id; taken as registered")
    height, width = image_shape[:2]
    roi = camera_info.roi
    intrinsics = Intrinsics.from_camera_info(
        camera_info.width, camera_info.height, camera_info.k, camera_info.p, camera_info.d,
        camera_info.distortion_model, rectified, (camera_info.binning_x, camera_info.binning_y),
        (roi.x_offset, roi.y_offset, roi.width, roi.height))
    intrinsics.check_image(width, height)
    check_registered((depth_msg.height, depth_msg.width), (height, width))
    return DepthFrame(depth_from_message(depth_msg, max_pixels), intrinsics)


@dataclass(frozen=True)
class SegmentGeometry:
    """A segment's robust 3D box in the camera's optical frame, metres."""

    center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    size: tuple[float, float, float] = (0.0, 0.0, 0.0)
    depth_pixels: int = 0  # the valid depth pixels the box was computed from; 0 = no 3D


NO_GEOMETRY = SegmentGeometry()


def back_project(rows: np.ndarray, cols: np.ndarray, z: np.ndarray,
                 intrinsics: Intrinsics) -> np.ndarray:
    """(N, 3) float32 points of pixels (rows, cols) at depths z (pixel centres)."""
    z = z.astype(np.float32)
    if intrinsics.distortion:
        rays = undistorted_rays(intrinsics)[rows, cols]  # (N, 2): x / z, y / z
        return np.stack([rays[:, 0] * z, rays[:, 1] * z, z], axis=1)
    x = (cols.astype(np.float32) - np.float32(intrinsics.cx)) * z / np.float32(intrinsics.fx)
    y = (rows.astype(np.float32) - np.float32(intrinsics.cy)) * z / np.float32(intrinsics.fy)
    return np.stack([x, y, z], axis=1)


@functools.lru_cache(maxsize=4)
def undistorted_rays(intrinsics: Intrinsics) -> np.ndarray:
    """(H, W, 2) float32: x / z and y / z of the ray through each pixel centre of a raw image,
    its lens distortion undone. Computing it takes tens of milliseconds, so the maps of the
    last few cameras are kept (8 bytes per pixel each)."""
    rows, cols = np.mgrid[0 : intrinsics.height, 0 : intrinsics.width]
    pixels = np.stack([cols, rows], axis=-1).reshape(-1, 1, 2).astype(np.float64)
    camera = np.array([[intrinsics.fx, 0.0, intrinsics.cx], [0.0, intrinsics.fy, intrinsics.cy],
                       [0.0, 0.0, 1.0]])
    coefficients = np.array(intrinsics.distortion)
    if intrinsics.distortion_model == "equidistant":
        rays = cv2.fisheye.undistortPoints(pixels, camera, coefficients,
                                           criteria=UNDISTORT_CRITERIA)
    else:
        rays = cv2.undistortPointsIter(pixels, camera, coefficients, None, None,
                                       UNDISTORT_CRITERIA)
    rays = rays.reshape(intrinsics.height, intrinsics.width, 2).astype(np.float32)
    rays.setflags(write=False)  # shared by every frame of the camera
    return rays


def interior(instances: np.ndarray, erosion_px: int = EROSION_PX) -> np.ndarray:
    """(H, W) bool: pixels whose whole (2e+1)-square window belongs to their own segment."""
    if erosion_px <= 0:
        return instances != NO_INSTANCE
    kernel = np.ones((2 * erosion_px + 1,) * 2, np.uint8)
    lowest, highest = cv2.erode(instances, kernel), cv2.dilate(instances, kernel)
    return (lowest == instances) & (highest == instances) & (instances != NO_INSTANCE)


def on_depth_step(depth: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(N,) bool: whether each pixel's reading lies between those of two opposite neighbours
    (left and right, up and down, or across a diagonal, 1 to EROSION_PX pixels away), more than
    DEPTH_STEP of its depth from each: a flying pixel, mixed from the two sides of a depth edge.
    A thin object's own pixels stand in front of both sides, so they are kept."""
    height, width = depth.shape
    z = depth[rows, cols]
    margin = np.float32(DEPTH_STEP) * z
    flying = np.zeros(rows.shape, bool)
    for distance in range(1, EROSION_PX + 1):
        for row_step, col_step in ((0, 1), (1, 0), (1, 1), (1, -1)):
            r1, c1 = rows + row_step * distance, cols + col_step * distance
            r2, c2 = rows - row_step * distance, cols - col_step * distance
            inside = ((np.minimum(r1, r2) >= 0) & (np.maximum(r1, r2) < height)
                      & (np.minimum(c1, c2) >= 0) & (np.maximum(c1, c2) < width))
            near = depth[np.clip(r1, 0, height - 1), np.clip(c1, 0, width - 1)]
            far = depth[np.clip(r2, 0, height - 1), np.clip(c2, 0, width - 1)]
            near, far = np.fmin(near, far), np.fmax(near, far)  # NaN: compared as missing
            flying |= inside & (near + margin < z) & (z + margin < far)
    return flying


def segment_geometry(instances: np.ndarray, depth: np.ndarray, intrinsics: Intrinsics,
                     min_pixels: int = MIN_BOX_DEPTH_PIXELS) -> dict[int, SegmentGeometry]:
    """Segment id -> its box, for every segment with at least `min_pixels` usable depth
    readings (see the module docstring)."""
    check_registered(depth.shape, instances.shape)
    intrinsics.check_image(instances.shape[1], instances.shape[0])
    valid = np.isfinite(depth) & (instances != NO_INSTANCE)
    inner = valid & interior(instances)
    inner_counts = np.bincount(instances[inner], minlength=int(instances.max(initial=0)) + 1)
    # Thin segments fall back to their valid pixels that are not on a depth step.
    thin = np.flatnonzero(inner_counts < MIN_INTERIOR_PIXELS)
    fallback_rows, fallback_cols = np.nonzero(valid & np.isin(instances, thin))
    kept = ~on_depth_step(depth, fallback_rows, fallback_cols)
    used = inner.copy()
    used[fallback_rows[kept], fallback_cols[kept]] = True
    rows, cols = np.nonzero(used)
    ids = instances[rows, cols]
    order = np.argsort(ids, kind="stable")
    rows, cols, ids = rows[order], cols[order], ids[order]
    points = back_project(rows, cols, depth[rows, cols], intrinsics)
    runs = np.flatnonzero(np.diff(ids)) + 1  # where the next segment's points start
    geometry = {}
    for segment_points, segment_ids in zip(np.split(points, runs), np.split(ids, runs),
                                           strict=True):
        if segment_ids.size < max(min_pixels, 1):
            continue  # too few readings for a box (or no segment has depth)
        low, high = np.percentile(segment_points, BOX_PERCENTILES, axis=0)
        geometry[int(segment_ids[0])] = SegmentGeometry(
            center=tuple(float(v) for v in (low + high) / 2),
            size=tuple(float(v) for v in high - low),
            depth_pixels=int(segment_ids.size),
        )
    return geometry


def point_cloud(rgb: np.ndarray, result: Segmentation, depth: np.ndarray,
                intrinsics: Intrinsics, stride: int = 1) -> np.ndarray:
    """Structured POINT_DTYPE array: every `stride`-th pixel in both directions that has a depth
    reading, with its colour, class id (label) and segment id (instance)."""
    height, width = result.labels.shape
    check_registered(depth.shape, (height, width))
    intrinsics.check_image(width, height)
    sampled = np.zeros((height, width), bool)
    sampled[::stride, ::stride] = True
    rows, cols = np.nonzero(sampled & np.isfinite(depth))
    cloud = np.empty(rows.size, POINT_DTYPE)
    xyz = back_project(rows, cols, depth[rows, cols], intrinsics)
    cloud["x"], cloud["y"], cloud["z"] = xyz.T
    cloud["r"], cloud["g"], cloud["b"] = rgb[rows, cols].T
    cloud["label"] = result.labels[rows, cols]
    cloud["instance"] = result.instances[rows, cols]
    return cloud


def write_ply(path: str | Path, cloud: np.ndarray) -> None:
    """A binary little-endian PLY of a POINT_DTYPE cloud (vertex x y z red green blue label
    instance), readable by Open3D, CloudCompare, MeshLab and PCL."""
    names = {"r": "red", "g": "green", "b": "blue"}
    types = {"<f4": "float", "|u1": "uchar", "<u2": "ushort"}
    properties = "".join(
        f"property {types[cloud.dtype[name].str]} {names.get(name, name)}\n"
        for name in cloud.dtype.names
    )
    header = (f"ply\nformat binary_little_endian 1.0\nelement vertex {cloud.size}\n"
              f"{properties}end_header\n")
    with open(path, "wb") as out:
        out.write(header.encode("ascii"))
        out.write(np.ascontiguousarray(cloud, POINT_DTYPE).tobytes())
