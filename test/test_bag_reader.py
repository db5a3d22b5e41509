"""The bag reader (fcclip_ros.ros.bag.reader) on MCAP files written the way rosbag2 records them:
every encoding carried through, log order across chunks and files, split order, streaming of
unchunked files, damage found and skipped, depth topics kept from the cameras."""

from __future__ import annotations

import itertools
import tracemalloc
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers.recorded_bag import (
    RecordedTopic,
    damage_a_middle_chunk,
    image_topic,
    odd_topics,
    write_recorded_bag,
    write_split_recording,
)
from mcap.reader import make_reader
from mcap.writer import CompressionType, Writer

from fcclip_ros.ros.bag import reader
from fcclip_ros.ros.bag.reader import BagDamageError, BagError, InputBag

pytestmark = pytest.mark.fast

START = 1_700_000_000 * 1_000_000_000
MS = 1_000_000


def _text_topic(topic: str, times: list[int], size: int = 8) -> RecordedTopic:
    return RecordedTopic(topic, "std_msgs/msg/String", "ros2msg", b"string data\n", "cdr",
                         [(t, t.to_bytes(8, "little") + bytes(size - 8)) for t in times])


def _read(bag: InputBag) -> list[tuple[str, int, bytes]]:
    return [(topic.name, message.log_time, message.data) for topic, message in bag.messages()]


def _file_order(path: Path) -> list[tuple[str, int, bytes]]:
    """The messages as they lie in the file, read by mcap itself."""
    with path.open("rb") as stream:
        return [(channel.topic, message.log_time, message.data) for _, channel, message
                in make_reader(stream).iter_messages(log_time_order=False)]


def _write_in_file_order(path: Path, entries: list[tuple[str, int]], *, use_chunking: bool,
                         chunk_size: int = 300, size: int = 16) -> Path:
    """Messages written in the order given (not sorted by log time), as a recorder receiving
    some topics late writes them."""
    with path.open("wb") as stream:
        writer = Writer(stream, chunk_size=chunk_size, compression=CompressionType.ZSTD,
                        use_chunking=use_chunking)
        writer.start(profile="ros2", library="rosbag2.mcap.libmcap")
        schema = writer.register_schema("std_msgs/msg/String", "ros2msg", b"string data\n")
        channels: dict[str, int] = {}
        for number, (topic, log_time) in enumerate(entries):
            if topic not in channels:
                channels[topic] = writer.register_channel(topic, "cdr", schema, {})
            data = number.to_bytes(8, "little") + bytes(size - 8)
            writer.add_message(channels[topic], log_time=log_time, data=data,
                               publish_time=log_time, sequence=number + 1)
        writer.finish()
    return path


# --- topics of every kind --------------------------------------------------------------------


@pytest.mark.parametrize("use_chunking", [True, False], ids=["chunked", "unchunked"])
def test_schemaless_and_odd_encoding_topics_are_listed_and_yielded_unchanged(
        tmp_path, use_chunking):
    topics = odd_topics(START, 10 * MS, 6)
    path = write_recorded_bag(tmp_path / "odd.mcap", topics, use_chunking=use_chunking,
                              chunk_size=200)
    bag = InputBag(path)
    assert list(bag.topics) == [t.topic for t in topics]
    for recorded in topics:
        topic = bag.topics[recorded.topic]
        assert topic.type_name == recorded.schema_name
        assert topic.channel.message_encoding == recorded.message_encoding
        if recorded.schema_encoding:
            assert (topic.schema.encoding, topic.schema.data) == (recorded.schema_encoding,
                                                                  recorded.schema_data)
        else:
            assert topic.schema is None
        assert bag.message_counts[recorded.topic] == 6
    expected = sorted((r.topic, t, data) for r in topics for t, data in r.messages)
    assert _read(bag) == sorted(expected, key=lambda entry: entry[1])
    assert bag.image_topics == []


# --- order -----------------------------------------------------------------------------------


def _lagging_entries(offset: int) -> list[tuple[str, int]]:
    """/fast in time; /slow written 0.25 s after it was logged (so chunks overlap in log time);
    /tie logged at the same times as /fast but written later."""
    entries: list[tuple[str, int]] = []
    for i in range(60):
        entries.append(("/fast", offset + i * 10 * MS))
        if i >= 25:
            entries.append(("/slow", offset + (i - 25) * 10 * MS + 3))
        if i % 7 == 3:
            entries.append(("/tie", offset + (i - 2) * 10 * MS))
    return entries


def test_messages_come_in_log_time_order_across_overlapping_chunks_ties_in_file_order(tmp_path):
    path = _write_in_file_order(tmp_path / "lagging.mcap", _lagging_entries(START),
                                use_chunking=True)
    with path.open("rb") as stream:
        chunks = sorted(make_reader(stream).get_summary().chunk_indexes,
                        key=lambda c: c.chunk_start_offset)
    assert len(chunks) > 5
    assert any(b.message_start_time < a.message_end_time for a, b in itertools.pairwise(chunks))
    in_file = _file_order(path)
    first = _read(InputBag(path))
    assert first == sorted(in_file, key=lambda entry: entry[1])  # stable: ties in file order
    assert _read(InputBag(path)) == first, "the same sequence on every read"


def test_files_are_read_in_order_each_in_log_time_order(tmp_path):
    folder = tmp_path / "split"
    folder.mkdir()
    later = _write_in_file_order(folder / "split_0.mcap", _lagging_entries(START + 10**9),
                                 use_chunking=True)
    earlier = _write_in_file_order(folder / "split_1.mcap", _lagging_entries(START),
                                   use_chunking=False)
    expected = [entry for path in (later, earlier)
                for entry in sorted(_file_order(path), key=lambda entry: entry[1])]
    assert _read(InputBag(folder)) == expected


def test_split_files_without_metadata_yaml_are_read_in_numeric_order(tmp_path):
    folder = tmp_path / "recording"
    parts = [[_text_topic("/chatter", [START - index * MS])] for index in range(11)]
    write_split_recording(folder, parts, with_metadata_yaml=False)
    bag = InputBag(folder)
    assert [file.name for file in bag.files] == [f"recording_{i}.mcap" for i in range(11)]
    assert [log_time for _, log_time, _ in _read(bag)] == [START - i * MS for i in range(11)]


def test_split_files_with_metadata_yaml_are_read_in_its_listed_order(tmp_path):
    folder = tmp_path / "recording"
    parts = [[_text_topic("/chatter", [START + index * MS])] for index in range(3)]
    write_split_recording(folder, parts, with_metadata_yaml=True)
    metadata = yaml.safe_load((folder / "metadata.yaml").read_text())
    listed = ["recording_2.mcap", "recording_0.mcap", "recording_1.mcap"]
    metadata["rosbag2_bagfile_information"]["relative_file_paths"] = listed
    (folder / "metadata.yaml").write_text(yaml.safe_dump(metadata))
    bag = InputBag(folder)
    assert [file.name for file in bag.files] == listed
    assert [log_time for _, log_time, _ in _read(bag)] == [START + 2 * MS, START, START + MS]


# --- unchunked files -------------------------------------------------------------------------


def test_unchunked_file_streams_in_log_order_with_memory_far_below_its_size(tmp_path):
    """20 000 messages of 1 KiB over 20 s, /late written 0.3 s after it was logged: the
    reorder window (1 s) puts them in place, holding about 1 s of messages (~1.3 MB)."""
    entries: list[tuple[str, int]] = []
    for i in range(16_000):
        entries.append(("/camera", START + i * 1_250_000))
        if i % 4 == 0 and i >= 240:
            entries.append(("/late", START + (i - 240) * 1_250_000 + 1))
    path = _write_in_file_order(tmp_path / "fastwrite.mcap", entries, use_chunking=False,
                                size=1024)
    size = path.stat().st_size
    assert size > 19_000_000
    bag = InputBag(path)
    count, previous, ordered = 0, -1, True
    tracemalloc.start()
    try:
        for _, message in bag.messages():
            ordered &= message.log_time >= previous
            previous = message.log_time
            count += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (count, ordered) == (len(entries), True)
    assert peak < 4_000_000, f"peak {peak} bytes while streaming a {size}-byte file"


def test_unchunked_message_later_than_the_window_comes_out_after_what_was_emitted(tmp_path):
    entries = [("/a", START + i * 100 * MS) for i in range(31)]  # 0 .. 3.0 s
    entries.append(("/a", START + 500 * MS))  # 2.5 s late: beyond the 1 s window
    entries += [("/a", START + i * 100 * MS) for i in range(31, 41)]  # 3.1 .. 4.0 s
    path = _write_in_file_order(tmp_path / "late.mcap", entries, use_chunking=False)
    times = [(log_time - START) // MS for _, log_time, _ in _read(InputBag(path))]
    # When the 3.0 s message is read, everything more than 1 s older (up to 1.9 s) is out.
    assert times == [*range(0, 2000, 100), 500, *range(2000, 4100, 100)]


# --- damage ----------------------------------------------------------------------------------


def _damaged_recording(path: Path, compression: str) -> tuple[list, list, Counter]:
    """A recording with one middle chunk flipped: (all messages, those of the flipped chunk,
    their count per topic)."""
    frames = [np.full((8, 8, 3), i, np.uint8) for i in range(30)]
    topics = [image_topic("/cam/image_raw", frames, START, 33 * MS),
              _text_topic("/chatter", [START + i * 20 * MS + 1 for i in range(50)], size=64)]
    write_recorded_bag(path, topics, compression=compression, chunk_size=2000)
    everything = _file_order(path)
    lost = damage_a_middle_chunk(path)
    return everything, lost, Counter(topic for topic, _, _ in lost)


@pytest.mark.parametrize("compression", ["zstd", "lz4", "none"])
def test_damaged_chunk_raises_one_line_naming_file_topics_and_time_range(tmp_path, compression):
    path = tmp_path / f"{compression}.mcap"
    _, lost, _ = _damaged_recording(path, compression)
    bag = InputBag(path)
    with pytest.raises(BagDamageError) as caught:
        _read(bag)
    text = str(caught.value)
    assert "\n" not in text
    assert str(path) in text and "--skip-damaged" in text
    assert "/cam/image_raw" in text and "/chatter" in text
    first, last = min(t for _, t, _ in lost), max(t for _, t, _ in lost)
    assert reader._seconds(first) in text and reader._seconds(last) in text
    assert any(reason in text for reason in ("CRC mismatch", "decompression failure"))


@pytest.mark.parametrize("compression", ["zstd", "lz4", "none"])
def test_skip_damaged_reads_every_other_chunk_and_counts_what_was_lost(tmp_path, compression):
    path = tmp_path / f"{compression}.mcap"
    everything, lost, lost_per_topic = _damaged_recording(path, compression)
    bag = InputBag(path, skip_damaged=True)
    kept = _read(bag)
    assert kept == [entry for entry in sorted(everything, key=lambda entry: entry[1])
                    if entry not in lost]
    assert bag.damaged == dict(lost_per_topic)
    assert sum(bag.damaged.values()) == len(lost) > 0


def test_skip_damaged_counts_from_the_summary_when_the_message_index_is_damaged_too(tmp_path):
    path = tmp_path / "both.mcap"
    everything, lost, lost_per_topic = _damaged_recording(path, "zstd")
    with path.open("rb") as stream:
        chunks = sorted(make_reader(stream).get_summary().chunk_indexes,
                        key=lambda c: c.chunk_start_offset)
    chunk = chunks[len(chunks) // 2]
    data = bytearray(path.read_bytes())
    data[chunk.chunk_start_offset + chunk.chunk_length] ^= 0xFF  # the first index's opcode
    path.write_bytes(bytes(data))
    bag = InputBag(path, skip_damaged=True)
    assert len(_read(bag)) == len(everything) - len(lost)
    assert bag.damaged == dict(lost_per_topic)


def test_truncated_file_is_refused_with_the_recover_hint(tmp_path):
    path = write_recorded_bag(tmp_path / "cut.mcap", [_text_topic("/chatter", [START, START + 1])])
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(BagError, match="mcap recover") as caught:
        InputBag(path)
    assert not isinstance(caught.value, BagDamageError)


def test_damaged_summary_is_refused_with_the_recover_hint(tmp_path):
    path = write_recorded_bag(tmp_path / "summary.mcap",
                              [_text_topic("/chatter", [START, START + 1])])
    with path.open("rb") as stream:
        summary = make_reader(stream).get_summary()
        channel_offset = path.read_bytes().rindex(b"/chatter")  # the summary's Channel record
    assert channel_offset > summary.chunk_indexes[0].chunk_start_offset
    data = bytearray(path.read_bytes())
    data[channel_offset + 1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BagError, match=r"summary.*mcap recover"):
        InputBag(path)


# --- depth topics, metadata, attachments -----------------------------------------------------


def _compressed_topic(topic: str, fmt: str) -> RecordedTopic:
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import CompressedImage

    from fcclip_ros.ros.bag.message_definitions import message_definition

    data = serialize_message(CompressedImage(format=fmt, data=b"\x89PNG not really"))
    return RecordedTopic(topic, "sensor_msgs/msg/CompressedImage", "ros2msg",
                         message_definition("sensor_msgs/msg/CompressedImage").encode(), "cdr",
                         [(START + 7, data)])


@pytest.mark.parametrize("use_chunking", [True, False], ids=["chunked", "unchunked"])
def test_compressed_depth_and_depth_encoded_image_topics_are_not_image_topics(
        tmp_path, use_chunking):
    colour = [np.zeros((4, 6, 3), np.uint8)] * 2
    topics = [
        image_topic("/cam/image_raw", colour, START, 100 * MS),
        image_topic("/cam/mono", [np.zeros((4, 6), np.uint8)] * 2, START, 100 * MS, "mono8"),
        image_topic("/depth/image_raw", [np.zeros((4, 6), np.uint16)] * 2, START + 1, 100 * MS,
                    "16UC1", frame_id="a_longer_depth_frame"),
        image_topic("/depth/float", [np.zeros((4, 6), np.float32)] * 2, START + 2, 100 * MS,
                    "32FC1"),
        image_topic("/ir/mono16", [np.zeros((4, 6), np.uint16)] * 2, START + 3, 100 * MS,
                    "mono16"),
        _compressed_topic("/cam/image_raw/compressed", "jpeg"),
        _compressed_topic("/depth/image_raw/compressedDepth", "16UC1; compressedDepth png"),
    ]
    path = write_recorded_bag(tmp_path / "rgbd.mcap", topics, use_chunking=use_chunking,
                              chunk_size=300)
    bag = InputBag(path)
    assert bag.image_topics == ["/cam/image_raw", "/cam/mono", "/cam/image_raw/compressed"]
    assert set(bag.topics) == {t.topic for t in topics}  # still there to name explicitly


def test_image_encoding_is_read_from_the_cdr_without_the_pixels():
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import Image

    for frame_id in ("", "c", "cam", "camera", "camera_optical_frame"):  # every alignment
        msg = Image(encoding="bgra8", height=2, width=2, step=8, data=bytes(16))
        msg.header.frame_id = frame_id
        assert reader._image_encoding(serialize_message(msg)) == "bgra8"
    assert reader._image_encoding(b"\x00\x01") is None


@pytest.mark.parametrize("use_chunking", [True, False], ids=["chunked", "unchunked"])
def test_metadata_records_and_attachments_are_returned_in_order(tmp_path, use_chunking):
    folder = tmp_path / "bag"
    first = write_recorded_bag(
        folder / "bag_0.mcap", [_text_topic("/chatter", [START])], use_chunking=use_chunking,
        metadata=[("rosbag2", {"serialized_metadata": "version: 9"}), ("site", {"a": "1"})],
        attachments=[("calibration.yaml", b"fx: 1\n"), ("notes.txt", b"ok")])
    write_recorded_bag(folder / "bag_1.mcap", [_text_topic("/chatter", [START + 1])],
                       use_chunking=use_chunking, metadata=[("rosbag2", {"part": "2"})],
                       attachments=[("map.pgm", bytes(range(256)))])
    bag = InputBag(folder)
    assert bag.files[0] == first
    assert bag.metadata_records() == [("rosbag2", {"serialized_metadata": "version: 9"}),
                                      ("site", {"a": "1"}), ("rosbag2", {"part": "2"})]
    assert [(a.name, a.data) for a in bag.attachments()] == [
        ("calibration.yaml", b"fx: 1\n"), ("notes.txt", b"ok"), ("map.pgm", bytes(range(256)))]
