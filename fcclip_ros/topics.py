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

DEFAULT_IMAGE_TOPICS = ("image",)
# The per-frame outputs under "<camera ns>/segmentation/", beside the latched `vocabulary`.
FRAME_OUTPUTS = ("labels", "instances", "confidence", "overlay", "segments", "embeddings")
# What `fcclip-ros bag` writes unless told otherwise (embeddings are D floats per segment).
BAG_DEFAULT_OUTPUTS = FRAME_OUTPUTS[:-1]


def output_namespace(topic: str) -> str:
    """Where the outputs of `topic` go: "<ns>/<name>" -> "<ns>/segmentation"."""
    head, _, _ = topic.rstrip("/").rpartition("/")
    return f"{head}/segmentation" if head or topic.startswith("/") else "segmentation"


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
    path: str | Path, node_name: str, namespace: str
) -> list[str] | None:
    """`image_topics` that a ROS params file gives the node `namespace`/`node_name`, if any.

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
        if isinstance(parameters, Mapping) and isinstance(parameters.get("image_topics"), list):
            topics = [str(topic) for topic in parameters["image_topics"]]
    return topics


def _section_matches(key: str, qualified: str) -> bool:
    """rcl's node-name wildcards: `/**` any namespaces (or none), `*` one name."""
    pattern = re.escape("/" + key.lstrip("/"))
    pattern = pattern.replace(r"/\*\*", "(/[^/]+)*").replace(r"\*", "[^/]+")
    return re.fullmatch(pattern, qualified) is not None


def rviz_config(template: Mapping[str, Any], image_topics: Sequence[str],
                    namespace: str) -> dict[str, Any]:
    """An RViz config (parsed YAML) showing the overlay of each camera, its labels and confidence
    ready to be ticked, built from `template`'s first Image displays (overlay, labels, confidence).
    """
    config = dict(template)
    manager = dict(config["Visualization Manager"])
    prototypes = [d for d in manager["Displays"] if d.get("Class") == "rviz_default_plugins/Image"]
    others = [d for d in manager["Displays"] if d.get("Class") != "rviz_default_plugins/Image"]
    displays = []
    for topic in image_topics:
        outputs = output_namespace(resolve_topic(topic, namespace))
        for prototype in prototypes:
            shown = prototype["Topic"]["Value"].rsplit("/", 1)[-1]
            display = dict(prototype, Name=f"{prototype['Name']} ({outputs})")
            display["Topic"] = dict(prototype["Topic"], Value=f"{outputs}/{shown}")
            displays.append(display)
    manager["Displays"] = others + displays
    config["Visualization Manager"] = manager
    return config
