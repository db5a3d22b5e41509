"""Reading a rosbag2 recording (an MCAP file, or a rosbag2 folder of them) in log order, without
a ROS install.

Chunked files (rosbag2's default) are read through their summary's chunk indexes: each chunk is
read at its offset, decompressed and checked against its CRC here, and the messages of chunks
that overlap in log time are merged by a heap keyed (log time, chunk's place in the file,
message's place in the chunk), so ties keep file order and memory holds only the chunks that
overlap. Unchunked files (rosbag2's `fastwrite` preset) are streamed in file order through a
bounded reorder buffer (REORDER_WINDOW_NS of log time, REORDER_MAX_BYTES of data).
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import re
import struct
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import IO, Any

import lz4.frame
import yaml
import zstandard
from mcap.data_stream import ReadDataStream
from mcap.exceptions import McapError
from mcap.opcode import Opcode
from mcap.reader import make_reader
from mcap.records import Attachment, Channel, ChunkIndex, Message, Metadata, Schema
from sensor_msgs.msg import CompressedImage, Image

from fcclip_ros.ros.bag.message_definitions import (
    message_type_name,
)

MCAP_MAGIC = b"\x89MCAP0\r\n"  # first and last 8 bytes of every finished MCAP file
IMAGE_TYPES = {message_type_name(Image): Image, message_type_name(CompressedImage): CompressedImage}
# Image encodings that hold depth, not a picture: such topics are no camera by default.
DEPTH_ENCODINGS = frozenset({"16UC1", "32FC1", "mono16"})
# image_transport's compressed depth: a CompressedImage no colour decoder reads.
COMPRESSED_DEPTH_SUFFIX = "/compressedDepth"
# The reorder buffer of an unchunked file: a message is held until one logged this much later
# has been read, or until the buffer holds this many bytes of message data.
REORDER_WINDOW_NS = 1_000_000_000
REORDER_MAX_BYTES = 64 * 1024 * 1024
RECOVER = "`mcap recover` (the mcap CLI) rebuilds a readable file from what was written"

_RECORD = struct.Struct("<BQ")  # opcode, length: the prefix of every record
_CHUNK = struct.Struct("<QQQII")  # start, end, uncompressed size and CRC, compression's length
_MESSAGE = struct.Struct("<HIQQ")  # channel id, sequence, log time, publish time
_FOOTER = struct.Struct("<BQQQI")  # opcode, length, summary start, summary offsets start, CRC
_MESSAGE_INDEX = struct.Struct("<BQHI")  # opcode, length, channel id, entries' length


class BagError(Exception):
    """Input or output the command cannot work with; the message says why and what to do."""


class BagDamageError(BagError):
    """A damaged chunk (or, in an unchunked file, a garbled record): one line naming the file,
    the topics and log-time range it held, and what was wrong."""

    def __init__(self, file: Path, topics: list[str], start: int, end: int, reason: str) -> None:
        self.file, self.topics, self.start, self.end, self.reason = file, topics, start, end, reason
        held = ", ".join(topics) if topics else "unknown topics (the file has no message index)"
        super().__init__(f"{file}: damaged data ({reason}) holding {held} from log time "
                         f"{_seconds(start)} to {_seconds(end)} s; --skip-damaged skips it "
                         "(its messages are lost) and reads the rest")


def _seconds(ns: int) -> str:
    return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"


class _DamageError(Exception):
    """What is wrong with a chunk or record, before it is known which file and topics."""

    def __init__(self, reason: str) -> None:
        super().__init__(" ".join(reason.split()))  # one line whatever a library said


# --- input ---------------------------------------------------------------------------------


def _split_order(file: Path) -> tuple[str, int, str]:
    """rosbag2 names its split files <name>_<n>.mcap: order by name, then n as a number."""
    match = re.fullmatch(r"(.*)_(\d+)", file.stem)
    if match is None:
        return file.stem, -1, file.name
    return match.group(1), int(match.group(2)), file.name


def input_files(path: Path) -> list[Path]:
    """The MCAP file(s) of a bag: the file itself, or a rosbag2 folder's files in order (those
    metadata.yaml lists; without it, as rosbag2 numbered them: x_2.mcap before x_10.mcap)."""
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
        files = sorted(path.glob("*.mcap"), key=_split_order)
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
    schema: Schema | None  # None for a channel without schema (schema id 0)
    channel: Channel

    @property
    def type_name(self) -> str:
        return self.schema.name if self.schema is not None else ""


@dataclass
class _File:
    path: Path
    summary: Any  # mcap.summary.Summary
    data_end: int  # where the data section ends (the summary section, or the footer)


class InputBag:
    """The topics and messages of one or more MCAP files, read in order without loading them.

    `skip_damaged`: a damaged chunk (CRC mismatch, decompression failure, truncated) is skipped
    and its messages counted in `damaged` instead of raising BagDamageError.
    """

    def __init__(self, path: Path, skip_damaged: bool = False) -> None:
        self.files = input_files(path)
        self.skip_damaged = skip_damaged
        self.topics: dict[str, Topic] = {}
        self.message_counts: dict[str, int] = {}
        self.start_time: int | None = None
        # topic -> messages lost in skipped damaged data, counted while messages() reads: from
        # the damaged chunk's message index records when readable; otherwise, once its file is
        # read, as the summary's count for the topic less the messages read and counted lost.
        self.damaged: dict[str, int] = {}
        self._files = [self._open(file) for file in self.files]
        self._image_topics: list[str] | None = None
        for info in self._files:
            summary = info.summary
            for channel_id, channel in summary.channels.items():
                schema = summary.schemas.get(channel.schema_id) if channel.schema_id else None
                self.topics.setdefault(channel.topic, Topic(channel.topic, schema, channel))
                count = summary.statistics.channel_message_counts.get(channel_id, 0)
                previous = self.message_counts.get(channel.topic, 0)
                self.message_counts[channel.topic] = previous + count
            if summary.statistics.message_count:
                start = summary.statistics.message_start_time
                self.start_time = start if self.start_time is None else min(self.start_time, start)

    @staticmethod
    def _open(file: Path) -> _File:
        """The file's summary, after checking its start, end, footer and summary CRC."""
        try:
            size = file.stat().st_size
            with file.open("rb") as stream:
                head = stream.read(len(MCAP_MAGIC))
                stream.seek(max(0, size - len(MCAP_MAGIC)))
                tail = stream.read()
                if head != MCAP_MAGIC:
                    raise BagError(f"{file}: not an MCAP file (it does not start with the MCAP "
                                   "magic bytes)")
                if tail != MCAP_MAGIC:
                    raise BagError(f"{file}: the MCAP is truncated or its recorder did not "
                                   f"close it (no end marker); {RECOVER}")
                footer_at = size - len(MCAP_MAGIC) - _FOOTER.size
                if footer_at < len(MCAP_MAGIC):
                    raise BagError(f"{file}: too short for an MCAP file; {RECOVER}")
                stream.seek(footer_at)
                opcode, _, summary_start, _, summary_crc = _FOOTER.unpack(stream.read(_FOOTER.size))
                if opcode != Opcode.FOOTER or summary_start > footer_at:
                    raise BagError(f"{file}: the MCAP footer is damaged; {RECOVER}")
                if summary_start and summary_crc:
                    stream.seek(summary_start)
                    covered = stream.read(footer_at + _FOOTER.size - 4 - summary_start)
                    if zlib.crc32(covered) != summary_crc:
                        raise BagError(f"{file}: the MCAP summary section is damaged (CRC "
                                       f"mismatch); {RECOVER}")
                stream.seek(0)
                summary = make_reader(stream).get_summary()
        except (McapError, ValueError, OSError, struct.error, KeyError) as error:
            raise BagError(f"{file}: not a readable MCAP file ({error}); {RECOVER}") from error
        if summary is None or summary.statistics is None:
            raise BagError(f"{file}: the MCAP has no summary section (recorded without one, or "
                           f"not closed); {RECOVER}")
        return _File(file, summary, summary_start or footer_at)

    @property
    def image_topics(self) -> list[str]:
        """The topics to segment by default: Image and CompressedImage topics, less depth ones
        (CompressedImage topics ending in /compressedDepth; Image topics whose first message
        has a depth encoding, DEPTH_ENCODINGS)."""
        if self._image_topics is None:
            images = [name for name, topic in self.topics.items()
                      if topic.type_name in IMAGE_TYPES
                      and not (topic.type_name == message_type_name(CompressedImage)
                               and name.endswith(COMPRESSED_DEPTH_SUFFIX))]
            raw = {name for name in images
                   if self.topics[name].type_name == message_type_name(Image)}
            first = self._first_messages(raw)
            self._image_topics = [name for name in images if name not in first
                                  or _image_encoding(first[name]) not in DEPTH_ENCODINGS]
        return list(self._image_topics)

    def fingerprint(self) -> str:
        """Identifies the input for --resume without reading it whole."""
        parts = [f"{file.name}:{file.stat().st_size}" for file in self.files]
        parts += [f"{name}={count}" for name, count in sorted(self.message_counts.items())]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()

    # --- messages ---------------------------------------------------------------------------

    def messages(self) -> Iterator[tuple[Topic, Message]]:
        """Every message of every file, files in order, each file in log-time order (ties in
        file order), streamed. Always the same sequence for the same input.

        In an unchunked file a message logged more than REORDER_WINDOW_NS before the newest one
        read before it (or pushed out by REORDER_MAX_BYTES) cannot be put back in place: it
        comes out at once, after what was already emitted, so no message is ever dropped.

        Memory: the messages of the chunks that overlap in log time (chunked files), or the
        reorder buffer (unchunked). Each chunk's CRC, size and records are checked when it is
        read; damage raises BagDamageError, or with skip_damaged the chunk is skipped and its
        messages counted in `damaged` (reset by each call). A garbled record in an unchunked
        file ends that file (what follows it cannot be found). Messages that a chunked file
        holds outside its chunks are not read (neither does mcap's own reader).
        """
        self.damaged = {}
        for info in self._files:
            try:
                with info.path.open("rb") as stream:
                    if info.summary.chunk_indexes:
                        yield from self._chunked_messages(info, stream)
                    else:
                        yield from self._unchunked_messages(info, stream)
            except OSError as error:
                raise BagError(f"{info.path}: unreadable ({error})") from error

    def _topic_of(self, info: _File, channel_id: int) -> Topic:
        channel = info.summary.channels.get(channel_id)
        if channel is None:
            raise _DamageError(f"a message of channel {channel_id}, which the file does not list")
        return self.topics[channel.topic]

    def _chunked_messages(self, info: _File, stream: IO[bytes]) -> Iterator[tuple[Topic, Message]]:
        chunks = sorted(info.summary.chunk_indexes, key=lambda chunk: chunk.chunk_start_offset)
        by_start = sorted(range(len(chunks)), key=lambda i: (chunks[i].message_start_time, i))
        heap: list[tuple[int, int, int, Topic, Message]] = []
        losses = _Losses(info)
        following = 0
        while True:
            # A chunk can hold nothing earlier than its start time: load it once the heap has
            # nothing earlier left (ties: the chunk later in the file after those before it).
            while following < len(by_start) and (
                    not heap or chunks[by_start[following]].message_start_time <= heap[0][0]):
                number = by_start[following]
                following += 1
                chunk = chunks[number]
                try:
                    messages = _chunk_messages(_read_chunk(stream, chunk))
                    entries = [(message.log_time, number, position,
                                self._topic_of(info, message.channel_id), message)
                               for position, message in enumerate(messages)]
                except _DamageError as damage:
                    self._damaged_chunk(info, stream, chunk, str(damage), losses)
                    continue
                heap.extend(entries)
                heapq.heapify(heap)
            if not heap:
                break
            *_, topic, message = heapq.heappop(heap)
            losses.read[message.channel_id] += 1
            yield topic, message
        self._count_unknown_losses(losses)

    def _damaged_chunk(self, info: _File, stream: IO[bytes], chunk: ChunkIndex, reason: str,
                       losses: _Losses) -> None:
        channels = info.summary.channels
        ids = sorted(chunk.message_index_offsets) or sorted(channels)
        topics = sorted({channels[i].topic for i in ids if i in channels})
        if not self.skip_damaged:
            raise BagDamageError(info.path, topics, chunk.message_start_time,
                                 chunk.message_end_time, f"chunk at byte "
                                 f"{chunk.chunk_start_offset}: {reason}")
        counts = _message_index_counts(stream, chunk)
        if counts is None:
            losses.unknown.update(ids)
            return
        for channel_id, count in counts.items():
            losses.counted[channel_id] += count
            if channel_id in channels and count:
                topic = channels[channel_id].topic
                self.damaged[topic] = self.damaged.get(topic, 0) + count

    def _count_unknown_losses(self, losses: _Losses) -> None:
        """Losses of damaged chunks without a readable message index: what the summary counts
        for their channels less what was read and what was counted lost already."""
        counts = losses.file.summary.statistics.channel_message_counts
        for channel_id in sorted(losses.unknown):
            lost = (counts.get(channel_id, 0) - losses.read[channel_id]
                    - losses.counted[channel_id])
            channel = losses.file.summary.channels.get(channel_id)
            if lost > 0 and channel is not None:
                self.damaged[channel.topic] = self.damaged.get(channel.topic, 0) + lost

    def _unchunked_messages(self, info: _File,
                            stream: IO[bytes]) -> Iterator[tuple[Topic, Message]]:
        """File order through the reorder buffer (see messages)."""
        heap: list[tuple[int, int, Topic, Message]] = []
        held = 0  # bytes of message data in the heap
        newest = emitted = None  # the latest log time read, and of the last message emitted
        losses = _Losses(info)
        parsed: Counter[int] = Counter()
        last_time = info.summary.statistics.message_start_time
        records = _top_level_messages(stream, info.data_end)
        for order in itertools.count():
            try:
                message = next(records, None)
                if message is None:
                    break
                topic = self._topic_of(info, message.channel_id)
            except _DamageError as damage:
                while heap:
                    *_, topic, message = heapq.heappop(heap)
                    losses.read[message.channel_id] += 1
                    yield topic, message
                self._damaged_rest(info, str(damage), parsed, last_time, losses)
                break
            parsed[message.channel_id] += 1
            last_time = message.log_time
            if emitted is not None and message.log_time < emitted:
                losses.read[message.channel_id] += 1
                yield topic, message  # too late for the window: at once, after the others
                continue
            heapq.heappush(heap, (message.log_time, order, topic, message))
            held += len(message.data)
            newest = message.log_time if newest is None else max(newest, message.log_time)
            while heap and (held > REORDER_MAX_BYTES or newest - heap[0][0] > REORDER_WINDOW_NS):
                emitted, _, topic, message = heapq.heappop(heap)
                held -= len(message.data)
                losses.read[message.channel_id] += 1
                yield topic, message
        while heap:
            *_, topic, message = heapq.heappop(heap)
            losses.read[message.channel_id] += 1
            yield topic, message
        self._count_unknown_losses(losses)

    def _damaged_rest(self, info: _File, reason: str, parsed: Counter[int], last_time: int,
                      losses: _Losses) -> None:
        """A garbled record in an unchunked file: nothing after it can be found."""
        counts = info.summary.statistics.channel_message_counts
        ids = [i for i in sorted(info.summary.channels) if parsed[i] < counts.get(i, 0)]
        if not self.skip_damaged:
            topics = sorted({info.summary.channels[i].topic for i in ids})
            raise BagDamageError(info.path, topics, last_time,
                                 info.summary.statistics.message_end_time,
                                 f"{reason}; the rest of the unchunked file is unreadable")
        losses.unknown.update(ids)

    def _first_messages(self, names: set[str]) -> dict[str, bytes]:
        """The data of each topic's first message (by the earliest chunk holding the topic, or
        file order in an unchunked file); damaged data is passed over."""
        found: dict[str, bytes] = {}
        for info in self._files:
            wanted = {i for i, channel in info.summary.channels.items()
                      if channel.topic in names and channel.topic not in found}
            if not wanted:
                continue
            with info.path.open("rb") as stream:
                for channel_id, data in _first_of_channels(info, stream, wanted).items():
                    found.setdefault(info.summary.channels[channel_id].topic, data)
        return found

    # --- other records ----------------------------------------------------------------------

    def metadata_records(self) -> list[tuple[str, dict[str, str]]]:
        """Every Metadata record of the input files, files in order, each in file order."""
        return [(record.name, dict(record.metadata))
                for record in self._top_level(Opcode.METADATA, Metadata)]

    def attachments(self) -> Iterator[Attachment]:
        """Every Attachment record of the input files, files in order, each in file order."""
        return self._top_level(Opcode.ATTACHMENT, Attachment)

    def _top_level(self, opcode: int, kind: Any) -> Iterator[Any]:
        """The records of one kind outside chunks: through the summary's index, or by scanning
        the data section when the index holds fewer than the statistics count."""
        for info in self._files:
            summary = info.summary
            indexes, expected = ((summary.metadata_indexes, summary.statistics.metadata_count)
                                 if opcode == Opcode.METADATA else
                                 (summary.attachment_indexes,
                                  summary.statistics.attachment_count))
            with info.path.open("rb") as stream:
                offsets = ([index.offset for index in indexes] if len(indexes) >= expected
                           else self._scan(info, stream, opcode))
                for offset in sorted(offsets):
                    yield self._record_at(info, stream, offset, opcode, kind)

    @staticmethod
    def _scan(info: _File, stream: IO[bytes], wanted: int) -> list[int]:
        """The offsets of the data section's records with opcode `wanted` (not inside chunks),
        for files whose summary does not index them."""
        try:
            return [offset for offset, opcode, _ in _top_level_records(stream, info.data_end)
                    if opcode == wanted]
        except _DamageError as damage:
            raise BagError(f"{info.path}: unreadable data section ({damage}); "
                           f"{RECOVER}") from damage

    @staticmethod
    def _record_at(info: _File, stream: IO[bytes], offset: int, opcode: int, kind: Any) -> Any:
        try:
            stream.seek(offset)
            found, length = _RECORD.unpack(stream.read(_RECORD.size))
            if found != opcode or offset + _RECORD.size + length > info.data_end:
                raise ValueError(f"no {kind.__name__} record at byte {offset}")
            return kind.read(ReadDataStream(BytesIO(stream.read(length))))
        except (struct.error, ValueError, McapError, OSError) as error:
            raise BagError(f"{info.path}: unreadable {kind.__name__} record ({error}); "
                           f"{RECOVER}") from error


@dataclass
class _Losses:
    """One file's bookkeeping for InputBag.damaged (by channel id)."""
    file: _File
    read: Counter[int] = field(default_factory=Counter)  # messages read
    counted: Counter[int] = field(default_factory=Counter)  # lost, from message indexes
    unknown: set[int] = field(default_factory=set)  # lost in chunks without a readable index


# --- records ---------------------------------------------------------------------------------


def _read_chunk(stream: IO[bytes], index: ChunkIndex) -> bytes:
    """The records of the chunk `index` points at, decompressed and checked."""
    stream.seek(index.chunk_start_offset)
    raw = stream.read(index.chunk_length)
    if len(raw) != index.chunk_length:
        raise _DamageError("truncated: the chunk runs past the end of the file")
    try:
        opcode, length = _RECORD.unpack_from(raw)
        if opcode != Opcode.CHUNK or _RECORD.size + length != len(raw):
            raise _DamageError("truncated or garbled: no chunk record of the indexed length "
                               "at its offset")
        start, end, size, crc, name_length = _CHUNK.unpack_from(raw, _RECORD.size)
        at = _RECORD.size + _CHUNK.size
        compression = raw[at:at + name_length].decode()
        (data_length,) = struct.unpack_from("<Q", raw, at + name_length)
    except (struct.error, UnicodeDecodeError) as error:
        raise _DamageError(f"truncated or garbled chunk header ({error})") from error
    at += name_length + 8
    if at + data_length > len(raw):
        raise _DamageError("truncated: the chunk's data is shorter than its header says")
    header = (start, end, size, compression)
    if header != (index.message_start_time, index.message_end_time, index.uncompressed_size,
                  index.compression):
        raise _DamageError("garbled chunk header: it does not match the chunk's index")
    records = _decompress(compression, memoryview(raw)[at:at + data_length], size)
    if len(records) != size:
        raise _DamageError(f"decompression failure: {len(records)} bytes where the chunk "
                           f"holds {size}")
    if crc and zlib.crc32(records) != crc:
        raise _DamageError("CRC mismatch")
    return records


def _decompress(compression: str, data: memoryview, size: int) -> bytes:
    if compression == "":
        return bytes(data)
    try:
        if compression == "zstd":
            content_size = zstandard.frame_content_size(data)
            if content_size > size:  # -1: not given
                raise _DamageError(f"decompression failure: zstd frame of {content_size} "
                                   f"bytes in a chunk of {size}")
            return zstandard.ZstdDecompressor().decompress(data, max_output_size=size)
        if compression == "lz4":
            decompressor = lz4.frame.LZ4FrameDecompressor()
            records = decompressor.decompress(data, max_length=size + 1)
            if not decompressor.eof:
                raise _DamageError("decompression failure: the lz4 frame does not end")
            return records
    except (zstandard.ZstdError, RuntimeError, ValueError, MemoryError) as error:
        raise _DamageError(f"{compression} decompression failure ({error})") from error
    raise _DamageError(f"unknown compression {compression!r}")


def _chunk_messages(records: bytes) -> list[Message]:
    """The Message records among a chunk's records, in order."""
    messages: list[Message] = []
    at, end = 0, len(records)
    while at < end:
        if at + _RECORD.size > end:
            raise _DamageError("truncated record inside the chunk")
        opcode, length = _RECORD.unpack_from(records, at)
        at += _RECORD.size
        if at + length > end:
            raise _DamageError("a record inside the chunk runs past its end")
        if opcode == Opcode.MESSAGE:
            messages.append(_message(records, at, length))
        at += length
    return messages


def _message(buffer: bytes, at: int, length: int) -> Message:
    if length < _MESSAGE.size:
        raise _DamageError("a message record too short for its fields")
    channel_id, sequence, log_time, publish_time = _MESSAGE.unpack_from(buffer, at)
    return Message(channel_id=channel_id, sequence=sequence, log_time=log_time,
                   publish_time=publish_time, data=bytes(buffer[at + _MESSAGE.size:at + length]))


def _top_level_records(stream: IO[bytes], data_end: int) -> Iterator[tuple[int, int, int]]:
    """(offset, opcode, length) of each record of the data section, from after the magic to
    DataEnd; the stream is left at the record's body."""
    at = len(MCAP_MAGIC)
    while at < data_end:
        stream.seek(at)
        prefix = stream.read(_RECORD.size)
        if len(prefix) < _RECORD.size:
            raise _DamageError(f"truncated record at byte {at}")
        opcode, length = _RECORD.unpack(prefix)
        if at + _RECORD.size + length > data_end:
            raise _DamageError(f"garbled record at byte {at}: its length runs past the data "
                               "section")
        if opcode == Opcode.DATA_END:
            return
        yield at, opcode, length
        at += _RECORD.size + length


def _top_level_messages(stream: IO[bytes], data_end: int) -> Iterator[Message]:
    for _, opcode, length in _top_level_records(stream, data_end):
        if opcode == Opcode.MESSAGE:
            body = stream.read(length)
            if len(body) != length:
                raise _DamageError("truncated message record")
            yield _message(body, 0, length)


def _message_index_counts(stream: IO[bytes], chunk: ChunkIndex) -> dict[int, int] | None:
    """Messages per channel id in `chunk`, from its message index records; None when there are
    none or they are unreadable."""
    if not chunk.message_index_offsets:
        return None
    start = chunk.chunk_start_offset + chunk.chunk_length
    stream.seek(start)
    raw = stream.read(chunk.message_index_length)
    counts: dict[int, int] = {}
    try:
        for channel_id, offset in chunk.message_index_offsets.items():
            opcode, length, found, entries = _MESSAGE_INDEX.unpack_from(raw, offset - start)
            if (opcode != Opcode.MESSAGE_INDEX or found != channel_id or entries % 16
                    or entries + 6 > length or offset - start + _RECORD.size + length > len(raw)):
                return None
            counts[channel_id] = entries // 16
    except struct.error:
        return None
    return counts


def _first_of_channels(info: _File, stream: IO[bytes], wanted: set[int]) -> dict[int, bytes]:
    """The data of the first message of each channel in `wanted` that can be read."""
    found: dict[int, bytes] = {}
    if info.summary.chunk_indexes:
        chunks = sorted(enumerate(sorted(info.summary.chunk_indexes,
                                         key=lambda c: c.chunk_start_offset)),
                        key=lambda item: (item[1].message_start_time, item[0]))
        for _, chunk in chunks:
            holds = set(chunk.message_index_offsets) or wanted
            if not (holds & wanted) - set(found):
                continue
            try:
                messages = _chunk_messages(_read_chunk(stream, chunk))
            except _DamageError:
                continue
            for message in sorted(messages, key=lambda m: m.log_time):
                if message.channel_id in wanted:
                    found.setdefault(message.channel_id, message.data)
            if wanted <= set(found):
                break
        return found
    try:
        for message in _top_level_messages(stream, info.data_end):
            if message.channel_id in wanted:
                found.setdefault(message.channel_id, message.data)
                if wanted <= set(found):
                    break
    except _DamageError:
        pass
    return found


def _image_encoding(data: bytes) -> str | None:
    """The `encoding` field of a CDR sensor_msgs/Image, read without the pixels."""
    try:
        order = "<" if data[1] & 1 else ">"  # the encapsulation: CDR_LE 00 01, CDR_BE 00 00
        at = 4 + 8  # after the encapsulation, header.stamp
        (length,) = struct.unpack_from(order + "I", data, at)
        at = 4 + ((at - 4 + 4 + length + 3) & ~3) + 8  # frame_id, aligned; height, width
        (length,) = struct.unpack_from(order + "I", data, at)
        return bytes(data[at + 4:at + 4 + length]).rstrip(b"\0").decode()
    except (struct.error, IndexError, UnicodeDecodeError):
        return None
