"""Every output of fcclip_ros.outputs.OUTPUTS as a ROS message: one builder per name.

The node publishes what these build and `fcclip-ros bag` writes the same messages, so a bag holds
what the node would publish for the same frame. Per-frame builders take a frame_pipeline.Frame and
return None when the frame has nothing for that output (no 3D, no embeddings); the latched ones
take the vocabulary in force.

vision_msgs is in every ROS 2 distro but not on PyPI, so it stays optional: the vision_msgs
builders take the message module as an argument, so their logic runs (and is tested) with stand-in
types where it is absent.
"""

from __future__ import annotations

import array
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

import numpy as np
from builtin_interfaces.msg import Duration
from geometry_msgs.msg import Point, Pose, PoseWithCovariance, Quaternion, Vector3
from sensor_msgs.msg import Image, PointCloud2, PointField, RegionOfInterest
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from fcclip_ros.frame_pipeline import Frame
from fcclip_ros.geometry import NO_GEOMETRY, SegmentGeometry
from fcclip_ros.image_conversion import fill_image
from fcclip_ros.mapping_images import label_color_image, semantic_image
from fcclip_ros.msg import Segment, SegmentArray, SegmentEmbeddings
from fcclip_ros.msg import Vocabulary as VocabularyMessage
from fcclip_ros.overlay import class_color
from fcclip_ros.result import UNLABELED, Segmentation
from fcclip_ros.vocabulary import Vocabulary, VocabularyState

try:
    from vision_msgs import msg as vision_msgs
except ImportError:
    vision_msgs = None
try:  # MIT-SPARK's messages (Hydra's open-set input, Clio); optional like vision_msgs
    from semantic_inference_msgs import msg as semantic_inference_msgs
except ImportError:
    semantic_inference_msgs = None
# The optional message packages (fcclip_ros.outputs.OPTIONAL_PACKAGES) importable here.
IMPORTABLE_PACKAGES = frozenset(
    name for name, module in (("vision_msgs", vision_msgs),
                              ("semantic_inference_msgs", semantic_inference_msgs))
    if module is not None)

BOX_ALPHA = 0.35
TEXT_HEIGHT_M = 0.05
# PointCloud2 layout: x, y, z, rgb (PCL's packed 0x00RRGGBB, stored in a float32 field), label
# (class id, 65535 = unlabeled) and instance (segment id, 0 = none). label is uint32 as in PCL's
# PointXYZL / PointXYZRGBL: pcl::fromROSMsg matches fields by name and type, so a uint16 label
# would be left unset there.
CLOUD_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<u4"),
                        ("label", "<u4"), ("instance", "<u4")])
CLOUD_FIELDS = [
    PointField(name="x", offset=0, datatype=PointField.FLOAT32, count=1),
    PointField(name="y", offset=4, datatype=PointField.FLOAT32, count=1),
    PointField(name="z", offset=8, datatype=PointField.FLOAT32, count=1),
    PointField(name="rgb", offset=12, datatype=PointField.FLOAT32, count=1),
    PointField(name="label", offset=16, datatype=PointField.UINT32, count=1),
    PointField(name="instance", offset=20, datatype=PointField.UINT32, count=1),
]
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
        center=_point(box.center),
        size=Vector3(x=box.size[0], y=box.size[1], z=box.size[2]),
        depth_pixels=box.depth_pixels,
        track_id=segment.track_id,
    )


def object_id(segment: Any) -> int:
    """What names a segment's object in vision_msgs ids and marker ids: its track id, so that
    consumers and RViz see the same object under the same id; the segment id when untracked."""
    return segment.track_id or segment.id


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


def vocabulary_message(state: VocabularyState, stamp: Any) -> VocabularyMessage:
    msg = VocabularyMessage(
        version=state.version,
        classes=list(state.vocabulary.entries),
        is_thing=list(state.vocabulary.is_thing),
        unlabeled_id=UNLABELED,
        negative_classes=list(state.spec.negative_entries),
        class_thresholds=list(state.spec.aligned_thresholds),
    )
    msg.header.stamp = stamp
    return msg


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


def marker_id(segment: Any) -> int:
    """Marker ids are int32: the object id, wrapped after 2**31 - 1."""
    return object_id(segment) & 0x7FFFFFFF


def markers_message(header: Any, result: Segmentation, geometry: Mapping[int, SegmentGeometry],
                    lifetime_s: float) -> MarkerArray:
    """For RViz: a translucent box in the class colour and a text label per segment with 3D,
    each kept `lifetime_s` unless replaced (so that a stopped node leaves none behind; 0:
    forever); the first marker deletes the previous frame's."""
    lifetime = Duration(sec=int(lifetime_s), nanosec=round(lifetime_s % 1 * 1e9))
    markers = [clear_markers(header).markers[0]]
    for segment in result.segments:
        box = geometry.get(segment.id)
        if box is None or not box.depth_pixels:
            continue
        red, green, blue = (channel / 255 for channel in class_color(segment.label))
        markers.append(Marker(
            header=header, ns="boxes", id=marker_id(segment), type=Marker.CUBE,
            action=Marker.ADD,
            pose=Pose(position=_point(box.center), orientation=Quaternion(w=1.0)),
            scale=Vector3(x=max(box.size[0], 1e-3), y=max(box.size[1], 1e-3),
                          z=max(box.size[2], 1e-3)),
            color=ColorRGBA(r=red, g=green, b=blue, a=BOX_ALPHA), lifetime=lifetime,
        ))
        above = (box.center[0], box.center[1] - box.size[1] / 2 - TEXT_HEIGHT_M, box.center[2])
        markers.append(Marker(
            header=header, ns="labels", id=marker_id(segment), type=Marker.TEXT_VIEW_FACING,
            action=Marker.ADD, pose=Pose(position=_point(above), orientation=Quaternion(w=1.0)),
            scale=Vector3(z=TEXT_HEIGHT_M), color=ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0),
            text=f"{segment.label} {segment.score:.2f}", lifetime=lifetime,
        ))
    return MarkerArray(markers=markers)


def clear_markers(header: Any) -> MarkerArray:
    """Deletes every marker of ours in RViz (published when the node deactivates)."""
    return MarkerArray(markers=[Marker(header=header, action=Marker.DELETEALL)])


def _hypotheses(types: Any, segment: Any, pose: PoseWithCovariance | None = None) -> list[Any]:
    """The segment's class as vision_msgs names it: the class id as a string, which consumers
    look up in LabelInfo.class_map (the name is in the segments output and in LabelInfo)."""
    hypothesis = types.ObjectHypothesis(class_id=str(segment.class_id), score=float(segment.score))
    with_pose = {"pose": pose} if pose is not None else {}
    return [types.ObjectHypothesisWithPose(hypothesis=hypothesis, **with_pose)]


def detections_message(header: Any, result: Segmentation, types: ModuleType | Any = None) -> Any:
    """vision_msgs/Detection2DArray: per segment its box (centre and size, pixels), class id,
    score, and object_id as id. `types`: the vision_msgs.msg module (default)."""
    types = types or vision_msgs
    detections = []
    for segment in result.segments:
        x, y, width, height = segment.bbox
        detections.append(types.Detection2D(
            header=header, id=str(object_id(segment)),
            results=_hypotheses(types, segment),
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
    class id, score and object id; the hypothesis pose is the box centre. Empty (not absent)
    for a frame without depth, so that consumers synchronising on it do not stall."""
    types = types or vision_msgs
    detections = []
    for segment in result.segments:
        box = geometry.get(segment.id)
        if box is None or not box.depth_pixels:
            continue
        pose = Pose(position=_point(box.center), orientation=Quaternion(w=1.0))
        detections.append(types.Detection3D(
            header=header, id=str(object_id(segment)),
            results=_hypotheses(types, segment, PoseWithCovariance(pose=pose)),
            bbox=types.BoundingBox3D(center=pose, size=Vector3(
                x=box.size[0], y=box.size[1], z=box.size[2])),
        ))
    return types.Detection3DArray(header=header, detections=detections)


def feature_image_message(header: Any, result: Segmentation,
                          types: ModuleType | Any = None) -> Any:
    """semantic_inference_msgs/FeatureImage of a result that carries embeddings: the segment-id
    image (the instances output), mask_ids the segment ids and one FeatureVector per segment,
    its CLIP embedding, in the same order. `types`: the semantic_inference_msgs.msg module."""
    types = types or semantic_inference_msgs
    embeddings = result.embeddings.astype(np.float32, copy=False)
    return types.FeatureImage(
        header=header,
        mask_ids=[segment.id for segment in result.segments],
        image=image_message(header, result.instances, "mono16"),
        features=[types.FeatureVector(data=_float32_array(row)) for row in embeddings],
    )


def _float32_array(values: np.ndarray) -> array.array:
    """A float32[] field's value, copied as bytes (what the message setter keeps anyway)."""
    packed = array.array("f")
    packed.frombytes(np.ascontiguousarray(values, dtype=np.float32).tobytes())
    return packed


def label_info_message(vocabulary: Vocabulary, header: Any, threshold: float,
                       types: ModuleType | Any = None) -> Any:
    """vision_msgs/LabelInfo: class id -> class name for the vocabulary in force (the ids of the
    labels image and of ObjectHypothesis.class_id), the labels image's unlabeled value (65535)
    as the class "unlabeled", and `threshold`, the score a segment needs (object_mask_threshold;
    per-class thresholds are in the vocabulary output)."""
    types = types or vision_msgs
    class_map = [types.VisionClass(class_id=class_id, class_name=name)
                 for class_id, name in enumerate(vocabulary.names)]
    class_map.append(types.VisionClass(class_id=UNLABELED, class_name="unlabeled"))
    return types.LabelInfo(header=header, class_map=class_map, threshold=float(threshold))


# ---- one builder per output of fcclip_ros.outputs.OUTPUTS --------------------------------------


def _confidence(frame: Frame) -> Image | None:
    confidence = frame.result.confidence
    return None if confidence is None else image_message(frame.header, confidence, "32FC1")


def _embeddings(frame: Frame) -> SegmentEmbeddings | None:
    if frame.result.embeddings is None:
        return None
    return embeddings_message(frame.header, frame.result, frame.model)


def _features(frame: Frame) -> Any:
    if frame.result.embeddings is None:
        return None
    return feature_image_message(frame.header, frame.result)


def _points(frame: Frame) -> PointCloud2 | None:
    return None if frame.cloud is None else points_message(frame.header, frame.cloud)


# Per frame: output name -> builder (None: nothing to publish for this frame). Markers go out
# for frames without depth too: their first marker clears the previous frame's boxes.
FRAME_MESSAGES: dict[str, Callable[[Frame], Any]] = {
    "labels": lambda frame: image_message(frame.header, frame.result.labels, "mono16"),
    "instances": lambda frame: image_message(frame.header, frame.result.instances, "mono16"),
    "confidence": _confidence,
    "overlay": lambda frame: image_message(frame.header, frame.overlay, "rgb8"),
    "semantic": lambda frame: image_message(frame.header, semantic_image(frame.result), "32SC1"),
    "label_colors": lambda frame: image_message(frame.header, label_color_image(frame.result),
                                                "rgb8"),
    "segments": lambda frame: segments_message(frame.header, frame.result, frame.geometry),
    "embeddings": _embeddings,
    "features": _features,
    "points": _points,
    "markers": lambda frame: markers_message(frame.header, frame.result, frame.geometry or {},
                                             frame.style.marker_lifetime_s),
    "detections": lambda frame: detections_message(frame.header, frame.result),
    "detections_3d": lambda frame: detections_3d_message(frame.header, frame.result,
                                                         frame.geometry or {}),
}
# Latched, per vocabulary: output name -> builder of (vocabulary state, stamp, the global
# object_mask_threshold in force).
VOCABULARY_MESSAGES: dict[str, Callable[[VocabularyState, Any, float], Any]] = {
    "vocabulary": lambda state, stamp, _threshold: vocabulary_message(state, stamp),
    "label_info": lambda state, stamp, threshold: label_info_message(
        state.vocabulary, Header(stamp=stamp), threshold),
}


def message_class(name: str) -> type:
    """The message class of output `name` (fcclip_ros.outputs.OUTPUTS' type, imported)."""
    classes = {"labels": Image, "instances": Image, "confidence": Image, "overlay": Image,
               "semantic": Image, "label_colors": Image, "segments": SegmentArray,
               "embeddings": SegmentEmbeddings, "vocabulary": VocabularyMessage,
               "points": PointCloud2, "markers": MarkerArray}
    if name in classes:
        return classes[name]
    if name == "features":
        if semantic_inference_msgs is None:
            raise LookupError("output features needs semantic_inference_msgs, which is not "
                              "importable")
        return semantic_inference_msgs.FeatureImage
    if vision_msgs is None:
        raise LookupError(f"output {name} needs vision_msgs, which is not importable")
    return {"detections": vision_msgs.Detection2DArray,
            "detections_3d": vision_msgs.Detection3DArray,
            "label_info": vision_msgs.LabelInfo}[name]
