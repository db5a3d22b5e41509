"""The node's parameters: descriptors built from the settings table, checks, and what they
configure.

Names, defaults, ranges, choices and help texts come from fcclip_ros.settings, the table that the
CLI, the launch file and `config/segment.yaml` share: the node has no default of its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.exceptions import ParameterUninitializedException
from rclpy.node import Node
from rclpy.parameter import Parameter

from fcclip_ros.engine import EngineConfig
from fcclip_ros.overlay import OverlayStyle
from fcclip_ros.settings import SETTINGS, SETTINGS_BY_NAME, Setting, constraints
from fcclip_ros.topics import output_namespace
from fcclip_ros.vocabulary import VocabularySpec

THRESHOLDS = ("object_mask_threshold", "overlap_threshold")
# The parameters that make up the vocabulary in force; the arrays among them are tunable and
# empty by default, so they are given their type at declaration to be settable.
VOCABULARY = ("vocabulary", "vocabulary_preset", "negative_vocabulary", "class_thresholds")
VOCABULARY_ARRAYS = tuple(name for name in VOCABULARY if SETTINGS_BY_NAME[name].type is tuple)
OVERLAY_FIELDS = {  # parameter -> OverlayStyle field
    "overlay_alpha": "alpha",
    "overlay_boundaries": "boundaries",
    "overlay_names": "names",
    "overlay_font_scale": "font_scale",
    "marker_lifetime": "marker_lifetime_s",
}


class ConfigurationError(ValueError):
    """A node parameter that cannot work; the message names it and says why."""


@dataclass(frozen=True)
class VocabularyRequest:
    """The vocabulary as the parameters write it: classes or a preset (the other empty),
    negative entries, and "NAME=VALUE" class thresholds."""

    classes: tuple[str, ...]
    preset: str
    negatives: tuple[str, ...] = ()
    thresholds: tuple[str, ...] = ()

    def spec(self) -> VocabularySpec:
        """Parsed and validated (VocabularyError says why not)."""
        return VocabularySpec.from_settings(self.classes, self.preset, self.negatives,
                                            self.thresholds)

    def parameters(self) -> list[Parameter]:
        """The parameters that show this request."""
        return [Parameter("vocabulary", Parameter.Type.STRING_ARRAY, list(self.classes)),
                *([Parameter("vocabulary_preset", Parameter.Type.STRING, self.preset)]
                  if self.preset else []),
                Parameter("negative_vocabulary", Parameter.Type.STRING_ARRAY,
                          list(self.negatives)),
                Parameter("class_thresholds", Parameter.Type.STRING_ARRAY,
                          list(self.thresholds))]


def descriptor(setting: Setting) -> ParameterDescriptor:
    """The setting's descriptor: its help, read-only flag, choices and range (rclpy adds the
    type, from the declared value)."""
    result = ParameterDescriptor(
        name=setting.name, description=setting.help, read_only=not setting.tunable
    )
    if setting.choices:
        result.additional_constraints = constraints(setting)
    if setting.value_range:
        low, high = setting.value_range
        if setting.type is float:
            result.floating_point_range = [FloatingPointRange(from_value=low, to_value=high)]
        else:
            result.integer_range = [IntegerRange(from_value=low, to_value=high, step=1)]
    return result


def declared_value(setting: Setting) -> Any:
    """What `declare_parameter` takes for the default: an array as a list, an empty one as its
    type (an empty list has no type)."""
    if setting.type is tuple:
        return list(setting.default) or Parameter.Type.STRING_ARRAY
    return setting.default


def declare(node: Node) -> None:
    """Declare every parameter with its descriptor (values from overrides or the defaults)."""
    for setting in SETTINGS:
        node.declare_parameter(setting.name, declared_value(setting), descriptor(setting))
    for name in VOCABULARY_ARRAYS:
        try:
            node.get_parameter(name)
        except ParameterUninitializedException:  # an empty list has no type until given one
            node.set_parameters([Parameter(name, Parameter.Type.STRING_ARRAY, [])])


def values(node: Node) -> dict[str, Any]:
    """Every parameter's current value; [] for a read-only array left unset (read-only
    parameters cannot be given their empty default after being declared)."""
    return {setting.name: _value(node, setting.name) for setting in SETTINGS}


def _value(node: Node, name: str) -> Any:
    try:
        return node.get_parameter(name).value
    except ParameterUninitializedException:
        return []


def check(values: Mapping[str, Any]) -> None:
    """Refuse values that cannot work, before anything is built (ConfigurationError)."""
    for setting in SETTINGS:
        if setting.choices and values[setting.name] not in setting.choices:
            raise ConfigurationError(
                f"parameter {setting.name} is {values[setting.name]!r}; "
                f"expected one of {', '.join(setting.choices)}"
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


def requested_vocabulary(values: Mapping[str, Any]) -> VocabularyRequest:
    """What the parameters ask for: a non-empty class list wins over the preset."""
    entries = tuple(values["vocabulary"] or ())
    return VocabularyRequest(entries, "" if entries else values["vocabulary_preset"],
                             tuple(values["negative_vocabulary"] or ()),
                             tuple(values["class_thresholds"] or ()))


def engine_config(values: Mapping[str, Any]) -> EngineConfig:
    """The engine the parameters ask for (a non-empty class list wins over the preset)."""
    return EngineConfig.from_settings(values)


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
