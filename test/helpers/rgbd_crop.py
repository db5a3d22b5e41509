"""A 192x256 crop of the ARC 2017 frame (helpers.rgbd_frame), small enough for Fast DDS's default
shared-memory segment: its colour, 16UC1 depth and CameraInfo messages as a camera sends them,
and the checks of 3D boxes and point clouds against the test's own back-projection."""

from __future__ import annotations

from typing import Any

import numpy as np
from sensor_msgs.msg import CameraInfo, Image, PointField

from fcclip_ros.geometry import Intrinsics
from fcclip_ros.image_conversion import fill_image
from helpers.rgbd_frame import ARC, FRAME, reference_box

ROWS, COLS = slice(200, 392), slice(240, 496)  # 192x256, the shelf bin with its objects
RGB = np.ascontiguousarray(ARC["rgb"][ROWS, COLS])
DEPTH = np.ascontiguousarray(ARC["depth"][ROWS, COLS])  # metres, NaN = no reading
HEIGHT, WIDTH = DEPTH.shape
P = list(ARC["camera_info"]["P"])
P[2], P[6] = P[2] - COLS.start, P[6] - ROWS.start  # the crop moves the principal point
K = list(ARC["camera_info"]["K"])
K[2], K[5] = K[2] - COLS.start, K[5] - ROWS.start
INTRINSICS = Intrinsics.from_camera_info(WIDTH, HEIGHT, K, P)


def stamped(msg: Any, stamp: tuple[int, int], frame_id: str = FRAME) -> Any:
    """`msg` stamped in the colour optical frame, where a RealSense or OAK puts colour, depth
    aligned to it and the colour CameraInfo alike."""
    msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
    msg.header.frame_id = frame_id
    return msg


def colour(stamp: tuple[int, int]) -> Image:
    return stamped(fill_image(Image(), RGB, "rgb8"), stamp)


def millimetres(metres: np.ndarray) -> np.ndarray:
    return np.nan_to_num(metres * 1000).round().astype(np.uint16)


def sent(metres: np.ndarray) -> np.ndarray:
    """The depth in metres as the node receives it in 16UC1 (NaN = no reading)."""
    values = millimetres(metres)
    return np.where(values > 0, values / 1000, np.nan)


def depth_image(stamp: tuple[int, int], metres: np.ndarray = DEPTH,
                frame_id: str = FRAME) -> Image:
    msg = fill_image(Image(), millimetres(metres), "mono16")  # the same layout as 16UC1
    msg.encoding = "16UC1"
    return stamped(msg, stamp, frame_id)


def camera_info(stamp: tuple[int, int]) -> CameraInfo:
    return stamped(CameraInfo(width=WIDTH, height=HEIGHT, k=K, p=P,
                              distortion_model="plumb_bob"), stamp)


def assert_boxes_match_back_projection(segments: Any, instances: np.ndarray, depth: np.ndarray,
                                       intrinsics: Intrinsics = INTRINSICS) -> int:
    """Each segment's 3D fields equal the test's own back-projection of its pixels; returns
    how many segments had depth."""
    with_depth = 0
    for segment in segments:
        center, size, count = reference_box(instances, segment.id, depth, intrinsics)
        assert segment.depth_pixels == count
        if not count:
            assert (segment.center.z, segment.size.z) == (0.0, 0.0)
            continue
        with_depth += 1
        got = np.array([segment.center.x, segment.center.y, segment.center.z])
        np.testing.assert_allclose(got, center, atol=1e-3)
        np.testing.assert_allclose([segment.size.x, segment.size.y, segment.size.z], size,
                                   atol=1e-3)
    return with_depth


def cloud_pixels(cloud: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A PointCloud2 of our layout as a structured array, and the pixel (row, col) each point
    projects back to through the camera's intrinsics."""
    names = [field.name for field in cloud.fields]
    assert names == ["x", "y", "z", "rgb", "label", "instance"]
    assert [field.datatype for field in cloud.fields] == [PointField.FLOAT32] * 4 + [
        PointField.UINT32] * 2
    dtype = np.dtype({"names": names, "offsets": [f.offset for f in cloud.fields],
                      "formats": ["<f4", "<f4", "<f4", "<u4", "<u4", "<u4"],  # rgb: packed
                      "itemsize": cloud.point_step})
    points = np.frombuffer(bytes(cloud.data), dtype)
    cols = np.rint(points["x"] * INTRINSICS.fx / points["z"] + INTRINSICS.cx).astype(int)
    rows = np.rint(points["y"] * INTRINSICS.fy / points["z"] + INTRINSICS.cy).astype(int)
    return points, rows, cols
