"""MCAP files written the way rosbag2 (Jazzy/Kilted) records them, for tests of what reads them.

Written with mcap's own Writer, as rosbag2's MCAP storage plugin uses libmcap: profile "ros2",
chunked with zstd (rosbag2's default), lz4 or no compression, or unchunked like the `fastwrite`
storage preset; each channel carries rosbag2's metadata (`offered_qos_profiles` as the YAML text
Jazzy writes, `topic_type_hash`); per-channel sequence numbers count from 1; messages go in in
log-time order, as a recorder receives them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from mcap.data_stream import ReadDataStream
from mcap.reader import make_reader
from mcap.records import Chunk, Message
from mcap.stream_reader import breakup_chunk
from mcap.writer import CompressionType, Writer

from fcclip_ros.ros.bag.message_definitions import message_definition, type_description_hash

LIBRARY = "rosbag2.mcap.libmcap"
# One publisher's QoS as Jazzy's rosbag2 writes it in offered_qos_profiles (the policies by name,
# infinite durations as the largest rmw_time_t).
QOS_YAML = ("- history: keep_last\n  depth: 10\n  reliability: reliable\n  durability: volatile\n"
            "  deadline:\n    sec: 9223372036\n    nsec: 854775807\n"
            "  lifespan:\n    sec: 9223372036\n    nsec: 854775807\n  liveliness: automatic\n"
            "  liveliness_lease_duration:\n    sec: 9223372036\n    nsec: 854775807\n"
            "  avoid_ros_namespace_conventions: false\n")
_COMPRESSION = {"zstd": CompressionType.ZSTD, "lz4": CompressionType.LZ4,
                "none": CompressionType.NONE, "": CompressionType.NONE}


@dataclass
class RecordedTopic:
    topic: str
    schema_name: str  # "" with schema_encoding "" means schema id 0 (no schema)
    # "ros2msg", "ros2idl", "unknown" (empty data), "jsonschema", "protobuf", ""
    schema_encoding: str
    schema_data: bytes
    message_encoding: str  # "cdr", "json", "protobuf"
    messages: list[tuple[int, bytes]]  # (log_time ns, data)


def type_hash(schema_name: str, schema_data: bytes) -> str:
    """The `topic_type_hash` rosbag2 records: the type's real RIHS01 hash where the interface is
    installed, else a stand-in of the same shape ("RIHS01_" + 64 hex digits)."""
    if schema_name.count("/") == 2 and (known := type_description_hash(schema_name)):
        return known
    return "RIHS01_" + hashlib.sha256(schema_name.encode() + b"\0" + schema_data).hexdigest()


def image_topic(topic: str, frames: list[np.ndarray], start_ns: int, period_ns: int,
                encoding: str = "rgb8", frame_id: str = "camera") -> RecordedTopic:
    """A sensor_msgs/msg/Image topic of `frames` ((H, W) or (H, W, C) arrays of the encoding's
    element type), each stamped with its log time."""
    from builtin_interfaces.msg import Time
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import Image

    messages = []
    for index, frame in enumerate(frames):
        log_time = start_ns + index * period_ns
        frame = np.ascontiguousarray(frame)
        msg = Image(height=frame.shape[0], width=frame.shape[1], encoding=encoding,
                    is_bigendian=0, step=frame.shape[1] * frame[0, 0].nbytes)
        msg.header.stamp = Time(sec=log_time // 1_000_000_000, nanosec=log_time % 1_000_000_000)
        msg.header.frame_id = frame_id
        msg.data = frame.tobytes()
        messages.append((log_time, serialize_message(msg)))
    return RecordedTopic(topic, "sensor_msgs/msg/Image", "ros2msg",
                         message_definition("sensor_msgs/msg/Image").encode(), "cdr", messages)


STRING_IDL = b"""\
================================================================================
IDL: std_msgs/msg/String
module std_msgs {
  module msg {
    struct String {
      string data;
    };
  };
};
"""


def _cdr_string(text: str) -> bytes:
    """A CDR (little endian) message of one string field."""
    data = text.encode() + b"\0"
    return b"\x00\x01\x00\x00" + len(data).to_bytes(4, "little") + data


def odd_topics(start_ns: int, period_ns: int, count: int) -> list[RecordedTopic]:
    """Topics a reader must carry through untouched: an IDL (ros2idl) schema, a schema rosbag2
    could not find ("unknown", empty), JSON with a JSON schema, protobuf, and a channel without
    schema (id 0). Their log times are offset by 1..5 ns so that no two topics tie."""
    def times(offset: int) -> list[int]:
        return [start_ns + index * period_ns + offset for index in range(count)]

    return [
        RecordedTopic("/idl/text", "std_msgs/msg/String", "ros2idl", STRING_IDL, "cdr",
                      [(t, _cdr_string(f"idl {i}")) for i, t in enumerate(times(1))]),
        RecordedTopic("/unknown/type", "vendor_msgs/msg/Secret", "unknown", b"", "cdr",
                      [(t, _cdr_string(f"secret {i}")) for i, t in enumerate(times(2))]),
        RecordedTopic("/json/point", "Point", "jsonschema",
                      json.dumps({"type": "object", "properties": {
                          "x": {"type": "number"}, "y": {"type": "number"}}}).encode(), "json",
                      [(t, json.dumps({"x": i, "y": -i}).encode())
                       for i, t in enumerate(times(3))]),
        RecordedTopic("/protobuf/log", "foxglove.Log", "protobuf",
                      b"\n\x0bfoxglove.Log\x12\x03Log", "protobuf",
                      [(t, bytes([0x08, i % 128, 0x12, 0x02, 0xFF, 0x00]))
                       for i, t in enumerate(times(4))]),
        RecordedTopic("/schemaless", "", "", b"", "json",
                      [(t, json.dumps({"n": i}).encode()) for i, t in enumerate(times(5))]),
    ]


def write_recorded_bag(path: Path, topics: list[RecordedTopic], *, compression: str = "zstd",
                       chunk_size: int = 1024 * 1024, use_chunking: bool = True,
                       metadata: Sequence[tuple[str, dict[str, str]]] = (),
                       attachments: Sequence[tuple[str, bytes]] = ()) -> Path:
    """Writes `topics` to the MCAP file `path`, their messages interleaved by log time (ties in
    the order of `topics`), then the metadata and attachment records; returns path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as stream:
        writer = Writer(stream, chunk_size=chunk_size, compression=_COMPRESSION[compression],
                        use_chunking=use_chunking)
        writer.start(profile="ros2", library=LIBRARY)
        schemas: dict[tuple[str, str, bytes], int] = {}
        channels: list[int] = []
        for recorded in topics:
            key = (recorded.schema_name, recorded.schema_encoding, recorded.schema_data)
            if not recorded.schema_name and not recorded.schema_encoding:
                schema_id = 0
            elif key in schemas:
                schema_id = schemas[key]
            else:
                schema_id = schemas[key] = writer.register_schema(*key)
            channels.append(writer.register_channel(
                recorded.topic, recorded.message_encoding, schema_id,
                {"offered_qos_profiles": QOS_YAML,
                 "topic_type_hash": type_hash(recorded.schema_name, recorded.schema_data)}))
        queue = sorted(((log_time, index, position, data)
                        for index, recorded in enumerate(topics)
                        for position, (log_time, data) in enumerate(recorded.messages)))
        sequences = [0] * len(topics)
        for log_time, index, _, data in queue:
            sequences[index] += 1
            writer.add_message(channels[index], log_time=log_time, data=data,
                               publish_time=log_time, sequence=sequences[index])
        end = queue[-1][0] if queue else 0
        for name, values in metadata:
            writer.add_metadata(name, dict(values))
        for name, data in attachments:
            writer.add_attachment(create_time=end, log_time=end, name=name,
                                  media_type="application/octet-stream", data=data)
        writer.finish()
    return path


def write_split_recording(folder: Path, parts: list[list[RecordedTopic]],
                          with_metadata_yaml: bool) -> list[Path]:
    """A rosbag2 folder split into `folder/<folder name>_<n>.mcap`, one per part (zstd chunks),
    with rosbag2's metadata.yaml (format version 9) only when asked; returns the files."""
    folder.mkdir(parents=True, exist_ok=True)
    files = [write_recorded_bag(folder / f"{folder.name}_{index}.mcap", part)
             for index, part in enumerate(parts)]
    if with_metadata_yaml:
        times = [t for part in parts for recorded in part for t, _ in recorded.messages]
        start, end = (min(times), max(times)) if times else (0, 0)
        counts: dict[str, int] = {}
        kinds: dict[str, RecordedTopic] = {}
        for part in parts:
            for recorded in part:
                counts[recorded.topic] = counts.get(recorded.topic, 0) + len(recorded.messages)
                kinds.setdefault(recorded.topic, recorded)
        info = {
            "version": 9,
            "storage_identifier": "mcap",
            "duration": {"nanoseconds": end - start},
            "starting_time": {"nanoseconds_since_epoch": start},
            "message_count": sum(counts.values()),
            "topics_with_message_count": [
                {"topic_metadata": {"name": name, "type": kinds[name].schema_name,
                                    "serialization_format": kinds[name].message_encoding,
                                    "offered_qos_profiles": QOS_YAML,
                                    "type_description_hash": type_hash(
                                        kinds[name].schema_name, kinds[name].schema_data)},
                 "message_count": count} for name, count in counts.items()],
            "compression_format": "",
            "compression_mode": "",
            "relative_file_paths": [file.name for file in files],
            "files": [{"path": file.name,
                       "starting_time": {"nanoseconds_since_epoch": min(
                           (t for r in part for t, _ in r.messages), default=0)},
                       "duration": {"nanoseconds": 0},
                       "message_count": sum(len(r.messages) for r in part)}
                      for file, part in zip(files, parts, strict=True)],
            "custom_data": {},
            "ros_distro": "jazzy",
        }
        (folder / "metadata.yaml").write_text(
            yaml.safe_dump({"rosbag2_bagfile_information": info}, sort_keys=False))
    return files


def damage_a_middle_chunk(path: Path) -> list[tuple[str, int, bytes]]:
    """Flips one byte inside the data of the file's middle chunk (in file order), as a bad
    sector or a bit flip would; returns what that chunk held: (topic, log time, data)."""
    with path.open("rb") as stream:
        summary = make_reader(stream).get_summary()
        chunks = sorted(summary.chunk_indexes, key=lambda c: c.chunk_start_offset)
        chunk = chunks[len(chunks) // 2]
        stream.seek(chunk.chunk_start_offset + 9)  # past the record's opcode and length
        records = breakup_chunk(Chunk.read(ReadDataStream(stream)))
    lost = [(summary.channels[r.channel_id].topic, r.log_time, r.data)
            for r in records if isinstance(r, Message)]
    data = bytearray(path.read_bytes())
    data[chunk.chunk_start_offset + chunk.chunk_length - 12] ^= 0x5A  # inside the chunk's data
    path.write_bytes(bytes(data))
    return lost
