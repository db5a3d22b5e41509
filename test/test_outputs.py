"""The one output table (fcclip_ros.outputs) and everything that must follow it: one message
builder per output, of the table's type; the README's topic table; the RViz config's displays;
the README's links to every docs page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from fcclip_ros.outputs import (
    FRAME_OUTPUTS,
    OPTIONAL_PACKAGES,
    OUTPUTS,
    available,
    bag_defaults,
    unavailable_reason,
)
from fcclip_ros.ros.bag.message_definitions import message_type_name
from fcclip_ros.ros.messages import (
    FRAME_MESSAGES,
    IMPORTABLE_PACKAGES,
    VOCABULARY_MESSAGES,
    message_class,
)

pytestmark = pytest.mark.fast

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_every_output_has_one_builder_and_the_builders_build_nothing_else():
    assert list(FRAME_MESSAGES) == list(FRAME_OUTPUTS)
    assert list(VOCABULARY_MESSAGES) == [o.name for o in OUTPUTS if o.latched]


@pytest.mark.parametrize("output", OUTPUTS, ids=lambda output: output.name)
def test_each_outputs_message_class_is_the_tables_type(output):
    if output.package and output.package not in IMPORTABLE_PACKAGES:
        with pytest.raises(LookupError, match=output.package):
            message_class(output.name)
        return
    assert message_type_name(message_class(output.name)) == output.message_type


def test_cameras_get_the_3d_outputs_only_with_depth_and_package_outputs_only_with_the_package():
    everything = set(OPTIONAL_PACKAGES)
    plain = available(with_depth=False, packages=())
    assert "points" not in plain and "detections" not in plain and "labels" in plain
    assert "features" not in plain and "semantic" in plain
    assert set(available(True, everything)) == {o.name for o in OUTPUTS}
    assert "detections_3d" not in available(False, everything)
    assert "features" in available(False, {"semantic_inference_msgs"})
    assert "detections" not in available(False, {"semantic_inference_msgs"})
    for name in ("embeddings", "features", "semantic", "label_colors"):  # asked for only
        assert name not in bag_defaults(True, everything)
    assert not set(bag_defaults(True, everything)) & {o.name for o in OUTPUTS if o.latched}


def test_an_output_of_a_missing_package_says_how_to_get_it():
    assert "vision_msgs is not importable (source a ROS 2 install" in unavailable_reason(
        "detections", False, {"semantic_inference_msgs"})
    assert "semantic_inference_msgs is not importable (build MIT-SPARK" in unavailable_reason(
        "features", True, {"vision_msgs"})
    assert unavailable_reason("features", False, {"semantic_inference_msgs"}) == ""


def readme_topic_rows() -> list[list[str]]:
    section = README.split("### Topics", 1)[1].split("\n#", 1)[0]
    rows = [line.strip().strip("|").split("|") for line in section.splitlines()
            if line.startswith("| `")]
    return [[cell.strip() for cell in row] for row in rows]


def test_the_readme_topic_table_lists_the_tables_outputs_in_order_with_what_they_need():
    rows = readme_topic_rows()
    assert [row[0].strip("`") for row in rows] == [o.name for o in OUTPUTS]
    for output, (_, message_type, published) in zip(OUTPUTS, rows, strict=True):
        package, _, name = output.message_type.split("/")
        assert message_type.startswith(f"{package}/{name}"), output.name
        assert ("subscribed" in published) == output.on_demand, output.name
        assert ("depth" in published) == output.needs_depth, output.name
        for package in OPTIONAL_PACKAGES:
            assert (package in published) == (output.package == package), output.name
        assert ("latched" in published) == output.latched, output.name


def test_the_rviz_config_shows_only_outputs_of_the_table():
    config = yaml.safe_load((ROOT / "rviz" / "segment.rviz").read_text())
    shown = [display["Topic"]["Value"] for display in config["Visualization Manager"]["Displays"]
             if isinstance(display.get("Topic"), dict)]
    outputs = [topic.rsplit("/", 1)[1] for topic in shown if topic.startswith("/segmentation/")]
    assert outputs and set(outputs) <= {o.name for o in OUTPUTS}


def test_the_readme_fits_on_a_screen_and_links_every_docs_page():
    assert len(README.splitlines()) <= 200
    linked = set(re.findall(r"\(docs/([\w-]+\.md)", README))
    pages = {page.name for page in (ROOT / "docs").glob("*.md")}
    assert pages and pages == linked
    for page in (ROOT / "docs").glob("*.md"):
        for target in re.findall(r"\]\(((?:\.\./)?[\w./-]+\.md)", page.read_text()):
            assert (page.parent / target).is_file(), f"{page.name} links to missing {target}"
