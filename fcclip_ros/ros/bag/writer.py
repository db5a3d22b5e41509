"""Writing a rosbag2 folder (`<folder>/<folder name>_0.mcap` + `metadata.yaml`) that `ros2 bag
info/play` and Foxglove open, without a ROS install. Our own messages are serialized from the
ros2msg schema written beside them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from mcap.writer import Writer
from mcap_ros2._dynamic import serialize_dynamic

from fcclip_ros.ros.bag.message_definitions import (
    MessageDefinitionError,
    message_definition,
    message_type_name,
)
from fcclip_ros.ros.bag.reader import BagError

PROGRESS_RECORD = "fcclip_ros.bag"
# The QoS rosbag2 replays a topic with (Humble's metadata format, read by every later release):
# reliable, volatile; the vocabulary transient local, as the node latches it.
_QOS = ("- history: 1\n  depth: 1\n  reliability: 1\n  durability: {durability}\n"
        "  deadline:\n    sec: 2147483647\n    nsec: 4294967295\n"
        "  lifespan:\n    sec: 2147483647\n    nsec: 4294967295\n  liveliness: 1\n"
        "  liveliness_lease_duration:\n    sec: 2147483647\n    nsec: 4294967295\n"
        "  avoid_ros_namespace_conventions: false\n")
VOLATILE_QOS, LATCHED_QOS = _QOS.format(durability=2), _QOS.format(durability=1)



# --- output --------------------------------------------------------------------------------


def output_files(folder: Path) -> dict[str, Path]:
    """The files of an output folder: the finished MCAP, and while it is being written (or
    after its writer was killed) the partial MCAP, its checkpoint log, and both set aside for
    recovery."""
    path = folder / f"{folder.name}_0.mcap"
    return {"mcap": path, **{kind: path.with_name(f"{path.name}.{kind}") for kind in (
        "partial", "progress", "killed", "killed_progress", "repair")}}


class OutputBag:
    """A rosbag2 folder being written: `<folder>/<folder name>_0.mcap` and `metadata.yaml`.

    The MCAP is written beside its final name and moved there by `close`, so a run that dies
    never leaves a half-written file where a finished one (or the one being resumed) was.
    Beside it, a checkpoint log (first line `header`, then one JSON line per `checkpoint`)
    lets `recover_killed_run` finish what a killed process wrote.
    """

    def __init__(self, folder: Path, header: dict[str, str]) -> None:
        self.folder = folder
        files = output_files(folder)
        self.path = files["mcap"]
        folder.mkdir(parents=True, exist_ok=True)
        self._partial = files["partial"]
        self._log_path = files["progress"]
        self._log = self._log_path.open("w")
        self._log.write(json.dumps(header) + "\n")
        self._stream = self._partial.open("wb")
        self._writer = Writer(self._stream)
        self._writer.start(profile="ros2", library="fcclip_ros bag")
        self._schemas: dict[str, int] = {}
        self._channels: dict[str, int] = {}
        self._topic_types: dict[str, str] = {}
        self._topic_qos: dict[str, str] = {}
        self._encoders: dict[str, Callable[[Any], bytes]] = {}
        self._definitions: dict[str, bytes] = {}
        self.counts: dict[str, int] = {}
        self.start_time: int | None = None
        self.end_time = 0

    def add_topic(self, name: str, type_name: str, schema_text: bytes,
                  metadata: dict[str, str]) -> None:
        if name in self._channels:
            return
        if type_name not in self._schemas:
            self._schemas[type_name] = self._writer.register_schema(type_name, "ros2msg",
                                                                    schema_text)
        self._channels[name] = self._writer.register_channel(
            name, "cdr", self._schemas[type_name], metadata)
        self._topic_types[name] = type_name
        self._topic_qos[name] = metadata.get("offered_qos_profiles", "")
        self.counts[name] = 0

    def add_output_topic(self, name: str, message_class: type, qos: str = VOLATILE_QOS) -> None:
        type_name = message_type_name(message_class)
        if name in self._topic_types and self._topic_types[name] != type_name:
            raise BagError(f"the input already has a topic {name} of type "
                           f"{self._topic_types[name]}, where this command writes {type_name}")
        if type_name not in self._encoders:
            try:
                definition = message_definition(type_name)
            except MessageDefinitionError as error:
                raise BagError(f"cannot describe {type_name} in the bag: {error}") from error
            self._encoders[type_name] = serialize_dynamic(type_name, definition)[type_name]
            self._definitions[type_name] = definition.encode()
        self.add_topic(name, type_name, self._definitions[type_name],
                       {"offered_qos_profiles": qos})

    def write(self, topic: str, data: bytes, log_time: int, publish_time: int,
              sequence: int = 0) -> None:
        self._writer.add_message(self._channels[topic], log_time, data, publish_time, sequence)
        self.counts[topic] += 1
        self.start_time = log_time if self.start_time is None else min(self.start_time, log_time)
        self.end_time = max(self.end_time, log_time)

    def publish(self, topic: str, msg: Any, log_time: int) -> None:
        """Serializes `msg` with its schema from the bag: the same message always gives the
        same bytes (rclpy's serializer leaves CDR padding bytes uninitialised)."""
        encode = self._encoders[self._topic_types[topic]]
        self.write(topic, encode(_PlainArrays(msg)), log_time, log_time)

    def checkpoint(self, progress: dict[str, str]) -> None:
        """Logs that the messages written so far hold `progress`. The MCAP chunk in progress
        is finished first, and both files are handed to the operating system: a killed process
        loses nothing up to here (a power cut may)."""
        self._writer.flush()
        self._log.write(json.dumps({"messages_written": sum(self.counts.values()),
                                    **progress}) + "\n")
        self._log.flush()

    def close(self, progress: dict[str, str]) -> None:
        """Finish the MCAP with its summary and the run's progress record, put it in place,
        and write the metadata.yaml that `ros2 bag info/play` read."""
        self._writer.add_metadata(PROGRESS_RECORD, progress)
        self._writer.finish()
        self._stream.close()
        os.replace(self._partial, self.path)
        self._log.close()
        self._log_path.unlink()
        (self.folder / "metadata.yaml").write_text(yaml.safe_dump(self._rosbag2_metadata(),
                                                                  sort_keys=False))

    def _rosbag2_metadata(self) -> dict[str, Any]:
        start = self.start_time or 0
        duration = self.end_time - start
        total = sum(self.counts.values())
        return {"rosbag2_bagfile_information": {
            "version": 5,
            "storage_identifier": "mcap",
            "duration": {"nanoseconds": duration},
            "starting_time": {"nanoseconds_since_epoch": start},
            "message_count": total,
            "topics_with_message_count": [
                {"topic_metadata": {"name": name, "type": self._topic_types[name],
                                    "serialization_format": "cdr",
                                    "offered_qos_profiles": self._topic_qos[name]},
                 "message_count": count}
                for name, count in self.counts.items()],
            "compression_format": "",
            "compression_mode": "",
            "relative_file_paths": [self.path.name],
            "files": [{"path": self.path.name,
                       "starting_time": {"nanoseconds_since_epoch": start},
                       "duration": {"nanoseconds": duration},
                       "message_count": total}],
        }}


class _PlainArrays:
    """A message as mcap-ros2-support's encoder reads it: rclpy holds fixed-size numeric arrays
    (a pose covariance, say) as numpy arrays, which that encoder does not take; here they are
    lists. Nested messages are wrapped the same way."""

    __slots__ = ("_msg",)

    def __init__(self, msg: Any) -> None:
        self._msg = msg

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._msg, name)
        if isinstance(value, np.ndarray):
            return value.tolist()
        if isinstance(value, list):
            return [_PlainArrays(item) if _is_message(item) else item for item in value]
        return _PlainArrays(value) if _is_message(value) else value


def _is_message(value: Any) -> bool:
    return hasattr(type(value), "get_fields_and_field_types")
