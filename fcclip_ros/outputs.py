"""The one table of outputs: what a camera's segmentation becomes under `<ns>/segmentation/`.

ROS-free, so that the launch file, the CLI and the docs read it without a ROS install. The node's
publishers, the bag's channels, `fcclip-ros bag --outputs`, the RViz config and the README's
topic table all come from it (fcclip_ros.ros.messages holds one builder per name; a test ties
the two, and the README table, to this one).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Output:
    name: str
    message_type: str  # the ROS 2 type, package/msg/Name
    description: str
    latched: bool = False  # transient local, published when the vocabulary changes, not per frame
    needs_depth: bool = False  # only for cameras with a depth topic
    package: str = ""  # an optional message package it needs (OPTIONAL_PACKAGES), else ""
    on_demand: bool = False  # the node computes and publishes it only while subscribed
    bag_default: bool = True  # written by `fcclip-ros bag` unless --outputs says otherwise
    counted_as: str = ""  # the node's diagnostics count of it, for on-demand outputs


OUTPUTS: tuple[Output, ...] = (
    Output("labels", "sensor_msgs/msg/Image", "mono16: class id per pixel, 65535 = unlabeled"),
    Output("instances", "sensor_msgs/msg/Image", "mono16: segment id per pixel, 0 = none"),
    Output("confidence", "sensor_msgs/msg/Image", "32FC1: the pixel's class probability, 0..1",
           on_demand=True, counted_as="confidence_maps_published"),
    Output("overlay", "sensor_msgs/msg/Image", "rgb8: class colours and names over the input",
           on_demand=True, counted_as="overlays_drawn"),
    Output("semantic", "sensor_msgs/msg/Image",
           "32SC1: (track or segment id << 16) | class id per pixel, Hydra's packing",
           on_demand=True, bag_default=False, counted_as="semantic_images_published"),
    Output("label_colors", "sensor_msgs/msg/Image",
           "rgb8: the class colour per pixel, unblended (Kimera-Semantics)",
           on_demand=True, bag_default=False, counted_as="label_color_images_published"),
    Output("segments", "fcclip_ros/msg/SegmentArray",
           "class, score, area, box (and 3D box with depth) of every segment"),
    Output("embeddings", "fcclip_ros/msg/SegmentEmbeddings",
           "one CLIP embedding per segment, rows in segment-id order",
           on_demand=True, bag_default=False, counted_as="embedding_arrays_published"),
    Output("features", "semantic_inference_msgs/msg/FeatureImage",
           "segment-id image and one CLIP embedding per segment (Hydra open-set, Clio)",
           package="semantic_inference_msgs", on_demand=True, bag_default=False,
           counted_as="feature_images_published"),
    Output("vocabulary", "fcclip_ros/msg/Vocabulary", "the classes that class ids refer to",
           latched=True),
    Output("points", "sensor_msgs/msg/PointCloud2",
           "x y z rgb label instance of every points_stride-th pixel with depth",
           needs_depth=True, on_demand=True, counted_as="point_clouds_published"),
    Output("markers", "visualization_msgs/msg/MarkerArray",
           "a box and a label per segment with depth, for RViz",
           needs_depth=True, on_demand=True, counted_as="marker_arrays_published"),
    Output("detections", "vision_msgs/msg/Detection2DArray", "a 2D box per segment",
           package="vision_msgs"),
    Output("detections_3d", "vision_msgs/msg/Detection3DArray", "a 3D box per segment with depth",
           needs_depth=True, package="vision_msgs"),
    Output("label_info", "vision_msgs/msg/LabelInfo", "class id -> class name",
           latched=True, package="vision_msgs"),
)
OUTPUTS_BY_NAME = {output.name: output for output in OUTPUTS}
# The message packages some outputs need: in every ROS 2 distro's package index (vision_msgs) or
# MIT-SPARK's semantic_inference, but not on PyPI, so never required.
OPTIONAL_PACKAGES = {
    "vision_msgs": "source a ROS 2 install that has it (ros-<distro>-vision-msgs)",
    "semantic_inference_msgs": "build MIT-SPARK/semantic_inference's semantic_inference_msgs "
                               "in your workspace",
}
# What a frame can become (the latched outputs follow the vocabulary instead).
FRAME_OUTPUTS = tuple(output.name for output in OUTPUTS if not output.latched)


def available(with_depth: bool, packages: Collection[str],
              names: Iterable[str] | None = None) -> tuple[str, ...]:
    """The outputs (of `names`, default all) a camera has, in table order; `packages`: the
    OPTIONAL_PACKAGES that are importable."""
    wanted = set(OUTPUTS_BY_NAME if names is None else names)
    return tuple(output.name for output in OUTPUTS if output.name in wanted
                 and (with_depth or not output.needs_depth)
                 and (not output.package or output.package in packages))


def bag_defaults(with_depth: bool, packages: Collection[str]) -> tuple[str, ...]:
    """The per-frame outputs `fcclip-ros bag` writes when not told which."""
    return available(with_depth, packages,
                     [o.name for o in OUTPUTS if o.bag_default and not o.latched])


def unavailable_reason(name: str, with_depth: bool, packages: Collection[str]) -> str:
    """Why output `name` cannot be had here ("" when it can)."""
    output = OUTPUTS_BY_NAME[name]
    if output.package and output.package not in packages:
        return f"{output.package} is not importable ({OPTIONAL_PACKAGES[output.package]})"
    if output.needs_depth and not with_depth:
        return "no camera has a depth topic (--depth-topics)"
    return ""
