"""rosbag2 MCAP files without a ROS install: reading a recording in order, and writing a
rosbag2 folder (`<folder>/<folder name>_0.mcap` + `metadata.yaml`) that `ros2 bag info/play` and
Foxglove open. Our own messages are serialized from the ros2msg schema written beside them.
"""

from __future__ import annotations

import hashlib
import json
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
from mcap.stream_reader import StreamReader
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


def _output_files(folder: Path) -> dict[str, Path]:
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
        files = _output_files(folder)
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


def recover_killed_run(folder: Path) -> int | None:
    """Finishes what a killed run left in `folder` (a partial MCAP without summary, and its
    checkpoint log): the messages up to its last checkpoint that the file holds whole, with
    that checkpoint as the progress record (so --resume continues from there). Returns how many
    messages were kept; None when no killed run is there; BagError when one is but nothing it
    wrote is usable. Safe to run again if it is itself killed."""
    files = _output_files(folder)
    for source, aside in (("partial", "killed"), ("progress", "killed_progress")):
        if files[source].is_file() and not files[aside].is_file():
            os.replace(files[source], files[aside])  # before anything writes .partial again
    if not (files["killed"].is_file() and files["killed_progress"].is_file()):
        return None
    header, checkpoints = _read_checkpoints(files["killed_progress"])
    whole = sum(1 for _ in _whole_messages(files["killed"]))
    usable = [c for c in checkpoints if c.get("messages_written", whole + 1) <= whole]
    if header is None or not usable:
        raise BagError(f"{folder}: the run was killed before it wrote anything usable; remove "
                       "the folder and start again")
    last = usable[-1]
    keep = last.pop("messages_written")
    with files["repair"].open("wb") as stream:
        writer = Writer(stream)
        writer.start(profile="ros2", library="fcclip_ros bag")
        schema_ids: dict[int, int] = {}
        channel_ids: dict[int, int] = {}
        for count, (schema, channel, message) in enumerate(_whole_messages(files["killed"])):
            if count == keep:
                break
            if schema.id not in schema_ids:
                schema_ids[schema.id] = writer.register_schema(schema.name, schema.encoding,
                                                               schema.data)
            if channel.id not in channel_ids:
                channel_ids[channel.id] = writer.register_channel(
                    channel.topic, channel.message_encoding, schema_ids[schema.id],
                    dict(channel.metadata))
            writer.add_message(channel_ids[channel.id], message.log_time, message.data,
                               message.publish_time, message.sequence)
        writer.add_metadata(PROGRESS_RECORD, {**header, **last, "complete": "false"})
        writer.finish()
    os.replace(files["repair"], files["mcap"])
    files["killed"].unlink()
    files["killed_progress"].unlink()
    return keep


def _read_checkpoints(path: Path) -> tuple[dict[str, str] | None, list[dict[str, Any]]]:
    """The header and the checkpoints of a log; a line cut short by the kill ends it."""
    lines = path.read_text().splitlines()
    entries = []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except ValueError:
            break
    if not entries or not all(isinstance(entry, dict) for entry in entries):
        return None, []
    return entries[0], entries[1:]


def _whole_messages(path: Path) -> Iterator[tuple[Schema, Channel, Message]]:
    """The messages of a partial MCAP in the order written, up to the first record that the
    kill cut short (every chunk is checked against its CRC)."""
    schemas: dict[int, Schema] = {}
    channels: dict[int, Channel] = {}
    with path.open("rb") as stream:
        records = StreamReader(stream, validate_crcs=True).records
        while True:
            try:
                record = next(records)
            except StopIteration:
                return
            except Exception:  # truncated data fails in many ways; all mean "cut here"
                return
            if isinstance(record, Schema):
                schemas[record.id] = record
            elif isinstance(record, Channel):
                channels[record.id] = record
            elif isinstance(record, Message):
                channel = channels[record.channel_id]
                yield schemas[channel.schema_id], channel, record


def read_progress(path: Path) -> dict[str, str] | None:
    """The progress record of a bag this command wrote, or None."""
    with path.open("rb") as stream:
        for record in make_reader(stream).iter_metadata():
            if record.name == PROGRESS_RECORD:
                return dict(record.metadata)
    return None
