"""The segmenter node: camera topics in, segmentation topics out. A managed (lifecycle) node.

    unconfigured --configure--> inactive --activate--> active     (autostart: both at start-up)
    configure:  parameters -> Engine (loads weights, encodes the vocabulary), publishers, services
    activate:   camera subscriptions and the inference worker
    deactivate: both stop; the model stays loaded
    cleanup:    the model is freed and the cameras' tracks forgotten (their ids are not reused)

Threads: the executor only stores each camera's newest frame (scheduling.FrameScheduler) and
answers services, parameters and the diagnostics timer in their own callback groups; one worker
thread runs the engine on the waiting frames round robin and hands each result to its camera's
frame pipeline and publishers; vocabulary swaps and query texts encode on threads of their own.
So a slow model never builds a backlog and never delays an answer. The parts: ros.camera,
ros.vocabulary_interface, ros.query_service, ros.diagnostics; the process: ros.main.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import threading
import time
from typing import Any

import torch
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.time import Time
from std_msgs.msg import Header

from fcclip_ros.engine import Engine, EngineError, resolve_device
from fcclip_ros.image_conversion import ImageConversionError
from fcclip_ros.outputs import OPTIONAL_PACKAGES, OUTPUTS
from fcclip_ros.ros import parameters
from fcclip_ros.ros.camera import Camera, WaitingFrame
from fcclip_ros.ros.diagnostics import dds_transport, node_diagnostics
from fcclip_ros.ros.messages import IMPORTABLE_PACKAGES, clear_markers
from fcclip_ros.ros.parameters import ConfigurationError
from fcclip_ros.ros.query_service import QueryService
from fcclip_ros.ros.vocabulary_interface import VocabularyInterface
from fcclip_ros.scheduling import FrameScheduler
from fcclip_ros.tracking import SegmentTracker, TrackerConfig
from fcclip_ros.vocabulary import VocabularyError

NODE_NAME = "fcclip"
LOG_THROTTLE_S = 5.0
STOP_GRACE_S = 2.0  # how long deactivate / shutdown wait for a frame in flight to stop


class SegmenterNode(LifecycleNode):
    """FC-CLIP on every camera in `image_topics`; see the README for the topic layout."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        parameters.declare(self)
        if hasattr(self, "add_pre_set_parameters_callback"):  # rclpy >= Iron
            self.add_pre_set_parameters_callback(parameters.preset_replaces_classes)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.dds_case, self.dds_advice = dds_transport(os.environ)
        self.exit_requested = threading.Event()  # by a signal, or by reaching `finalized`
        self.configure_error = ""

        self.engine: Engine | None = None
        self.cameras: list[Camera] = []
        # Per image topic, kept over cleanup (reset there) so that an id is never given twice.
        self._trackers: dict[str, SegmentTracker] = {}
        self._scheduler: FrameScheduler | None = None
        self._worker: threading.Thread | None = None
        self._active = threading.Event()  # results are published only while set
        self._publishing = threading.Lock()  # held while a result goes out; see _stop_worker()
        self._fcclip_services: list[Any] = []
        self._style = parameters.overlay_style(parameters.values(self))
        self.vocabulary = VocabularyInterface(self)
        self._query = QueryService(self)
        self._image_group = MutuallyExclusiveCallbackGroup()
        self._service_group = ReentrantCallbackGroup()  # get_vocabulary answers during a swap
        self._diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        for package, how in OPTIONAL_PACKAGES.items():
            if package not in IMPORTABLE_PACKAGES:
                off = ", ".join(o.name for o in OUTPUTS if o.package == package)
                self.get_logger().info(f"{package} is not installed: {off} are off ({how} to "
                                       "have them)")
        self.create_timer(1.0, lambda: self._diagnostics.publish(node_diagnostics(
            self, self._scheduler)), callback_group=MutuallyExclusiveCallbackGroup())

    # ---- lifecycle ------------------------------------------------------------------------

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Build the engine (weights, vocabulary), the cameras' publishers and the services."""
        values = parameters.values(self)
        try:
            parameters.check(values)
            if values["cpu_threads"] and resolve_device(values["device"]).type == "cpu":
                torch.set_num_threads(values["cpu_threads"])
            self.engine = Engine(parameters.engine_config(values))
        except (ConfigurationError, EngineError, VocabularyError) as error:
            self.configure_error = str(error)
            self.get_logger().error(f"configure failed: {error}")
            return TransitionCallbackReturn.FAILURE
        self.configure_error = ""
        self._warn_about_random_weights(values)
        if self.dds_advice:
            self.get_logger().info(self.dds_advice)
        self.vocabulary.source = parameters.requested_vocabulary(values)
        topics = values["image_topics"]
        depth_topics = values["depth_topics"] or [""] * len(topics)
        info_topics = values["camera_info_topics"] or [""] * len(topics)
        pipeline = {"model": values["model"], "points_stride": values["points_stride"],
                    "style": self._style, "max_input_pixels": values["max_input_pixels"],
                    "min_box_depth_pixels": values["min_box_depth_pixels"]}
        self.cameras = [
            Camera(self, index, topic, values["transport"] == "compressed",
                   {**pipeline, "tracker": self._tracker(topic, values)},
                   depth_topics[index], info_topics[index], values["depth_max_delay_s"],
                   values["rectification"])
            for index, topic in enumerate(topics)
        ]
        batch = values["max_batch_size"] if self.engine.device.type == "cuda" else 1
        self._scheduler = FrameScheduler(len(self.cameras), batch)
        self._fcclip_services = [*self.vocabulary.create_services(self._service_group),
                          self._query.create_service(self._service_group)]
        self.engine.vocabulary.add_listener(self.vocabulary.publish)
        return super().on_configure(state)

    def _tracker(self, topic: str, values: dict[str, Any]) -> SegmentTracker | None:
        if not values["tracking"]:
            return None
        return self._trackers.setdefault(topic, SegmentTracker(
            TrackerConfig.from_settings(values), panoptic=values["mode"] == "panoptic"))

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Subscribe to the cameras and start the inference worker."""
        result = super().on_activate(state)  # the lifecycle publishers
        assert self.engine is not None and self._scheduler is not None
        self.engine.resume()
        self._scheduler.start()
        self._active.set()
        self.vocabulary.publish(self.engine.vocabulary.current)
        for camera in self.cameras:
            camera.subscribe(self._on_frame, self._image_group)
        self._worker = threading.Thread(target=self._serve, name="fcclip-inference", daemon=True)
        self._worker.start()
        current = self.engine.vocabulary.current
        sources = ", ".join(" + ".join(s.topic_name for s in c.subscriptions)
                            + f" -> {c.namespace}/" for c in self.cameras)
        self.get_logger().info(f"ready on {self.engine.device}: {sources}; vocabulary "
                               f"v{current.version}, {current.vocabulary.summary()}")
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop processing (the frame in flight is dropped) and take the boxes out of RViz; the
        model stays loaded."""
        self._stop_worker()
        cleared = clear_markers(Header(stamp=self.get_clock().now().to_msg()))
        for camera in self.cameras:
            camera.unsubscribe()
            if "markers" in camera.publishers:
                camera.publishers["markers"].publish(cleared)
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
        (Engine.interrupt), or at once while it waits for its depth."""
        self._active.clear()
        with self._publishing:  # a result going out right now finishes; none follows
            pass
        if self.engine is not None:
            self.engine.interrupt()
        if self._scheduler is not None:
            self._scheduler.stop()
        for camera in self.cameras:
            if camera.pipeline.pairing is not None:
                camera.pipeline.pairing.stop()
        if self._worker is not None:
            self._worker.join(timeout=timeout)

    def _release(self) -> None:
        for tracker in self._trackers.values():
            tracker.reset()
        for service in self._fcclip_services:
            self.destroy_service(service)
        for camera in self.cameras:
            camera.destroy()
        self._fcclip_services, self.cameras, self._scheduler, self.engine = [], [], None, None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        _return_freed_memory_to_the_system()

    def lifecycle_state(self) -> str:
        return self._state_machine.current_state[1]

    # ---- parameters -----------------------------------------------------------------------

    def _on_set_parameters(self, changed: list[Parameter]) -> SetParametersResult:
        """Apply runtime-tunable parameters; refuse (with the reason) what cannot work."""
        changes = {p.name: p.value for p in changed}
        try:
            if changes.keys() & set(parameters.VOCABULARY):
                self.vocabulary.apply_parameters(changes)
        except VocabularyError as error:
            return SetParametersResult(successful=False, reason=str(error))
        thresholds = {name: changes[name] for name in parameters.THRESHOLDS if name in changes}
        if thresholds and self.engine is not None:
            self.engine.set_thresholds(**thresholds)
            if "object_mask_threshold" in thresholds and self._active.is_set():
                self.vocabulary.publish(self.engine.vocabulary.current)  # LabelInfo.threshold
        self._style = parameters.overlay_style(changes, self._style)
        for camera in self.cameras:
            camera.pipeline.style = self._style
            camera.pipeline.points_stride = changes.get("points_stride",
                                                        camera.pipeline.points_stride)
        return SetParametersResult(successful=True)

    # ---- inference worker -----------------------------------------------------------------

    def _on_frame(self, camera: Camera, frame: WaitingFrame) -> None:
        """Executor side: keep only the newest frame of the camera; the worker takes it."""
        self._scheduler.put(camera.index, frame)
        camera.stats.arrivals.add()

    def _serve(self) -> None:
        while self._active.is_set():
            batch = self._scheduler.next_batch()
            try:
                self._process([(self.cameras[index], frame) for index, frame in batch])
            except Exception as error:  # keep serving the next frames whatever one frame did
                if not self._active.is_set() or not self.context.ok():
                    return
                self.get_logger().error(
                    f"inference failed: {error!r}", throttle_duration_sec=LOG_THROTTLE_S
                )

    def _process(self, batch: list[tuple[Camera, WaitingFrame]]) -> None:
        decoded = []
        for camera, waiting in batch:
            try:
                rgb = camera.to_rgb(waiting.msg, self.engine.config.max_input_pixels)
                decoded.append((camera, waiting, rgb))
            except ImageConversionError as error:
                camera.stats.malformed += 1
                self.get_logger().warning(
                    f"skipping a malformed frame on {camera.source}: {error}",
                    throttle_duration_sec=LOG_THROTTLE_S,
                )
        if not decoded:
            return
        keep = self.get_parameter("keep_embeddings").value
        start = time.monotonic()
        results = self.engine.segment_batch(
            [rgb for _, _, rgb in decoded],
            [camera.wants("confidence") for camera, _, _ in decoded],
            [keep or camera.wants("embeddings") or camera.wants("features")
             or camera.pipeline.needs_embeddings for camera, _, _ in decoded],
        )
        elapsed = time.monotonic() - start
        frames = [
            camera.pipeline.frame(
                waiting.msg.header, rgb, result,
                camera.pipeline.depth_for(waiting.depth, rgb.shape, time.monotonic_ns),
                with_points=camera.wants("points"))
            for (camera, waiting, rgb), result in zip(decoded, results, strict=True)
        ]
        with self._publishing:
            if not self._active.is_set():  # deactivated or shutting down: the results are dropped
                return
            for (camera, _, _), frame in zip(decoded, frames, strict=True):
                camera.publish(frame)
                self._count_output(camera, frame.header, elapsed)

    def _count_output(self, camera: Camera, header: Any, inference_s: float) -> None:
        camera.stats.processed += 1
        camera.stats.outputs.add()
        camera.stats.inference_s.add(inference_s)
        stamp = Time.from_msg(header.stamp, clock_type=self.get_clock().clock_type)
        if stamp.nanoseconds > 0:
            camera.stats.age_s.add((self.get_clock().now() - stamp).nanoseconds / 1e9)

    # ---- logging --------------------------------------------------------------------------

    def _warn_about_random_weights(self, values: dict[str, Any]) -> None:
        if self.engine is not None and self.engine.random_weights:
            self.get_logger().warning(
                f"weights: {values['weights']}, clip_weights: {values['clip_weights']} -- the"
                " network runs with RANDOM weights, so every label, score and mask is MEANINGLESS."
                " Use this only to test the pipeline; `fcclip-ros download` fetches the real"
                " checkpoints.")


def _return_freed_memory_to_the_system() -> None:
    """glibc keeps freed heap pages for reuse; after cleanup they should show as free memory."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)
