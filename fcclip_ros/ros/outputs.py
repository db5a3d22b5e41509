"""Per camera: the output publishers under `<ns>/segmentation/`, and a Segmentation as messages.

Every output carries the input image's header unchanged. `overlay`, `confidence` and
`embeddings` are computed only while someone subscribes to them (embeddings also while the node
keeps them for the `query` service).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from geometry_msgs.msg import Point, Vector3
from rclpy.lifecycle import LifecycleNode
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile
from sensor_msgs.msg import Image, RegionOfInterest

from fcclip_ros.geometry import (
    NO_GEOMETRY,
    DepthFrame,
    SegmentGeometry,
    point_cloud,
    segment_geometry,
)
from fcclip_ros.image_conversion import fill_image
from fcclip_ros.msg import Segment, SegmentArray, SegmentEmbeddings, Vocabulary
from fcclip_ros.overlay import OverlayStyle, draw_overlay
from fcclip_ros.result import UNLABELED, Segmentation
from fcclip_ros.ros.spatial_outputs import SpatialOutputs
from fcclip_ros.topics import output_namespace
from fcclip_ros.vocabulary import VocabularyState

OUTPUT_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1)  # reliable, volatile
LATCHED_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL
)


def image_message(header: Any, pixels: np.ndarray, encoding: str) -> Image:
    return fill_image(Image(header=header), pixels, encoding)


def segments_message(header: Any, result: Segmentation,
                     geometry: Mapping[int, SegmentGeometry] | None = None) -> SegmentArray:
    """The SegmentArray of one result, stamped with the input's header; the 3D fields from
    `geometry` (segment id -> box; zero for segments it lacks)."""
    geometry = geometry or {}
    msg = SegmentArray(header=header, vocabulary_version=result.vocabulary_version)
    msg.segments = [_segment(s, geometry.get(s.id, NO_GEOMETRY)) for s in result.segments]
    return msg


def _segment(segment: Any, box: SegmentGeometry) -> Segment:
    x, y, width, height = segment.bbox
    return Segment(
        id=segment.id,
        class_id=segment.class_id,
        label=segment.label,
        score=float(segment.score),
        is_thing=segment.is_thing,
        area=segment.area,
        bbox=RegionOfInterest(x_offset=x, y_offset=y, width=width, height=height),
        center=Point(x=box.center[0], y=box.center[1], z=box.center[2]),
        size=Vector3(x=box.size[0], y=box.size[1], z=box.size[2]),
        depth_pixels=box.depth_pixels,
    )


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

    def __init__(self, node: LifecycleNode, image_topic: str, model: str,
                 with_depth: bool = False) -> None:
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
        self.spatial = SpatialOutputs(node, self.namespace, with_depth, OUTPUT_QOS, LATCHED_QOS)
        self._all = (self.labels, self.instances, self.confidence, self.overlay, self.segments,
                     self.embeddings, self.vocabulary)

    def computed_on_demand(self) -> dict[str, int]:
        """How many of the outputs computed only while subscribed were published."""
        return {"overlays_drawn": self.overlays,
                "confidence_maps_published": self.confidence_maps,
                "embedding_arrays_published": self.embedding_arrays,
                "point_clouds_published": self.spatial.points_published,
                "marker_arrays_published": self.spatial.marker_arrays_published}

    @property
    def wants_confidence(self) -> bool:
        return self.confidence.get_subscription_count() > 0

    @property
    def wants_embeddings(self) -> bool:
        return self.embeddings.get_subscription_count() > 0

    def publish(self, header: Any, rgb: np.ndarray, result: Segmentation,
                style: OverlayStyle, depth: DepthFrame | None = None,
                points_stride: int = 1) -> None:
        """All outputs of one frame; the 3D ones when `depth` (registered to `rgb`) is given."""
        geometry = cloud = None
        if depth is not None:
            geometry = segment_geometry(result.instances, depth.metres, depth.intrinsics)
            if self.spatial.wants_points:
                cloud = point_cloud(rgb, result, depth.metres, depth.intrinsics, points_stride)
        self.labels.publish(image_message(header, result.labels, "mono16"))
        self.instances.publish(image_message(header, result.instances, "mono16"))
        if result.confidence is not None and self.wants_confidence:
            self.confidence.publish(image_message(header, result.confidence, "32FC1"))
            self.confidence_maps += 1
        if self.overlay.get_subscription_count() > 0:
            overlay = draw_overlay(rgb, result.instances, result.segments, style)
            self.overlay.publish(image_message(header, overlay, "rgb8"))
            self.overlays += 1
        self.segments.publish(segments_message(header, result, geometry))
        self.spatial.publish(header, result, geometry, cloud)
        if result.embeddings is not None and self.wants_embeddings:
            self.embeddings.publish(embeddings_message(header, result, self._model))
            self.embedding_arrays += 1

    def destroy(self) -> None:
        self.spatial.destroy()
        for publisher in self._all:
            self._node.destroy_lifecycle_publisher(publisher)
