"""Track ids end to end: the real node process over real DDS, fed the same real photo frame after
frame from this process, with tracking on (namespace /trk_on) and off (/trk_off).

Both nodes start together once for the module (start-up is what is slow here). The tests do not
depend on their order: the lifecycle restarts leave the tracking node active.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import pytest
import skimage.data
from helpers.images import message
from helpers.lifecycle import LifecycleClient
from helpers.node_process import (
    TEST_PARAMETERS,
    NodeProcess,
    Outputs,
    Peer,
    image_message,
    peer_session,
)
from lifecycle_msgs.msg import Transition

HAVE_VISION_MSGS = importlib.util.find_spec("vision_msgs") is not None
PHOTO = np.ascontiguousarray(skimage.data.astronaut()[::4, ::4])  # 128x128 real photo
# Overlap threshold 0: random weights then give the photo seven segments, small ones too.
SEGMENTING = (*TEST_PARAMETERS, "overlap_threshold:=0.0")
TRACKED, UNTRACKED = "/trk_on/image", "/trk_off/image"
TRACKED_OUT, UNTRACKED_OUT = "/trk_on/segmentation", "/trk_off/segmentation"
FRAMES = 4


@pytest.fixture(scope="module")
def nodes(tmp_path_factory) -> dict[str, NodeProcess]:
    folder = tmp_path_factory.mktemp("node_tracking")
    started = {
        "tracking": NodeProcess(folder / "tracking.log", *SEGMENTING, f"cache_dir:={folder}",
                                f"image_topics:=[{TRACKED}]", namespace="/tracking"),
        "untracked": NodeProcess(folder / "untracked.log", *SEGMENTING, f"cache_dir:={folder}",
                                 f"image_topics:=[{UNTRACKED}]", "tracking:=false",
                                 namespace="/untracked"),
    }
    yield started
    for process in started.values():
        process.stop()
    for process in started.values():
        assert "Traceback" not in process.output()


@pytest.fixture(scope="module")
def peer(nodes):
    """One test-side participant (DDS discovery once) that talks to the tracking node."""
    with peer_session("test_node_tracking_peer", nodes["tracking"], "/tracking") as peer:
        yield peer


class TrackedOutputs(Outputs):
    """Segments and, where vision_msgs is importable, the 2D detections, by stamp."""

    def __init__(self, peer: Peer, namespace: str) -> None:
        super().__init__(peer, namespace, images=[])
        if HAVE_VISION_MSGS:
            from vision_msgs.msg import Detection2DArray

            self._subscriptions.append(self._node.create_subscription(
                Detection2DArray, f"{namespace}/detections", self._keep("detections"), 10))


@pytest.fixture
def subscribe(peer):
    made: list[Outputs] = []
    yield lambda namespace: made.append(TrackedOutputs(peer, namespace)) or made[-1]
    for outputs in made:
        outputs.close()


def same_photo(peer: Peer, outputs: Outputs, topic: str, count: int = FRAMES,
               names: tuple[str, ...] = ("segments",)) -> list[dict[str, Any]]:
    """Publish the photo until `count` frames have come back with every output in `names`,
    one after the other; their outputs, in order."""
    assert peer.publisher_ready(topic), f"nobody subscribes to {topic}"
    return [peer.publish_until_complete(
        outputs, topic, lambda stamp: image_message(message(PHOTO, "rgb8"), stamp, "cam"),
        names, timeout=60.0)[1] for _ in range(count)]


def track_ids(frame: dict[str, Any]) -> dict[int, int]:
    """segment id -> track_id of one frame's SegmentArray."""
    return {segment.id: segment.track_id for segment in frame["segments"].segments}


def restart(nodes: dict[str, NodeProcess], peer: Peer) -> None:
    """What a lifecycle manager does to reload the tracking node: deactivate, cleanup,
    configure, activate."""
    lifecycle = LifecycleClient(peer, "/tracking/fcclip")
    lifecycle.wait(nodes["tracking"])
    for transition in (Transition.TRANSITION_DEACTIVATE, Transition.TRANSITION_CLEANUP,
                       Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE):
        assert lifecycle.transition(transition), nodes["tracking"].output()
    assert lifecycle.state() == "active"


def test_the_same_photo_keeps_every_segments_track_id_frame_after_frame(peer, subscribe):
    frames = [track_ids(frame) for frame in same_photo(peer, subscribe(TRACKED_OUT), TRACKED)]
    first = frames[0]
    assert len(first) >= 3, first
    assert min(first.values()) >= 1
    assert len(set(first.values())) == len(first)  # segment ids map one-to-one to track ids
    assert frames == [first] * FRAMES


def test_diagnostics_count_the_cameras_tracks(peer, subscribe):
    [frame] = same_photo(peer, subscribe(TRACKED_OUT), TRACKED, count=1)
    count = len(frame["segments"].segments)
    assert peer.spin_until(lambda: (peer.camera_status(TRACKED) or {}).get("tracks")
                           == str(count), 10.0), peer.camera_status(TRACKED)


@pytest.mark.skipif(not HAVE_VISION_MSGS, reason="vision_msgs is not installed here; "
                    "test_messages checks the same message with stand-in types")
def test_detection_ids_are_the_track_ids(nodes, peer, subscribe):
    outputs = subscribe(TRACKED_OUT)
    names = ("segments", "detections")
    frames = same_photo(peer, outputs, TRACKED, count=1, names=names)
    if all(s.track_id == s.id for s in frames[0]["segments"].segments):
        # The camera's first tracks: ids 1..N, as the segment ids. After a cleanup the same
        # segments get new track ids, so the two cannot be told apart by chance.
        restart(nodes, peer)
        frames = same_photo(peer, outputs, TRACKED, count=2, names=names)
    for frame in frames:
        segments = frame["segments"].segments
        assert any(s.track_id != s.id for s in segments)
        assert [d.id for d in frame["detections"].detections] == [
            str(s.track_id) for s in segments]


def test_with_tracking_off_every_track_id_is_0(nodes, peer, subscribe):
    untracked = Peer(peer.harness, "/untracked")
    untracked.wait_for_node(nodes["untracked"], timeout=120.0)
    frames = same_photo(peer, subscribe(UNTRACKED_OUT), UNTRACKED, count=2)
    for frame in frames:
        ids = track_ids(frame)
        assert len(ids) >= 3 and set(ids.values()) == {0}
    assert peer.spin_until(lambda: untracked.camera_status(UNTRACKED) is not None, 10.0)
    assert "tracks" not in untracked.camera_status(UNTRACKED)


def test_after_a_lifecycle_cleanup_the_same_photo_gets_ids_never_given_before(nodes, peer,
                                                                              subscribe):
    outputs = subscribe(TRACKED_OUT)
    before = [track_ids(frame) for frame in same_photo(peer, outputs, TRACKED, count=2)]
    restart(nodes, peer)
    after = [track_ids(frame) for frame in same_photo(peer, outputs, TRACKED, count=2)]
    assert after[0].keys() == before[0].keys()  # the same segments as before the restart
    assert min(after[0].values()) > max(before[-1].values())
    assert after[1] == after[0]  # and tracked again from there
