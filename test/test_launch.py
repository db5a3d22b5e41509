"""launch/segment.launch.py run with stubs for `launch` and `launch_ros` (helpers/launch_stubs.py):
the node and RViz it starts for the arguments given, and the RViz config it shows."""

from __future__ import annotations

import pytest
import yaml
from helpers.launch_stubs import launch, load_launch_file
from helpers.paths import PARAMS_FILE, ROOT

from fcclip_ros.settings import SETTINGS_BY_NAME, default
from fcclip_ros.topics import output_namespace

pytestmark = pytest.mark.fast


def test_launch_file_overrides_only_the_parameters_given_as_arguments(monkeypatch):
    [node], declared, _ = launch(
        monkeypatch,
        image_topics="[/front/image_raw, /rear/image_raw]",
        model="rn50",
        input_short_side="480",
    )
    for name in ("params_file", "namespace", "image_topics", "device", "model", "weights", "rviz"):
        assert name in declared, name
    assert (node.kwargs["package"], node.kwargs["executable"]) == ("fcclip_ros", "segmenter")
    assert node.kwargs["name"] == "fcclip"
    assert node.kwargs["parameters"] == [
        str(PARAMS_FILE),
        {
            "image_topics": ["/front/image_raw", "/rear/image_raw"],
            "model": "rn50",
            "input_short_side": 480,
            "use_sim_time": False,
        },
    ]
    [node], _, _ = launch(monkeypatch, image_topics="camera/image_raw", device="cuda:1",
                          use_sim_time="true")
    assert node.kwargs["parameters"][1] == {
        "image_topics": ["camera/image_raw"],
        "device": "cuda:1",
        "use_sim_time": True,
    }
    overrides = load_launch_file(monkeypatch).OVERRIDES
    assert set(overrides) <= set(SETTINGS_BY_NAME)


def test_launch_accepts_image_topic_for_one_camera_and_warns_about_typos(monkeypatch):
    [node], _, logger = launch(monkeypatch, image_topic="/camera/color/image_raw")
    assert node.kwargs["parameters"][1]["image_topics"] == ["/camera/color/image_raw"]
    assert logger.warnings == []

    [node], _, logger = launch(monkeypatch, image_topcs="/camera/image", image_topics="/a/image")
    assert node.kwargs["parameters"][1]["image_topics"] == ["/a/image"]
    assert len(logger.warnings) == 1 and "did you mean 'image_topics'" in logger.warnings[0]


def _rviz_topics(path: str) -> tuple[list[str], set[str]]:
    """(topics of the enabled displays, of the disabled ones) of an RViz config file."""
    with open(path) as config:
        displays = yaml.safe_load(config)["Visualization Manager"]["Displays"]
    shown = [d["Topic"]["Value"] for d in displays if d["Enabled"]]
    return shown, {d["Topic"]["Value"] for d in displays if not d["Enabled"]}


def test_launch_with_rviz_shows_the_overlay_of_every_camera_and_3d_of_those_with_depth(
        monkeypatch):
    [node, rviz], _, _ = launch(
        monkeypatch, rviz="true", namespace="robot1", image_topics="[front/image, /rear/image]",
        depth_topics='[front/depth, ""]',
    )
    assert node.kwargs["parameters"][1]["depth_topics"] == ["front/depth", ""]
    assert (rviz.kwargs["package"], rviz.kwargs["executable"]) == ("rviz2", "rviz2")
    assert rviz.kwargs["arguments"][0] == "-d"
    shown, hidden = _rviz_topics(rviz.kwargs["arguments"][1])
    assert shown == ["/robot1/front/segmentation/overlay", "/robot1/front/segmentation/points",
                     "/robot1/front/segmentation/markers", "/rear/segmentation/overlay"]
    assert {"/robot1/front/segmentation/labels", "/rear/segmentation/confidence",
            "/rear/segmentation/points", "/rear/segmentation/markers"} <= hidden

    [_, rviz], _, _ = launch(monkeypatch, rviz="true")  # the params file's camera: `image`
    assert _rviz_topics(rviz.kwargs["arguments"][1])[0] == ["/segmentation/overlay"]
    assert len(launch(monkeypatch, rviz="false")[0]) == 1


def test_rviz_config_shows_the_overlay_points_and_markers_of_the_default_camera():
    config = yaml.safe_load((ROOT / "rviz" / "segment.rviz").read_text())
    displays = config["Visualization Manager"]["Displays"]
    shown = [(d["Class"], d["Topic"]["Value"]) for d in displays if d["Enabled"]]
    [default_topic] = default("image_topics")
    outputs = f"/{output_namespace(default_topic)}"
    assert shown == [("rviz_default_plugins/Image", f"{outputs}/overlay"),
                     ("rviz_default_plugins/PointCloud2", f"{outputs}/points"),
                     ("rviz_default_plugins/MarkerArray", f"{outputs}/markers")]
