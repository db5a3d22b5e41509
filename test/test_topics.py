"""Topic naming and the cameras a launch starts (ROS-free; the launch file uses it)."""

from __future__ import annotations

import pytest

from fcclip_ros.topics import (
    camera_info_topic,
    image_topics_in_params_file,
    output_namespace,
    resolve_topic,
)

pytestmark = pytest.mark.fast


@pytest.mark.parametrize(
    ("topic", "namespace"),
    [
        ("image", "segmentation"),
        ("/image", "/segmentation"),
        ("camera/image_raw", "camera/segmentation"),
        ("/robot/front/color/image_raw", "/robot/front/color/segmentation"),
    ],
)
def test_outputs_go_to_segmentation_beside_the_input_topic(topic, namespace):
    assert output_namespace(topic) == namespace


@pytest.mark.parametrize(
    ("topic", "namespace", "resolved"),
    [
        ("image", "", "/image"),
        ("image", "/", "/image"),
        ("image", "robot1", "/robot1/image"),
        ("cam/image", "/a/b/", "/a/b/cam/image"),
        ("/abs/image", "/robot1", "/abs/image"),
    ],
)
def test_relative_topics_resolve_in_the_node_namespace(topic, namespace, resolved):
    assert resolve_topic(topic, namespace) == resolved


def test_params_file_cameras_follow_rcl_node_name_matching(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(
        "/**:\n  ros__parameters:\n    image_topics: [everyone/image]\n"
        "/robot1/fcclip:\n  ros__parameters:\n    image_topics: [front/image, rear/image]\n"
        "/**/other:\n  ros__parameters:\n    image_topics: [nobody/image]\n"
    )
    assert image_topics_in_params_file(params, "fcclip", "") == ["everyone/image"]
    assert image_topics_in_params_file(params, "fcclip", "robot1") == ["front/image", "rear/image"]
    assert image_topics_in_params_file(params, "fcclip", "robot2") == ["everyone/image"]

    params.write_text("fcclip:\n  ros__parameters:\n    model: tiny\n")
    assert image_topics_in_params_file(params, "fcclip", "") is None
    params.write_text("[not: a mapping\n")
    assert image_topics_in_params_file(params, "fcclip", "") is None
    assert image_topics_in_params_file(tmp_path / "missing.yaml", "fcclip", "") is None


@pytest.mark.parametrize(
    ("image", "info"),
    [("/camera/camera/color/image_raw", "/camera/camera/color/camera_info"),
     ("front/image", "front/camera_info"), ("image", "camera_info"),
     ("/image", "/camera_info")],
)
def test_camera_info_defaults_to_the_topic_beside_the_image(image, info):
    assert camera_info_topic(image) == info
