"""One `fcclip-ros bag` run: every image frame of a recorded MCAP through the engine.

The output is a rosbag2 folder (`OUT/OUT_0.mcap` + `metadata.yaml`) holding every input message
unchanged and, after each processed frame, the node's outputs for it under the same
`<camera>/segmentation/` topics, stamped with the frame's header and logged at its log time. Each
camera's frames go through the node's frame pipeline (fcclip_ros.frame_pipeline: depth pairing,
3D) and message builders (fcclip_ros.ros.messages), so a bag holds what the node would publish.

Progress lives in the output itself (an MCAP metadata record), which is what `--resume` reads:
an interrupted run finishes a valid file of whole frames, and a resumed run copies it and goes on
from the first message it had not handled, producing the same file an uninterrupted run would.
A run that could not finish its file (an error, SIGKILL, out of memory) leaves the partial MCAP
and a checkpoint per written batch of frames; `--resume` first rebuilds a finished file up to the
last checkpoint the partial MCAP holds whole (resume.recover_killed_run). Only a run that read the
whole input writes metadata.yaml, last: that file is what marks an output complete.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import threading
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import yaml
from mcap.exceptions import McapError
from mcap.reader import make_reader
from mcap.records import Message
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from fcclip_ros.depth_pairing import PendingDepth
from fcclip_ros.engine import Engine, EngineError, EngineInterruptedError
from fcclip_ros.frame_pipeline import DepthSource, FramePipeline, ThreeDCounts
from fcclip_ros.image_conversion import (
    ImageConversionError,
    compressed_to_rgb,
    image_to_rgb,
)
from fcclip_ros.outputs import OUTPUTS, available, bag_defaults, unavailable_reason
from fcclip_ros.overlay import OverlayStyle
from fcclip_ros.result import Segmentation
from fcclip_ros.ros.bag.message_definitions import message_type_name
from fcclip_ros.ros.bag.reader import IMAGE_TYPES, BagError, InputBag, Topic
from fcclip_ros.ros.bag.resume import (
    NothingToResumeError,
    discard_killed_run,
    read_progress,
    read_tracks,
    recover_killed_run,
)
from fcclip_ros.ros.bag.writer import (
    LATCHED_QOS,
    PROGRESS_RECORD,
    ROSBAG2_RECORD,
    TRACKS_ATTACHMENT,
    OutputBag,
    output_files,
    write_rosbag2_metadata,
)
from fcclip_ros.ros.messages import (
    FRAME_MESSAGES,
    IMPORTABLE_PACKAGES,
    VOCABULARY_MESSAGES,
    message_class,
)
from fcclip_ros.settings import default
from fcclip_ros.topics import camera_info_topic, images_rectified, output_namespace
from fcclip_ros.tracking import SegmentTracker, TrackerConfig

MAX_REPORTED_FAILURES = 5
# A recorded colour frame waits for its depth until a depth stamped at or after it is read, or
# this much log time has passed (recorders log depth and colour in either order).
RECORDED_DEPTH_WAIT_S = 1.0
# Messages wait for the frames before them to be segmented (a batch to fill, a depth frame to
# arrive). Whatever the batch size, they are written once they span this much log time or hold
# this many bytes (the frames among them count twice: their data and their decoded pixels).
BUFFER_HORIZON_S = 2.0
BUFFER_MAX_BYTES = 64 * 2**20
LATCHED_OUTPUTS = tuple(output.name for output in OUTPUTS if output.latched)


class BagCompleteError(BagError):
    """--resume of an output that is already complete, with the same input and settings."""


@dataclass(frozen=True)
class BagOptions:
    topics: tuple[str, ...] = ()  # image topics to segment; empty: every image topic
    every: int = 1  # segment every N-th frame of each camera
    outputs: tuple[str, ...] = ()  # per-frame outputs (fcclip_ros.outputs); empty: the defaults
    batch_size: int = 1
    max_input_pixels: int = default("max_input_pixels")
    depth_topics: tuple[str, ...] = ()  # one per entry of `topics` ("" = none); empty: no 3D
    camera_info_topics: tuple[str, ...] = ()  # one per entry of `topics`; empty: beside each
    depth_max_delay_s: float = default("depth_max_delay_s")
    rectification: str = default("rectification")  # auto: by each camera topic's name
    min_box_depth_pixels: int = default("min_box_depth_pixels")
    points_stride: int = default("points_stride")
    skip_damaged: bool = False  # skip unreadable chunks of the input (else: stop, resumable)
    tracking: TrackerConfig | None = field(default_factory=TrackerConfig)  # None: track_id 0
    style: OverlayStyle = field(default_factory=OverlayStyle)

    def settings(self) -> dict[str, Any]:
        """What must match for --resume to continue a file. Not the style (not recorded), nor
        skip_damaged: a run stopped by damage resumes with --skip-damaged to read past it."""
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in asdict(self).items() if key not in ("style", "skip_damaged")}


@dataclass
class BagReport:
    frames_total: int = 0  # frames selected for segmentation in the whole input
    frames_done: int = 0  # of those, handled (segmented or found undecodable)
    frames_failed: int = 0  # undecodable or refused by the engine: copied without outputs
    frames_3d: int = 0  # segmented with depth (cameras with a depth topic)
    frames_without_depth: int = 0  # no depth frame within depth_max_delay_s: 2D only
    frames_depth_refused: int = 0  # depth or CameraInfo unusable (size, encoding): 2D only
    frames_3d_failed: int = 0  # the 3D step raised: 2D only
    messages_done: int = 0  # input messages handled, in reading order
    failures: list[str] = field(default_factory=list)  # the first few reasons
    depth_notes: list[str] = field(default_factory=list)  # the first few reasons for no 3D
    damaged: dict[str, int] = field(default_factory=dict)  # --skip-damaged: messages lost per topic
    batch_size: int = 1
    interrupted: bool = False
    COUNTS = ("messages_done", "frames_done", "frames_failed", *ThreeDCounts().as_dict())

    def counts(self) -> dict[str, str]:
        """COUNTS as the progress record holds them."""
        return {name: str(getattr(self, name)) for name in self.COUNTS}

    def fail(self, reason: str) -> None:
        self.frames_failed += 1
        if len(self.failures) < MAX_REPORTED_FAILURES:
            self.failures.append(reason)

    def note_depth(self, reason: str) -> None:
        if len(self.depth_notes) < MAX_REPORTED_FAILURES:
            self.depth_notes.append(reason)


# --- the run -------------------------------------------------------------------------------


@dataclass
class _Entry:
    """An input message waiting to be written, with the frame's result once segmented."""
    topic: Topic
    message: Message
    selected: bool  # a frame to segment
    msg: Any = None  # the deserialized Image / CompressedImage
    rgb: Any = None  # its (H, W, 3) uint8 pixels
    result: Segmentation | None = None
    depth: PendingDepth | None = None  # its depth candidates, with a depth topic


class _CameraDepth(NamedTuple):
    topic: str
    source: DepthSource


class BagJob:
    """One `fcclip-ros bag` run. Checks the input and the output folder when made (before any
    model is loaded); `stop()`, safe from a signal handler, ends `run` after whole frames."""

    def __init__(self, source: Path, out: Path, options: BagOptions,
                 engine_settings: dict[str, Any], resume: bool = False) -> None:
        self.options = options
        self.source = InputBag(source, skip_damaged=options.skip_damaged)
        self.ros_distro = _recorded_ros_distro(self.source)
        self.out = out
        self._pending_bytes = 0  # of the messages read and not yet written
        self.cameras = self._cameras()
        self.namespaces = self._output_namespaces()
        self.depth = self._depth_topics()
        self.outputs_asked = self._outputs_asked()
        self.outputs = {camera: available(camera in self.depth, IMPORTABLE_PACKAGES,
                                          [*self.outputs_asked, *LATCHED_OUTPUTS])
                        for camera in self.cameras}
        self._check_output_topics()
        written = {camera: list(names) for camera, names in self.outputs.items()}
        self._fingerprint = {"input": self.source.fingerprint(), "options": json.dumps(
            {**options.settings(), "outputs": written, "engine": engine_settings},
            sort_keys=True)}
        self.pipelines: dict[str, FramePipeline] = {}  # per camera, made by run()
        self._restored_3d = ThreeDCounts()  # the 3D counts of the run being resumed
        self.recovered = ""  # what was recovered of a killed run, when resuming one
        self._previous_tracks: bytes | None = None  # the trackers' state it ended with
        self._previous = self._check_output(resume)
        self.report = BagReport(frames_total=self._frames_total(),
                                batch_size=options.batch_size)
        self._stopped = threading.Event()
        self._engine: Engine | None = None

    def _cameras(self) -> list[str]:
        images = self.source.image_topics
        if not images:
            listed = ", ".join(f"{t.name} ({t.type_name or 'no schema'})"
                               for t in self.source.topics.values())
            raise BagError(f"no sensor_msgs/Image or CompressedImage topic in the bag (it has: "
                           f"{listed or 'no topics'})")
        for name in self.options.topics:
            if name not in self.source.topics:
                raise BagError(f"no topic {name} in the bag; its image topics: "
                               f"{', '.join(images)}")
            if name not in images:
                raise BagError(f"{name} is {self.source.topics[name].type_name}, not an image "
                               f"topic; the bag's image topics: {', '.join(images)}")
        cameras = list(self.options.topics) or images
        for name in cameras:
            encoding = self.source.topics[name].channel.message_encoding
            if encoding != "cdr":
                raise BagError(f"{name}: messages are {encoding!r}, not ROS 2 'cdr'")
        return cameras

    def _output_namespaces(self) -> dict[str, str]:
        """Where each camera's outputs go, as the node names them: a compressed topic
        "<image>/compressed" is camera "<image>" with transport compressed."""
        namespaces: dict[str, str] = {}
        for name in self.cameras:
            compressed = self.source.topics[name].type_name == message_type_name(CompressedImage)
            image_topic = name.removesuffix("/compressed") if compressed else name
            namespace = output_namespace(image_topic)
            clash = [other for other, used in namespaces.items() if used == namespace]
            if clash:
                raise BagError(f"{clash[0]} and {name} would both write {namespace}/...: choose "
                               "one of them with --topics")
            namespaces[name] = namespace
        return namespaces

    def _depth_topics(self) -> dict[str, _CameraDepth]:
        """Cameras with depth: where their depth and CameraInfo come from, checked against the
        bag."""
        options = self.options
        if not options.depth_topics and not options.camera_info_topics:
            return {}
        for name, given in (("depth topics", options.depth_topics),
                            ("camera info topics", options.camera_info_topics)):
            if given and len(given) != len(options.topics):
                raise BagError(f"{len(given)} {name} for {len(options.topics)} --topics: give "
                               "one per camera, in the same order ('' for a camera without)")
        depth: dict[str, _CameraDepth] = {}
        for index, camera in enumerate(options.topics):
            depth_topic = options.depth_topics[index] if options.depth_topics else ""
            if not depth_topic:
                continue
            info_topic = (options.camera_info_topics[index] if options.camera_info_topics
                          else "") or camera_info_topic(camera.removesuffix("/compressed"))
            for topic, wanted in ((depth_topic, Image), (info_topic, CameraInfo)):
                found = self.source.topics.get(topic)
                if found is None:
                    raise BagError(f"no topic {topic} in the bag (the {message_type_name(wanted)}"
                                   f" of camera {camera})")
                if found.type_name != message_type_name(wanted):
                    raise BagError(f"{topic} is {found.type_name or 'schemaless'}, not "
                                   f"{message_type_name(wanted)}")
            depth[camera] = _CameraDepth(depth_topic, DepthSource(
                info_topic, images_rectified(options.rectification, camera),
                options.depth_max_delay_s,
                RECORDED_DEPTH_WAIT_S))
        return depth

    def _outputs_asked(self) -> tuple[str, ...]:
        """The per-frame outputs to write (the default set for what this run has), checked. A
        camera gets those it can have, as in the node: the 3D ones only with depth."""
        with_depth = bool(self.depth)
        asked = self.options.outputs or bag_defaults(with_depth, IMPORTABLE_PACKAGES)
        unknown = [name for name in asked if name not in FRAME_MESSAGES]
        if unknown:
            raise BagError(f"{', '.join(unknown)}: not a per-frame output; choose from "
                           f"{', '.join(FRAME_MESSAGES)}")
        unavailable: dict[str, list[str]] = {}
        for name in asked:
            reason = unavailable_reason(name, with_depth, IMPORTABLE_PACKAGES)
            if reason:
                unavailable.setdefault(reason, []).append(name)
        for reason, names in unavailable.items():
            raise BagError(f"cannot write {', '.join(names)}: {reason}")
        return available(with_depth, IMPORTABLE_PACKAGES, asked)

    def _check_output_topics(self) -> None:
        """Refused before any work: an output topic the input already has (another type, or
        an earlier run's outputs: segment the original recording)."""
        for camera, namespace in self.namespaces.items():
            for name in self.outputs[camera]:
                topic = self.source.topics.get(f"{namespace}/{name}")
                if topic is not None:
                    raise BagError(f"the input already has a topic {topic.name} ("
                                   f"{topic.type_name or 'no schema'}), where this command "
                                   f"writes {message_type_name(message_class(name))}; segment "
                                   "the original recording, or choose other --topics")

    def _frames_total(self) -> int:
        every = self.options.every
        return sum(-(-self.source.message_counts.get(name, 0) // every) for name in self.cameras)

    def _check_output(self, resume: bool) -> dict[str, str] | None:
        """The earlier run's progress when resuming, after checking it may be continued.

        What a failed or killed run left (a partial file and its log) is recovered first, also
        beside the file of an earlier interrupted run: it holds that file's messages and more.
        """
        files = output_files(self.out)
        if not resume:
            if self.out.exists():
                raise BagError(f"{self.out} exists: remove it, or continue an interrupted run "
                               "with --resume")
            return None
        try:
            kept = recover_killed_run(self.out)
        except BagError:
            if not files["mcap"].is_file():
                raise
            discard_killed_run(self.out)  # it stopped before copying the earlier file
            kept = None
        except (OSError, McapError, ValueError) as error:
            raise BagError(f"--resume: cannot recover the stopped run in {self.out} "
                           f"({error})") from error
        if kept is not None:
            self.recovered = (f"recovered {kept} messages that a stopped run wrote to "
                              f"{self.out}, up to its last whole frame")
        path = files["mcap"]
        if not path.is_file():
            raise NothingToResumeError(f"--resume: {path} does not exist (nothing to continue)")
        try:
            progress = read_progress(path)
        except (McapError, ValueError, OSError) as error:
            raise BagError(f"--resume: {path} is not readable ({error})") from error
        if progress is None:
            raise BagError(f"--resume: {path} was not written by `fcclip-ros bag`")
        if progress.get("input") != self._fingerprint["input"]:
            raise BagError(f"--resume: {path} was made from another input bag")
        if progress.get("options") != self._fingerprint["options"]:
            raise BagError(f"--resume: {path} was made with other settings: "
                           f"{_differences(progress.get('options', '{}'), self._fingerprint)}")
        if progress.get("complete") == "true":
            if not files["metadata"].is_file():  # stopped between its last two steps
                write_rosbag2_metadata(self.out)
            raise BagCompleteError(f"--resume: {path} is already complete")
        self._previous_tracks = read_tracks(path)
        if (self.options.tracking is not None and self._previous_tracks is None
                and int(progress.get("frames_done", 0)) > 0):
            raise BagError(f"--resume: {path} lacks the trackers' state, so its track ids could "
                           "not go on; remove the folder and start again")
        return progress

    @property
    def stopping(self) -> bool:
        return self._stopped.is_set()

    def stop(self) -> None:
        self._stopped.set()
        if self._engine is not None:
            self._engine.interrupt()

    def run(self, engine: Engine, on_frame: Callable[[int], None] = lambda _: None) -> BagReport:
        """Writes the output bag; `on_frame(n)` each time the frames handled reach n."""
        self._engine = engine
        tracking = self.options.tracking
        self.pipelines = {
            camera: FramePipeline(
                engine.config.model, self.options.points_stride, self.options.style,
                self.depth[camera].source if camera in self.depth else None,
                self.options.max_input_pixels,
                tracker=None if tracking is None else SegmentTracker(
                    tracking, panoptic=engine.mode == "panoptic"),
                warn=lambda reason, camera=camera: self.report.note_depth(f"{camera}: {reason}"),
                min_box_depth_pixels=self.options.min_box_depth_pixels)
            for camera in self.cameras
        }
        output = OutputBag(self.out, self._fingerprint, self.ros_distro)
        try:
            self._register_topics(output)
            self._copy_records(output)
            skip = 0
            if self._previous is None:
                self._write_vocabulary(output, engine)
            else:
                skip = self._copy_previous(output, self._previous)
                on_frame(self.report.frames_done)
            output.checkpoint(self.report.counts(), self._tracks())
            self._process(output, engine, skip, on_frame)
            self.report.damaged = dict(self.source.damaged)
            output.close({**self._fingerprint, **self.report.counts(),
                          "complete": str(not self.report.interrupted).lower()}, self._tracks())
        except Exception as error:
            output.abandon()
            reason = str(error) if isinstance(error, BagError) else (
                f"{type(error).__name__}: {error}")
            raise BagError(f"{reason}; the work so far is kept: run the same command with "
                           "--resume to continue") from error
        return self.report

    def _register_topics(self, output: OutputBag) -> None:
        for topic in self.source.topics.values():
            output.add_topic(topic.name, topic.schema, topic.channel.message_encoding,
                             dict(topic.channel.metadata))
        for camera, namespace in self.namespaces.items():
            for name in self.outputs[camera]:
                latched = {"qos": LATCHED_QOS} if name in LATCHED_OUTPUTS else {}
                output.add_output_topic(f"{namespace}/{name}", message_class(name), **latched)

    def _copy_records(self, output: OutputBag) -> None:
        """The input's metadata records and attachments. rosbag2's own description of the input
        is replaced by the output's, written when it is finished."""
        for name, metadata in self.source.metadata_records():
            if name not in (ROSBAG2_RECORD, PROGRESS_RECORD):
                output.add_metadata(name, metadata)
        for attachment in self.source.attachments():
            if attachment.name != TRACKS_ATTACHMENT:
                output.add_attachment(attachment)

    def _write_vocabulary(self, output: OutputBag, engine: Engine) -> None:
        """Once per camera, at the start of the recording: the node latches them the same way."""
        from builtin_interfaces.msg import Time

        start = self.source.start_time or 0
        stamp = Time(sec=start // 1_000_000_000, nanosec=start % 1_000_000_000)
        state = engine.vocabulary.current
        for camera, namespace in self.namespaces.items():
            for name, build in VOCABULARY_MESSAGES.items():
                if name in self.outputs[camera]:
                    output.publish(f"{namespace}/{name}",
                                   build(state, stamp, engine.object_mask_threshold), start)

    def _copy_previous(self, output: OutputBag, progress: dict[str, str]) -> int:
        """Copies the interrupted run's file into the new one; returns how many input messages
        it had handled."""
        with output_files(self.out)["mcap"].open("rb") as stream:
            for _schema, channel, message in make_reader(stream).iter_messages(
                    log_time_order=False):
                output.write(channel.topic, message.data, message.log_time,
                             message.publish_time, message.sequence)
        for count in BagReport.COUNTS:
            setattr(self.report, count, int(progress.get(count, 0)))
        self._restored_3d = ThreeDCounts(**{name: getattr(self.report, name)
                                            for name in ThreeDCounts().as_dict()})
        if self._previous_tracks is not None:
            self._restore_tracks(self._previous_tracks)
        return self.report.messages_done

    def _tracks(self) -> bytes | None:
        """Every camera's tracker state, as an npz (None without tracking)."""
        trackers = [p.tracker for p in self.pipelines.values() if p.tracker is not None]
        if not trackers:
            return None
        arrays = {f"{index}.{name}": array for index, tracker in enumerate(trackers)
                  for name, array in tracker.tracker.state().items()}
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    def _restore_tracks(self, data: bytes) -> None:
        """The trackers as the earlier run left them (an npz: no pickle, no code runs)."""
        trackers = [p.tracker for p in self.pipelines.values() if p.tracker is not None]
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as stored:
                arrays = {name: stored[name] for name in stored.files}
            for index, tracker in enumerate(trackers):
                prefix = f"{index}."
                tracker.tracker.restore({name.removeprefix(prefix): array
                                         for name, array in arrays.items()
                                         if name.startswith(prefix)})
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
            raise BagError(f"--resume: the trackers' state in {self.out} is unusable ({error}); "
                           "remove the folder and start again") from error

    def _process(self, output: OutputBag, engine: Engine, skip: int,
                 on_frame: Callable[[int], None]) -> None:
        """Reads the input in order, segments the selected frames in batches, and writes each
        message followed by its frame's outputs. Stops between batches when asked to; a batch
        cut short is not written, so the file always ends after a whole frame."""
        frames_seen = dict.fromkeys(self.cameras, 0)
        depth_of = {d.topic: self.pipelines[c] for c, d in self.depth.items()}
        info_of = {d.source.info_topic: self.pipelines[c] for c, d in self.depth.items()}
        pending: list[_Entry] = []
        self._pending_bytes = 0
        for index, (topic, message) in enumerate(self.source.messages()):
            selected = False
            if topic.name in frames_seen:
                selected = frames_seen[topic.name] % self.options.every == 0
                frames_seen[topic.name] += 1
            self._observe(topic.name, message, depth_of, info_of)  # the pairing state, always
            if index < skip:
                continue
            if self._stopped.is_set():
                break
            entry = _Entry(topic, message, selected)
            pending.append(entry)
            self._pending_bytes += _size(entry)
            if selected:
                self._read_frame(entry)
            done = self.report.frames_done
            if not self._write_ready(output, engine, pending, message.log_time, at_end=False):
                break
            if self.report.frames_done != done:
                on_frame(self.report.frames_done)
        else:
            if self._write_ready(output, engine, pending, 0, at_end=True):
                on_frame(self.report.frames_done)
                return
        self.report.interrupted = True

    def _observe(self, topic: str, message: Message, depth_of: dict[str, FramePipeline],
                 info_of: dict[str, FramePipeline]) -> None:
        if topic in depth_of:
            try:
                depth = deserialize_message(message.data, Image)
            except (ValueError, RuntimeError):
                return  # an unreadable depth frame pairs with nothing
            depth_of[topic].add_depth(depth, message.log_time)
        if topic in info_of:
            with contextlib.suppress(ValueError, RuntimeError):  # else the previous one holds
                info_of[topic].add_camera_info(deserialize_message(message.data, CameraInfo))

    def _read_frame(self, entry: _Entry) -> None:
        """Deserializes a frame to segment, and with depth enters it for pairing."""
        message_class = IMAGE_TYPES[entry.topic.type_name]
        try:
            entry.msg = deserialize_message(entry.message.data, message_class)
        except (ValueError, RuntimeError):
            return  # reported when its batch is written
        entry.depth = self.pipelines[entry.topic.name].add_colour(entry.msg.header,
                                                                  entry.message.log_time)

    def _decided(self, entry: _Entry, log_time_now: int) -> bool:
        pairing = self.pipelines[entry.topic.name].pairing
        return entry.depth is None or pairing.decided(entry.depth, log_time_now)

    def _write_ready(self, output: OutputBag, engine: Engine, pending: list[_Entry],
                     log_time_now: int, at_end: bool) -> bool:
        """Writes the leading entries that can go: messages before the first frame at once,
        frames in batches of batch_size once their depth is decided, and whatever is ready when
        the buffer is over its bounds (a smaller batch; depth as found so far). False: stopped."""
        while pending:
            frames = [i for i, entry in enumerate(pending) if entry.selected]
            if not frames or frames[0] > 0:
                cut = frames[0] if frames else len(pending)
            else:
                flush = at_end or self._over_bounds(pending, log_time_now)
                ready = []
                for i in frames[: self.options.batch_size]:
                    if not (flush or self._decided(pending[i], log_time_now)):
                        break
                    ready.append(i)
                if len(ready) < self.options.batch_size and not (flush and ready):
                    return True
                cut = ready[-1] + 1
            if not self._write_batch(output, engine, pending[:cut]):
                return False
            self._pending_bytes -= sum(_size(entry) for entry in pending[:cut])
            del pending[:cut]
        return True

    def _over_bounds(self, pending: list[_Entry], log_time_now: int) -> bool:
        span = log_time_now - pending[0].message.log_time
        return span > BUFFER_HORIZON_S * 1e9 or self._pending_bytes > BUFFER_MAX_BYTES

    def _write_batch(self, output: OutputBag, engine: Engine, entries: list[_Entry]) -> bool:
        """Segments and writes `entries`; False (nothing written) when the run was stopped."""
        failures = [reason for entry in entries if entry.selected
                    for reason in [self._decode(entry)] if reason]
        frames = [entry for entry in entries if entry.rgb is not None]
        if frames:
            try:
                results = engine.segment_batch(
                    [entry.rgb for entry in frames],
                    with_confidence="confidence" in self.outputs_asked,
                    with_embeddings=[bool({"embeddings", "features"} & set(self.outputs_asked))
                                     or self.pipelines[entry.topic.name].needs_embeddings
                                     for entry in frames])
            except EngineInterruptedError:
                return False
            except EngineError as error:
                failures += [f"{entry.topic.name} at log time {entry.message.log_time}: {error}"
                             for entry in frames]
                results = [None] * len(frames)
            for entry, result in zip(frames, results, strict=True):
                entry.result = result
        for entry in entries:
            message = entry.message
            output.write(entry.topic.name, message.data, message.log_time,
                         message.publish_time, message.sequence)
            if entry.result is not None:
                self._write_outputs(output, entry)
        for reason in failures:
            self.report.fail(reason)
        self._count_3d()
        self.report.messages_done += len(entries)
        self.report.frames_done += sum(entry.selected for entry in entries)
        if any(entry.selected for entry in entries):  # not per message of a busy IMU topic
            output.checkpoint(self.report.counts(), self._tracks())
        return True

    def _decode(self, entry: _Entry) -> str | None:
        """Fills entry.rgb, or returns why the frame cannot be segmented."""
        where = f"{entry.topic.name} at log time {entry.message.log_time}"
        if entry.msg is None:
            return f"{where}: not a valid {entry.topic.type_name} message"
        to_rgb = compressed_to_rgb if isinstance(entry.msg, CompressedImage) else image_to_rgb
        try:
            entry.rgb = to_rgb(entry.msg, self.options.max_input_pixels)
        except (ImageConversionError, ValueError) as error:
            return f"{where}: {error}"
        return None

    def _write_outputs(self, output: OutputBag, entry: _Entry) -> None:
        """The frame's outputs, built as the node builds them, after the frame's message."""
        camera = entry.topic.name
        pipeline = self.pipelines[camera]
        depth = pipeline.depth_for(entry.depth, entry.rgb.shape)
        frame = pipeline.frame(entry.msg.header, entry.rgb, entry.result, depth,
                               with_points="points" in self.outputs[camera])
        namespace = self.namespaces[camera]
        for name in self.outputs[camera]:
            msg = FRAME_MESSAGES[name](frame) if name in FRAME_MESSAGES else None
            if msg is not None:
                output.publish(f"{namespace}/{name}", msg, entry.message.log_time)

    def _count_3d(self) -> None:
        """The report's 3D counts: the earlier run's (when resuming) and this run's."""
        for name, count in self._restored_3d.as_dict().items():
            setattr(self.report, name,
                    count + sum(getattr(p.counts, name) for p in self.pipelines.values()))


def _recorded_ros_distro(source: InputBag) -> str:
    """The ROS distribution that recorded the input (rosbag2 says so since Iron), else this
    environment's ROS_DISTRO, else "" (unknown)."""
    for name, metadata in source.metadata_records():
        if name != ROSBAG2_RECORD:
            continue
        if metadata.get("ROS_DISTRO"):
            return metadata["ROS_DISTRO"]
        with contextlib.suppress(yaml.YAMLError, AttributeError, TypeError):
            distro = yaml.safe_load(metadata.get("serialized_metadata", "")).get("ros_distro")
            if distro:
                return str(distro)
    return os.environ.get("ROS_DISTRO", "")


def _size(entry: _Entry) -> int:
    return len(entry.message.data) * (2 if entry.selected else 1)


def _differences(recorded: str, fingerprint: dict[str, str]) -> str:
    """The settings that differ between an earlier run's fingerprint and this one's."""
    try:
        before = json.loads(recorded)
    except ValueError:
        return "unreadable settings"
    now = json.loads(fingerprint["options"])
    flat_before, flat_now = ({**{f"engine {k}": v for k, v in settings.pop("engine", {}).items()},
                              **settings} for settings in (before, now))
    changed = [f"{name}: {flat_before.get(name)!r} then, {flat_now.get(name)!r} now"
               for name in sorted(set(flat_before) | set(flat_now))
               if flat_before.get(name) != flat_now.get(name)]
    return "; ".join(changed) or "none found"
