"""What `--resume` needs: the progress record of an output, and the recovery of what a failed
or killed run (an error, SIGKILL, out of memory) left behind: its partial MCAP and checkpoint
log."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mcap.reader import make_reader
from mcap.records import Attachment, Channel, Message, Metadata, Schema
from mcap.stream_reader import StreamReader
from mcap.writer import Writer

from fcclip_ros.ros.bag.reader import BagError
from fcclip_ros.ros.bag.writer import (
    PROGRESS_RECORD,
    TRACKS_ATTACHMENT,
    TRACKS_MEDIA_TYPE,
    output_files,
    remove_tracks_files,
    tracks_file,
)


class NothingToResumeError(BagError):
    """An output folder holds nothing a run could continue from (a fleet starts it again)."""


def recover_killed_run(folder: Path) -> int | None:
    """Finishes what a killed run left in `folder` (a partial MCAP without summary, and its
    checkpoint log): the messages up to its last checkpoint that the file holds whole, with
    that checkpoint as the progress record and its trackers' state (so --resume continues from
    there). Returns how many
    messages were kept; None when no killed run is there; BagError when one is but nothing it
    wrote is usable. Safe to run again if it is itself killed."""
    files = output_files(folder)
    for source, aside in (("partial", "killed"), ("progress", "killed_progress")):
        if files[source].is_file() and not files[aside].is_file():
            os.replace(files[source], files[aside])  # before anything writes .partial again
    if not (files["killed"].is_file() and files["killed_progress"].is_file()):
        return None
    header, checkpoints = _read_checkpoints(files["killed_progress"])
    whole = sum(1 for record in _whole_records(files["killed"]) if isinstance(record[0], Message))
    usable = [c for c in checkpoints if c.get("messages_written", whole + 1) <= whole]
    if header is None or not usable:
        raise NothingToResumeError(f"{folder}: the run stopped before it wrote anything usable; "
                                   "remove the folder and start again")
    last = usable[-1]
    keep = last.pop("messages_written")
    tracks = tracks_file(folder, keep)
    with files["repair"].open("wb") as stream:
        writer = Writer(stream)
        writer.start(profile="ros2", library="fcclip_ros bag")
        schema_ids: dict[int, int] = {0: 0}
        channel_ids: dict[int, int] = {}
        count = 0
        for record, schema, channel in _whole_records(files["killed"]):
            if isinstance(record, Metadata):
                writer.add_metadata(record.name, dict(record.metadata))
                continue
            if isinstance(record, Attachment):
                writer.add_attachment(record.create_time, record.log_time, record.name,
                                      record.media_type, record.data)
                continue
            if count == keep:
                break
            count += 1
            if schema is not None and schema.id not in schema_ids:
                schema_ids[schema.id] = writer.register_schema(schema.name, schema.encoding,
                                                               schema.data)
            if channel.id not in channel_ids:
                channel_ids[channel.id] = writer.register_channel(
                    channel.topic, channel.message_encoding, schema_ids[channel.schema_id],
                    dict(channel.metadata))
            writer.add_message(channel_ids[channel.id], record.log_time, record.data,
                               record.publish_time, record.sequence)
        if tracks.is_file():
            writer.add_attachment(0, 0, TRACKS_ATTACHMENT, TRACKS_MEDIA_TYPE, tracks.read_bytes())
        writer.add_metadata(PROGRESS_RECORD, {**header, **last, "complete": "false"})
        writer.finish()
    os.replace(files["repair"], files["mcap"])
    files["killed"].unlink()
    files["killed_progress"].unlink()
    remove_tracks_files(folder)
    return keep


def discard_killed_run(folder: Path) -> None:
    """Removes what a run left that held nothing usable (the finished file, if any, stays)."""
    files = output_files(folder)
    for kind in ("partial", "progress", "killed", "killed_progress", "repair"):
        files[kind].unlink(missing_ok=True)
    remove_tracks_files(folder)


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


def _whole_records(path: Path) -> Iterator[tuple[Message | Metadata | Attachment,
                                                  Schema | None, Channel | None]]:
    """The messages (with their schema and channel), metadata records and attachments of a
    partial MCAP in the order written, up to the first record that the kill cut short (every
    chunk is checked against its CRC)."""
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
                yield record, schemas.get(channel.schema_id), channel
            elif isinstance(record, (Metadata, Attachment)):
                yield record, None, None


def read_tracks(path: Path) -> bytes | None:
    """The trackers' state that an unfinished file ends with, or None."""
    with path.open("rb") as stream:
        for attachment in make_reader(stream).iter_attachments():
            if attachment.name == TRACKS_ATTACHMENT:
                return attachment.data
    return None


def read_progress(path: Path) -> dict[str, str] | None:
    """The progress record of a finished (complete or interrupted) file this command wrote, or
    None."""
    with path.open("rb") as stream:
        for record in make_reader(stream).iter_metadata():
            if record.name == PROGRESS_RECORD:
                return dict(record.metadata)
    return None
