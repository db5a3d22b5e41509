"""`fcclip-ros bag`: every image frame of a recorded MCAP through the engine, into a new bag.

The output is a rosbag2 folder (`OUT/OUT_0.mcap` + `metadata.yaml`) holding every input message
unchanged and, after each processed frame, the node's outputs for it under the same
`<camera>/segmentation/` topics, stamped with the frame's header and logged at its log time.
Messages are built by the node's own functions (fcclip_ros.ros.outputs), so a bag holds what the
node would publish for the same frame; reading and writing the files is fcclip_ros.ros.bag_files.

Progress lives in the output itself (an MCAP metadata record), which is what `--resume` reads:
an interrupted run finishes a valid file of whole frames, and a resumed run copies it and goes on
from the first message it had not handled, producing the same file an uninterrupted run would.
A run that could not finish its file (SIGKILL, out of memory) leaves the partial MCAP and a
checkpoint per written batch of frames; `--resume` first rebuilds a finished file up to the last
checkpoint the partial MCAP holds whole (bag_files.recover_killed_run).
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mcap.exceptions import McapError
from mcap.reader import make_reader
from mcap.records import Message
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from visualization_msgs.msg import MarkerArray

from fcclip_ros.engine import Engine, EngineError, EngineInterruptedError
from fcclip_ros.geometry import (
    DepthError,
    DepthFrame,
    point_cloud,
    registered_depth,
    segment_geometry,
)
from fcclip_ros.image_conversion import ImageConversionError, compressed_to_rgb, image_to_rgb
from fcclip_ros.overlay import OverlayStyle, draw_overlay
from fcclip_ros.result import Segmentation
from fcclip_ros.ros.bag_files import (
    IMAGE_TYPES,
    LATCHED_QOS,
    BagError,
    InputBag,
    OutputBag,
    Topic,
    read_progress,
    recover_killed_run,
)
from fcclip_ros.ros.message_definitions import (
    message_type_name,
)
from fcclip_ros.ros.outputs import (
    embeddings_message,
    image_message,
    segments_message,
    vocabulary_message,
)
from fcclip_ros.ros.pairing import RecordedDepth, header_stamp_ns
from fcclip_ros.ros.spatial_outputs import (
    VISION_OUTPUTS,
    detections_3d_message,
    detections_message,
    label_info_message,
    markers_message,
    points_message,
    vision_msgs,
)
from fcclip_ros.topics import (
    BAG_DEFAULT_OUTPUTS,
    DEPTH_ONLY_OUTPUTS,
    camera_info_topic,
    is_rectified_topic,
    output_namespace,
)

MAX_REPORTED_FAILURES = 5



@dataclass(frozen=True)
class BagOptions:
    topics: tuple[str, ...] = ()  # image topics to segment; empty: every image topic
    every: int = 1  # segment every N-th frame of each camera
    outputs: tuple[str, ...] = BAG_DEFAULT_OUTPUTS  # per-frame outputs, from BAG_OUTPUTS
    batch_size: int = 1
    max_input_pixels: int = 4096 * 4096
    depth_topics: tuple[str, ...] = ()  # one per entry of `topics` ("" = none); empty: no 3D
    camera_info_topics: tuple[str, ...] = ()  # one per entry of `topics`; empty: beside each
    depth_max_delay_s: float = 0.05
    points_stride: int = 1
    style: OverlayStyle = field(default_factory=OverlayStyle)

    def fingerprint(self, engine_settings: dict[str, Any]) -> str:
        """What must match for --resume to continue a file (the style is not recorded)."""
        settings = {key: value for key, value in asdict(self).items()
                    if key not in ("style", "batch_size")}
        return json.dumps({**settings, "engine": engine_settings}, sort_keys=True)


@dataclass
class BagReport:
    frames_total: int = 0  # frames selected for segmentation in the whole input
    frames_done: int = 0  # of those, handled (segmented or found undecodable)
    frames_failed: int = 0  # undecodable or refused by the engine: copied without outputs
    frames_3d: int = 0  # segmented with depth (cameras with a depth topic)
    frames_without_depth: int = 0  # no depth frame within depth_max_delay_s: 2D only
    frames_depth_refused: int = 0  # depth or CameraInfo unusable (size, encoding): 2D only
    messages_done: int = 0  # input messages handled, in reading order
    failures: list[str] = field(default_factory=list)  # the first few reasons
    depth_notes: list[str] = field(default_factory=list)  # the first few depth refusals
    interrupted: bool = False
    COUNTS = ("messages_done", "frames_done", "frames_failed", "frames_3d",
              "frames_without_depth", "frames_depth_refused")

    def counts(self) -> dict[str, str]:
        """COUNTS as the progress record holds them."""
        return {name: str(getattr(self, name)) for name in self.COUNTS}

    def fail(self, reason: str) -> None:
        self.frames_failed += 1
        if len(self.failures) < MAX_REPORTED_FAILURES:
            self.failures.append(reason)

    def refuse_depth(self, reason: str) -> None:
        self.frames_depth_refused += 1
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
    depth: DepthFrame | None = None


@dataclass
class _CameraDepth:
    """A camera's depth and CameraInfo topics in the recording, and what was read of them."""
    depth_topic: str
    info_topic: str
    pairing: RecordedDepth
    camera_info: Any = None  # the latest CameraInfo read


class BagJob:
    """One `fcclip-ros bag` run. Checks the input and the output folder when made (before any
    model is loaded); `stop()`, safe from a signal handler, ends `run` after whole frames."""

    def __init__(self, source: Path, out: Path, options: BagOptions,
                 engine_settings: dict[str, Any], resume: bool = False) -> None:
        self.options = options
        self.source = InputBag(source)
        self.out = out
        self.cameras = self._cameras()
        self.namespaces = self._output_namespaces()
        self.depth = self._depth_topics()
        self.outputs = self._outputs_per_camera()
        self._fingerprint = {"input": self.source.fingerprint(),
                             "options": options.fingerprint(engine_settings)}
        self.recovered = ""  # what was recovered of a killed run, when resuming one
        self._previous = self._check_output(resume)
        self.report = BagReport(frames_total=self._frames_total())
        self._stopped = threading.Event()
        self._engine: Engine | None = None

    def _cameras(self) -> list[str]:
        images = self.source.image_topics
        if not images:
            listed = ", ".join(f"{t.name} ({t.schema.name})" for t in self.source.topics.values())
            raise BagError(f"no sensor_msgs/Image or CompressedImage topic in the bag (it has: "
                           f"{listed or 'no topics'})")
        for name in self.options.topics:
            if name not in self.source.topics:
                raise BagError(f"no topic {name} in the bag; its image topics: "
                               f"{', '.join(images)}")
            if name not in images:
                raise BagError(f"{name} is {self.source.topics[name].schema.name}, not an image "
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
            compressed = self.source.topics[name].schema.name == message_type_name(CompressedImage)
            image_topic = name.removesuffix("/compressed") if compressed else name
            namespace = output_namespace(image_topic)
            clash = [other for other, used in namespaces.items() if used == namespace]
            if clash:
                raise BagError(f"{clash[0]} and {name} would both write {namespace}/...: choose "
                               "one of them with --topics")
            namespaces[name] = namespace
        return namespaces

    def _depth_topics(self) -> dict[str, _CameraDepth]:
        """Cameras with depth: their depth and CameraInfo topics, checked against the bag."""
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
                if found.schema.name != message_type_name(wanted):
                    raise BagError(f"{topic} is {found.schema.name}, not "
                                   f"{message_type_name(wanted)}")
            depth[camera] = _CameraDepth(depth_topic, info_topic,
                                         RecordedDepth(options.depth_max_delay_s))
        return depth

    def _outputs_per_camera(self) -> dict[str, tuple[str, ...]]:
        """What is written after each frame of each camera: the 3D outputs only for cameras
        with depth, the vision_msgs ones only where vision_msgs is importable (as the node)."""
        for unavailable, reason in (
                ([name for name in self.options.outputs
                  if name in VISION_OUTPUTS and vision_msgs is None],
                 "vision_msgs is not importable (source a ROS 2 install that has it)"),
                ([name for name in self.options.outputs
                  if name in DEPTH_ONLY_OUTPUTS and not self.depth],
                 "no camera has --depth-topics")):
            if unavailable:
                raise BagError(f"cannot write {', '.join(unavailable)}: {reason}")
        return {camera: tuple(name for name in self.options.outputs
                              if camera in self.depth or name not in DEPTH_ONLY_OUTPUTS)
                for camera in self.cameras}

    def _frames_total(self) -> int:
        every = self.options.every
        return sum(-(-self.source.message_counts.get(name, 0) // every) for name in self.cameras)

    def _check_output(self, resume: bool) -> dict[str, str] | None:
        """The interrupted run's progress when resuming, after checking it may be continued."""
        path = self.out / f"{self.out.name}_0.mcap"
        if not resume:
            if self.out.exists():
                raise BagError(f"{self.out} exists: remove it, or continue an interrupted run "
                               "with --resume")
            return None
        if not path.is_file():
            try:
                kept = recover_killed_run(self.out)
            except (OSError, McapError, ValueError) as error:
                raise BagError(f"--resume: cannot recover the killed run in {self.out} "
                               f"({error})") from error
            if kept is None:
                raise BagError(f"--resume: {path} does not exist (nothing to continue)")
            self.recovered = (f"recovered {kept} messages that a killed run wrote to "
                              f"{self.out}, up to its last whole frame")
        try:
            progress = read_progress(path)
        except (McapError, ValueError, OSError) as error:
            raise BagError(f"--resume: {path} is not readable ({error})") from error
        if progress is None:
            raise BagError(f"--resume: {path} was not written by `fcclip-ros bag`")
        if progress.get("complete") == "true":
            raise BagError(f"--resume: {path} is already complete")
        if progress.get("input") != self._fingerprint["input"]:
            raise BagError(f"--resume: {path} was made from another input bag")
        if progress.get("options") != self._fingerprint["options"]:
            raise BagError(f"--resume: {path} was made with other settings: "
                           f"{progress.get('options')}")
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
        output = OutputBag(self.out, self._fingerprint)
        try:
            self._register_topics(output)
            skip = 0
            if self._previous is None:
                self._write_vocabulary(output, engine)
            else:
                skip = self._copy_previous(output, self._previous)
                on_frame(self.report.frames_done)
            output.checkpoint(self.report.counts())
            self._process(output, engine, skip, on_frame)
        finally:
            output.close({**self._fingerprint, **self.report.counts(),
                          "complete": str(not self.report.interrupted).lower()})
        return self.report

    def _register_topics(self, output: OutputBag) -> None:
        for topic in self.source.topics.values():
            output.add_topic(topic.name, topic.schema.name, topic.schema.data,
                             dict(topic.channel.metadata))
        from fcclip_ros.msg import SegmentArray, SegmentEmbeddings, Vocabulary

        classes = {"labels": Image, "instances": Image, "confidence": Image, "overlay": Image,
                   "segments": SegmentArray, "embeddings": SegmentEmbeddings,
                   "points": PointCloud2, "markers": MarkerArray}
        if vision_msgs is not None:
            classes |= {"detections": vision_msgs.Detection2DArray,
                        "detections_3d": vision_msgs.Detection3DArray}
        for camera, namespace in self.namespaces.items():
            for name in self.outputs[camera]:
                output.add_output_topic(f"{namespace}/{name}", classes[name])
            output.add_output_topic(f"{namespace}/vocabulary", Vocabulary, LATCHED_QOS)
            if vision_msgs is not None:
                output.add_output_topic(f"{namespace}/label_info", vision_msgs.LabelInfo,
                                        LATCHED_QOS)

    def _write_vocabulary(self, output: OutputBag, engine: Engine) -> None:
        """Once per camera, at the start of the recording: the node latches it the same way
        (and vision_msgs' LabelInfo beside it)."""
        from builtin_interfaces.msg import Time
        from std_msgs.msg import Header

        start = self.source.start_time or 0
        stamp = Time(sec=start // 1_000_000_000, nanosec=start % 1_000_000_000)
        state = engine.vocabulary.current
        msg = vocabulary_message(state, stamp)
        for namespace in self.namespaces.values():
            output.publish(f"{namespace}/vocabulary", msg, start)
            if vision_msgs is not None:
                output.publish(f"{namespace}/label_info",
                               label_info_message(state.vocabulary, Header(stamp=stamp)), start)

    def _copy_previous(self, output: OutputBag, progress: dict[str, str]) -> int:
        """Copies the interrupted run's file into the new one; returns how many input messages
        it had handled."""
        path = self.out / f"{self.out.name}_0.mcap"
        with path.open("rb") as stream:
            for _schema, channel, message in make_reader(stream).iter_messages(
                    log_time_order=False):
                output.write(channel.topic, message.data, message.log_time,
                             message.publish_time, message.sequence)
        for count in BagReport.COUNTS:
            setattr(self.report, count, int(progress[count]))
        return self.report.messages_done

    def _process(self, output: OutputBag, engine: Engine, skip: int,
                 on_frame: Callable[[int], None]) -> None:
        """Reads the input in order, segments the selected frames in batches, and writes each
        message followed by its frame's outputs. Stops between batches when asked to; a batch
        cut short is not written, so the file always ends after a whole frame."""
        frames_seen = dict.fromkeys(self.cameras, 0)
        depth_of = {d.depth_topic: d for d in self.depth.values()}
        info_of = {d.info_topic: d for d in self.depth.values()}
        pending: list[_Entry] = []
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

    def _observe(self, topic: str, message: Message, depth_of: dict[str, _CameraDepth],
                 info_of: dict[str, _CameraDepth]) -> None:
        if topic in depth_of:
            try:
                depth = deserialize_message(message.data, Image)
            except (ValueError, RuntimeError):
                return  # an unreadable depth frame pairs with nothing
            depth_of[topic].pairing.add_depth(header_stamp_ns(depth.header), depth)
        if topic in info_of:
            with contextlib.suppress(ValueError, RuntimeError):  # else the previous one holds
                info_of[topic].camera_info = deserialize_message(message.data, CameraInfo)

    def _read_frame(self, entry: _Entry) -> None:
        """Deserializes a frame to segment, and with depth enters it for pairing."""
        message_class = IMAGE_TYPES[entry.topic.schema.name]
        try:
            entry.msg = deserialize_message(entry.message.data, message_class)
        except (ValueError, RuntimeError):
            return  # reported when its batch is written
        depth = self.depth.get(entry.topic.name)
        if depth is not None:
            depth.pairing.add_colour(id(entry), header_stamp_ns(entry.msg.header),
                                     entry.message.log_time)

    def _decided(self, entry: _Entry, log_time_now: int, at_end: bool) -> bool:
        depth = self.depth.get(entry.topic.name)
        return (at_end or entry.msg is None or depth is None
                or depth.pairing.decided(id(entry), log_time_now))

    def _write_ready(self, output: OutputBag, engine: Engine, pending: list[_Entry],
                     log_time_now: int, at_end: bool) -> bool:
        """Writes the leading entries that can go: messages before the first frame at once,
        frames in batches of batch_size once their depth is decided. False: stopped."""
        while pending:
            frames = [i for i, entry in enumerate(pending) if entry.selected]
            if not frames or frames[0] > 0:
                cut = frames[0] if frames else len(pending)
            else:
                ready = []
                for i in frames[: self.options.batch_size]:
                    if not self._decided(pending[i], log_time_now, at_end):
                        break
                    ready.append(i)
                if len(ready) < self.options.batch_size and not (at_end and ready):
                    return True
                cut = ready[-1] + 1
            if not self._write_batch(output, engine, pending[:cut]):
                return False
            del pending[:cut]
        return True

    def _write_batch(self, output: OutputBag, engine: Engine, entries: list[_Entry]) -> bool:
        """Segments and writes `entries`; False (nothing written) when the run was stopped."""
        failures = [reason for entry in entries if entry.selected
                    for reason in [self._decode(entry)] if reason]
        frames = [entry for entry in entries if entry.rgb is not None]
        if frames:
            try:
                results = engine.segment_batch(
                    [entry.rgb for entry in frames],
                    with_confidence="confidence" in self.options.outputs,
                    with_embeddings="embeddings" in self.options.outputs)
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
                self._pair_depth(entry)
                self._write_outputs(output, engine, entry)
            elif entry.selected and entry.topic.name in self.depth and entry.msg is not None:
                self.depth[entry.topic.name].pairing.take(id(entry))
        for reason in failures:
            self.report.fail(reason)
        self.report.messages_done += len(entries)
        self.report.frames_done += sum(entry.selected for entry in entries)
        if any(entry.selected for entry in entries):  # not per message of a busy IMU topic
            output.checkpoint(self.report.counts())
        return True

    def _decode(self, entry: _Entry) -> str | None:
        """Fills entry.rgb, or returns why the frame cannot be segmented."""
        where = f"{entry.topic.name} at log time {entry.message.log_time}"
        if entry.msg is None:
            return f"{where}: not a valid {entry.topic.schema.name} message"
        to_rgb = compressed_to_rgb if isinstance(entry.msg, CompressedImage) else image_to_rgb
        try:
            entry.rgb = to_rgb(entry.msg, self.options.max_input_pixels)
        except (ImageConversionError, ValueError) as error:
            return f"{where}: {error}"
        return None

    def _pair_depth(self, entry: _Entry) -> None:
        """entry.depth: the frame's registered depth in metres, where its camera has depth."""
        camera = self.depth.get(entry.topic.name)
        if camera is None:
            return
        depth_msg = camera.pairing.take(id(entry))
        if depth_msg is None:
            self.report.frames_without_depth += 1
            return
        try:
            entry.depth = registered_depth(depth_msg, camera.camera_info, entry.rgb.shape,
                                           self.options.max_input_pixels, camera.info_topic,
                                           is_rectified_topic(entry.topic.name))
        except (DepthError, ImageConversionError) as error:
            self.report.refuse_depth(f"{entry.topic.name} at log time "
                                     f"{entry.message.log_time}: {error}")
            return
        self.report.frames_3d += 1

    def _write_outputs(self, output: OutputBag, engine: Engine, entry: _Entry) -> None:
        header, result, log_time = entry.msg.header, entry.result, entry.message.log_time
        depth = entry.depth
        geometry = None
        if depth is not None:
            geometry = segment_geometry(result.instances, depth.metres, depth.intrinsics)
        messages: dict[str, Callable[[], Any]] = {
            "labels": lambda: image_message(header, result.labels, "mono16"),
            "instances": lambda: image_message(header, result.instances, "mono16"),
            "confidence": lambda: image_message(header, result.confidence, "32FC1"),
            "overlay": lambda: image_message(
                header, draw_overlay(entry.rgb, result.instances, result.segments,
                                     self.options.style), "rgb8"),
            "segments": lambda: segments_message(header, result, geometry),
            "embeddings": lambda: embeddings_message(header, result, engine.config.model),
            "markers": lambda: markers_message(header, result, geometry or {}),
            "detections": lambda: detections_message(header, result),
        }
        if depth is not None:  # the node publishes these only for frames with depth too
            messages |= {
                "points": lambda: points_message(header, point_cloud(
                    entry.rgb, result, depth.metres, depth.intrinsics,
                    self.options.points_stride)),
                "detections_3d": lambda: detections_3d_message(header, result, geometry),
            }
        namespace = self.namespaces[entry.topic.name]
        for name in self.outputs[entry.topic.name]:
            if name in messages:
                output.publish(f"{namespace}/{name}", messages[name](), log_time)
