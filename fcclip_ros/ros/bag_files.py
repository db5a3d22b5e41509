"""rosbag2 MCAP files without a ROS install: reading a recording in order, and writing a
rosbag2 folder (`<folder>/<folder name>_0.mcap` + `metadata.yaml`) that `ros2 bag info/play` and
Foxglove open. Our own messages are serialized from the ros2msg schema written beside them.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from mcap.exceptions import McapError
from mcap.reader import make_reader
from mcap.records import Channel, Message, Schema
from mcap.writer import Writer
from mcap_ros2._dynamic import serialize_dynamic
from sensor_msgs.msg import CompressedImage, Image

from fcclip_ros.ros.message_definitions import (
    MessageDefinitionError,
    message_definition,
    message_type_name,
)

IMAGE_TYPES = {message_type_name(Image): Image, message_type_name(CompressedImage): CompressedImage}
PROGRESS_RECORD = "fcclip_ros.bag"
# The QoS rosbag2 replays a topic with (Humble's metadata format, read by every later release):
# reliable, volatile; the vocabulary transient local, as the node latches it.
_QOS = ("- history: 1\n  depth: 1\n  reliability: 1\n  durability: {durability}\n"
        "  deadline:\n    sec: 2147483647\n    nsec: 4294967295\n"
        "  lifespan:\n    sec: 2147483647\n    nsec: 4294967295\n  liveliness: 1\n"
        "  liveliness_lease_duration:\n    sec: 2147483647\n    nsec: 4294967295\n"
        "  avoid_ros_namespace_conventions: false\n")
VOLATILE_QOS, LATCHED_QOS = _QOS.format(durability=2), _QOS.format(durability=1)
MCAP_MAGIC = b"\x89MCAP0\r\n"  # first and last 8 bytes of every finished MCAP file


class BagError(Exception):
    """Input or output the command cannot work with; the message says why and what to do."""


# --- input ---------------------------------------------------------------------------------


def input_files(path: Path) -> list[Path]:
    """The MCAP file(s) of a bag: the file itself, or a rosbag2 folder's files in order."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise BagError(f"{path}: no such file or folder")
    metadata = path / "metadata.yaml"
    if metadata.is_file():
        try:
            info = yaml.safe_load(metadata.read_text())["rosbag2_bagfile_information"]
            files = [path / name for name in info["relative_file_paths"]]
        except (yaml.YAMLError, KeyError, TypeError) as error:
            raise BagError(f"{metadata}: not a rosbag2 metadata file ({error})") from error
    else:
        files = sorted(path.glob("*.mcap"))
    if not files:
        raise BagError(f"{path}: holds no .mcap file")
    for file in files:
        if file.suffix != ".mcap":
            raise BagError(f"{file}: not an MCAP file (sqlite3 bags: convert them with "
                           "`ros2 bag convert` to storage mcap first)")
    return files


@dataclass(frozen=True)
class Topic:
    name: str
    schema: Schema
    channel: Channel


class InputBag:
    """The topics and messages of one or more MCAP files, read in order without loading them."""

    def __init__(self, path: Path) -> None:
        self.files = input_files(path)
        self.topics: dict[str, Topic] = {}
        self.message_counts: dict[str, int] = {}
        self.start_time: int | None = None
        for file in self.files:
            summary = self._summary(file)
            for channel_id, channel in summary.channels.items():
                schema = summary.schemas.get(channel.schema_id)
                if schema is None:
                    raise BagError(f"{file}: topic {channel.topic} has no schema")
                self.topics.setdefault(channel.topic, Topic(channel.topic, schema, channel))
                count = summary.statistics.channel_message_counts.get(channel_id, 0)
                previous = self.message_counts.get(channel.topic, 0)
                self.message_counts[channel.topic] = previous + count
            if summary.statistics.message_count:
                start = summary.statistics.message_start_time
                self.start_time = start if self.start_time is None else min(self.start_time, start)

    @staticmethod
    def _summary(file: Path) -> Any:
        recover = ("`mcap recover` (the mcap CLI) rebuilds a readable file from what was "
                   "written")
        try:
            with file.open("rb") as stream:
                head = stream.read(len(MCAP_MAGIC))
                stream.seek(max(0, file.stat().st_size - len(MCAP_MAGIC)))
                tail = stream.read()
                if head != MCAP_MAGIC:
                    raise BagError(f"{file}: not an MCAP file (it does not start with the MCAP "
                                   "magic bytes)")
                if tail != MCAP_MAGIC:
                    raise BagError(f"{file}: the MCAP is truncated or its recorder did not "
                                   f"close it (no end marker); {recover}")
                stream.seek(0)
                summary = make_reader(stream).get_summary()
        except (McapError, ValueError, OSError) as error:
            raise BagError(f"{file}: not a readable MCAP file ({error}); {recover}") from error
        if summary is None or summary.statistics is None:
            raise BagError(f"{file}: the MCAP has no summary section (recorded without one, or "
                           f"not closed); {recover}")
        return summary

    @property
    def image_topics(self) -> list[str]:
        return [name for name, topic in self.topics.items() if topic.schema.name in IMAGE_TYPES]

    def fingerprint(self) -> str:
        """Identifies the input for --resume without reading it whole."""
        parts = [f"{file.name}:{file.stat().st_size}" for file in self.files]
        parts += [f"{name}={count}" for name, count in sorted(self.message_counts.items())]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()

    def messages(self) -> Iterator[tuple[Topic, Message]]:
        for file in self.files:
            try:
                with file.open("rb") as stream:
                    reader = make_reader(stream)
                    channels = reader.get_summary().channels
                    for _schema, channel, message in reader.iter_messages(log_time_order=True):
                        yield self.topics[channels[channel.id].topic], message
            except McapError as error:
                raise BagError(f"{file}: unreadable after a valid start ({error}); `mcap "
                               "recover` (the mcap CLI) rebuilds what is readable") from error


# --- output --------------------------------------------------------------------------------


class OutputBag:
    """A rosbag2 folder being written: `<folder>/<folder name>_0.mcap` and `metadata.yaml`.

    The MCAP is written beside its final name and moved there by `close`, so a run that dies
    never leaves a half-written file where a finished one (or the one being resumed) was.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / f"{folder.name}_0.mcap"
        folder.mkdir(parents=True, exist_ok=True)
        self._partial = self.path.with_name(self.path.name + ".partial")
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

    def close(self, progress: dict[str, str]) -> None:
        """Finish the MCAP with its summary and the run's progress record, put it in place,
        and write the metadata.yaml that `ros2 bag info/play` read."""
        self._writer.add_metadata(PROGRESS_RECORD, progress)
        self._writer.finish()
        self._stream.close()
        os.replace(self._partial, self.path)
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


def read_progress(path: Path) -> dict[str, str] | None:
    """The progress record of a bag this command wrote, or None."""
    with path.open("rb") as stream:
        for record in make_reader(stream).iter_metadata():
            if record.name == PROGRESS_RECORD:
                return dict(record.metadata)
    return None
