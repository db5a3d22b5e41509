"""Writing a rosbag2 folder (`<folder>/<folder name>_0.mcap` + `metadata.yaml`) that `ros2 bag
info/play` and Foxglove open, without a ROS install. Input channels keep their own schemas and
encodings; our own messages are serialized from the ros2msg schema written beside them.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from mcap.reader import make_reader
from mcap.records import Attachment, Schema
from mcap.writer import Writer
from mcap_ros2._dynamic import serialize_dynamic

from fcclip_ros.ros.bag.message_definitions import (
    MessageDefinitionError,
    message_definition,
    message_type_name,
    type_description_hash,
)
from fcclip_ros.ros.bag.reader import BagError

PROGRESS_RECORD = "fcclip_ros.bag"
# The trackers' state (an npz, fcclip_ros.tracking.Tracker.state() per camera) at the end of an
# unfinished file: an attachment, so that --resume tracks on with the same ids.
TRACKS_ATTACHMENT = "fcclip_ros.tracks"
TRACKS_MEDIA_TYPE = "application/x-npz"
ROSBAG2_RECORD = "rosbag2"  # rosbag2's own description of the bag (its MCAP storage plugin)
METADATA_VERSION = 9  # the metadata.yaml version rosbag2 writes since Jazzy
# The QoS a topic is replayed with, as rosbag2 (version 9) writes offered_qos_profiles: reliable,
# volatile; the vocabulary transient local, as the node latches it.
_QOS = {"history": "keep_last", "depth": 1, "reliability": "reliable", "durability": "volatile",
        **{duration: {"sec": 9223372036, "nsec": 854775807}  # infinite, as rmw writes it
           for duration in ("deadline", "lifespan")},
        "liveliness": "automatic",
        "liveliness_lease_duration": {"sec": 9223372036, "nsec": 854775807},
        "avoid_ros_namespace_conventions": False}
VOLATILE_QOS = yaml.safe_dump([_QOS], sort_keys=False)
LATCHED_QOS = yaml.safe_dump([{**_QOS, "durability": "transient_local"}], sort_keys=False)


def output_files(folder: Path) -> dict[str, Path]:
    """The files of an output folder: the finished MCAP, and while it is being written (or
    after its run failed or was killed) the partial MCAP, its checkpoint log, and both set
    aside for recovery."""
    path = folder / f"{folder.name}_0.mcap"
    return {"mcap": path, "metadata": folder / "metadata.yaml",
            **{kind: path.with_name(f"{path.name}.{kind}") for kind in (
                "partial", "progress", "killed", "killed_progress", "repair")}}


def tracks_file(folder: Path, messages_written: int) -> Path:
    """The trackers' state at the checkpoint after `messages_written` messages."""
    path = output_files(folder)["mcap"]
    return path.with_name(f"{path.name}.tracks.{messages_written}")


def remove_tracks_files(folder: Path, keep: Path | None = None) -> None:
    """Every checkpoint's tracker state but `keep`."""
    path = output_files(folder)["mcap"]
    for found in folder.glob(f"{path.name}.tracks.*"):
        if found != keep:
            found.unlink(missing_ok=True)


def replace_atomically(path: Path, data: str | bytes, durable: bool = True) -> None:
    """Write `data` to `path` so that a reader sees the old file or the whole new one; `durable`:
    also after a power cut (fsync), not only after a kill."""
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("w" if isinstance(data, str) else "wb") as stream:
        stream.write(data)
        stream.flush()
        if durable:
            os.fsync(stream.fileno())
    os.replace(temporary, path)


class OutputBag:
    """A rosbag2 folder being written: `<folder>/<folder name>_0.mcap` and `metadata.yaml`.

    The MCAP is written beside its final name (`.partial`) with a checkpoint log beside it
    (first line `header`, then one JSON line per `checkpoint`). Only `close` moves it into place,
    and only a complete run writes `metadata.yaml`, last: a run that fails (`abandon`) or dies
    leaves the partial file and its log, from which `recover_killed_run` rebuilds a file up to
    the last checkpoint, and never a finished-looking bag.
    """

    def __init__(self, folder: Path, header: dict[str, str], ros_distro: str = "") -> None:
        self.folder = folder
        self._files = output_files(folder)
        self.path = self._files["mcap"]
        self.ros_distro = ros_distro
        folder.mkdir(parents=True, exist_ok=True)
        remove_tracks_files(folder)  # a recovery that was stopped may have left some
        self._tracks: Path | None = None  # the last checkpoint's tracker state
        self._log = self._files["progress"].open("w")
        self._log.write(json.dumps(header) + "\n")
        self._stream = self._files["partial"].open("wb")
        self._writer = Writer(self._stream)
        self._writer.start(profile="ros2", library="fcclip_ros bag")
        self._schemas: dict[tuple[str, str, bytes], int] = {}
        self._channels: dict[str, int] = {}
        self._topic_types: dict[str, str] = {}
        self._encoders: dict[str, Callable[[Any], bytes]] = {}
        self._definitions: dict[str, bytes] = {}
        self._topic_metadata: dict[str, dict[str, Any]] = {}
        self.counts: dict[str, int] = {}
        self.start_time: int | None = None
        self.end_time = 0

    def add_topic(self, name: str, schema: Schema | None, message_encoding: str,
                  metadata: dict[str, str]) -> None:
        """A channel exactly as the input has it: its schema's name, encoding and data (none:
        schema id 0), its message encoding and its metadata."""
        if name in self._channels:
            raise BagError(f"topic {name} is written twice")
        schema_id = 0
        if schema is not None:
            key = (schema.name, schema.encoding, schema.data)
            if key not in self._schemas:
                self._schemas[key] = self._writer.register_schema(*key)
            schema_id = self._schemas[key]
        self._channels[name] = self._writer.register_channel(name, message_encoding, schema_id,
                                                             metadata)
        self._topic_types[name] = "" if schema is None else schema.name
        qos = metadata.get("offered_qos_profiles", "")
        self._topic_metadata[name] = {
            "name": name, "type": self._topic_types[name],
            "serialization_format": message_encoding,
            "offered_qos_profiles": (_parsed_qos(qos) if qos else None) or [],
            "type_description_hash": metadata.get("topic_type_hash", "")}
        self.counts[name] = 0

    def add_output_topic(self, name: str, message_class: type, qos: str = VOLATILE_QOS) -> None:
        """A channel for one of our outputs, described the way rosbag2 records it."""
        type_name = message_type_name(message_class)
        if type_name not in self._encoders:
            try:
                definition = message_definition(type_name)
            except MessageDefinitionError as error:
                raise BagError(f"cannot describe {type_name} in the bag: {error}") from error
            self._encoders[type_name] = serialize_dynamic(type_name, definition)[type_name]
            self._definitions[type_name] = definition.encode()
        schema = Schema(id=0, name=type_name, encoding="ros2msg",
                        data=self._definitions[type_name])
        self.add_topic(name, schema, "cdr", {"offered_qos_profiles": qos,
                                             "topic_type_hash": type_description_hash(type_name)})

    def add_metadata(self, name: str, metadata: dict[str, str]) -> None:
        self._writer.add_metadata(name, metadata)

    def add_attachment(self, attachment: Attachment) -> None:
        self._writer.add_attachment(attachment.create_time, attachment.log_time, attachment.name,
                                    attachment.media_type, attachment.data)

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

    def checkpoint(self, progress: dict[str, str], tracks: bytes | None = None) -> None:
        """Logs that the messages written so far hold `progress` (and the trackers `tracks`,
        in a file of the checkpoint's own). The MCAP chunk in progress is finished first, and
        every file is handed to the operating system: a killed process loses nothing up to
        here (a power cut may)."""
        self._writer.flush()
        self._stream.flush()
        written = sum(self.counts.values())
        if tracks is not None:
            state = tracks_file(self.folder, written)
            replace_atomically(state, tracks, durable=False)  # as durable as the log
        self._log.write(json.dumps({"messages_written": written, **progress}) + "\n")
        self._log.flush()
        if tracks is not None:  # the previous state is needed until this line is logged
            if self._tracks not in (None, state):
                self._tracks.unlink(missing_ok=True)
            self._tracks = state

    def close(self, progress: dict[str, str], tracks: bytes | None = None) -> None:
        """Finish the MCAP with its summary, rosbag2's description and the run's progress
        record (and, unfinished, the trackers' state `tracks`), and put it in place. A complete
        run then gets its metadata.yaml, as the very last step: a folder with one is a
        finished bag."""
        if tracks is not None and progress.get("complete") != "true":
            self._writer.add_attachment(0, 0, TRACKS_ATTACHMENT, TRACKS_MEDIA_TYPE, tracks)
        self._writer.add_metadata(ROSBAG2_RECORD, {"serialized_metadata": yaml.safe_dump(
            self._describe(), sort_keys=False)})
        self._writer.add_metadata(PROGRESS_RECORD, progress)
        self._writer.finish()
        self._stream.flush()
        os.fsync(self._stream.fileno())
        self._stream.close()
        os.replace(self._files["partial"], self.path)
        if progress.get("complete") == "true":
            write_rosbag2_metadata(self.folder)
        self._log.close()
        self._files["progress"].unlink()
        remove_tracks_files(self.folder)

    def abandon(self) -> None:
        """After a failure: close the files as they are, for `--resume` to recover."""
        for stream in (self._stream, self._log):
            with contextlib.suppress(OSError, ValueError):
                stream.close()

    def _describe(self) -> dict[str, Any]:
        """rosbag2's BagMetadata of what was written (version 9, as Jazzy and later write it):
        the `rosbag2` record of the MCAP, and the content of metadata.yaml."""
        start = self.start_time or 0
        total = sum(self.counts.values())
        return {
            "version": METADATA_VERSION,
            "storage_identifier": "mcap",
            "duration": {"nanoseconds": self.end_time - start},
            "starting_time": {"nanoseconds_since_epoch": start},
            "message_count": total,
            "topics_with_message_count": [
                {"topic_metadata": metadata, "message_count": self.counts[name]}
                for name, metadata in self._topic_metadata.items()],
            "compression_format": "",
            "compression_mode": "",
            "relative_file_paths": [self.path.name],
            "files": [{"path": self.path.name,
                       "starting_time": {"nanoseconds_since_epoch": start},
                       "duration": {"nanoseconds": self.end_time - start},
                       "message_count": total}],
            "custom_data": None,
            "ros_distro": self.ros_distro,
        }


def _parsed_qos(text: str) -> Any:
    """offered_qos_profiles as metadata.yaml (version 9) holds it: the channel's YAML text
    parsed (rosbag2 reads the policies by name or, from older recorders, by number)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return None


def write_rosbag2_metadata(folder: Path) -> None:
    """metadata.yaml, atomically: the description of the finished MCAP (its `rosbag2` record),
    as rosbag2 writes it beside its files."""
    files = output_files(folder)
    with files["mcap"].open("rb") as stream:
        described = next((dict(record.metadata) for record in make_reader(stream).iter_metadata()
                          if record.name == ROSBAG2_RECORD), None)
    if described is None:
        raise BagError(f"{files['mcap']} has no rosbag2 description; remove the folder and "
                       "start again")
    information = yaml.safe_load(described["serialized_metadata"])
    replace_atomically(files["metadata"], yaml.safe_dump(
        {"rosbag2_bagfile_information": information}, sort_keys=False))


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
