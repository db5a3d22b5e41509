"""The `ros2msg` text of a message type with everything it refers to, as MCAP schemas carry it.

Written the way rosbag2 writes it (rosbag2_cpp's LocalMessageDefinitionSource), which Foxglove
and mcap-ros2-support read: the type's own `.msg` file as installed (comments included), then
each type it uses, once, depth first: a line of 80 `=`, a line `MSG: pkg/Type` naming it as a
field does (no `/msg/`: Foxglove's parser looks field types up by exactly that name), and its
`.msg` file. The types a file uses follow it in name order, each before its own dependencies.
The `.msg` files come from the installed interfaces (`share/<package>/msg/`), ours included.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

BUILTIN_TYPES = frozenset({
    "bool", "byte", "char", "float32", "float64", "int8", "uint8", "int16", "uint16", "int32",
    "uint32", "int64", "uint64", "string", "wstring",
})
SEPARATOR = "=" * 80
# The type of a field line: "pkg/Type name", "Type[] name", "string<=8 name", "int32 X=1"
_FIELD_TYPE = re.compile(r"^\s*([A-Za-z][\w/]*)(?:<=\d+)?(?:\[[^\]]*\])?\s+\w")


class MessageDefinitionError(LookupError):
    pass


def _share_directories() -> list[Path]:
    """Where installed interfaces live: every AMENT_PREFIX_PATH prefix (a sourced ROS install or
    colcon workspace), then this interpreter's prefix (the PyPI wheels put them there)."""
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    prefixes.append(sys.prefix)
    return [Path(prefix) / "share" for prefix in prefixes]


def _msg_file(package: str, name: str) -> Path:
    for share in _share_directories():
        path = share / package / "msg" / f"{name}.msg"
        if path.is_file():
            return path
    raise MessageDefinitionError(
        f"no {package}/msg/{name}.msg under {', '.join(map(str, _share_directories()))}"
    )


def _referenced_types(text: str, package: str) -> list[str]:
    """The non-builtin types a .msg text uses, as "pkg/Type" (a bare "Type" is in `package`),
    sorted by name as rosbag2 lists them."""
    found: set[str] = set()
    for line in text.splitlines():
        match = _FIELD_TYPE.match(line.split("#", 1)[0])
        if match is None or match.group(1) in BUILTIN_TYPES:
            continue
        parts = match.group(1).split("/")
        found.add(f"{parts[0]}/{parts[-1]}" if len(parts) > 1 else f"{package}/{parts[0]}")
    return sorted(found)


def message_definition(type_name: str) -> str:
    """The complete ros2msg definition of "pkg/msg/Type", as rosbag2 writes it: the type's
    .msg file, then each dependency after a separator and `MSG: pkg/Type` (depth first, once
    each, a file's dependencies in name order)."""
    package, _, name = type_name.split("/")
    seen = {f"{package}/{name}"}

    def with_dependencies(package: str, name: str) -> str:
        text = _msg_file(package, name).read_text()
        for dependency in _referenced_types(text, package):
            if dependency not in seen:
                seen.add(dependency)
                text += f"\n{SEPARATOR}\nMSG: {dependency}\n" + with_dependencies(
                    *dependency.split("/"))
        return text

    return with_dependencies(package, name)


def message_type_name(message_class: type) -> str:
    """ "sensor_msgs/msg/Image" for the generated Python class sensor_msgs.msg.Image."""
    package = message_class.__module__.split(".")[0]
    return f"{package}/msg/{message_class.__name__}"


def type_description_hash(type_name: str) -> str:
    """The RIHS01 hash of an installed interface (rosidl writes it beside the .msg file, in
    share/<package>/msg/<Type>.json); "" when unknown, as rosbag2 leaves it."""
    package, _, name = type_name.split("/")
    for share in _share_directories():
        path = share / package / "msg" / f"{name}.json"
        if path.is_file():
            try:
                return json.loads(path.read_text())["type_hashes"][0]["hash_string"]
            except (ValueError, KeyError, IndexError, TypeError):
                return ""
    return ""
