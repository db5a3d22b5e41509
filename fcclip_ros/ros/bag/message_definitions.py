"""The `ros2msg` text of a message type with everything it refers to, as MCAP schemas carry it.

rosbag2, Foxglove and mcap-ros2-support decode a recorded topic from this text alone: the type's
own `.msg` file followed by each type it uses, once, after a line of `=` and `MSG: pkg/msg/Type`.
The `.msg` files come from the installed interfaces (`share/<package>/msg/`), ours included.
"""

from __future__ import annotations

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
    """The non-builtin types a .msg text uses, as "pkg/msg/Type", in order of first use."""
    found: list[str] = []
    for line in text.splitlines():
        match = _FIELD_TYPE.match(line.split("#", 1)[0])
        if match is None or match.group(1) in BUILTIN_TYPES:
            continue
        parts = match.group(1).split("/")
        full = f"{parts[0]}/msg/{parts[-1]}" if len(parts) > 1 else f"{package}/msg/{parts[0]}"
        if full not in found:
            found.append(full)
    return found


def message_definition(type_name: str) -> str:
    """The complete ros2msg definition of "pkg/msg/Type" (dependencies depth first, once each)."""
    package, _, name = type_name.split("/")
    root = _msg_file(package, name).read_text()
    sections: list[str] = [root.rstrip("\n")]
    seen = {type_name}
    pending = _referenced_types(root, package)
    while pending:
        dependency = pending.pop(0)
        if dependency in seen:
            continue
        seen.add(dependency)
        dep_package, _, dep_name = dependency.split("/")
        text = _msg_file(dep_package, dep_name).read_text()
        sections.append(f"{SEPARATOR}\nMSG: {dependency}\n{text.rstrip(chr(10))}")
        pending = _referenced_types(text, dep_package) + pending
    return "\n".join(sections) + "\n"


def message_type_name(message_class: type) -> str:
    """ "sensor_msgs/msg/Image" for the generated Python class sensor_msgs.msg.Image."""
    package = message_class.__module__.split(".")[0]
    return f"{package}/msg/{message_class.__name__}"
