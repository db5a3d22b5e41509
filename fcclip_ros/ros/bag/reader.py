"""Reading a rosbag2 recording (an MCAP file, or a rosbag2 folder of them) in log order, without
a ROS install."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from mcap.exceptions import McapError
from mcap.reader import make_reader
from mcap.records import Channel, Message, Schema
from sensor_msgs.msg import CompressedImage, Image

from fcclip_ros.ros.bag.message_definitions import (
    message_type_name,
)

MCAP_MAGIC = b"\x89MCAP0\r\n"  # first and last 8 bytes of every finished MCAP file
IMAGE_TYPES = {message_type_name(Image): Image, message_type_name(CompressedImage): CompressedImage}


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
