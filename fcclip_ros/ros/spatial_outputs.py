"""The 3D and vision_msgs outputs of a Segmentation, as plain builder functions, and their
publishers.

`points` (PointCloud2) and `markers` (MarkerArray) exist for cameras with a depth topic;
`detections` (vision_msgs/Detection2DArray), `detections_3d` (Detection3DArray, with depth) and
`label_info` (LabelInfo, transient local) whenever vision_msgs is importable: it is in every ROS 2
distro but not on PyPI, so it stays optional. The vision_msgs builders take the message module as
an argument, so their logic runs (and is tested) with stand-in types where it is absent.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import Any

import numpy as np
from geometry_msgs.msg import Point, Pose, PoseWithCovariance, Quaternion, Vector3
from rclpy.lifecycle import LifecycleNode
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

from fcclip_ros.geometry import SegmentGeometry
from fcclip_ros.overlay import class_color
from fcclip_ros.result import UNLABELED, Segmentation
from fcclip_ros.vocabulary import Vocabulary, VocabularyState

try:
    from vision_msgs import msg as vision_msgs
except ImportError:
    vision_msgs = None

VISION_OUTPUTS = ("detections", "detections_3d", "label_info")
BOX_ALPHA = 0.35
TEXT_HEIGHT_M = 0.05
# PointCloud2 layout: x, y, z, rgb (PCL's packed 0x00RRGGBB, stored in a float32 field), label
# (class id, 65535 = unlabeled) and instance (segment id, 0 = none).
CLOUD_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<u4"),
                        ("label", "<u2"), ("instance", "<u2")])
CLOUD_FIELDS = [
    PointField(name="x", offset=0, datatype=PointField.FLOAT32, count=1),
    PointField(name="y", offset=4, datatype=PointField.FLOAT32, count=1),
    PointField(name="z", offset=8, datatype=PointField.FLOAT32, count=1),
    PointField(name="rgb", offset=12, datatype=PointField.FLOAT32, count=1),
    PointField(name="label", offset=16, datatype=PointField.UINT16, count=1),
    PointField(name="instance", offset=18, datatype=PointField.UINT16, count=1),
]


def points_message(header: Any, cloud: np.ndarray) -> PointCloud2:
    """An unorganised PointCloud2 of a geometry.point_cloud() array (valid points only)."""
    packed = np.empty(cloud.size, CLOUD_DTYPE)
    for axis in "xyz":
        packed[axis] = cloud[axis]
    packed["rgb"] = (cloud["r"].astype(np.uint32) << 16) | (cloud["g"].astype(np.uint32) << 8) \
        | cloud["b"]
    packed["label"], packed["instance"] = cloud["label"], cloud["instance"]
    return PointCloud2(
        header=header, height=1, width=cloud.size, fields=CLOUD_FIELDS, is_bigendian=False,
        point_step=CLOUD_DTYPE.itemsize, row_step=CLOUD_DTYPE.itemsize * cloud.size,
        data=packed.tobytes(), is_dense=True,
    )


def _point(xyz: tuple[float, float, float]) -> Point:
    return Point(x=xyz[0], y=xyz[1], z=xyz[2])


def markers_message(header: Any, result: Segmentation,
                    geometry: Mapping[int, SegmentGeometry]) -> MarkerArray:
    """For RViz: a translucent box in the class colour and a text label per segment with 3D;
    the first marker deletes the previous frame's."""
    markers = [Marker(header=header, action=Marker.DELETEALL)]
    for segment in result.segments:
        box = geometry.get(segment.id)
        if box is None or not box.depth_pixels:
            continue
        red, green, blue = (channel / 255 for channel in class_color(segment.label))
        markers.append(Marker(
            header=header, ns="boxes", id=segment.id, type=Marker.CUBE, action=Marker.ADD,
            pose=Pose(position=_point(box.center), orientation=Quaternion(w=1.0)),
            scale=Vector3(x=max(box.size[0], 1e-3), y=max(box.size[1], 1e-3),
                          z=max(box.size[2], 1e-3)),
            color=ColorRGBA(r=red, g=green, b=blue, a=BOX_ALPHA),
        ))
        above = (box.center[0], box.center[1] - box.size[1] / 2 - TEXT_HEIGHT_M, box.center[2])
        markers.append(Marker(
            header=header, ns="labels", id=segment.id, type=Marker.TEXT_VIEW_FACING,
            action=Marker.ADD, pose=Pose(position=_point(above), orientation=Quaternion(w=1.0)),
            scale=Vector3(z=TEXT_HEIGHT_M), color=ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0),
            text=f"{segment.label} {segment.score:.2f}",
        ))
    return MarkerArray(markers=markers)


def _hypotheses(types: Any, label: str, score: float,
                pose: PoseWithCovariance | None = None) -> list[Any]:
    hypothesis = types.ObjectHypothesis(class_id=label, score=float(score))
    with_pose = {"pose": pose} if pose is not None else {}
    return [types.ObjectHypothesisWithPose(hypothesis=hypothesis, **with_pose)]


def detections_message(header: Any, result: Segmentation, types: ModuleType | Any = None) -> Any:
    """vision_msgs/Detection2DArray: per segment its box (centre and size, pixels), class name as
    class_id, score, and segment id as id. `types`: the vision_msgs.msg module (default)."""
    types = types or vision_msgs
    detections = []
    for segment in result.segments:
        x, y, width, height = segment.bbox
        detections.append(types.Detection2D(
            header=header, id=str(segment.id),
            results=_hypotheses(types, segment.label, segment.score),
            bbox=types.BoundingBox2D(
                center=types.Pose2D(
                    position=types.Point2D(x=x + width / 2, y=y + height / 2), theta=0.0
                ),
                size_x=float(width), size_y=float(height),
            ),
        ))
    return types.Detection2DArray(header=header, detections=detections)


def detections_3d_message(header: Any, result: Segmentation,
                          geometry: Mapping[int, SegmentGeometry],
                          types: ModuleType | Any = None) -> Any:
    """vision_msgs/Detection3DArray: per segment with 3D its box (metres, the header's frame),
    class name, score and segment id; the hypothesis pose is the box centre."""
    types = types or vision_msgs
    detections = []
    for segment in result.segments:
        box = geometry.get(segment.id)
        if box is None or not box.depth_pixels:
            continue
        pose = Pose(position=_point(box.center), orientation=Quaternion(w=1.0))
        detections.append(types.Detection3D(
            header=header, id=str(segment.id),
            results=_hypotheses(types, segment.label, segment.score, PoseWithCovariance(pose=pose)),
            bbox=types.BoundingBox3D(center=pose, size=Vector3(
                x=box.size[0], y=box.size[1], z=box.size[2])),
        ))
    return types.Detection3DArray(header=header, detections=detections)


def label_info_message(vocabulary: Vocabulary, header: Any,
                       types: ModuleType | Any = None) -> Any:
    """vision_msgs/LabelInfo: class id -> class name for the vocabulary in force, and the
    labels image's unlabeled value (65535) as the class "unlabeled"."""
    types = types or vision_msgs
    class_map = [types.VisionClass(class_id=class_id, class_name=name)
                 for class_id, name in enumerate(vocabulary.names)]
    class_map.append(types.VisionClass(class_id=UNLABELED, class_name="unlabeled"))
    return types.LabelInfo(header=header, class_map=class_map)


class SpatialOutputs:
    """One camera's `points`, `markers`, `detections`, `detections_3d` and `label_info`
    publishers: the 3D ones only with depth, the vision_msgs ones only with vision_msgs."""

    def __init__(self, node: LifecycleNode, namespace: str, with_depth: bool,
                 qos: Any, latched_qos: Any) -> None:
        self._node = node
        self.points_published = self.marker_arrays_published = 0

        def publisher(message_type: type, name: str, profile: Any = qos) -> Any:
            return node.create_lifecycle_publisher(message_type, f"{namespace}/{name}", profile)

        self.points = publisher(PointCloud2, "points") if with_depth else None
        self.markers = publisher(MarkerArray, "markers") if with_depth else None
        vision = vision_msgs is not None
        self.detections = publisher(vision_msgs.Detection2DArray, "detections") if vision else None
        self.detections_3d = (publisher(vision_msgs.Detection3DArray, "detections_3d")
                              if vision and with_depth else None)
        self.label_info = (publisher(vision_msgs.LabelInfo, "label_info", latched_qos)
                           if vision else None)
        self._all = [p for p in (self.points, self.markers, self.detections, self.detections_3d,
                                 self.label_info) if p is not None]

    @property
    def wants_points(self) -> bool:
        return self.points is not None and self.points.get_subscription_count() > 0

    def publish(self, header: Any, result: Segmentation,
                geometry: Mapping[int, SegmentGeometry] | None,
                cloud: np.ndarray | None) -> None:
        """`geometry` None: this frame had no usable depth (the 2D detections go out, and the
        markers only clear the previous frame's)."""
        if self.detections is not None:
            self.detections.publish(detections_message(header, result))
        if self.markers is not None and self.markers.get_subscription_count() > 0:
            self.markers.publish(markers_message(header, result, geometry or {}))
            self.marker_arrays_published += 1
        if geometry is None:
            return
        if cloud is not None:
            self.points.publish(points_message(header, cloud))
            self.points_published += 1
        if self.detections_3d is not None:
            self.detections_3d.publish(detections_3d_message(header, result, geometry))

    def publish_label_info(self, state: VocabularyState, header: Any) -> None:
        if self.label_info is not None:
            self.label_info.publish(label_info_message(state.vocabulary, header))

    def destroy(self) -> None:
        for publisher in self._all:
            self._node.destroy_lifecycle_publisher(publisher)
