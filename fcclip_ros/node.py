"""The ROS 2 segmenter node: camera topics in, segmentation topics out.

Threads: the executor only stores each camera's newest frame in its slot (replacing, never
queueing) and answers services, parameters and the diagnostics timer in their own callback
groups; one worker thread runs the engine on the slots in round-robin order. So a slow model
never builds a backlog, and ``set_vocabulary`` or ``ros2 param`` answer while a frame is inferred.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    SetParametersResult,
)
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.exceptions import ParameterException, ParameterUninitializedException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
)
from rclpy.signals import SignalHandlerOptions
from rclpy.task import Future
from rclpy.time import Time
from sensor_msgs.msg import CompressedImage, Image, RegionOfInterest

from fcclip_ros.engine import Engine, EngineConfig, EngineError, resolve_device
from fcclip_ros.image_conversion import (
    ImageConversionError,
    compressed_to_rgb,
    fill_image,
    image_to_rgb,
)
from fcclip_ros.msg import Segment, SegmentArray, Vocabulary
from fcclip_ros.overlay import OverlayStyle, draw_overlay
from fcclip_ros.result import UNLABELED, Segmentation
from fcclip_ros.srv import GetVocabulary, SetVocabulary
from fcclip_ros.topics import output_namespace
from fcclip_ros.vocabulary import Vocabulary as VocabularyList
from fcclip_ros.vocabulary import VocabularyError, VocabularyState

NODE_NAME = "fcclip"
# Latest-frame semantics: a best-effort depth-1 subscription matches reliable and best-effort
# camera publishers alike and never holds an old frame back.
CAMERA_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT
)
OUTPUT_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1)  # reliable, volatile
LATCHED_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL
)
STATS_WINDOW_S = 10.0  # rates and means in the diagnostics cover this much recent time
NO_INPUT_WARNING_S = 5.0  # a camera silent this long is reported as a warning
LOG_THROTTLE_S = 5.0
GIL_SWITCH_INTERVAL_S = 0.0005  # see run()
SHUTDOWN_GRACE_S = 2.0  # how long teardown waits for a frame in flight to stop
LARGE_IMAGES_PROFILE = "config/fastdds_large_images.xml"  # in the package's share/ and the repo


def dds_transport(env: Mapping[str, str]) -> tuple[str, str]:
    """(which case camera-sized images between processes are in, advice or "").

    Measured (README, "Large images between processes"): Fast DDS's builtin transports deliver
    20-60 % of best-effort 640x480 frames and no 12 MB ones, LARGE_DATA the same under
    LOCALHOST discovery (rmw replaces it there); the shipped profile delivers all of them.
    """
    rmw = env.get("RMW_IMPLEMENTATION") or "rmw_fastrtps_cpp"
    if "fastrtps" not in rmw:
        return f"{rmw} (not Fast DDS)", ""
    profile = env.get("FASTDDS_DEFAULT_PROFILES_FILE") or env.get("FASTRTPS_DEFAULT_PROFILES_FILE")
    if profile:
        return f"Fast DDS profile {profile}", ""
    builtin = env.get("FASTDDS_BUILTIN_TRANSPORTS") or "DEFAULT"
    localhost = env.get("ROS_AUTOMATIC_DISCOVERY_RANGE", "").upper() == "LOCALHOST" or env.get(
        "ROS_LOCALHOST_ONLY"
    ) == "1"
    case = f"Fast DDS builtin transports {builtin}" + (", localhost discovery" if localhost else "")
    lost = "most" if builtin.upper() != "LARGE_DATA" or localhost else "frames over a few MB"
    advice = (
        f"{lost} best-effort camera images between processes are lost with {case}: set"
        f" FASTDDS_DEFAULT_PROFILES_FILE=<fcclip_ros share>/{LARGE_IMAGES_PROFILE} for the camera"
        " driver and this node"
    )
    return case, advice


class ConfigurationError(ValueError):
    """A node parameter that cannot work; the message names it and says why."""


@dataclass(frozen=True)
class _ParameterSpec:
    name: str
    default: Any  # a Parameter.Type for an array that defaults to empty
    description: str
    read_only: bool = False
    value_range: FloatingPointRange | IntegerRange | None = None
    choices: tuple[str, ...] = ()

    def descriptor(self) -> ParameterDescriptor:
        descriptor = ParameterDescriptor(
            name=self.name, description=self.description, read_only=self.read_only
        )
        if self.choices:
            descriptor.additional_constraints = "one of: " + ", ".join(self.choices)
        if isinstance(self.value_range, FloatingPointRange):
            descriptor.floating_point_range = [self.value_range]
        elif isinstance(self.value_range, IntegerRange):
            descriptor.integer_range = [self.value_range]
        return descriptor


def _unit_range() -> FloatingPointRange:
    return FloatingPointRange(from_value=0.0, to_value=1.0, step=0.0)


PARAMETERS: tuple[_ParameterSpec, ...] = (
    _ParameterSpec(
        "image_topics",
        ["image"],
        "Camera topics (sensor_msgs/Image). Outputs of <ns>/<name> go to <ns>/segmentation/.",
        read_only=True,
    ),
    _ParameterSpec(
        "transport",
        "raw",
        "raw: subscribe to each topic; compressed: to <topic>/compressed (JPEG or PNG).",
        read_only=True,
        choices=("raw", "compressed"),
    ),
    _ParameterSpec(
        "model",
        "convnext_large",
        "FC-CLIP variant; tiny is a small test configuration.",
        read_only=True,
        choices=("convnext_large", "rn50", "rn101", "rn50x4", "rn50x16", "rn50x64", "tiny"),
    ),
    _ParameterSpec(
        "weights",
        "auto",
        "FC-CLIP checkpoint: auto (the model's file in the cache, see fcclip-ros download), a"
        " path, or random (pipeline tests only: labels are meaningless).",
        read_only=True,
    ),
    _ParameterSpec(
        "clip_weights",
        "auto",
        "CLIP weights: auto (open_clip's pretrained tag from its local cache), a path, or random.",
        read_only=True,
    ),
    _ParameterSpec("device", "auto", "auto, cpu, cuda or cuda:N.", read_only=True),
    _ParameterSpec(
        "precision",
        "auto",
        "Inference precision; auto is fp16 on CUDA where the official numerics allow, else fp32.",
        read_only=True,
        choices=("auto", "fp32", "fp16", "bf16"),
    ),
    _ParameterSpec(
        "mode",
        "panoptic",
        "panoptic: one label per segment; semantic: per-pixel argmax class.",
        read_only=True,
        choices=("panoptic", "semantic"),
    ),
    _ParameterSpec(
        "input_short_side",
        800,
        "The network sees images resized to this short side (the official test size is 800);"
        " 0 keeps the camera's size.",
        read_only=True,
        value_range=IntegerRange(from_value=0, to_value=4096, step=1),
    ),
    _ParameterSpec(
        "max_long_side",
        1333,
        "Upper bound on the resized long side.",
        read_only=True,
        value_range=IntegerRange(from_value=32, to_value=8192, step=1),
    ),
    _ParameterSpec(
        "vocabulary",
        Parameter.Type.STRING_ARRAY,
        'Classes, each "name" or "name, synonym, ..." (optional [thing] or [stuff] tag);'
        " non-empty overrides vocabulary_preset. Setting it swaps the vocabulary; [] goes back"
        " to the preset.",
    ),
    _ParameterSpec(
        "vocabulary_preset",
        "coco",
        "Built-in vocabulary used while `vocabulary` is empty. Setting it swaps the vocabulary"
        " and clears `vocabulary`.",
    ),
    _ParameterSpec(
        "object_mask_threshold",
        0.0,
        "Panoptic: drop queries whose class probability is not above this.",
        value_range=_unit_range(),
    ),
    _ParameterSpec(
        "overlap_threshold",
        0.8,
        "Panoptic: drop a segment keeping less than this share of its mask.",
        value_range=_unit_range(),
    ),
    _ParameterSpec(
        "cache_dir",
        "",
        "Checkpoints and text embeddings; empty: $FCCLIP_ROS_CACHE or ~/.cache/fcclip_ros.",
        read_only=True,
    ),
    _ParameterSpec(
        "max_batch_size",
        4,
        "On CUDA, up to this many cameras with a waiting frame share one forward pass. On CPU"
        " frames go one at a time (batching gains nothing there and delays the first camera).",
        read_only=True,
        value_range=IntegerRange(from_value=1, to_value=16, step=1),
    ),
    _ParameterSpec(
        "cpu_threads",
        0,
        "CPU inference threads; 0: one per core. Lower it to leave cores to other nodes.",
        read_only=True,
        value_range=IntegerRange(from_value=0, to_value=1024, step=1),
    ),
    _ParameterSpec(
        "overlay_alpha", 0.5, "Overlay: weight of the class colour.", value_range=_unit_range()
    ),
    _ParameterSpec("overlay_boundaries", True, "Overlay: white lines between segments."),
    _ParameterSpec("overlay_names", True, "Overlay: class names at the segments."),
    _ParameterSpec(
        "overlay_font_scale",
        0.5,
        "Overlay: OpenCV font scale of the names.",
        value_range=FloatingPointRange(from_value=0.1, to_value=4.0, step=0.0),
    ),
)
_SPECS = {spec.name: spec for spec in PARAMETERS}
_THRESHOLDS = ("object_mask_threshold", "overlap_threshold")
_OVERLAY = {
    "overlay_alpha": "alpha",
    "overlay_boundaries": "boundaries",
    "overlay_names": "names",
    "overlay_font_scale": "font_scale",
}


class _Meter:
    """Recent event times and values, for rates and means over the last STATS_WINDOW_S."""

    def __init__(self) -> None:
        self._events: deque[tuple[float, float]] = deque(maxlen=1000)

    def add(self, value: float = 0.0) -> None:
        self._events.append((time.monotonic(), value))

    def _recent(self) -> list[tuple[float, float]]:
        start = time.monotonic() - STATS_WINDOW_S
        return [event for event in list(self._events) if event[0] >= start]

    def rate(self) -> float:
        recent = self._recent()
        if len(recent) < 2:
            return 0.0
        return (len(recent) - 1) / max(recent[-1][0] - recent[0][0], 1e-9)

    def mean(self) -> float:
        recent = self._recent()
        return sum(value for _, value in recent) / len(recent) if recent else 0.0


class _Camera:
    """One input topic: its newest-frame slot, its output publishers and its statistics."""

    def __init__(
        self, node: Node, topic: str, compressed: bool, group: Any, wake: Callable[[], None]
    ) -> None:
        self._wake = wake  # tells the worker that a frame is waiting
        self.to_rgb: Callable[[Any], np.ndarray] = compressed_to_rgb if compressed else image_to_rgb
        self._lock = threading.Lock()
        self._frame: Any = None  # the newest message not yet taken by the worker
        self.received = self.skipped = self.processed = self.malformed = 0
        self.overlays = self.confidence_maps = 0  # computed only while someone subscribes
        self.arrivals, self.outputs = _Meter(), _Meter()
        self.inference_s, self.age_s = _Meter(), _Meter()
        self.last_arrival: float | None = None

        ns = output_namespace(topic)
        self.labels = node.create_publisher(Image, f"{ns}/labels", OUTPUT_QOS)
        self.instances = node.create_publisher(Image, f"{ns}/instances", OUTPUT_QOS)
        self.confidence = node.create_publisher(Image, f"{ns}/confidence", OUTPUT_QOS)
        self.overlay = node.create_publisher(Image, f"{ns}/overlay", OUTPUT_QOS)
        self.segments = node.create_publisher(SegmentArray, f"{ns}/segments", OUTPUT_QOS)
        self.vocabulary = node.create_publisher(Vocabulary, f"{ns}/vocabulary", LATCHED_QOS)
        if compressed:
            message_type, source = CompressedImage, f"{topic}/compressed"
        else:
            message_type, source = Image, topic
        self.subscription = node.create_subscription(
            message_type, source, self.put, CAMERA_QOS, callback_group=group
        )

    def put(self, msg: Any) -> None:
        """Executor side: keep only the newest frame; one still waiting counts as skipped."""
        with self._lock:
            self.skipped += self._frame is not None
            self._frame = msg
            self.received += 1
            self.last_arrival = time.monotonic()
        self.arrivals.add()
        self._wake()

    def take(self) -> Any:
        with self._lock:
            msg, self._frame = self._frame, None
            return msg

    def has_frame(self) -> bool:
        return self._frame is not None


def _image(header: Any, pixels: np.ndarray, encoding: str) -> Image:
    return fill_image(Image(header=header), pixels, encoding)


def segments_message(header: Any, result: Segmentation) -> SegmentArray:
    """The SegmentArray of one result, stamped with the input's header."""
    msg = SegmentArray(header=header, vocabulary_version=result.vocabulary_version)
    msg.segments = [
        Segment(
            id=s.id,
            class_id=s.class_id,
            label=s.label,
            score=float(s.score),
            is_thing=s.is_thing,
            area=s.area,
            bbox=RegionOfInterest(
                x_offset=s.bbox[0], y_offset=s.bbox[1], width=s.bbox[2], height=s.bbox[3]
            ),
        )
        for s in result.segments
    ]
    return msg


class SegmenterNode(Node):
    """FC-CLIP on every camera in `image_topics`; see the package README for the topic layout."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        for spec in PARAMETERS:
            self.declare_parameter(spec.name, spec.default, spec.descriptor())
        try:
            self.get_parameter("vocabulary")
        except ParameterUninitializedException:  # an empty list has no type until given one
            self.set_parameters([Parameter("vocabulary", Parameter.Type.STRING_ARRAY, [])])
        self._check_choices()
        topics = list(self._param("image_topics"))
        self._check_topics(topics)

        if self._param("cpu_threads") and resolve_device(self._param("device")).type == "cpu":
            torch.set_num_threads(self._param("cpu_threads"))
        self.engine = Engine(self._engine_config())
        self._warn_about_random_weights()
        self._dds_transport, self._dds_advice = dds_transport(os.environ)
        if self._dds_advice:
            self.get_logger().info(self._dds_advice)
        state = self.engine.vocabulary.current
        self._vocabulary_source = self._requested_vocabulary({})
        self._style = OverlayStyle(**{field: self._param(p) for p, field in _OVERLAY.items()})

        self._wake = threading.Condition()
        self._stopping = threading.Event()
        self._publishing = threading.Lock()  # held while a result goes out; see stop_worker()
        self._next_camera = 0
        image_group = MutuallyExclusiveCallbackGroup()
        compressed = self._param("transport") == "compressed"
        self.cameras = [
            _Camera(self, topic, compressed, image_group, self._notify_worker) for topic in topics
        ]
        batch = self._param("max_batch_size") if self.engine.device.type == "cuda" else 1
        self._batch_size = min(batch, len(self.cameras))

        service_group = ReentrantCallbackGroup()  # get_vocabulary answers during a slow swap
        self.create_service(
            SetVocabulary, "set_vocabulary", self._set_vocabulary, callback_group=service_group
        )
        self.create_service(
            GetVocabulary, "get_vocabulary", self._get_vocabulary, callback_group=service_group
        )
        self._diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(
            1.0, self._publish_diagnostics, callback_group=MutuallyExclusiveCallbackGroup()
        )
        if hasattr(self, "add_pre_set_parameters_callback"):  # rclpy >= Iron
            self.add_pre_set_parameters_callback(self._preset_replaces_classes)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.engine.vocabulary.add_listener(self._publish_vocabulary)
        self._publish_vocabulary(state)

        self._worker = threading.Thread(target=self._serve, name="fcclip-inference", daemon=True)
        self._worker.start()
        sources = ", ".join(
            f"{c.subscription.topic_name} -> {c.labels.topic_name.rsplit('/', 1)[0]}/"
            for c in self.cameras
        )
        self.get_logger().info(
            f"ready on {self.engine.device}: {sources}; vocabulary v{state.version}, "
            f"{state.vocabulary.summary()}"
        )

    # ---- start-up -------------------------------------------------------------------------

    def _param(self, name: str) -> Any:
        return self.get_parameter(name).value

    def _check_choices(self) -> None:
        for spec in PARAMETERS:
            if spec.choices and self._param(spec.name) not in spec.choices:
                raise ConfigurationError(
                    f"parameter {spec.name} is {self._param(spec.name)!r}; "
                    f"expected one of {', '.join(spec.choices)}"
                )

    @staticmethod
    def _check_topics(topics: Sequence[str]) -> None:
        if not topics or not all(topic.strip() for topic in topics):
            raise ConfigurationError(f"image_topics needs at least one topic name, got {topics}")
        seen: dict[str, str] = {}
        for topic in topics:
            namespace = output_namespace(topic)
            if namespace in seen:
                raise ConfigurationError(
                    f"image topics {seen[namespace]!r} and {topic!r} would both publish to "
                    f"{namespace}/; put each camera in its own namespace"
                )
            seen[namespace] = topic

    def _engine_config(self) -> EngineConfig:
        vocabulary, preset = self._requested_vocabulary({})
        return EngineConfig(
            model=self._param("model"),
            weights=self._param("weights"),
            clip_weights=self._param("clip_weights"),
            device=self._param("device"),
            precision=self._param("precision"),
            mode=self._param("mode"),
            input_short_side=self._param("input_short_side"),
            max_long_side=self._param("max_long_side"),
            object_mask_threshold=self._param("object_mask_threshold"),
            overlap_threshold=self._param("overlap_threshold"),
            cache_dir=self._param("cache_dir") or None,
            vocabulary=vocabulary,
            vocabulary_preset=preset,
        )

    def _warn_about_random_weights(self) -> None:
        if self.engine.random_weights:
            self.get_logger().warning(
                f"weights: {self._param('weights')}, clip_weights: {self._param('clip_weights')}"
                " -- the network runs with RANDOM weights, so every label, score and mask is"
                " MEANINGLESS. Use this only to test the pipeline; `fcclip-ros download` fetches"
                " the real checkpoints."
            )

    # ---- vocabulary -----------------------------------------------------------------------

    def _requested_vocabulary(self, changes: dict[str, Any]) -> tuple[tuple[str, ...], str]:
        """(entries, preset) the parameters ask for, with `changes` applied; entries win."""
        entries = tuple(changes.get("vocabulary", self._param("vocabulary")) or ())
        preset = changes.get("vocabulary_preset", self._param("vocabulary_preset"))
        return (entries, "") if entries else ((), preset)

    def _swap_in_background(
        self, make: Callable[[], VocabularyList], description: str
    ) -> Future:
        """Encode and install a vocabulary off the executor; the returned future, completed on
        this node's executor, holds the new state or the VocabularyError. Raises
        VocabularyBusyError at once while another swap is encoding."""
        finished = Future(executor=self.executor)
        finished.add_done_callback(lambda _: None)  # so that completing it wakes the executor
        self.engine.vocabulary.swap_in_background(make, finished.set_result, description)
        return finished

    def _swapped(self, source: tuple[tuple[str, ...], str], state: VocabularyState) -> None:
        self._vocabulary_source = source
        self.get_logger().info(f"vocabulary v{state.version}: {state.vocabulary.summary()}")

    def _publish_vocabulary(self, state: VocabularyState) -> None:
        msg = Vocabulary(
            version=state.version,
            classes=list(state.vocabulary.entries),
            is_thing=list(state.vocabulary.is_thing),
            unlabeled_id=UNLABELED,
        )
        msg.header.stamp = self.get_clock().now().to_msg()
        for camera in self.cameras:
            camera.vocabulary.publish(msg)

    async def _set_vocabulary(
        self, request: SetVocabulary.Request, response: SetVocabulary.Response
    ) -> SetVocabulary.Response:
        """A coroutine: while the text encoder runs, it holds no executor thread."""
        entries, preset = tuple(request.classes), request.preset.strip()
        try:
            if not entries and not preset:
                raise VocabularyError("empty request: give classes or a preset")
            outcome = await self._swap_in_background(
                lambda: VocabularyList.from_request(entries or None, preset or None),
                f"preset {preset!r}" if preset else f"{len(entries)} requested classes",
            )
            if isinstance(outcome, VocabularyError):
                raise outcome
        except VocabularyError as error:
            state = self.engine.vocabulary.current
            response.success, response.message = False, str(error)
            self.get_logger().warning(f"set_vocabulary refused: {error}")
        else:
            state = outcome
            self._swapped((entries, "") if entries else ((), preset), state)
            response.success = True
            response.message = f"vocabulary v{state.version}: {state.vocabulary.summary()}"
            # Keep `ros2 param get` truthful; set together, the callback then finds nothing left
            # to swap (one at a time, it would see the new preset beside the old classes).
            parameters = [Parameter("vocabulary", Parameter.Type.STRING_ARRAY, list(entries))]
            if preset:
                parameters.append(Parameter("vocabulary_preset", Parameter.Type.STRING, preset))
            self.set_parameters_atomically(parameters)
        response.version = state.version
        response.classes = list(state.vocabulary.entries)
        return response

    def _get_vocabulary(
        self, _request: GetVocabulary.Request, response: GetVocabulary.Response
    ) -> GetVocabulary.Response:
        state = self.engine.vocabulary.current
        response.version = state.version
        response.classes = list(state.vocabulary.entries)
        response.is_thing = list(state.vocabulary.is_thing)
        return response

    @staticmethod
    def _preset_replaces_classes(parameters: list[Parameter]) -> list[Parameter]:
        """Setting `vocabulary_preset` alone also clears `vocabulary`, in the same atomic change:
        the preset then takes effect, and `ros2 param get` shows what is in force."""
        names = {parameter.name for parameter in parameters}
        if "vocabulary_preset" in names and "vocabulary" not in names:
            parameters.append(Parameter("vocabulary", Parameter.Type.STRING_ARRAY, []))
        return parameters

    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        """Apply runtime-tunable parameters; refuse (with the reason) what cannot work."""
        changes = {p.name: p.value for p in parameters}
        if "vocabulary_preset" in changes and "vocabulary" not in changes and self._param(
            "vocabulary"
        ):  # only without pre-set callbacks (Humble): a preset would be silently shadowed
            return SetParametersResult(
                successful=False,
                reason="`vocabulary` lists classes, which take precedence over a preset: "
                "set vocabulary to [] together with vocabulary_preset, or use set_vocabulary",
            )
        if "vocabulary" in changes or "vocabulary_preset" in changes:
            try:
                self._swap_from_parameters(changes)
            except VocabularyError as error:
                return SetParametersResult(successful=False, reason=str(error))
        thresholds = {name: changes[name] for name in _THRESHOLDS if name in changes}
        if thresholds:
            self.engine.set_thresholds(**thresholds)
        style = {field: changes[p] for p, field in _OVERLAY.items() if p in changes}
        if style:
            self._style = OverlayStyle(**{**self._style.__dict__, **style})
        return SetParametersResult(successful=True)

    def _swap_from_parameters(self, changes: dict[str, Any]) -> None:
        """Validate at once (the answer to `ros2 param set` carries any reason), then encode in
        the background: `get_vocabulary` and the vocabulary topic say when it is in force. If
        encoding fails, the parameters go back to the vocabulary in force."""
        requested = self._requested_vocabulary(changes)
        if "vocabulary_preset" in changes:  # checked even while `vocabulary` overrides it
            VocabularyList.from_preset(changes["vocabulary_preset"])
        if requested == self._vocabulary_source:
            return
        entries, preset = requested
        vocabulary = VocabularyList.from_request(entries or None, preset or None)
        previous = [
            Parameter("vocabulary", Parameter.Type.STRING_ARRAY, list(self._param("vocabulary"))),
            Parameter("vocabulary_preset", Parameter.Type.STRING, self._param("vocabulary_preset")),
        ]

        def done(outcome: VocabularyState | VocabularyError) -> None:
            if isinstance(outcome, VocabularyState):
                self._swapped(requested, outcome)
                return
            self.get_logger().error(f"vocabulary parameters not applied: {outcome}")
            self.set_parameters_atomically(previous)

        self.engine.vocabulary.swap_in_background(
            lambda: vocabulary, done, f"{vocabulary.summary()} (parameters)"
        )

    # ---- inference worker -----------------------------------------------------------------

    def _notify_worker(self) -> None:
        with self._wake:
            self._wake.notify()

    def _next_batch(self) -> list[tuple[_Camera, Any]]:
        """Wait for frames, then take up to the batch size of them, round robin over cameras."""
        with self._wake:
            while not self._stopping.is_set():
                order = self.cameras[self._next_camera :] + self.cameras[: self._next_camera]
                ready = [camera for camera in order if camera.has_frame()][: self._batch_size]
                if ready:
                    last = self.cameras.index(ready[-1])
                    self._next_camera = (last + 1) % len(self.cameras)
                    return [(camera, camera.take()) for camera in ready]
                self._wake.wait(timeout=0.5)
        return []

    def _serve(self) -> None:
        while not self._stopping.is_set():
            batch = self._next_batch()
            try:
                self._process(batch)
            except Exception as error:  # keep serving the next frames whatever one frame did
                if self._stopping.is_set() or not self.context.ok():
                    return
                self.get_logger().error(
                    f"inference failed: {error!r}", throttle_duration_sec=LOG_THROTTLE_S
                )

    def _process(self, batch: list[tuple[_Camera, Any]]) -> None:
        frames = []
        for camera, msg in batch:
            try:
                frames.append((camera, msg, camera.to_rgb(msg)))
            except ImageConversionError as error:
                camera.malformed += 1
                self.get_logger().warning(
                    f"skipping a malformed frame on {camera.subscription.topic_name}: {error}",
                    throttle_duration_sec=LOG_THROTTLE_S,
                )
        if not frames:
            return
        confidence = [camera.confidence.get_subscription_count() > 0 for camera, _, _ in frames]
        start = time.monotonic()
        if len(frames) == 1:
            results = [self.engine.segment(frames[0][2], with_confidence=confidence[0])]
        else:
            images = [rgb for _, _, rgb in frames]
            results = self.engine.segment_batch(images, with_confidence=confidence)
        elapsed = time.monotonic() - start
        for (camera, msg, rgb), result in zip(frames, results, strict=True):
            self._publish(camera, msg.header, rgb, result)
            camera.inference_s.add(elapsed)

    def _publish(self, camera: _Camera, header: Any, rgb: np.ndarray, result: Segmentation) -> None:
        with self._publishing:
            if self._stopping.is_set():  # shutdown has begun: the result is dropped
                return
            camera.labels.publish(_image(header, result.labels, "mono16"))
            camera.instances.publish(_image(header, result.instances, "mono16"))
            if result.confidence is not None and camera.confidence.get_subscription_count() > 0:
                camera.confidence.publish(_image(header, result.confidence, "32FC1"))
                camera.confidence_maps += 1
            if camera.overlay.get_subscription_count() > 0:
                overlay = draw_overlay(rgb, result.instances, result.segments, self._style)
                camera.overlay.publish(_image(header, overlay, "rgb8"))
                camera.overlays += 1
            camera.segments.publish(segments_message(header, result))
        camera.processed += 1
        camera.outputs.add()
        stamp = Time.from_msg(header.stamp, clock_type=self.get_clock().clock_type)
        if stamp.nanoseconds > 0:
            camera.age_s.add((self.get_clock().now() - stamp).nanoseconds / 1e9)

    # ---- diagnostics ----------------------------------------------------------------------

    def _publish_diagnostics(self) -> None:
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = [self._camera_status(camera) for camera in self.cameras]
        msg.status.append(self._engine_status())
        self._diagnostics.publish(msg)

    def _camera_status(self, camera: _Camera) -> DiagnosticStatus:
        topic = camera.subscription.topic_name
        inputs, outputs = camera.arrivals.rate(), camera.outputs.rate()
        silent = camera.last_arrival is None or (
            time.monotonic() - camera.last_arrival > NO_INPUT_WARNING_S
        )
        if silent:
            publishers = self.count_publishers(topic)
            level = DiagnosticStatus.WARN
            message = f"no frames for {NO_INPUT_WARNING_S:.0f} s from {publishers} publishers"
            if publishers and self._dds_advice:
                message += "; " + self._dds_advice
        else:
            level, message = DiagnosticStatus.OK, f"{inputs:.1f} Hz in, {outputs:.1f} Hz out"
        values = {
            "input_rate_hz": f"{inputs:.2f}",
            "output_rate_hz": f"{outputs:.2f}",
            "inference_ms": f"{camera.inference_s.mean() * 1e3:.1f}",
            "frame_age_ms": f"{camera.age_s.mean() * 1e3:.1f}",
            "frames_received": str(camera.received),
            "frames_processed": str(camera.processed),
            "frames_skipped": str(camera.skipped),
            "frames_malformed": str(camera.malformed),
            "overlays_drawn": str(camera.overlays),
            "confidence_maps_published": str(camera.confidence_maps),
        }
        return DiagnosticStatus(
            level=level,
            name=f"{self.get_name()}: {topic}",
            message=message,
            hardware_id=str(self.engine.device),
            values=[KeyValue(key=k, value=v) for k, v in values.items()],
        )

    def _engine_status(self) -> DiagnosticStatus:
        state = self.engine.vocabulary.current
        values = {
            "model": self._param("model"),
            "weights": self._param("weights"),
            "device": str(self.engine.device),
            "mode": self._param("mode"),
            "vocabulary_version": str(state.version),
            "vocabulary_size": str(len(state.vocabulary)),
            "dds_transport": self._dds_transport,
        }
        if self.engine.device.type == "cuda":
            values["gpu_memory_allocated_mb"] = (
                f"{torch.cuda.memory_allocated(self.engine.device) / 2**20:.0f}"
            )
            values["gpu_memory_reserved_mb"] = (
                f"{torch.cuda.memory_reserved(self.engine.device) / 2**20:.0f}"
            )
        random_weights = self.engine.random_weights
        return DiagnosticStatus(
            level=DiagnosticStatus.WARN if random_weights else DiagnosticStatus.OK,
            name=f"{self.get_name()}: engine",
            message="RANDOM weights: labels are meaningless" if random_weights else "ok",
            hardware_id=str(self.engine.device),
            values=[KeyValue(key=k, value=v) for k, v in values.items()],
        )

    # ---- shutdown -------------------------------------------------------------------------

    def stop_worker(self, timeout: float = SHUTDOWN_GRACE_S) -> bool:
        """Stop inference promptly: nothing is published from now on, and a frame in flight is
        interrupted between two network stages. False if a thread is still inside torch: the
        worker after `timeout` (one stage slower than that; its frame is abandoned) or a
        vocabulary being encoded."""
        self._stopping.set()
        self.engine.interrupt()
        self._notify_worker()
        with self._publishing:  # a result going out right now finishes; none follows
            pass
        self._worker.join(timeout=timeout)
        return not self._worker.is_alive() and not self.engine.vocabulary.swapping


def _on_signals(handler: Any) -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, handler)


def run(argv: Sequence[str] | None = None) -> int:
    """Start the node with ROS arguments `argv` and spin until Ctrl-C; returns the exit code.

    Signals: until the node is ready, Ctrl-C aborts the start-up (KeyboardInterrupt). After that
    SIGINT or SIGTERM only asks the main thread to stop, and during teardown further signals are
    ignored (`ros2 launch` without a terminal forwards SIGINT a second time), so teardown always
    runs to its end within ros2 launch's grace period (5 s before it escalates to SIGTERM).
    """
    # The inference thread and the executor threads hand the GIL back and forth on every torch
    # op and every message; at Python's default 5 ms each hand-over can stall for that long.
    # With 0.5 ms the test scenario (tiny model, 30 + 10 Hz cameras, 2 cores) went from 7 to
    # 19 frames/s out and from 13 to 33 frames/s taken in.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    args = list(argv) if argv is not None else sys.argv
    try:
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    except RuntimeError as error:  # rcl's RCLError: a malformed -p or params file
        reason = str(error).split(", at /")[0].strip()  # drop rcl's source locations
        print(f"[{NODE_NAME}] cannot start: {reason}", file=sys.stderr)
        return 2
    node: SegmenterNode | None = None
    executor: MultiThreadedExecutor | None = None
    stop_requested = threading.Event()
    code = 0
    try:
        node = SegmenterNode()
        executor = MultiThreadedExecutor(num_threads=4)
        executor.add_node(node)
        _on_signals(lambda *_: stop_requested.set())
        spinner = threading.Thread(
            target=_spin, args=(executor, stop_requested), name="fcclip-executor", daemon=True
        )
        spinner.start()
        while not stop_requested.wait(timeout=0.2):
            pass
    except KeyboardInterrupt:
        pass
    except (EngineError, VocabularyError, ConfigurationError, ParameterException) as error:
        print(f"[{NODE_NAME}] cannot start: {error}", file=sys.stderr)
        code = 1
    finally:
        _on_signals(signal.SIG_IGN)
        abandoned = node is not None and not node.stop_worker()
        if executor is not None:
            executor.shutdown(timeout_sec=1.0)
        if node is not None:
            if abandoned:
                node.get_logger().warning("stopped during a slow network stage or a vocabulary "
                                          "encoding: that work is abandoned")
            node.destroy_node()
        rclpy.try_shutdown()
    if abandoned:  # the worker thread is inside torch: leave without finalising the interpreter
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _spin(executor: MultiThreadedExecutor, done: threading.Event) -> None:
    try:
        executor.spin()
    except ExternalShutdownException:
        pass
    finally:
        done.set()


def main() -> None:
    """Entry point of `ros2 run fcclip_ros segmenter` and `python -m fcclip_ros.node`."""
    sys.exit(run())


if __name__ == "__main__":
    main()
