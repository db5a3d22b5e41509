"""The segmenter node: camera topics in, segmentation topics out. A managed (lifecycle) node.

    unconfigured --configure--> inactive --activate--> active     (autostart: both at start-up)
    configure:  parameters -> Engine (loads weights, encodes the vocabulary), publishers, services
    activate:   camera subscriptions and the inference worker
    deactivate: both stop; the model stays loaded
    cleanup:    the model is freed

Threads: the executor only stores each camera's newest frame (scheduling.FrameScheduler) and
answers services, parameters and the diagnostics timer in their own callback groups; one worker
thread runs the engine on the waiting frames round robin and publishes the results; vocabulary
swaps encode on a thread of their own. So a slow model never builds a backlog and never delays an
answer.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from rclpy.task import Future
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header

from fcclip_ros.engine import Engine, EngineError, resolve_device
from fcclip_ros.geometry import DepthError, DepthFrame, registered_depth
from fcclip_ros.image_conversion import ImageConversionError, compressed_to_rgb, image_to_rgb
from fcclip_ros.msg import QueryResult
from fcclip_ros.ros import parameters
from fcclip_ros.ros.diagnostics import CameraStats, camera_status, dds_transport, engine_status
from fcclip_ros.ros.outputs import CameraOutputs, vocabulary_message
from fcclip_ros.ros.pairing import DepthBuffer, header_stamp_ns
from fcclip_ros.ros.parameters import ConfigurationError
from fcclip_ros.ros.scheduling import FrameScheduler
from fcclip_ros.ros.spatial_outputs import VISION_OUTPUTS, vision_msgs
from fcclip_ros.srv import GetVocabulary, Query, SetVocabulary
from fcclip_ros.text_embeddings import QueryError, TextQueries, parse_query_texts, rank_segments
from fcclip_ros.topics import camera_info_topic, is_rectified_topic
from fcclip_ros.vocabulary import Vocabulary, VocabularyError, VocabularyState

NODE_NAME = "fcclip"
# Latest-frame semantics: a best-effort depth-1 subscription matches reliable and best-effort
# camera publishers alike and never holds an old frame back.
CAMERA_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT
)
LOG_THROTTLE_S = 5.0
GIL_SWITCH_INTERVAL_S = 0.0005  # see run()
STOP_GRACE_S = 2.0  # how long deactivate / shutdown wait for a frame in flight to stop


@dataclass(frozen=True)
class LatestEmbeddings:
    """A camera's last frame that has segment embeddings: what `query` answers from."""

    header: Any
    segment_ids: list[int]
    embeddings: np.ndarray  # (len(segment_ids), D)


class Camera:
    """One input topic: its outputs, statistics, and (while active) its subscriptions: the
    image, and with a depth topic that depth and the image's CameraInfo."""

    def __init__(self, node: SegmenterNode, index: int, topic: str, compressed: bool,
                 model: str, depth_topic: str = "", info_topic: str = "",
                 depth_max_delay_s: float = 0.0) -> None:
        self.index, self.topic = index, topic
        self.source = f"{topic}/compressed" if compressed else topic
        self.message_type = CompressedImage if compressed else Image
        self.to_rgb = compressed_to_rgb if compressed else image_to_rgb
        self.depth_topic = depth_topic
        self.info_topic = info_topic or camera_info_topic(topic)
        self.rectified = is_rectified_topic(topic)  # 3D: P, else K with the distortion undone
        self.depth = DepthBuffer(depth_max_delay_s) if depth_topic else None
        self.camera_info: CameraInfo | None = None  # the latest; replaced whole
        self.depth_warning = ("", 0.0)  # the last reason logged for no 3D, and when
        self.depth_counts = {"frames_3d": 0, "frames_without_depth": 0,
                             "frames_depth_refused": 0} if depth_topic else {}
        self.outputs = CameraOutputs(node, topic, model, with_depth=bool(depth_topic))
        self.stats = CameraStats()
        self.subscriptions: list[Any] = []
        self.latest: LatestEmbeddings | None = None  # replaced whole, read without a lock


class SegmenterNode(LifecycleNode):
    """FC-CLIP on every camera in `image_topics`; see the package README for the topic layout."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        parameters.declare(self)
        if hasattr(self, "add_pre_set_parameters_callback"):  # rclpy >= Iron; see below
            self.add_pre_set_parameters_callback(parameters.preset_replaces_classes)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.dds_case, self.dds_advice = dds_transport(os.environ)
        self.exit_requested = threading.Event()  # by a signal, or by reaching `finalized`

        self.engine: Engine | None = None
        self.cameras: list[Camera] = []
        self._scheduler: FrameScheduler | None = None
        self._worker: threading.Thread | None = None
        self._active = threading.Event()  # results are published only while set
        self._publishing = threading.Lock()  # held while a result goes out; see _stop_worker()
        self._vocabulary_services: list[Any] = []
        self._configure_error = ""
        self._query_encoding = threading.Lock()  # one query's texts encode at a time
        self._style = parameters.overlay_style(parameters.values(self))
        self._vocabulary_source = parameters.requested_vocabulary(parameters.values(self))
        self._image_group = MutuallyExclusiveCallbackGroup()
        self._service_group = ReentrantCallbackGroup()  # get_vocabulary answers during a swap
        self._diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        if vision_msgs is None:
            self.get_logger().info(
                f"vision_msgs is not installed: {', '.join(VISION_OUTPUTS)} are off (install "
                "ros-<distro>-vision-msgs to have them)"
            )
        self.create_timer(
            1.0, self._publish_diagnostics, callback_group=MutuallyExclusiveCallbackGroup()
        )

    # ---- lifecycle ------------------------------------------------------------------------

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Build the engine (weights, vocabulary), the publishers and the services."""
        values = parameters.values(self)
        try:
            parameters.check(values)
            if values["cpu_threads"] and resolve_device(values["device"]).type == "cpu":
                torch.set_num_threads(values["cpu_threads"])
            self.engine = Engine(parameters.engine_config(values))
        except (ConfigurationError, EngineError, VocabularyError) as error:
            self._configure_error = str(error)
            self.get_logger().error(f"configure failed: {error}")
            return TransitionCallbackReturn.FAILURE
        self._configure_error = ""
        self._warn_about_random_weights(values)
        if self.dds_advice:
            self.get_logger().info(self.dds_advice)
        self._vocabulary_source = parameters.requested_vocabulary(values)
        compressed = values["transport"] == "compressed"
        topics = values["image_topics"]
        depth_topics = values["depth_topics"] or [""] * len(topics)
        info_topics = values["camera_info_topics"] or [""] * len(topics)
        self.cameras = [
            Camera(self, index, topic, compressed, values["model"], depth_topics[index],
                   info_topics[index], values["depth_max_delay_s"])
            for index, topic in enumerate(topics)
        ]
        batch = values["max_batch_size"] if self.engine.device.type == "cuda" else 1
        self._scheduler = FrameScheduler(len(self.cameras), batch)
        self._vocabulary_services = [
            self.create_service(SetVocabulary, "set_vocabulary", self._set_vocabulary,
                                callback_group=self._service_group),
            self.create_service(GetVocabulary, "get_vocabulary", self._get_vocabulary,
                                callback_group=self._service_group),
            self.create_service(Query, "query", self._query, callback_group=self._service_group),
        ]
        self.engine.vocabulary.add_listener(self._publish_vocabulary)
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Subscribe to the cameras and start the inference worker."""
        result = super().on_activate(state)  # the lifecycle publishers
        assert self.engine is not None and self._scheduler is not None
        self.engine.resume()
        self._scheduler.start()
        self._active.set()
        self._publish_vocabulary(self.engine.vocabulary.current)
        for camera in self.cameras:
            camera.subscriptions = [self.create_subscription(
                camera.message_type, camera.source,
                lambda msg, camera=camera: self._on_frame(camera, msg),
                CAMERA_QOS, callback_group=self._image_group,
            )]
            if camera.depth is not None:
                camera.depth.start()
                camera.subscriptions += [
                    self.create_subscription(
                        Image, camera.depth_topic,
                        lambda msg, camera=camera: camera.depth.put(
                            header_stamp_ns(msg.header), msg),
                        CAMERA_QOS, callback_group=self._image_group,
                    ),
                    self.create_subscription(
                        CameraInfo, camera.info_topic,
                        lambda msg, camera=camera: setattr(camera, "camera_info", msg),
                        CAMERA_QOS, callback_group=self._image_group,
                    ),
                ]
        self._worker = threading.Thread(target=self._serve, name="fcclip-inference", daemon=True)
        self._worker.start()
        state = self.engine.vocabulary.current
        sources = ", ".join(
            " + ".join(s.topic_name for s in c.subscriptions)
            + f" -> {c.outputs.labels.topic_name.rsplit('/', 1)[0]}/"
            for c in self.cameras
        )
        self.get_logger().info(
            f"ready on {self.engine.device}: {sources}; vocabulary v{state.version}, "
            f"{state.vocabulary.summary()}"
        )
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop processing (the frame in flight is dropped); the model stays loaded."""
        self._stop_worker()
        for camera in self.cameras:
            for subscription in camera.subscriptions:
                self.destroy_subscription(subscription)
            camera.subscriptions = []
        assert self.engine is not None
        self.engine.resume()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Free the model: its memory goes back to the system (and to the driver, on a GPU)."""
        self._release()
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """From any state, promptly: stop the worker, free everything, let the process end."""
        self.stop_processing()
        self._release()
        self.exit_requested.set()
        return super().on_shutdown(state)

    def stop_processing(self, timeout: float = STOP_GRACE_S) -> bool:
        """Stop inference now; False if a thread is still inside torch afterwards (a network
        stage slower than `timeout`, or a vocabulary being encoded)."""
        if self._worker is not None:
            self._stop_worker(timeout)
        worker_busy = self._worker is not None and self._worker.is_alive()
        return not worker_busy and not (self.engine and self.engine.vocabulary.swapping)

    def _stop_worker(self, timeout: float = STOP_GRACE_S) -> None:
        """Nothing is published from now on; the frame in flight stops at the next network block
        (Engine.interrupt)."""
        self._active.clear()
        with self._publishing:  # a result going out right now finishes; none follows
            pass
        if self.engine is not None:
            self.engine.interrupt()
        if self._scheduler is not None:
            self._scheduler.stop()
        for camera in self.cameras:
            if camera.depth is not None:
                camera.depth.stop()
        if self._worker is not None:
            self._worker.join(timeout=timeout)

    def _release(self) -> None:
        for service in self._vocabulary_services:
            self.destroy_service(service)
        for camera in self.cameras:
            for subscription in camera.subscriptions:
                self.destroy_subscription(subscription)
            camera.outputs.destroy()
        self._vocabulary_services, self.cameras, self._scheduler, self.engine = [], [], None, None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        _return_freed_memory_to_the_system()

    def _lifecycle_state(self) -> str:
        return self._state_machine.current_state[1]

    # ---- vocabulary -----------------------------------------------------------------------

    def _publish_vocabulary(self, state: VocabularyState) -> None:
        msg = vocabulary_message(state, self.get_clock().now().to_msg())
        for camera in self.cameras:
            camera.outputs.vocabulary.publish(msg)  # dropped while inactive; sent on activate
            camera.outputs.spatial.publish_label_info(state, Header(stamp=msg.header.stamp))

    def _swap(self, requested: tuple[tuple[str, ...], str],
              validated: Vocabulary | None = None) -> Future:
        """The one way the vocabulary changes, for the service and the parameters alike:
        validate (unless done), encode off the executor, install; then the vocabulary parameters
        show what is in force (setting them to that changes nothing). The future, completed on
        this node's executor, gets the new state or the VocabularyError; VocabularyBusyError is
        raised at once while another swap encodes."""
        entries, preset = requested
        if self.engine is None:
            raise VocabularyError(f"the node is {self._lifecycle_state()}: configure it first")
        finished = Future(executor=self.executor)
        finished.add_done_callback(lambda _: None)  # so that completing it wakes the executor

        def done(outcome: VocabularyState | VocabularyError) -> None:
            if isinstance(outcome, VocabularyState):
                self._vocabulary_source = requested
                self.get_logger().info(
                    f"vocabulary v{outcome.version}: {outcome.vocabulary.summary()}"
                )
                in_force = [Parameter("vocabulary", Parameter.Type.STRING_ARRAY, list(entries))]
                if preset:
                    in_force.append(Parameter("vocabulary_preset", Parameter.Type.STRING, preset))
                self.set_parameters_atomically(in_force)
            finished.set_result(outcome)

        self.engine.vocabulary.swap_in_background(
            (lambda: validated) if validated else lambda: Vocabulary.from_request(
                entries or None, preset or None),
            done,
            f"preset {preset!r}" if preset else f"{len(entries)} classes",
        )
        return finished

    async def _set_vocabulary(
        self, request: SetVocabulary.Request, response: SetVocabulary.Response
    ) -> SetVocabulary.Response:
        """A coroutine: while the text encoder runs, it holds no executor thread."""
        entries, preset = tuple(request.classes), request.preset.strip()
        try:
            if not entries and not preset:
                raise VocabularyError("empty request: give classes or a preset")
            if entries and preset:
                raise VocabularyError("give either classes or a preset, not both")
            outcome = await self._swap((entries, "") if entries else ((), preset))
        except VocabularyError as error:
            outcome = error
        if isinstance(outcome, VocabularyError):
            state = self.engine.vocabulary.current
            response.success, response.message = False, str(outcome)
            self.get_logger().warning(f"set_vocabulary refused: {outcome}")
        else:
            state = outcome
            response.success = True
            response.message = f"vocabulary v{state.version}: {state.vocabulary.summary()}"
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

    def _swap_for_parameters(self, changes: dict[str, Any]) -> None:
        """Validate at once, so that `ros2 param set` answers with the reason; then swap in the
        background, and if that fails put the parameters back to the vocabulary in force.
        Unconfigured, the values are only checked: configure uses them."""
        values = parameters.values(self) | changes
        if "vocabulary_preset" in changes and "vocabulary" not in changes and values["vocabulary"]:
            # Only without pre-set callbacks (Humble), which would have cleared the classes.
            raise VocabularyError(
                "`vocabulary` lists classes, which take precedence over a preset: set vocabulary"
                " to [] together with vocabulary_preset, or use the set_vocabulary service"
            )
        requested = parameters.requested_vocabulary(values)
        Vocabulary.from_preset(values["vocabulary_preset"])  # checked even while classes win
        if requested == self._vocabulary_source:
            return  # in force already (e.g. the parameters catching up with a swap)
        entries, preset = requested
        vocabulary = Vocabulary.from_request(entries or None, preset or None)
        if self.engine is None:
            return
        previous = [
            Parameter(name, value=self.get_parameter(name).value)
            for name in ("vocabulary", "vocabulary_preset")
        ]

        def put_back_on_failure(finished: Future) -> None:
            if isinstance(finished.result(), VocabularyError):
                self.get_logger().error(f"vocabulary parameters not applied: {finished.result()}")
                self.set_parameters_atomically(previous)

        self._swap(requested, vocabulary).add_done_callback(put_back_on_failure)

    def _on_set_parameters(self, changed: list[Parameter]) -> SetParametersResult:
        """Apply runtime-tunable parameters; refuse (with the reason) what cannot work."""
        changes = {p.name: p.value for p in changed}
        try:
            if "vocabulary" in changes or "vocabulary_preset" in changes:
                self._swap_for_parameters(changes)
        except VocabularyError as error:
            return SetParametersResult(successful=False, reason=str(error))
        thresholds = {name: changes[name] for name in parameters.THRESHOLDS if name in changes}
        if thresholds and self.engine is not None:
            self.engine.set_thresholds(**thresholds)
        self._style = parameters.overlay_style(changes, self._style)
        return SetParametersResult(successful=True)

    # ---- text queries about the latest frames ---------------------------------------------

    async def _query(self, request: Query.Request, response: Query.Response) -> Query.Response:
        """Score the segments of each camera's latest frame against texts, from the embeddings
        kept with it: the network is not run again. A coroutine: the texts encode on a thread of
        their own (milliseconds once cached, seconds for new texts on a CPU)."""
        texts = list(request.texts)
        try:
            cameras = self._cameras_named(request.camera)
            parse_query_texts(texts)  # refuse bad input before any work
            queries = await self._off_the_executor(lambda: self._encode_query(texts))
        except QueryError as error:
            response.success, response.message = False, str(error)
            return response
        answered, waiting = [], []
        for camera in cameras:
            latest = camera.latest
            if latest is None:
                waiting.append(camera.topic)
                continue
            answered.append(camera.topic)
            order, scores = rank_segments(queries, latest.embeddings)
            top_k = request.top_k or len(latest.segment_ids)
            for text, rows, row_scores in zip(texts, order, scores, strict=True):
                response.results.append(QueryResult(
                    camera=self.resolve_topic_name(camera.topic), text=text,
                    header=latest.header,
                    segment_ids=[latest.segment_ids[row] for row in rows[:top_k]],
                    scores=row_scores[:top_k].tolist(),
                ))
        no_frame = f"no segmented frame with embeddings yet from {', '.join(waiting)}"
        response.success = bool(answered)
        response.message = (f"{len(texts)} texts scored on the latest frame of "
                            f"{', '.join(answered)}" + (f"; {no_frame}" if waiting else "")
                            if answered else no_frame)
        return response

    def _cameras_named(self, name: str) -> list[Camera]:
        if not name.strip():
            return list(self.cameras)
        wanted = self.resolve_topic_name(name.strip())
        for camera in self.cameras:
            if self.resolve_topic_name(camera.topic) == wanted:
                return [camera]
        known = ", ".join(self.resolve_topic_name(camera.topic) for camera in self.cameras)
        raise QueryError(f"unknown camera {name!r}; the node's cameras: {known}")

    def _encode_query(self, texts: list[str]) -> TextQueries:
        if not self._query_encoding.acquire(blocking=False):
            raise QueryError("busy: another query's texts are being encoded; try again")
        try:
            return self.engine.encode_texts(texts)
        finally:
            self._query_encoding.release()

    def _off_the_executor(self, work: Callable[[], Any]) -> Future:
        """Run `work` on a thread of its own; the future (completed on this node's executor)
        gets its result, or raises its QueryError when awaited."""
        finished = Future(executor=self.executor)
        finished.add_done_callback(lambda _: None)  # so that completing it wakes the executor

        def run() -> None:
            try:
                finished.set_result(work())
            except QueryError as error:
                finished.set_exception(error)
            except Exception as error:  # whatever happened, the caller gets an answer
                finished.set_exception(QueryError(f"the query failed: {error!r}"))

        threading.Thread(target=run, name="fcclip-query", daemon=True).start()
        return finished

    # ---- inference worker -----------------------------------------------------------------

    def _on_frame(self, camera: Camera, msg: Any) -> None:
        """Executor side: keep only the newest frame of the camera; the worker takes it."""
        self._scheduler.put(camera.index, (msg, time.monotonic()))
        camera.stats.arrivals.add()

    def _serve(self) -> None:
        while self._active.is_set():
            batch = self._scheduler.next_batch()
            try:
                self._process([(self.cameras[index], msg) for index, msg in batch])
            except Exception as error:  # keep serving the next frames whatever one frame did
                if not self._active.is_set() or not self.context.ok():
                    return
                self.get_logger().error(
                    f"inference failed: {error!r}", throttle_duration_sec=LOG_THROTTLE_S
                )

    def _process(self, batch: list[tuple[Camera, tuple[Any, float]]]) -> None:
        frames = []
        for camera, (msg, arrival) in batch:
            try:
                rgb = camera.to_rgb(msg, self.engine.config.max_input_pixels)
                frames.append((camera, msg, rgb, arrival))
            except ImageConversionError as error:
                camera.stats.malformed += 1
                self.get_logger().warning(
                    f"skipping a malformed frame on {camera.source}: {error}",
                    throttle_duration_sec=LOG_THROTTLE_S,
                )
        if not frames:
            return
        confidence = [camera.outputs.wants_confidence for camera, _, _, _ in frames]
        keep = self.get_parameter("keep_embeddings").value
        embeddings = [keep or camera.outputs.wants_embeddings for camera, _, _, _ in frames]
        start = time.monotonic()
        results = self.engine.segment_batch(
            [rgb for _, _, rgb, _ in frames], confidence, embeddings
        )
        elapsed = time.monotonic() - start
        # Paired after the network ran: by then the depth has usually arrived.
        depths = [self._depth_for(camera, msg.header, arrival, rgb.shape)
                  for camera, msg, rgb, arrival in frames]
        stride = self.get_parameter("points_stride").value
        with self._publishing:
            if not self._active.is_set():  # deactivated or shutting down: the results are dropped
                return
            for (camera, msg, rgb, _), result, depth in zip(frames, results, depths, strict=True):
                camera.outputs.publish(msg.header, rgb, result, self._style, depth, stride)
                self._count_output(camera, msg.header, elapsed)
                if result.embeddings is not None:
                    ids = [segment.id for segment in result.segments]
                    camera.latest = LatestEmbeddings(msg.header, ids, result.embeddings)

    def _depth_for(self, camera: Camera, header: Any, arrival: float,
                   shape: tuple[int, ...]) -> DepthFrame | None:
        """The registered depth of a colour frame (see pairing.DepthBuffer), or None: no depth
        topic, no depth in time, or a depth / CameraInfo that cannot work (logged, counted)."""
        if camera.depth is None:
            return None
        msg = camera.depth.match(header_stamp_ns(header), arrival + camera.depth.max_delay_ns / 1e9)
        if msg is None:
            camera.depth_counts["frames_without_depth"] += 1
            return None
        try:
            depth = registered_depth(msg, camera.camera_info, shape,
                                     self.engine.config.max_input_pixels, camera.info_topic,
                                     camera.rectified)
        except (DepthError, ImageConversionError) as error:
            camera.depth_counts["frames_depth_refused"] += 1
            # Each camera's reason is logged when it changes, and at most every LOG_THROTTLE_S.
            reason, logged = camera.depth_warning
            if str(error) != reason or time.monotonic() - logged > LOG_THROTTLE_S:
                camera.depth_warning = (str(error), time.monotonic())
                self.get_logger().warning(
                    f"no 3D for a frame of {camera.source} (published in 2D): {error}"
                )
            return None
        camera.depth_counts["frames_3d"] += 1
        return depth

    def _count_output(self, camera: Camera, header: Any, inference_s: float) -> None:
        camera.stats.processed += 1
        camera.stats.outputs.add()
        camera.stats.inference_s.add(inference_s)
        stamp = Time.from_msg(header.stamp, clock_type=self.get_clock().clock_type)
        if stamp.nanoseconds > 0:
            camera.stats.age_s.add((self.get_clock().now() - stamp).nanoseconds / 1e9)

    # ---- diagnostics ----------------------------------------------------------------------

    def _publish_diagnostics(self) -> None:
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        engine, scheduler = self.engine, self._scheduler
        device = str(engine.device) if engine else ""
        msg.status = [
            camera_status(
                f"{self.get_name()}: {self.resolve_topic_name(camera.source)}",
                scheduler.counts[camera.index], camera.stats,
                camera.outputs.computed_on_demand() | camera.depth_counts,
                self.count_publishers(camera.source),
                self.dds_advice, device,
            )
            for camera in (self.cameras if scheduler else [])
        ]
        msg.status.append(engine_status(
            f"{self.get_name()}: engine", self._lifecycle_state(), engine,
            parameters.values(self), self.dds_case, self._configure_error,
        ))
        self._diagnostics.publish(msg)

    def _warn_about_random_weights(self, values: dict[str, Any]) -> None:
        if self.engine is not None and self.engine.random_weights:
            self.get_logger().warning(
                f"weights: {values['weights']}, clip_weights: {values['clip_weights']}"
                " -- the network runs with RANDOM weights, so every label, score and mask is"
                " MEANINGLESS. Use this only to test the pipeline; `fcclip-ros download` fetches"
                " the real checkpoints."
            )


def _return_freed_memory_to_the_system() -> None:
    """glibc keeps freed heap pages for reuse; after cleanup they should show as free memory."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _on_signals(handler: Any) -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, handler)


def run(argv: Sequence[str] | None = None) -> int:
    """Start the node with ROS arguments `argv` and spin until Ctrl-C; returns the exit code.

    With autostart (the default) the node configures and activates itself, and a failure there
    ends the process with the reason (exit 1). Signals: until the node is up, Ctrl-C aborts the
    start-up (KeyboardInterrupt). After that SIGINT or SIGTERM only asks the main thread to
    stop, and during teardown further signals are ignored (`ros2 launch` without a terminal
    forwards SIGINT a second time), so teardown always ends within ros2 launch's grace period
    (5 s before it escalates to SIGTERM). A lifecycle `shutdown` ends the process too.
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
    code = 0
    try:
        node = SegmenterNode()
        executor = MultiThreadedExecutor(num_threads=4)
        executor.add_node(node)
        if node.get_parameter("autostart").value:
            _start(node)
        _on_signals(lambda *_: node.exit_requested.set())
        spinner = threading.Thread(
            target=_spin, args=(executor, node.exit_requested), name="fcclip-executor", daemon=True
        )
        spinner.start()
        while not node.exit_requested.wait(timeout=0.2):
            pass
    except KeyboardInterrupt:
        pass
    except (ConfigurationError, EngineError, VocabularyError, ParameterException) as error:
        print(f"[{NODE_NAME}] cannot start: {error}", file=sys.stderr)
        code = 1
    finally:
        _on_signals(signal.SIG_IGN)
        abandoned = node is not None and not node.stop_processing()
        if executor is not None:
            executor.shutdown(timeout_sec=1.0)
        if node is not None:
            if abandoned:
                node.get_logger().warning("stopped during a slow network stage or a vocabulary "
                                          "encoding: that work is abandoned")
            node.destroy_node()
        rclpy.try_shutdown()
    if abandoned:  # a thread is inside torch: leave without finalising the interpreter
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _start(node: SegmenterNode) -> None:
    """autostart: configure, then activate; a failure is a start-up error."""
    if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
        raise ConfigurationError(node._configure_error or "configure failed (see the log)")
    if node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
        raise ConfigurationError("activate failed (see the log)")


def _spin(executor: MultiThreadedExecutor, done: threading.Event) -> None:
    try:
        executor.spin()
    except ExternalShutdownException:
        pass
    finally:
        done.set()


def main() -> None:
    """Entry point of `ros2 run fcclip_ros segmenter` and `python -m fcclip_ros.ros.node`."""
    sys.exit(run())


if __name__ == "__main__":
    main()
