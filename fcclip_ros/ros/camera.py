"""One input camera of the node: its subscriptions, its frame pipeline and its output publishers.

The publishers come from the output table (fcclip_ros.outputs) and the messages from one builder
per output (fcclip_ros.ros.messages), exactly as `fcclip-ros bag` writes them. Lifecycle
publishers: silent unless the node is active.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from rclpy.callback_groups import CallbackGroup
from rclpy.lifecycle import LifecycleNode
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from fcclip_ros.depth_pairing import PendingDepth
from fcclip_ros.frame_pipeline import DepthSource, Frame, FramePipeline
from fcclip_ros.image_conversion import compressed_to_rgb, image_to_rgb
from fcclip_ros.outputs import OUTPUTS_BY_NAME, available
from fcclip_ros.ros.diagnostics import CameraStats
from fcclip_ros.ros.messages import (
    FRAME_MESSAGES,
    IMPORTABLE_PACKAGES,
    VOCABULARY_MESSAGES,
    message_class,
)
from fcclip_ros.topics import camera_info_topic, images_rectified, output_namespace
from fcclip_ros.vocabulary import VocabularyState

# Latest-frame semantics: a best-effort depth-1 subscription matches reliable and best-effort
# camera publishers alike and never holds an old frame back.
CAMERA_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT
)
OUTPUT_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1)  # reliable, volatile
LATCHED_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL
)


@dataclass(frozen=True)
class LatestEmbeddings:
    """A camera's last frame that has segment embeddings: what `query` answers from."""

    header: Any
    segment_ids: list[int]
    embeddings: np.ndarray  # (len(segment_ids), D)


@dataclass(frozen=True)
class WaitingFrame:
    """A frame as the scheduler holds it until the worker takes it."""

    msg: Any
    arrival: float  # time.monotonic()
    depth: PendingDepth | None


class Camera:
    """One input topic; with a depth topic also that depth and the image's CameraInfo."""

    def __init__(self, node: LifecycleNode, index: int, topic: str, compressed: bool,
                 pipeline: dict[str, Any], depth_topic: str = "", info_topic: str = "",
                 depth_max_delay_s: float = 0.0, rectification: str = "auto") -> None:
        """`pipeline`: FramePipeline's settings (model, points_stride, style,
        max_input_pixels, min_box_depth_pixels, tracker); `rectification`: whether the images
        are rectified (fcclip_ros.topics.images_rectified)."""
        self.index, self.topic = index, topic
        self._node = node
        self.source = f"{topic}/compressed" if compressed else topic
        self.message_type = CompressedImage if compressed else Image
        self.to_rgb = compressed_to_rgb if compressed else image_to_rgb
        self.depth_topic = depth_topic
        self.info_topic = info_topic or camera_info_topic(topic)
        # The worker waits for a depth that may still come at most depth_max_delay_s after the
        # colour frame arrived; by then a network of any speed has usually been running longer.
        depth = DepthSource(self.info_topic, images_rectified(rectification, topic),
                            depth_max_delay_s, wait_s=depth_max_delay_s) if depth_topic else None
        self.pipeline = FramePipeline(
            depth=depth, warn=lambda reason: node.get_logger().warning(f"{self.source}: {reason}"),
            **pipeline)
        self.stats = CameraStats()
        self.subscriptions: list[Any] = []
        self.latest: LatestEmbeddings | None = None  # replaced whole, read without a lock
        namespace = output_namespace(topic)
        self.outputs = available(bool(depth_topic), IMPORTABLE_PACKAGES)
        self.publishers = {
            name: node.create_lifecycle_publisher(
                message_class(name), f"{namespace}/{name}",
                LATCHED_QOS if OUTPUTS_BY_NAME[name].latched else OUTPUT_QOS)
            for name in self.outputs
        }
        self.published_on_demand = {name: 0 for name in self.outputs
                                    if OUTPUTS_BY_NAME[name].on_demand}

    @property
    def namespace(self) -> str:
        return self.publishers["labels"].topic_name.rsplit("/", 1)[0]

    def wants(self, name: str) -> bool:
        """Whether output `name` is published for this camera now (on-demand ones: subscribed)."""
        publisher = self.publishers.get(name)
        if publisher is None:
            return False
        return not OUTPUTS_BY_NAME[name].on_demand or publisher.get_subscription_count() > 0

    def subscribe(self, on_frame: Callable[[Camera, Any], None], group: CallbackGroup) -> None:
        """Start the subscriptions; `on_frame(camera, WaitingFrame)` gets each colour frame."""
        node = self._node
        if self.pipeline.pairing is not None:
            self.pipeline.pairing.start()
        self.subscriptions = [node.create_subscription(
            self.message_type, self.source, lambda msg: on_frame(self, self._arrived(msg)),
            CAMERA_QOS, callback_group=group)]
        if self.depth_topic:
            self.subscriptions += [
                node.create_subscription(
                    Image, self.depth_topic,
                    lambda msg: self.pipeline.add_depth(msg, time.monotonic_ns()),
                    CAMERA_QOS, callback_group=group),
                node.create_subscription(CameraInfo, self.info_topic,
                                         self.pipeline.add_camera_info, CAMERA_QOS,
                                         callback_group=group),
            ]

    def _arrived(self, msg: Any) -> WaitingFrame:
        pending = self.pipeline.add_colour(msg.header, time.monotonic_ns())
        return WaitingFrame(msg, time.monotonic(), pending)

    def unsubscribe(self) -> None:
        if self.pipeline.pairing is not None:
            self.pipeline.pairing.stop()  # a worker waiting for depth returns at once
        for subscription in self.subscriptions:
            self._node.destroy_subscription(subscription)
        self.subscriptions = []

    def publish(self, frame: Frame) -> None:
        """Every output this camera has (the on-demand ones while subscribed) of one frame."""
        for name in self.outputs:
            if name not in FRAME_MESSAGES or not self.wants(name):
                continue
            msg = FRAME_MESSAGES[name](frame)
            if msg is not None:
                self.publishers[name].publish(msg)
                if name in self.published_on_demand:
                    self.published_on_demand[name] += 1
        if frame.result.embeddings is not None:
            self.latest = LatestEmbeddings(frame.header, [s.id for s in frame.result.segments],
                                           frame.result.embeddings)

    def publish_vocabulary(self, state: VocabularyState, stamp: Any, threshold: float) -> None:
        """The latched outputs (dropped while inactive; sent again on activate); `threshold`:
        the global object_mask_threshold in force."""
        for name, build in VOCABULARY_MESSAGES.items():
            if name in self.publishers:
                self.publishers[name].publish(build(state, stamp, threshold))

    def counts(self) -> dict[str, int]:
        """For diagnostics: what was computed only on demand, the 3D counters and the tracks
        remembered."""
        counted = {OUTPUTS_BY_NAME[name].counted_as: count
                   for name, count in self.published_on_demand.items()}
        if self.pipeline.tracker is not None:
            counted["tracks"] = self.pipeline.tracker.tracker.track_count
        return counted | (self.pipeline.counts.as_dict() if self.depth_topic else {})

    def destroy(self) -> None:
        self.unsubscribe()
        for publisher in self.publishers.values():
            self._node.destroy_lifecycle_publisher(publisher)
