"""A slow network still gets its 3D: an RGB-D camera streaming at 30 Hz with CameraInfo, and the
real node running rn50 on this CPU (more than a second a frame), over real DDS.

While one frame is in the network, some 30+ depth frames arrive. The node enters each colour
frame for pairing when it arrives, so the depth of the frame being segmented is still its own when
the network is done; the first frames already come out with 3D boxes and points.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers.node_process import NodeProcess, Outputs, peer_session, stamp_key
from helpers.rgbd_crop import FRAME, camera_info, colour, depth_image
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

CAMERA, INFO = "/slow/color/image_raw", "/slow/color/camera_info"
DEPTH_TOPIC = "/slow/depth/image_raw"
RATE_HZ = 30.0
FIRST_FRAMES = 2


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slow_rgbd")
    process = NodeProcess(
        folder / "node.log", "model:=rn50", "weights:=random", "clip_weights:=random",
        "input_short_side:=480", f"cache_dir:={folder}", f"image_topics:=[{CAMERA}]",
        f"depth_topics:=[{DEPTH_TOPIC}]", "points_stride:=4", "vocabulary:=[box, shelf, floor]",
    )
    yield process
    process.stop()


def test_an_engine_slower_than_a_second_still_publishes_3d_from_the_first_frames(node):
    with peer_session("test_slow_rgbd_peer", node) as peer:
        outputs = Outputs(peer, "/slow/color/segmentation", images=[])
        clouds: dict[tuple[int, int], PointCloud2] = {}
        peer.node.create_subscription(PointCloud2, "/slow/color/segmentation/points",
                                      lambda msg: clouds.setdefault(stamp_key(msg.header), msg),
                                      10)
        for topic, kind in ((CAMERA, Image), (DEPTH_TOPIC, Image), (INFO, CameraInfo)):
            assert peer.publisher_ready(topic, kind), topic

        def tick() -> None:  # one camera: colour, depth and CameraInfo of one stamp
            stamp = peer.new_stamp()
            peer.publish(INFO, camera_info(stamp))
            peer.publish(CAMERA, colour(stamp))
            peer.publish(DEPTH_TOPIC, depth_image(stamp))

        peer.node.create_timer(1.0 / RATE_HZ, tick)
        assert peer.spin_until(lambda: len(outputs.frames) >= FIRST_FRAMES, 180.0), node.output()
        first = sorted(outputs.frames)[:FIRST_FRAMES]
        arrivals = [outputs.arrival[key] for key in first]
        assert np.diff(arrivals).min() > 1.0, "the engine was meant to take over a second a frame"
        for key in first:
            segments = outputs.frames[key]["segments"]
            assert segments.header.frame_id == FRAME
            assert any(segment.depth_pixels > 0 for segment in segments.segments), key
        assert peer.spin_until(lambda: any(key in clouds for key in first), 10.0)
        assert all(clouds[key].width > 0 for key in first if key in clouds)
        assert peer.spin_until(lambda: int((peer.camera_status(CAMERA) or {}).get(
            "frames_3d", 0)) >= FIRST_FRAMES, 10.0), peer.camera_status(CAMERA)
