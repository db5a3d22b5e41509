"""The node's parameters: specs with descriptors and ranges, checks, and what they configure.

The choice lists (variants, modes, precisions, presets) come from the core, so the node can never
offer a value the engine does not know; `config/segment.yaml`, the launch file and the CLI are
checked against the same lists by the tests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.exceptions import ParameterUninitializedException
from rclpy.node import Node
from rclpy.parameter import Parameter

from fcclip_ros.backends import BACKENDS
from fcclip_ros.engine import MODES, PRECISIONS, EngineConfig
from fcclip_ros.image_conversion import DEFAULT_MAX_INPUT_PIXELS
from fcclip_ros.model.config import VARIANTS
from fcclip_ros.overlay import OverlayStyle
from fcclip_ros.topics import DEFAULT_IMAGE_TOPICS, output_namespace
from fcclip_ros.vocabulary import PRESETS

TRANSPORTS = ("raw", "compressed")
THRESHOLDS = ("object_mask_threshold", "overlap_threshold")
OVERLAY_FIELDS = {  # parameter -> OverlayStyle field
    "overlay_alpha": "alpha",
    "overlay_boundaries": "boundaries",
    "overlay_names": "names",
    "overlay_font_scale": "font_scale",
}


class ConfigurationError(ValueError):
    """A node parameter that cannot work; the message names it and says why."""


@dataclass(frozen=True)
class ParameterSpec:
    name: str
    default: Any  # a Parameter.Type for an array that defaults to empty
    description: str
    read_only: bool = False
    value_range: FloatingPointRange | IntegerRange | None = None
    choices: tuple[str, ...] = ()

    def descriptor(self) -> ParameterDescriptor:
        descriptor = ParameterDescriptor(
            name=self.name, description=self.description, read_only=self.read_only
        )
        if self.choices:
            descriptor.additional_constraints = "one of: " + ", ".join(self.choices)
        if isinstance(self.value_range, FloatingPointRange):
            descriptor.floating_point_range = [self.value_range]
        elif isinstance(self.value_range, IntegerRange):
            descriptor.integer_range = [self.value_range]
        return descriptor


def _unit_range() -> FloatingPointRange:
    return FloatingPointRange(from_value=0.0, to_value=1.0, step=0.0)


def _integer_range(low: int, high: int) -> IntegerRange:
    return IntegerRange(from_value=low, to_value=high, step=1)


PARAMETERS: tuple[ParameterSpec, ...] = (
    ParameterSpec(
        "image_topics",
        list(DEFAULT_IMAGE_TOPICS),
        "Camera topics (sensor_msgs/Image). Outputs of <ns>/<name> go to <ns>/segmentation/.",
        read_only=True,
    ),
    ParameterSpec(
        "depth_topics",
        Parameter.Type.STRING_ARRAY,
        "Depth topics registered to the colour images (16UC1 mm or 32FC1 m, same size), one per"
        " image topic in the same order (\"\" for a camera without depth); empty: no 3D.",
        read_only=True,
    ),
    ParameterSpec(
        "camera_info_topics",
        Parameter.Type.STRING_ARRAY,
        "CameraInfo topics of the colour images, one per image topic; empty (or \"\" for one"
        " camera): camera_info beside the image topic.",
        read_only=True,
    ),
    ParameterSpec(
        "depth_max_delay_s",
        0.05,
        "A colour frame pairs with the depth of the same stamp, else the nearest within this;"
        " without one it is published in 2D only.",
        read_only=True,
        value_range=FloatingPointRange(from_value=0.0, to_value=1.0, step=0.0),
    ),
    ParameterSpec(
        "points_stride",
        2,
        "The points cloud takes every n-th pixel in both directions (bandwidth: 1 = every pixel).",
        value_range=_integer_range(1, 64),
    ),
    ParameterSpec(
        "transport",
        "raw",
        "raw: subscribe to each topic; compressed: to <topic>/compressed (JPEG, PNG, TIFF, BMP,"
        " PNM or JPEG 2000 with 8- or 16-bit unsigned samples).",
        read_only=True,
        choices=TRANSPORTS,
    ),
    ParameterSpec(
        "model",
        "convnext_large",
        "FC-CLIP variant; tiny is a small test configuration.",
        read_only=True,
        choices=tuple(VARIANTS),
    ),
    ParameterSpec(
        "weights",
        "auto",
        "FC-CLIP checkpoint: auto (the model's file in the cache, see fcclip-ros download), a"
        " path, or random (pipeline tests only: labels are meaningless).",
        read_only=True,
    ),
    ParameterSpec(
        "clip_weights",
        "auto",
        "CLIP weights: auto (open_clip's pretrained tag from its local cache), a path, or random.",
        read_only=True,
    ),
    ParameterSpec("device", "auto", "auto, cpu, cuda or cuda:N.", read_only=True),
    ParameterSpec(
        "precision",
        "auto",
        "Inference precision; auto is fp16 on CUDA where the official numerics allow, else fp32.",
        read_only=True,
        choices=PRECISIONS,
    ),
    ParameterSpec(
        "backend",
        "torch",
        "Network forward: torch (eager PyTorch), openvino (CPU, pip package openvino) or"
        " onnxruntime (pip package onnxruntime); the exported network is built once per input"
        " size under cache_dir/exported/ (or ahead with fcclip-ros export).",
        read_only=True,
        choices=BACKENDS,
    ),
    ParameterSpec(
        "onnxruntime_providers",
        Parameter.Type.STRING_ARRAY,
        "backend onnxruntime: execution providers in order of preference, e.g."
        " [TensorrtExecutionProvider, CUDAExecutionProvider, CPUExecutionProvider]; empty: CPU,"
        " or CUDA then CPU on a CUDA device.",
        read_only=True,
    ),
    ParameterSpec(
        "mode",
        "panoptic",
        "panoptic: one label per segment; semantic: per-pixel argmax class.",
        read_only=True,
        choices=MODES,
    ),
    ParameterSpec(
        "input_short_side",
        800,
        "The network sees images resized to this short side (the official test size is 800);"
        " 0 keeps the camera's size.",
        read_only=True,
        value_range=_integer_range(0, 4096),
    ),
    ParameterSpec(
        "max_long_side",
        1333,
        "Upper bound on the resized long side.",
        read_only=True,
        value_range=_integer_range(32, 8192),
    ),
    ParameterSpec(
        "max_input_pixels",
        DEFAULT_MAX_INPUT_PIXELS,
        "Frames declaring more pixels (width x height, read from the header before decoding)"
        " are refused as malformed: bounds the memory one frame can take.",
        read_only=True,
        value_range=_integer_range(1, 16384 * 16384),
    ),
    ParameterSpec(
        "vocabulary",
        Parameter.Type.STRING_ARRAY,
        'Classes, each "name" or "name, synonym, ..." (optional [thing] or [stuff] tag);'
        " non-empty overrides vocabulary_preset. Setting it swaps the vocabulary; [] goes back"
        " to the preset.",
    ),
    ParameterSpec(
        "vocabulary_preset",
        "coco",
        "Built-in vocabulary used while `vocabulary` is empty. Setting it swaps the vocabulary"
        " and clears `vocabulary`.",
        choices=PRESETS,
    ),
    ParameterSpec(
        "object_mask_threshold",
        0.0,
        "Panoptic: drop queries whose class probability is not above this.",
        value_range=_unit_range(),
    ),
    ParameterSpec(
        "overlap_threshold",
        0.8,
        "Panoptic: drop a segment keeping less than this share of its mask.",
        value_range=_unit_range(),
    ),
    ParameterSpec(
        "cache_dir",
        "",
        "Checkpoints and text embeddings; empty: $FCCLIP_ROS_CACHE or ~/.cache/fcclip_ros.",
        read_only=True,
    ),
    ParameterSpec(
        "max_batch_size",
        4,
        "On CUDA, up to this many cameras with a waiting frame share one forward pass. On CPU"
        " frames go one at a time (batching gains nothing there and delays the first camera).",
        read_only=True,
        value_range=_integer_range(1, 16),
    ),
    ParameterSpec(
        "cpu_threads",
        0,
        "CPU inference threads; 0: one per core. Lower it to leave cores to other nodes.",
        read_only=True,
        value_range=_integer_range(0, 1024),
    ),
    ParameterSpec(
        "keep_embeddings",
        True,
        "Compute every frame's segment embeddings and keep the latest per camera for the `query`"
        " service; false: only while `embeddings` is subscribed (queries then answer from the"
        " last frame that had them).",
    ),
    ParameterSpec(
        "autostart",
        True,
        "Configure and activate at start-up; false: stay unconfigured until a lifecycle manager"
        " (or `ros2 lifecycle set`) drives the node.",
        read_only=True,
    ),
    ParameterSpec(
        "overlay_alpha", 0.5, "Overlay: weight of the class colour.", value_range=_unit_range()
    ),
    ParameterSpec("overlay_boundaries", True, "Overlay: white lines between segments."),
    ParameterSpec("overlay_names", True, "Overlay: class names at the segments."),
    ParameterSpec(
        "overlay_font_scale",
        0.5,
        "Overlay: OpenCV font scale of the names.",
        value_range=FloatingPointRange(from_value=0.1, to_value=4.0, step=0.0),
    ),
)


def declare(node: Node) -> None:
    """Declare every parameter with its descriptor (values from overrides or the defaults)."""
    for spec in PARAMETERS:
        node.declare_parameter(spec.name, spec.default, spec.descriptor())
    try:
        node.get_parameter("vocabulary")
    except ParameterUninitializedException:  # an empty list has no type until given one
        node.set_parameters([Parameter("vocabulary", Parameter.Type.STRING_ARRAY, [])])


def values(node: Node) -> dict[str, Any]:
    """Every parameter's current value; [] for a read-only array left unset (read-only
    parameters cannot be given their empty default after being declared)."""
    return {spec.name: _value(node, spec) for spec in PARAMETERS}


def _value(node: Node, spec: ParameterSpec) -> Any:
    try:
        return node.get_parameter(spec.name).value
    except ParameterUninitializedException:
        return []


def check(values: Mapping[str, Any]) -> None:
    """Refuse values that cannot work, before anything is built (ConfigurationError)."""
    for spec in PARAMETERS:
        if spec.choices and values[spec.name] not in spec.choices:
            raise ConfigurationError(
                f"parameter {spec.name} is {values[spec.name]!r}; "
                f"expected one of {', '.join(spec.choices)}"
            )
    check_topics(values["image_topics"])
    for name in ("depth_topics", "camera_info_topics"):
        given = values[name] or []
        if given and len(given) != len(values["image_topics"]):
            raise ConfigurationError(
                f"{name} has {len(given)} topics but image_topics has "
                f"{len(values['image_topics'])}: give one per image topic, in the same order"
            )


def check_topics(topics: Sequence[str]) -> None:
    if not topics or not all(topic.strip() for topic in topics):
        raise ConfigurationError(f"image_topics needs at least one topic name, got {topics}")
    seen: dict[str, str] = {}
    for topic in topics:
        namespace = output_namespace(topic)
        if namespace in seen:
            raise ConfigurationError(
                f"image topics {seen[namespace]!r} and {topic!r} would both publish to "
                f"{namespace}/; put each camera in its own namespace"
            )
        seen[namespace] = topic


def requested_vocabulary(values: Mapping[str, Any]) -> tuple[tuple[str, ...], str]:
    """(entries, preset) the parameters ask for: a non-empty class list wins over the preset."""
    entries = tuple(values["vocabulary"] or ())
    return (entries, "") if entries else ((), values["vocabulary_preset"])


def engine_config(values: Mapping[str, Any]) -> EngineConfig:
    entries, _ = requested_vocabulary(values)
    return EngineConfig(
        model=values["model"],
        weights=values["weights"],
        clip_weights=values["clip_weights"],
        device=values["device"],
        precision=values["precision"],
        mode=values["mode"],
        input_short_side=values["input_short_side"],
        max_long_side=values["max_long_side"],
        max_input_pixels=values["max_input_pixels"],
        object_mask_threshold=values["object_mask_threshold"],
        overlap_threshold=values["overlap_threshold"],
        cache_dir=values["cache_dir"] or None,
        vocabulary=entries,
        vocabulary_preset=values["vocabulary_preset"],
        backend=values["backend"],
        onnxruntime_providers=tuple(values["onnxruntime_providers"] or ()),
    )


def overlay_style(values: Mapping[str, Any], base: OverlayStyle | None = None) -> OverlayStyle:
    """The overlay style with the overlay parameters among `values` applied to `base`."""
    fields = {field: values[name] for name, field in OVERLAY_FIELDS.items() if name in values}
    return OverlayStyle(**{**(base.__dict__ if base else {}), **fields})


def preset_replaces_classes(parameters: list[Parameter]) -> list[Parameter]:
    """Pre-set callback: setting `vocabulary_preset` alone also clears `vocabulary`, in the same
    atomic change, so the preset takes effect and `ros2 param get` shows what is in force."""
    names = {parameter.name for parameter in parameters}
    if "vocabulary_preset" in names and "vocabulary" not in names:
        parameters.append(Parameter("vocabulary", Parameter.Type.STRING_ARRAY, []))
    return parameters
