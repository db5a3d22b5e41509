"""The 3D and vision_msgs message builders, on the real RGB-D frame (the node tests check the same
messages over DDS). The vision_msgs builders run with stand-in types where vision_msgs is absent,
and with the real messages where it is installed."""

from __future__ import annotations

import types
from dataclasses import replace

import numpy as np
import pytest
from helpers.rgbd_frame import ARC, DEPTH, INTRINSICS, arc_result, arc_segmentation
from std_msgs.msg import Header
from visualization_msgs.msg import Marker

from fcclip_ros.geometry import point_cloud, segment_geometry
from fcclip_ros.result import UNLABELED
from fcclip_ros.ros.messages import (
    detections_3d_message,
    detections_message,
    label_info_message,
    markers_message,
    points_message,
    segments_message,
    vision_msgs,
)
from fcclip_ros.vocabulary import Vocabulary

pytestmark = pytest.mark.fast

HEADER = Header(frame_id="camera_color_optical_frame")
HEADER.stamp.sec = 7


def stand_in_vision_msgs() -> types.SimpleNamespace:
    """Each vision_msgs type as a plain record of its keyword arguments."""
    names = ("Detection2DArray", "Detection2D", "BoundingBox2D", "Pose2D", "Point2D",
             "ObjectHypothesis", "ObjectHypothesisWithPose", "Detection3DArray", "Detection3D",
             "BoundingBox3D", "LabelInfo", "VisionClass")
    return types.SimpleNamespace(**{name: types.SimpleNamespace for name in names})


MODULES = [pytest.param(stand_in_vision_msgs(), id="stand-ins")]
if vision_msgs is not None:
    MODULES.append(pytest.param(vision_msgs, id="vision_msgs"))


def test_segment_messages_carry_each_segments_box_and_zero_without_depth():
    result = arc_segmentation()
    geometry = segment_geometry(result.instances, DEPTH, INTRINSICS)
    msg = segments_message(HEADER, result, geometry)
    for segment in msg.segments[:-1]:
        box = geometry[segment.id]
        assert (segment.center.x, segment.center.y, segment.center.z) == box.center
        assert (segment.size.x, segment.size.y, segment.size.z) == box.size
        assert segment.depth_pixels == box.depth_pixels > 0
    void = msg.segments[-1]
    assert (void.depth_pixels, void.center.z, void.size.x) == (0, 0.0, 0.0)
    assert all(s.depth_pixels == 0 for s in segments_message(HEADER, result).segments)


def test_point_cloud_message_decodes_to_the_cloud_with_packed_colours():
    cloud = point_cloud(ARC["rgb"], arc_result(), DEPTH, INTRINSICS, 2)
    msg = points_message(HEADER, cloud)
    assert msg.header == HEADER and (msg.height, msg.width) == (1, cloud.size)
    layout = {field.name: (field.offset, field.datatype) for field in msg.fields}
    assert list(layout) == ["x", "y", "z", "rgb", "label", "instance"]
    dtype = np.dtype({"names": list(layout), "offsets": [o for o, _ in layout.values()],
                      "formats": ["<f4", "<f4", "<f4", "<u4", "<u2", "<u2"],
                      "itemsize": msg.point_step})
    read = np.frombuffer(bytes(msg.data), dtype)
    assert msg.row_step == msg.point_step * cloud.size == len(msg.data)
    for axis in "xyz":
        assert (read[axis] == cloud[axis]).all()
    assert (read["rgb"] >> 16 == cloud["r"]).all() and (read["rgb"] & 0xFF == cloud["b"]).all()
    assert (read["label"] == cloud["label"]).all() and (read["instance"] == cloud["instance"]).all()


def test_markers_are_a_box_and_a_label_per_segment_with_depth_after_a_delete_all():
    result = arc_segmentation()
    geometry = segment_geometry(result.instances, DEPTH, INTRINSICS)
    markers = markers_message(HEADER, result, geometry).markers
    assert markers[0].action == Marker.DELETEALL
    boxes = {m.id: m for m in markers if m.type == Marker.CUBE}
    texts = {m.id: m for m in markers if m.type == Marker.TEXT_VIEW_FACING}
    assert set(boxes) == set(texts) == set(geometry)  # not the segment without depth
    for segment in result.segments[:-1]:
        box, text = boxes[segment.id], texts[segment.id]
        assert box.header == HEADER
        position = box.pose.position
        assert (position.x, position.y, position.z) == geometry[segment.id].center
        assert text.text.startswith(segment.label)
        assert text.pose.position.y < position.y  # above the box (y points down)


@pytest.mark.parametrize("msgs", MODULES)
def test_detections_carry_box_class_name_score_and_segment_id(msgs):
    result = arc_segmentation()
    array = detections_message(HEADER, result, msgs)
    assert array.header == HEADER and len(array.detections) == len(result.segments)
    for detection, segment in zip(array.detections, result.segments, strict=True):
        x, y, width, height = segment.bbox
        assert detection.id == str(segment.id)
        [hypothesis] = detection.results
        assert hypothesis.hypothesis.class_id == segment.label
        assert hypothesis.hypothesis.score == pytest.approx(segment.score)
        center = detection.bbox.center.position
        assert (center.x, center.y) == (x + width / 2, y + height / 2)
        assert (detection.bbox.size_x, detection.bbox.size_y) == (width, height)


@pytest.mark.parametrize("msgs", MODULES)
def test_3d_detections_are_the_segment_boxes_of_segments_with_depth(msgs):
    result = arc_segmentation()
    geometry = segment_geometry(result.instances, DEPTH, INTRINSICS)
    array = detections_3d_message(HEADER, result, geometry, msgs)
    assert [d.id for d in array.detections] == [str(s.id) for s in result.segments[:-1]]
    for detection in array.detections:
        box = geometry[int(detection.id)]
        center, size = detection.bbox.center.position, detection.bbox.size
        assert (center.x, center.y, center.z) == box.center
        assert (size.x, size.y, size.z) == box.size
        [hypothesis] = detection.results
        assert hypothesis.pose.pose.position == detection.bbox.center.position


@pytest.mark.parametrize("msgs", MODULES)
def test_label_info_maps_every_class_id_to_its_name_and_the_unlabeled_value(msgs):
    vocabulary = Vocabulary.from_entries(["coffee cup, mug", "table", "floor [stuff]"])
    info = label_info_message(vocabulary, HEADER, msgs)
    assert [(c.class_id, c.class_name) for c in info.class_map] == [
        (0, "coffee cup"), (1, "table"), (2, "floor"), (UNLABELED, "unlabeled")]


@pytest.mark.parametrize("msgs", MODULES)
def test_tracked_segments_name_their_object_by_track_id_in_every_output(msgs):
    """The per-frame segment id stays in Segment.id; vision_msgs and marker ids are the track
    id, so a consumer (and RViz) sees one object under one id from frame to frame."""
    plain = arc_segmentation()
    tracks = {segment.id: 1000 + 7 * segment.id for segment in plain.segments}
    result = replace(plain, segments=[replace(s, track_id=tracks[s.id]) for s in plain.segments])
    geometry = segment_geometry(result.instances, DEPTH, INTRINSICS)
    assert [(s.id, s.track_id) for s in segments_message(HEADER, result).segments] == list(
        tracks.items())
    assert [d.id for d in detections_message(HEADER, result, msgs).detections] == [
        str(tracks[s.id]) for s in result.segments]
    assert [d.id for d in detections_3d_message(HEADER, result, geometry, msgs).detections] == [
        str(tracks[s.id]) for s in result.segments[:-1]]
    markers = markers_message(HEADER, result, geometry).markers[1:]
    assert sorted({m.id for m in markers}) == sorted(tracks[s.id] for s in result.segments[:-1])
    huge = replace(result, segments=[replace(s, track_id=2**31 + s.id) for s in result.segments])
    assert {m.id for m in markers_message(HEADER, huge, geometry).markers[1:]} == set(geometry)
