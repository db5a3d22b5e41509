"""Stopping and failing to start, as a terminal or `ros2 launch` does it: real signals to the real
node process. ros2 launch escalates SIGINT to SIGTERM after 5 s and to SIGKILL after 10 s."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
import skimage.data
from helpers.images import message
from helpers.node_process import (
    TEST_PARAMETERS,
    NodeProcess,
    Outputs,
    Peer,
    image_message,
    peer_session,
)

LAUNCH_SIGINT_GRACE_S = 5.0
# A real photo at camera size: with rn50 at the official 800 short side, seconds of CPU work.
CAMERA_FRAME = np.ascontiguousarray(
    np.pad(skimage.data.astronaut(), ((0, 0), (128, 128), (0, 0)), mode="reflect")[:480, :640]
)


@pytest.fixture
def peer():
    with peer_session("test_signals_peer") as peer:
        yield peer


def frame(peer: Peer):
    return image_message(message(CAMERA_FRAME, "rgb8"), peer.new_stamp(), "cam")


def test_ctrl_c_during_a_slow_inference_exits_promptly_and_publishes_nothing_more(
    tmp_path, peer
):
    node = NodeProcess(
        tmp_path / "node.log", "model:=rn50", "weights:=random", "clip_weights:=random",
        "input_short_side:=800", "vocabulary:=[mug, table]", "image_topics:=[/slow/image]",
        f"cache_dir:={tmp_path}",
    )
    try:
        peer.wait_for_node(node, timeout=180)
        outputs = Outputs(peer, "/slow/segmentation", images=[])
        assert peer.publisher_ready("/slow/image")
        peer.stream("/slow/image", 2.0, frame(peer))  # the worker always has a next frame
        assert peer.spin_until(lambda: bool(outputs.frames), 180), node.output()
        seen = len(outputs.frames)
        peer.spin_for(0.5)  # the next frame's inference started when the last one was published
        assert len(outputs.frames) == seen, "a frame took under 0.5 s: nothing slow to interrupt"

        sent = time.monotonic()
        node.process.send_signal(signal.SIGINT)
        code = node.process.wait(timeout=30)
        stopped_after = time.monotonic() - sent
        peer.spin_for(1.0)
    finally:
        node.stop()
    assert code == 0, node.output()
    assert stopped_after < LAUNCH_SIGINT_GRACE_S - 1.0, (stopped_after, node.output())
    assert "Traceback" not in node.output()
    assert len(outputs.frames) == seen, "the interrupted frame was published during shutdown"


def test_repeated_signals_during_teardown_change_nothing(tmp_path, peer):
    node = NodeProcess(
        tmp_path / "node.log", *TEST_PARAMETERS, "input_short_side:=480",
        "image_topics:=[/twice/image]", f"cache_dir:={tmp_path}",
    )
    try:
        peer.wait_for_node(node)
        outputs = Outputs(peer, "/twice/segmentation", images=[])
        assert peer.publisher_ready("/twice/image")
        peer.stream("/twice/image", 10.0, frame(peer))
        assert peer.spin_until(lambda: bool(outputs.frames), 60), node.output()
        # ros2 launch without a terminal: SIGINT to the group, then its own SIGINT, then SIGTERM.
        for signum in (signal.SIGINT, signal.SIGINT, signal.SIGTERM, signal.SIGINT):
            try:
                os.kill(node.process.pid, signum)
            except ProcessLookupError:
                break
            time.sleep(0.02)
        code = node.process.wait(timeout=LAUNCH_SIGINT_GRACE_S)
    finally:
        node.stop()
    assert code == 0, node.output()
    assert "Traceback" not in node.output() and "KeyboardInterrupt" not in node.output()


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [
        (["-p", "vocabulary_preset"], "Couldn't parse parameter override rule: '-p vocab"),
        (["--params-file", "BAD_YAML"], "Couldn't parse params file"),
        (["--params-file", "/nonexistent/params.yaml"], "Couldn't parse params file"),
    ],
)
def test_malformed_ros_arguments_exit_2_with_one_line_and_no_traceback(
    tmp_path, arguments, reason
):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("/**:\n  ros__parameters:\n    [model: tiny\n")
    arguments = [str(bad_yaml) if a == "BAD_YAML" else a for a in arguments]
    node = NodeProcess(tmp_path / "node.log", ros_arguments=arguments)
    assert node.process.wait(timeout=120) == 2, node.output()
    output = node.output()
    [line] = [line for line in output.splitlines() if "cannot start" in line]
    assert reason in line and ", at /" not in line, output
    assert "Traceback" not in output, output
