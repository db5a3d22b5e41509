"""The `backend` and `onnxruntime_providers` parameters in the real node process, over DDS."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import skimage.data
from helpers.images import message
from helpers.lifecycle import LifecycleClient
from helpers.node_process import NodeProcess, Outputs, image_message, peer_session
from lifecycle_msgs.msg import Transition

from fcclip_ros.export import SIDECAR_NAME

PHOTO = np.ascontiguousarray(skimage.data.astronaut()[::4, ::4])  # 128x128 real photo
TINY = ("model:=tiny", "weights:=random", "clip_weights:=random", "input_short_side:=128",
        "image_topics:=[/bk_cam/image]")


@pytest.fixture
def peer():
    with peer_session("test_backends_peer") as peer:
        yield peer


def frame(stamp: tuple[int, int]):
    return image_message(message(PHOTO, "rgb8"), stamp, "bk_cam")


def artifacts(cache: Path) -> list[Path]:
    return sorted((cache / "exported").glob(f"*/{SIDECAR_NAME}"))


def test_node_segments_with_onnxruntime_and_swaps_vocabulary_without_reexport(tmp_path, peer):
    cache = tmp_path / "cache"
    node = NodeProcess(tmp_path / "node.log", *TINY, "backend:=onnxruntime",
                       f"cache_dir:={cache}")
    try:
        peer.wait_for_node(node)
        outputs = Outputs(peer, "/bk_cam/segmentation", images=["labels"])
        assert peer.publisher_ready("/bk_cam/image")
        assert peer.get_parameter("backend") == "onnxruntime"
        _, first = peer.publish_until_complete(outputs, "/bk_cam/image", frame,
                                               ["labels", "segments"], timeout=120.0)
        [sidecar] = artifacts(cache)
        assert "-128x128-onnx-" in str(sidecar)
        exported_at = sidecar.stat().st_mtime

        assert peer.set_vocabulary(["face", "hair", "wall [stuff]"]).success
        _, swapped = peer.publish_until_complete(outputs, "/bk_cam/image", frame,
                                                 ["labels", "segments"])
        assert swapped["segments"].vocabulary_version > first["segments"].vocabulary_version
        assert all(s.class_id < 3 for s in swapped["segments"].segments)
        assert artifacts(cache) == [sidecar] and sidecar.stat().st_mtime == exported_at
    finally:
        assert node.stop() == 0, node.output()


def test_an_unavailable_execution_provider_fails_configure_with_the_reason(tmp_path, peer):
    node = NodeProcess(tmp_path / "node.log", *TINY, "backend:=onnxruntime",
                       "onnxruntime_providers:=[NoSuchExecutionProvider]", "autostart:=false",
                       f"cache_dir:={tmp_path}", namespace="/managed")
    try:
        lifecycle = LifecycleClient(peer, "/managed/fcclip")
        lifecycle.wait(node)
        assert not lifecycle.transition(Transition.TRANSITION_CONFIGURE)
        assert lifecycle.state() == "unconfigured" and node.process.poll() is None
        assert "NoSuchExecutionProvider not available" in node.output()
        assert "CPUExecutionProvider" in node.output()  # what is available
    finally:
        node.stop()
