"""Where a camera's outputs go, and which cameras a launch starts. ROS-free: the launch file
imports it too.

Topic names follow ROS name resolution: a relative topic is resolved in the node's namespace.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from fcclip_ros.outputs import OUTPUTS_BY_NAME

DEFAULT_IMAGE_TOPICS = ("image",)
CAMERA_INFO = "camera_info"
RECTIFICATIONS = ("auto", "raw", "rectified")  # what the `rectification` setting can say


def output_namespace(topic: str) -> str:
    """Where the outputs of `topic` go: "<ns>/<name>" -> "<ns>/segmentation"."""
    head, _, _ = topic.rstrip("/").rpartition("/")
    return f"{head}/segmentation" if head or topic.startswith("/") else "segmentation"


def camera_info_topic(image_topic: str) -> str:
    """The CameraInfo topic beside an image topic: "<ns>/<name>" -> "<ns>/camera_info"."""
    head, slash, _ = image_topic.rstrip("/").rpartition("/")
    return f"{head}{slash}{CAMERA_INFO}"


def is_rectified_topic(image_topic: str) -> bool:
    """Whether an image topic carries rectified images, by image_proc's naming (image_rect,
    image_rect_color, ...; a /compressed transport suffix is looked through)."""
    name = image_topic.rstrip("/").removesuffix("/compressed").rpartition("/")[2]
    return name.startswith("image_rect")


def images_rectified(rectification: str, image_topic: str = "") -> bool:
    """Whether a camera's images are rectified, as `rectification` (one of RECTIFICATIONS) says;
    "auto" goes by the topic's name (is_rectified_topic), and takes images without a topic
    (image files) as raw."""
    if rectification not in RECTIFICATIONS:
        raise ValueError(f"rectification {rectification!r} is not one of "
                         f"{', '.join(RECTIFICATIONS)}")
    if rectification == "auto":
        return is_rectified_topic(image_topic)
    return rectification == "rectified"


def resolve_topic(topic: str, namespace: str) -> str:
    """The fully qualified name of `topic` for a node in `namespace` ("" or "/" = the root)."""
    if topic.startswith("/"):
        return topic
    parts = [part for part in (*namespace.split("/"), *topic.split("/")) if part]
    return "/" + "/".join(parts)


def parse_topic_list(text: str) -> list[str]:
    """A launch argument: one topic ("/cam/image") or a YAML list ("[/front/image, /rear/b]")."""
    value = yaml.safe_load(text)
    if isinstance(value, list):
        return [str(topic).strip() for topic in value]
    return [text.strip()]


def image_topics_in_params_file(
    path: str | Path, node_name: str, namespace: str, parameter: str = "image_topics"
) -> list[str] | None:
    """`image_topics` (or another topic-list `parameter`) that a ROS params file gives the node
    `namespace`/`node_name`, if any.

    Later matching sections win, as when rcl applies a params file: `/**`, then the node's own.
    """
    try:
        document = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(document, Mapping):
        return None
    qualified = resolve_topic(node_name, namespace)
    topics = None
    for key, section in document.items():
        if not _section_matches(str(key), qualified):
            continue
        parameters = section.get("ros__parameters") if isinstance(section, Mapping) else None
        if isinstance(parameters, Mapping) and isinstance(parameters.get(parameter), list):
            topics = [str(topic) for topic in parameters[parameter]]
    return topics


def _section_matches(key: str, qualified: str) -> bool:
    """rcl's node-name wildcards: `/**` any namespaces (or none), `*` one name."""
    pattern = re.escape("/" + key.lstrip("/"))
    pattern = pattern.replace(r"/\*\*", "(/[^/]+)*").replace(r"\*", "[^/]+")
    return re.fullmatch(pattern, qualified) is not None


def rviz_config(template: Mapping[str, Any], image_topics: Sequence[str],
                namespace: str, depth_topics: Sequence[str] = ()) -> dict[str, Any]:
    """An RViz config (parsed YAML) with, for each camera, a copy of every display of `template`
    that shows a default camera's output (topic /segmentation/...: overlay, labels, confidence,
    points, markers), pointed at that camera's outputs; the 3D ones are enabled only for the
    cameras with a depth topic (`depth_topics`, one per image topic), as only they have them."""
    config = dict(template)
    manager = dict(config["Visualization Manager"])
    prototypes = [d for d in manager["Displays"] if _shows_an_output(d)]
    others = [d for d in manager["Displays"] if not _shows_an_output(d)]
    displays = []
    depths = list(depth_topics) + [""] * (len(image_topics) - len(depth_topics))
    for topic, depth in zip(image_topics, depths, strict=False):
        outputs = output_namespace(resolve_topic(topic, namespace))
        for prototype in prototypes:
            shown = prototype["Topic"]["Value"].rsplit("/", 1)[-1]
            display = dict(prototype, Name=f"{prototype['Name']} ({outputs})")
            display["Topic"] = dict(prototype["Topic"], Value=f"{outputs}/{shown}")
            if shown in OUTPUTS_BY_NAME and OUTPUTS_BY_NAME[shown].needs_depth:
                display["Enabled"] = display["Value"] = bool(depth.strip())
            displays.append(display)
    manager["Displays"] = others + displays
    config["Visualization Manager"] = manager
    return config


def _shows_an_output(display: Mapping[str, Any]) -> bool:
    topic = display.get("Topic")
    return isinstance(topic, Mapping) and str(topic.get("Value", "")).startswith("/segmentation/")
