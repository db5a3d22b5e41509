"""The 3D and vision_msgs message builders, on the real RGB-D frame (the node tests check the same
messages over DDS). The vision_msgs builders run with stand-in types where vision_msgs is absent,
and with the real messages where it is installed."""

from __future__ import annotations

import itertools
import types
from dataclasses import replace

import numpy as np
import pytest
from helpers.rgbd_frame import ARC, DEPTH, INTRINSICS, arc_result, arc_segmentation
from sensor_msgs.msg import PointField
from std_msgs.msg import Header
from visualization_msgs.msg import Marker

from fcclip_ros.frame_pipeline import Frame
from fcclip_ros.geometry import point_cloud, segment_geometry
from fcclip_ros.overlay import OverlayStyle
from fcclip_ros.result import UNLABELED
from fcclip_ros.ros.messages import (
    FRAME_MESSAGES,
    clear_markers,
    detections_3d_message,
    detections_message,
    label_info_message,
    markers_message,
    points_message,
    segments_message,
    vision_msgs,
)
from fcclip_ros.settings import default as default_setting
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


# sensor_msgs/PointField datatypes as numpy formats, and what PCL's point types register
# (pcl/point_types.h): pcl::fromROSMsg copies a field only when its name and datatype match.
POINT_FIELD_FORMATS = {PointField.FLOAT32: "<f4", PointField.UINT32: "<u4",
                       PointField.UINT16: "<u2"}
PCL_POINT_XYZRGBL = {"x": PointField.FLOAT32, "y": PointField.FLOAT32, "z": PointField.FLOAT32,
                     "rgb": PointField.FLOAT32, "label": PointField.UINT32}


def test_point_cloud_message_decodes_to_the_cloud_with_packed_colours():
    cloud = point_cloud(ARC["rgb"], arc_result(), DEPTH, INTRINSICS, 2)
    msg = points_message(HEADER, cloud)
    assert msg.header == HEADER and (msg.height, msg.width) == (1, cloud.size)
    layout = {field.name: (field.offset, field.datatype) for field in msg.fields}
    assert list(layout) == ["x", "y", "z", "rgb", "label", "instance"]
    dtype = np.dtype({"names": list(layout), "offsets": [o for o, _ in layout.values()],
                      "formats": ["<u4" if name == "rgb" else POINT_FIELD_FORMATS[datatype]
                                  for name, (_, datatype) in layout.items()],  # rgb: packed
                      "itemsize": msg.point_step})
    read = np.frombuffer(bytes(msg.data), dtype)
    assert msg.row_step == msg.point_step * cloud.size == len(msg.data)
    for axis in "xyz":
        assert (read[axis] == cloud[axis]).all()
    assert (read["rgb"] >> 16 == cloud["r"]).all() and (read["rgb"] & 0xFF == cloud["b"]).all()
    assert (read["label"] == cloud["label"]).all() and (read["instance"] == cloud["instance"]).all()


def test_point_cloud_fields_have_the_names_and_types_pcl_point_xyzrgbl_reads():
    """PCL's PointXYZL / PointXYZRGBL hold the label as uint32: with a UINT16 field of that name
    pcl::fromROSMsg finds no match and leaves every label unset."""
    msg = points_message(HEADER, point_cloud(ARC["rgb"], arc_result(), DEPTH, INTRINSICS, 4))
    fields = {field.name: field for field in msg.fields}
    for name, datatype in PCL_POINT_XYZRGBL.items():
        assert (fields[name].datatype, fields[name].count) == (datatype, 1), name
    ends = sorted((f.offset, f.offset + np.dtype(POINT_FIELD_FORMATS[f.datatype]).itemsize)
                  for f in msg.fields)
    assert all(end <= start for (_, end), (start, _) in itertools.pairwise(ends))  # no overlap
    assert ends[-1][1] <= msg.point_step


def test_markers_are_a_box_and_a_label_per_segment_with_depth_after_a_delete_all():
    result = arc_segmentation()
    geometry = segment_geometry(result.instances, DEPTH, INTRINSICS)
    markers = markers_message(HEADER, result, geometry, 2.0).markers
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


def test_markers_expire_so_that_a_stopped_node_leaves_none_in_rviz():
    """lifetime 0 means forever in RViz: every box and label must expire on its own, and
    clear_markers (sent on deactivate) deletes them at once."""
    result = arc_segmentation()
    geometry = segment_geometry(result.instances, DEPTH, INTRINSICS)
    markers = markers_message(HEADER, result, geometry, lifetime_s=1.5).markers[1:]
    assert markers and all((m.lifetime.sec, m.lifetime.nanosec) == (1, 500_000_000)
                           for m in markers)
    frame = Frame(HEADER, ARC["rgb"], result, "tiny", OverlayStyle(), geometry)
    default = FRAME_MESSAGES["markers"](frame).markers[1:]
    assert default and all(m.lifetime.sec + m.lifetime.nanosec / 1e9 == default_setting(
        "marker_lifetime") > 0 for m in default)
    [clear] = clear_markers(HEADER).markers
    assert (clear.action, clear.header) == (Marker.DELETEALL, HEADER)


@pytest.mark.parametrize("msgs", MODULES)
def test_detections_carry_box_class_id_score_and_segment_id(msgs):
    result = arc_segmentation()
    array = detections_message(HEADER, result, msgs)
    assert array.header == HEADER and len(array.detections) == len(result.segments)
    for detection, segment in zip(array.detections, result.segments, strict=True):
        x, y, width, height = segment.bbox
        assert detection.id == str(segment.id)
        [hypothesis] = detection.results
        assert hypothesis.hypothesis.class_id == str(segment.class_id)
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
    info = label_info_message(vocabulary, HEADER, 0.25, msgs)
    assert [(c.class_id, c.class_name) for c in info.class_map] == [
        (0, "coffee cup"), (1, "table"), (2, "floor"), (UNLABELED, "unlabeled")]
    assert info.threshold == 0.25


@pytest.mark.parametrize("msgs", MODULES)
def test_a_consumer_finds_every_detections_class_in_label_info(msgs):
    """vision_msgs: ObjectHypothesis.class_id is looked up in LabelInfo.class_map, so it must be
    the class id there (as a string), naming the segment's class."""
    result = arc_segmentation()
    result.segments = result.segments[:-1]  # not the stand-in segment without depth
    vocabulary = Vocabulary.from_entries(list(ARC["class_names"]))
    names = {str(c.class_id): c.class_name
             for c in label_info_message(vocabulary, HEADER, 0.0, msgs).class_map}
    geometry = segment_geometry(result.instances, DEPTH, INTRINSICS)
    for array in (detections_message(HEADER, result, msgs),
                  detections_3d_message(HEADER, result, geometry, msgs)):
        found = [(names[d.results[0].hypothesis.class_id], d.id) for d in array.detections]
        assert found == [(s.label, str(s.id)) for s in result.segments if s.id in
                         {int(d.id) for d in array.detections}]
        assert found


def test_a_frame_without_depth_publishes_empty_3d_detections_not_none():
    """Consumers that synchronise detections_3d with other topics stall on a missing message."""
    if vision_msgs is None:
        pytest.skip("the detections_3d builder makes real vision_msgs messages")
    frame = Frame(HEADER, ARC["rgb"], arc_segmentation(), "tiny", geometry=None)
    array = FRAME_MESSAGES["detections_3d"](frame)
    assert array is not None and array.header == HEADER and list(array.detections) == []


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
    markers = markers_message(HEADER, result, geometry, 2.0).markers[1:]
    assert sorted({m.id for m in markers}) == sorted(tracks[s.id] for s in result.segments[:-1])
    huge = replace(result, segments=[replace(s, track_id=2**31 + s.id) for s in result.segments])
    assert {m.id for m in markers_message(HEADER, huge, geometry, 2.0).markers[1:]} == set(geometry)
