"""What a mapping stack receives from the real node over real DDS, decoded as it decodes it: the
packed `semantic` image (Hydra), `label_colors` (Kimera), `features` (semantic_inference's
FeatureImage, where importable), and the consumer fixes of the vision_msgs and RViz outputs: an
empty detections_3d for a frame without depth, LabelInfo's threshold, markers taken out of RViz
when the node deactivates.

One node for the module, with tracking on and a depth topic that never publishes (so every
frame is a frame without depth).
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
    LATCHED,
    TEST_PARAMETERS,
    NodeProcess,
    Outputs,
    Peer,
    decode,
    image_message,
    peer_session,
)
from lifecycle_msgs.msg import Transition
from visualization_msgs.msg import Marker, MarkerArray

from fcclip_ros.overlay import class_color
from fcclip_ros.result import NO_INSTANCE

HAVE_VISION_MSGS = importlib.util.find_spec("vision_msgs") is not None
HAVE_FEATURES = importlib.util.find_spec("semantic_inference_msgs") is not None
PHOTO = np.ascontiguousarray(skimage.data.astronaut()[::4, ::4])  # 128x128 real photo
TOPIC, OUT = "/mapping/image", "/mapping/segmentation"
IMAGES = ("labels", "instances", "semantic", "label_colors")


@pytest.fixture(scope="module")
def node(tmp_path_factory) -> NodeProcess:
    folder = tmp_path_factory.mktemp("node_mapping")
    process = NodeProcess(folder / "node.log", *TEST_PARAMETERS, "overlap_threshold:=0.0",
                          f"cache_dir:={folder}", f"image_topics:=[{TOPIC}]",
                          "depth_topics:=[/mapping/depth]", "depth_max_delay_s:=0.05",
                          namespace="/mapper")
    yield process
    process.stop()
    assert "Traceback" not in process.output()


@pytest.fixture(scope="module")
def peer(node):
    with peer_session("test_node_mapping_peer", node, "/mapper") as peer:
        yield peer


class MappingOutputs(Outputs):
    """The image outputs a map reads, the segments and embeddings, and where their packages
    are importable the FeatureImage and the vision_msgs outputs."""

    def __init__(self, peer: Peer) -> None:
        super().__init__(peer, OUT, images=IMAGES, embeddings=True)
        self.label_infos: list[Any] = []
        self.markers: list[MarkerArray] = []
        extra: list[tuple[type, str]] = []
        if HAVE_FEATURES:
            from semantic_inference_msgs.msg import FeatureImage

            extra.append((FeatureImage, "features"))
        if HAVE_VISION_MSGS:
            from vision_msgs.msg import Detection3DArray, LabelInfo

            extra.append((Detection3DArray, "detections_3d"))
            self._subscriptions.append(self._node.create_subscription(
                LabelInfo, f"{OUT}/label_info", self.label_infos.append, LATCHED))
        self._subscriptions += [self._node.create_subscription(kind, f"{OUT}/{name}",
                                                               self._keep(name), 10)
                                for kind, name in extra]
        self._subscriptions.append(self._node.create_subscription(
            MarkerArray, f"{OUT}/markers", self.markers.append, 10))
        self.names = ("segments", "embeddings", *IMAGES, *(name for _, name in extra))


@pytest.fixture
def outputs(peer):
    made = MappingOutputs(peer)
    yield made
    made.close()


def one_frame(peer: Peer, outputs: MappingOutputs) -> dict[str, Any]:
    assert peer.publisher_ready(TOPIC), f"nobody subscribes to {TOPIC}"
    return peer.publish_until_complete(
        outputs, TOPIC, lambda stamp: image_message(message(PHOTO, "rgb8"), stamp, "cam"),
        outputs.names, timeout=90.0)[1]


def test_hydra_decodes_labels_and_track_ids_from_the_published_semantic_image(peer, outputs):
    frame = one_frame(peer, outputs)
    segments = frame["segments"].segments
    assert len(segments) >= 3 and all(s.track_id >= 1 for s in segments)
    values = decode(frame["semantic"]).astype(np.int32)
    assert frame["semantic"].header == frame["labels"].header
    labels, instances = decode(frame["labels"]), decode(frame["instances"])
    assert ((values & 0xFFFF) == labels).all()
    track_of = {s.id: s.track_id for s in segments} | {NO_INSTANCE: 0}
    assert ((values >> 16) == np.vectorize(track_of.get)(instances)).all()


def test_label_colors_are_the_class_colours_of_the_segments(peer, outputs):
    frame = one_frame(peer, outputs)
    colours, instances = decode(frame["label_colors"]), decode(frame["instances"])
    for segment in frame["segments"].segments:
        assert (colours[instances == segment.id] == class_color(segment.label)).all()


@pytest.mark.skipif(not HAVE_FEATURES, reason="semantic_inference_msgs is not installed here "
                    "(the real_ros venv has it); test_mapping_outputs checks the message with "
                    "stand-in types")
def test_feature_image_rows_equal_the_embeddings_output(peer, outputs):
    frame = one_frame(peer, outputs)
    features, embeddings = frame["features"], frame["embeddings"]
    assert list(features.mask_ids) == list(embeddings.segment_ids)
    rows = np.array([np.asarray(f.data, np.float32) for f in features.features])
    assert (rows.ravel() == np.asarray(embeddings.data, np.float32)).all()
    assert (decode(features.image) == decode(frame["instances"])).all()


@pytest.mark.skipif(not HAVE_VISION_MSGS, reason="vision_msgs is not installed here; "
                    "test_messages checks the builders with stand-in types")
def test_a_frame_without_depth_gets_an_empty_detections_3d(peer, outputs):
    frame = one_frame(peer, outputs)
    assert list(frame["detections_3d"].detections) == []
    assert frame["detections_3d"].header == frame["labels"].header


@pytest.mark.skipif(not HAVE_VISION_MSGS, reason="vision_msgs is not installed here; "
                    "test_messages checks the builders with stand-in types")
def test_label_info_carries_the_object_mask_threshold_in_force(peer, outputs):
    assert peer.spin_until(lambda: outputs.label_infos, 20.0)
    assert outputs.label_infos[-1].threshold == pytest.approx(0.0)
    try:
        assert peer.set_parameters(object_mask_threshold=0.3)[0].successful
        assert peer.spin_until(lambda: outputs.label_infos[-1].threshold == pytest.approx(0.3),
                               20.0)
    finally:
        peer.set_parameters(object_mask_threshold=0.0)


def test_deactivating_takes_the_markers_out_of_rviz(node, peer, outputs):
    one_frame(peer, outputs)
    lifecycle = LifecycleClient(peer, "/mapper/fcclip")
    lifecycle.wait(node)
    try:
        assert lifecycle.transition(Transition.TRANSITION_DEACTIVATE), node.output()
        # Not a frame's markers (a frame without depth also sends a lone DELETEALL): those
        # carry the frame's header, stamped by this peer, in frame "cam".
        assert peer.spin_until(lambda: any(
            [m.action for m in array.markers] == [Marker.DELETEALL]
            and array.markers[0].header.frame_id != "cam" for array in outputs.markers),
            10.0), outputs.markers
    finally:
        assert lifecycle.transition(Transition.TRANSITION_ACTIVATE), node.output()
