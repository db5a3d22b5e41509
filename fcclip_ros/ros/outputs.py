"""Per camera: the output publishers under `<ns>/segmentation/`, and a Segmentation as messages.

Every output carries the input image's header unchanged. `overlay`, `confidence` and
`embeddings` are computed only while someone subscribes to them (embeddings also while the node
keeps them for the `query` service).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from rclpy.lifecycle import LifecycleNode
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile
from sensor_msgs.msg import Image, RegionOfInterest

from fcclip_ros.image_conversion import fill_image
from fcclip_ros.msg import Segment, SegmentArray, SegmentEmbeddings, Vocabulary
from fcclip_ros.overlay import OverlayStyle, draw_overlay
from fcclip_ros.result import UNLABELED, Segmentation
from fcclip_ros.topics import output_namespace
from fcclip_ros.vocabulary import VocabularyState

OUTPUT_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1)  # reliable, volatile
LATCHED_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL
)


def image_message(header: Any, pixels: np.ndarray, encoding: str) -> Image:
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


def embeddings_message(header: Any, result: Segmentation, model: str) -> SegmentEmbeddings:
    """The segments' CLIP embeddings of one result (which must carry them), rows in id order."""
    embeddings = result.embeddings
    return SegmentEmbeddings(
        header=header,
        vocabulary_version=result.vocabulary_version,
        model=model,
        dimension=embeddings.shape[1],
        segment_ids=[segment.id for segment in result.segments],
        data=embeddings.astype(np.float32, copy=False).ravel(),
    )


def vocabulary_message(state: VocabularyState, stamp: Any) -> Vocabulary:
    msg = Vocabulary(
        version=state.version,
        classes=list(state.vocabulary.entries),
        is_thing=list(state.vocabulary.is_thing),
        unlabeled_id=UNLABELED,
    )
    msg.header.stamp = stamp
    return msg


class CameraOutputs:
    """The output topics of one camera, as lifecycle publishers: silent unless the node is
    active. Counts what was computed only on demand."""

    def __init__(self, node: LifecycleNode, image_topic: str, model: str) -> None:
        self._node = node
        self._model = model
        self.namespace = output_namespace(image_topic)
        self.overlays = self.confidence_maps = self.embedding_arrays = 0

        def publisher(message_type: type, name: str, qos: QoSProfile = OUTPUT_QOS) -> Any:
            return node.create_lifecycle_publisher(message_type, f"{self.namespace}/{name}", qos)

        self.labels = publisher(Image, "labels")
        self.instances = publisher(Image, "instances")
        self.confidence = publisher(Image, "confidence")
        self.overlay = publisher(Image, "overlay")
        self.segments = publisher(SegmentArray, "segments")
        self.embeddings = publisher(SegmentEmbeddings, "embeddings")
        self.vocabulary = publisher(Vocabulary, "vocabulary", LATCHED_QOS)
        self._all = (self.labels, self.instances, self.confidence, self.overlay, self.segments,
                     self.embeddings, self.vocabulary)

    def computed_on_demand(self) -> dict[str, int]:
        """How many of the outputs computed only while subscribed were published."""
        return {"overlays_drawn": self.overlays,
                "confidence_maps_published": self.confidence_maps,
                "embedding_arrays_published": self.embedding_arrays}

    @property
    def wants_confidence(self) -> bool:
        return self.confidence.get_subscription_count() > 0

    @property
    def wants_embeddings(self) -> bool:
        return self.embeddings.get_subscription_count() > 0

    def publish(self, header: Any, rgb: np.ndarray, result: Segmentation,
                style: OverlayStyle) -> None:
        self.labels.publish(image_message(header, result.labels, "mono16"))
        self.instances.publish(image_message(header, result.instances, "mono16"))
        if result.confidence is not None and self.wants_confidence:
            self.confidence.publish(image_message(header, result.confidence, "32FC1"))
            self.confidence_maps += 1
        if self.overlay.get_subscription_count() > 0:
            overlay = draw_overlay(rgb, result.instances, result.segments, style)
            self.overlay.publish(image_message(header, overlay, "rgb8"))
            self.overlays += 1
        self.segments.publish(segments_message(header, result))
        if result.embeddings is not None and self.wants_embeddings:
            self.embeddings.publish(embeddings_message(header, result, self._model))
            self.embedding_arrays += 1

    def destroy(self) -> None:
        for publisher in self._all:
            self._node.destroy_lifecycle_publisher(publisher)
