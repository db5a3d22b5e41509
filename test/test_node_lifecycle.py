"""The node as a managed node, driven over DDS with the lifecycle_msgs services as a lifecycle
manager (Nav2's, or `ros2 lifecycle set`) drives it."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from helpers.images import message
from helpers.lifecycle import LifecycleClient
from helpers.node_process import NodeProcess, Outputs, Peer, image_message, peer_session
from lifecycle_msgs.msg import Transition

PHOTO = np.ascontiguousarray(skimage.data.astronaut()[::4, ::4])
# rn50 with random weights: big enough (~0.5 GB) that freeing it shows in the process's RSS.
MANAGED = ("model:=rn50", "weights:=random", "clip_weights:=random", "input_short_side:=128",
           "vocabulary:=[mug, table]", "autostart:=false")


def resident_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def shutdown_ends_the_process_promptly(lifecycle: LifecycleClient, node: NodeProcess,
                                       state: str) -> bool:
    """The `shutdown` transition from `state` succeeds and the process exits 0 within 5 s."""
    transition = {"unconfigured": Transition.TRANSITION_UNCONFIGURED_SHUTDOWN,
                  "active": Transition.TRANSITION_ACTIVE_SHUTDOWN}[state]
    started = time.monotonic()
    assert lifecycle.transition(transition), node.output()
    assert node.process.wait(timeout=10) == 0, node.output()
    return time.monotonic() - started < 5.0


@pytest.fixture
def peer():
    with peer_session("test_lifecycle_peer", namespace="/managed") as peer:
        yield peer


def frames_arrive(peer: Peer, outputs: Outputs, seconds: float) -> int:
    """Publish a frame every 0.2 s for `seconds`; how many SegmentArrays came back."""
    before = len(outputs.frames)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        peer.publish("/managed_cam/image", image_message(message(PHOTO, "rgb8"),
                                                          peer.new_stamp(), "cam"))
        peer.spin_for(0.2)
    return len(outputs.frames) - before


def test_lifecycle_transitions_start_stop_and_free_the_model(tmp_path, peer):
    node = NodeProcess(tmp_path / "node.log", *MANAGED, "image_topics:=[/managed_cam/image]",
                       f"cache_dir:={tmp_path}", namespace="/managed")
    try:
        lifecycle = LifecycleClient(peer, "/managed/fcclip")
        lifecycle.wait(node)
        assert lifecycle.state() == "unconfigured"
        assert not peer.get_client.wait_for_service(timeout_sec=1.0)  # no engine, no service
        unconfigured_mb = resident_mb(node.process.pid)

        assert lifecycle.transition(Transition.TRANSITION_CONFIGURE), node.output()
        assert lifecycle.state() == "inactive"
        peer.wait_for_node(node)
        assert list(peer.get_vocabulary().classes) == ["mug", "table"]
        configured_mb = resident_mb(node.process.pid)
        assert configured_mb - unconfigured_mb > 300, (unconfigured_mb, configured_mb)

        outputs = Outputs(peer, "/managed_cam/segmentation", images=[])
        assert frames_arrive(peer, outputs, 2.0) == 0, "outputs while inactive"
        assert outputs.vocabularies == []  # latched topic silent until active

        assert lifecycle.transition(Transition.TRANSITION_ACTIVATE)
        assert lifecycle.state() == "active"
        assert peer.publisher_ready("/managed_cam/image")
        assert frames_arrive(peer, outputs, 6.0) > 0, node.output()
        assert peer.spin_until(lambda: bool(outputs.vocabularies), 10.0)

        assert lifecycle.transition(Transition.TRANSITION_DEACTIVATE)
        peer.spin_for(1.0)  # outputs already on their way
        assert frames_arrive(peer, outputs, 2.0) == 0, "outputs after deactivate"
        assert peer.set_vocabulary(["cup"]).success  # the model stays loaded

        assert lifecycle.transition(Transition.TRANSITION_ACTIVATE)
        assert frames_arrive(peer, outputs, 6.0) > 0, "no outputs after re-activation"
        assert {s.label for f in list(outputs.frames.values())[-1:]
                for s in f["segments"].segments} <= {"cup"}

        assert lifecycle.transition(Transition.TRANSITION_DEACTIVATE)
        assert lifecycle.transition(Transition.TRANSITION_CLEANUP)
        assert lifecycle.state() == "unconfigured"
        cleaned_mb = resident_mb(node.process.pid)
        freed = configured_mb - cleaned_mb
        assert freed > 0.6 * (configured_mb - unconfigured_mb), (configured_mb, cleaned_mb)

        assert shutdown_ends_the_process_promptly(lifecycle, node, "unconfigured")
    finally:
        node.stop()
    assert "Traceback" not in node.output()


def test_a_failed_configure_keeps_the_node_up_unconfigured_with_the_reason(tmp_path, peer):
    node = NodeProcess(tmp_path / "node.log", "model:=tiny", "clip_weights:=random",
                       "weights:=/nonexistent/fcclip.pth", "autostart:=false",
                       namespace="/managed")
    try:
        lifecycle = LifecycleClient(peer, "/managed/fcclip")
        lifecycle.wait(node)
        assert not lifecycle.transition(Transition.TRANSITION_CONFIGURE)
        assert lifecycle.state() == "unconfigured"
        assert node.process.poll() is None
        assert "configure failed" in node.output() and "no such file" in node.output()

        def engine_message() -> str:
            for array in reversed(peer.diagnostics):
                for status in array.status:
                    if status.name == "fcclip: engine":
                        return status.message
            return ""

        assert peer.spin_until(lambda: "no such file" in engine_message(), 10.0)
        assert shutdown_ends_the_process_promptly(lifecycle, node, "unconfigured")
    finally:
        node.stop()


def test_shutdown_while_active_and_streaming_is_prompt(tmp_path, peer):
    node = NodeProcess(tmp_path / "node.log", *MANAGED[:-1], "input_short_side:=480",
                       "image_topics:=[/managed_cam/image]", f"cache_dir:={tmp_path}",
                       namespace="/managed")
    try:
        lifecycle = LifecycleClient(peer, "/managed/fcclip")
        peer.wait_for_node(node, timeout=180)
        lifecycle.wait(node)
        assert lifecycle.state() == "active"  # autostart
        outputs = Outputs(peer, "/managed_cam/segmentation", images=[])
        assert peer.publisher_ready("/managed_cam/image")
        assert frames_arrive(peer, outputs, 15.0) > 0, node.output()
        peer.publish("/managed_cam/image", image_message(message(PHOTO, "rgb8"),
                                                          peer.new_stamp(), "cam"))
        assert shutdown_ends_the_process_promptly(lifecycle, node, "active")
    finally:
        node.stop()
    assert "Traceback" not in node.output()
