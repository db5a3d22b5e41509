"""The real segmenter node in its own process, talking over real DDS to this test process.

One node (tiny model, random weights, two cameras) serves most tests; the compressed transport
and start-up failures get their own processes.
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
import pytest
import skimage.data
from helpers.images import message, mosaic, pack_422, to_16bit
from helpers.node_process import (
    IMAGE_OUTPUTS,
    LATCHED,
    TEST_PARAMETERS,
    NodeProcess,
    Outputs,
    Peer,
    compressed_message,
    decode,
    image_message,
    peer_session,
)
from helpers.paths import PARAMS_FILE
from rclpy.parameter import Parameter

from fcclip_ros.cli.node_commands import add_subcommands
from fcclip_ros.image_conversion import image_to_rgb
from fcclip_ros.msg import Vocabulary
from fcclip_ros.result import UNLABELED
from fcclip_ros.srv import SetVocabulary

CAMERA_A, CAMERA_B = "/cam_a/image", "/cam_b/image"
OUTPUTS_A, OUTPUTS_B = "/cam_a/segmentation", "/cam_b/segmentation"
PHOTO = np.ascontiguousarray(skimage.data.astronaut()[::4, ::4])  # 128x128 real photo
PLAIN_OVERLAY = {"overlay_alpha": 0.0, "overlay_boundaries": False, "overlay_names": False}


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    folder = tmp_path_factory.mktemp("node")
    process = NodeProcess(
        folder / "node.log",
        *TEST_PARAMETERS,
        f"image_topics:=[{CAMERA_A}, {CAMERA_B}]",
        f"cache_dir:={folder}",
        params_file=PARAMS_FILE,  # the shipped defaults load, then the test settings override
    )
    yield process
    process.stop()


@pytest.fixture(scope="module")
def peer(node):
    """One test-side participant for the module, so DDS discovery happens once."""
    with peer_session("test_node_peer", node) as peer:
        yield peer


@pytest.fixture
def subscribe(peer):
    """Subscribe to a camera's outputs for one test: subscribe(namespace, images=...)."""
    made: list[Outputs] = []

    def subscribe(namespace: str, images=IMAGE_OUTPUTS, embeddings: bool = False) -> Outputs:
        made.append(Outputs(peer, namespace, images, embeddings))
        return made[-1]

    yield subscribe
    peer.stop_streams()
    for subscriptions in made:
        subscriptions.close()


@pytest.fixture
def plain_overlay(peer):
    """Overlay = the converted input exactly, so tests can see the node's pixel conversion."""
    assert all(r.successful for r in peer.set_parameters(**PLAIN_OVERLAY))
    yield
    peer.set_parameters(overlay_alpha=0.5, overlay_boundaries=True, overlay_names=True)


def rgb_frame(stamp, frame_id="cam_a_optical_frame", pixels=PHOTO):
    return image_message(message(pixels, "rgb8"), stamp, frame_id)


def assert_segments_match_maps(segments, labels, instances, vocabulary_size):
    """Each segment's area, box and class agree with the label and instance images."""
    assert segments, "random weights at threshold 0 still give segments on this photo"
    for segment in segments:
        mask = instances == segment.id
        rows, cols = np.nonzero(mask)
        assert segment.area == mask.sum() > 0
        box = segment.bbox
        assert (box.x_offset, box.y_offset) == (cols.min(), rows.min())
        assert (box.width, box.height) == (np.ptp(cols) + 1, np.ptp(rows) + 1)
        assert (labels[mask] == segment.class_id).all()
        assert segment.class_id < vocabulary_size and 0.0 <= segment.score <= 1.0
    assert set(np.unique(instances).tolist()) - {0} == {s.id for s in segments}
    assert (labels[instances == 0] == UNLABELED).all()


def test_every_output_carries_the_input_header_encoding_and_resolution(peer, subscribe):
    outputs = subscribe(OUTPUTS_A)
    odd = np.ascontiguousarray(PHOTO[:97, :75])  # odd sizes catch transposed or padded outputs

    msg, frame = peer.publish_until_complete(
        outputs,
        CAMERA_A,
        lambda stamp: rgb_frame(stamp, pixels=odd),
        ["labels", "instances", "confidence", "overlay", "segments"],
    )
    encodings = {"labels": "mono16", "instances": "mono16", "confidence": "32FC1"}
    for name, encoding in (encodings | {"overlay": "rgb8"}).items():
        out = frame[name]
        assert out.header == msg.header, name
        assert (out.encoding, out.height, out.width) == (encoding, 97, 75), name
        assert decode(out).shape[:2] == (97, 75)
    assert frame["segments"].header == msg.header
    confidence = decode(frame["confidence"])
    assert confidence.min() >= 0.0 and confidence.max() <= 1.0
    owned = decode(frame["instances"]) > 0
    assert (confidence[owned] > 0).all() and (confidence[~owned] == 0).all()


def test_segments_agree_with_the_label_and_instance_images(peer, subscribe):
    outputs = subscribe(OUTPUTS_A, images=["labels", "instances"])
    _, frame = peer.publish_until_complete(
        outputs, CAMERA_A, rgb_frame, ["labels", "instances", "segments"]
    )
    vocabulary = peer.get_vocabulary()
    assert frame["segments"].vocabulary_version == vocabulary.version
    segments = frame["segments"].segments
    assert_segments_match_maps(
        segments, decode(frame["labels"]), decode(frame["instances"]), len(vocabulary.classes)
    )
    for segment in segments:
        entry = vocabulary.classes[segment.class_id]
        assert segment.label == entry.split(",")[0].strip()
        assert segment.is_thing == vocabulary.is_thing[segment.class_id]


GREY = cv2.cvtColor(PHOTO, cv2.COLOR_RGB2GRAY)
ENCODINGS = {
    "bgr8 with row padding": message(PHOTO[..., ::-1].copy(), "bgr8", padding=12),
    "mono16 big-endian": message(to_16bit(GREY), "mono16", big_endian=True, padding=2),
    "yuv422_yuy2": message(pack_422(PHOTO, "yuyv"), "yuv422_yuy2"),
    "uyvy": message(pack_422(PHOTO, "uyvy"), "uyvy"),
    "bayer_grbg8": message(mosaic(PHOTO, "grbg"), "bayer_grbg8"),
    "rgba8": message(np.dstack([PHOTO, GREY]), "rgba8"),
}


@pytest.mark.usefixtures("plain_overlay")
@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_camera_encodings_reach_the_model_as_the_right_rgb_pixels(peer, subscribe, encoding):
    fields = ENCODINGS[encoding]
    outputs = subscribe(OUTPUTS_B, images=["overlay"])
    msg, frame = peer.publish_until_complete(
        outputs, CAMERA_B, lambda stamp: image_message(fields, stamp, "cam_b"), ["overlay"]
    )
    assert frame["overlay"].header == msg.header
    np.testing.assert_array_equal(decode(frame["overlay"]), image_to_rgb(fields))


def test_malformed_images_are_logged_and_skipped_and_the_next_good_frame_is_served(
    peer, subscribe, node
):
    outputs = subscribe(OUTPUTS_B, images=[])
    assert peer.publisher_ready(CAMERA_B)
    assert peer.spin_until(lambda: peer.camera_status(CAMERA_B) is not None)
    before = int(peer.camera_status(CAMERA_B)["frames_malformed"])
    good = message(PHOTO, "rgb8")
    bad = [
        {"encoding": "jpeg"},
        {"data": good.data[:100]},
        {"step": 10},
        {"height": 0, "data": b""},
    ]
    for change in bad:
        msg = image_message(good, peer.new_stamp(), "cam_b")
        for field, value in change.items():
            setattr(msg, field, value)
        peer.publish(CAMERA_B, msg)
        peer.spin_for(0.3)  # the idle worker takes each one before the next replaces it

    peer.publish_until_complete(outputs, CAMERA_B, rgb_frame, ["segments"])
    assert peer.spin_until(
        lambda: int(peer.camera_status(CAMERA_B)["frames_malformed"]) == before + len(bad), 5.0
    ), peer.camera_status(CAMERA_B)
    assert node.process.poll() is None
    assert "skipping a malformed frame on /cam_b/image" in node.output()


def frame_counters(peer, camera: str) -> dict[str, int]:
    """The node's frame counters for `camera` from a diagnostics message newer than now."""
    seen = len(peer.diagnostics)
    assert peer.spin_until(lambda: len(peer.diagnostics) > seen, 5.0), "no diagnostics"
    status = peer.camera_status(camera)
    return {k: int(v) for k, v in status.items() if k.startswith("frames_")}


def output_counters(peer, camera: str) -> dict[str, int]:
    """Frames processed, overlays drawn and confidence maps published, from fresh diagnostics."""
    seen = len(peer.diagnostics)
    assert peer.spin_until(lambda: len(peer.diagnostics) > seen, 5.0), "no diagnostics"
    status = peer.camera_status(camera)
    keys = ("frames_processed", "overlays_drawn", "confidence_maps_published")
    return {key: int(status[key]) for key in keys}


def test_overlay_and_confidence_are_computed_only_while_someone_subscribes(peer, subscribe):
    without = subscribe(OUTPUTS_B, images=["labels"])
    peer.spin_for(1.0)  # let earlier tests' overlay/confidence subscriptions unmatch
    before = output_counters(peer, CAMERA_B)
    for _ in range(3):
        peer.publish_until_complete(without, CAMERA_B, rgb_frame, ["segments", "labels"])
    after = output_counters(peer, CAMERA_B)
    assert after["frames_processed"] >= before["frames_processed"] + 3
    assert after["overlays_drawn"] == before["overlays_drawn"]
    assert after["confidence_maps_published"] == before["confidence_maps_published"]

    with_both = subscribe(OUTPUTS_B, images=["overlay", "confidence"])
    peer.publish_until_complete(with_both, CAMERA_B, rgb_frame, ["overlay", "confidence"])
    later = output_counters(peer, CAMERA_B)
    assert later["overlays_drawn"] > after["overlays_drawn"]
    assert later["confidence_maps_published"] > after["confidence_maps_published"]


def test_two_cameras_at_different_rates_are_served_fairly_from_their_own_frames(peer, subscribe):
    out_a = subscribe(OUTPUTS_A, images=[])
    out_b = subscribe(OUTPUTS_B, images=[])
    assert peer.publisher_ready(CAMERA_A) and peer.publisher_ready(CAMERA_B)
    peer.publish_until_complete(out_a, CAMERA_A, rgb_frame, ["segments"])
    peer.publish_until_complete(out_b, CAMERA_B, rgb_frame, ["segments"])
    peer.spin_for(0.5)
    out_a.frames.clear()
    out_b.frames.clear()
    before = {camera: frame_counters(peer, camera) for camera in (CAMERA_A, CAMERA_B)}

    sent_a = peer.stream(CAMERA_A, 30.0, rgb_frame((0, 0), "a"))
    sent_b = peer.stream(CAMERA_B, 10.0, rgb_frame((0, 0), "b"))
    peer.spin_for(5.0)
    peer.stop_streams()
    stopped = time.time()
    peer.spin_for(1.0)  # the last frames
    after = {camera: frame_counters(peer, camera) for camera in (CAMERA_A, CAMERA_B)}
    counts = {
        camera: {k: after[camera][k] - before[camera][k] for k in after[camera]} for camera in after
    }

    got_a = {k: f["segments"] for k, f in out_a.frames.items()}
    got_b = {k: f["segments"] for k, f in out_b.frames.items()}
    assert set(got_a) <= set(sent_a) and set(got_b) <= set(sent_b)  # no camera gets another's
    assert {m.header.frame_id for m in got_a.values()} == {"a"}
    assert {m.header.frame_id for m in got_b.values()} == {"b"}
    for camera, got in ((CAMERA_A, got_a), (CAMERA_B, got_b)):
        frames = counts[camera]
        assert len(got) <= frames["frames_processed"] <= len(got) + 2, (camera, frames)
        assert frames["frames_received"] == frames["frames_processed"] + frames["frames_skipped"]
    # Round robin: while the model is the bottleneck each camera gets half of its time, so the
    # 10 Hz camera is not crowded out by the 30 Hz one (by arrival it would get a quarter).
    total = len(got_a) + len(got_b)
    for camera, got in ((CAMERA_A, got_a), (CAMERA_B, got_b)):
        fair = min(counts[camera]["frames_received"], total / 2)
        assert len(got) >= 0.75 * fair, (camera, counts, total)
    # Newest frame only: after the cameras stop, at most the frame in progress and one waiting
    # frame per camera come out, and nothing old.
    late = []
    for got, outputs in ((got_a, out_a), (got_b, out_b)):
        late += [key for key in got if outputs.arrival[key] > stopped + 0.5]
        ages = [outputs.arrival[key] - (key[0] + key[1] * 1e-9) for key in got]
        assert np.median(ages) < 1.0
    assert len(late) <= 3, f"a backlog was still being served: {len(late)} frames"
    assert all(stopped - (sec + nanosec * 1e-9) < 3.0 for sec, nanosec in late)
    status = peer.camera_status(CAMERA_A)
    assert float(status["input_rate_hz"]) > 0 and float(status["inference_ms"]) > 0


def test_vocabulary_swap_while_frames_stream_never_mixes_vocabularies(peer, subscribe):
    outputs = subscribe(OUTPUTS_A, images=["labels"])
    before = peer.get_vocabulary()
    vocabularies = {before.version: list(before.classes)}
    peer.stream(CAMERA_A, 10.0, rgb_frame((0, 0)))
    assert peer.spin_until(
        lambda: sum(outputs.complete(k, ["labels", "segments"]) for k in outputs.frames) >= 2
    )

    response = peer.set_vocabulary(["cat", "dog, puppy", "grass [stuff]"])
    assert response.success, response.message
    assert response.version == before.version + 1
    assert list(response.classes) == ["cat", "dog, puppy", "grass"]
    vocabularies[response.version] = list(response.classes)

    def frames_with_new_vocabulary() -> int:
        return sum(
            f["segments"].vocabulary_version == response.version
            for k, f in outputs.frames.items()
            if outputs.complete(k, ["labels", "segments"])
        )

    assert peer.spin_until(lambda: frames_with_new_vocabulary() >= 3)
    peer.stop_streams()

    latest = outputs.vocabularies[-1]
    assert (latest.version, list(latest.classes)) == (response.version, list(response.classes))
    assert (list(latest.is_thing), latest.unlabeled_id) == ([True, True, False], UNLABELED)
    versions = []
    for key in sorted(outputs.frames):
        frame = outputs.frames[key]
        if not outputs.complete(key, ["labels", "segments"]):
            continue
        version = frame["segments"].vocabulary_version
        classes = vocabularies[version]
        versions.append(version)
        for segment in frame["segments"].segments:
            assert segment.label == classes[segment.class_id].split(",")[0]
        labels = set(np.unique(decode(frame["labels"])).tolist())
        assert labels <= {s.class_id for s in frame["segments"].segments} | {UNLABELED}
    assert versions == sorted(versions) and set(versions) == set(vocabularies)

    assert peer.get_parameter("vocabulary") == ["cat", "dog, puppy", "grass [stuff]"]
    late_joiner: list[Vocabulary] = []
    topic = f"{OUTPUTS_A}/vocabulary"
    peer.node.create_subscription(Vocabulary, topic, late_joiner.append, LATCHED)
    assert peer.spin_until(lambda: bool(late_joiner), 10.0)
    assert late_joiner[0].version == response.version
    assert peer.set_vocabulary(preset="coco").success


@pytest.mark.parametrize(
    ("classes", "preset", "reason"),
    [
        ([], "", "empty request"),
        (["cat"], "coco", "either classes or a preset, not both"),
        ([], "cocoa", "unknown preset 'cocoa'"),
        (["cat", "  "], "", "class 1: blank entry"),
        (["cat", "dog", "cat"], "", "duplicate class names: 'cat' (classes 0 and 2)"),
        (["cat, , kitty"], "", "blank synonym"),
    ],
)
def test_bad_vocabulary_requests_are_refused_with_the_reason(peer, classes, preset, reason):
    before = peer.get_vocabulary()
    response = peer.set_vocabulary(classes, preset)
    assert not response.success
    assert reason in response.message
    assert (response.version, list(response.classes)) == (before.version, list(before.classes))
    assert peer.get_vocabulary().version == before.version


def test_parameters_swap_the_vocabulary_and_refuse_what_cannot_work(peer):
    before = peer.get_vocabulary().version
    [result] = peer.set_parameters(vocabulary=["red car", "road [stuff]"])
    assert result.successful, result.reason
    after = peer.vocabulary_version_reaches(before + 1)
    assert (after.version, list(after.classes)) == (before + 1, ["red car", "road"])
    assert list(after.is_thing) == [True, False]

    refusals = {
        "vocabulary": (["a", "a"], "duplicate class names"),
        "vocabulary_preset": ("nope", "unknown preset 'nope'"),
        "object_mask_threshold": (1.5, "range"),
        "model": ("rn50", "read-only"),
    }
    for name, (value, reason) in refusals.items():
        [result] = peer.set_parameters(**{name: value})
        assert not result.successful, name
        assert reason in result.reason, (name, result.reason)
    assert peer.get_vocabulary().version == before + 1
    assert peer.get_parameter("model") == "tiny"

    empty = Parameter("vocabulary", Parameter.Type.STRING_ARRAY, [])
    [result] = peer.set_parameters(empty)  # back to the preset
    assert result.successful, result.reason
    assert len(peer.vocabulary_version_reaches(before + 2).classes) == 133


def test_setting_the_preset_parameter_replaces_a_class_list_and_param_get_tells_the_truth(peer):
    old = peer.get_vocabulary().version
    [result] = peer.set_parameters(vocabulary=["mug", "table"])
    assert result.successful, result.reason
    before = peer.vocabulary_version_reaches(old + 1).version

    [result] = peer.set_parameters(vocabulary_preset="ade20k")  # `ros2 param set` does this
    assert result.successful, result.reason
    after = peer.vocabulary_version_reaches(before + 1)
    assert (after.version, len(after.classes)) == (before + 1, 150)
    assert peer.get_parameter("vocabulary") == []
    assert peer.get_parameter("vocabulary_preset") == "ade20k"
    assert peer.set_vocabulary(preset="coco").success


def test_a_preset_request_swaps_once_and_publishes_only_that_version(peer, subscribe):
    outputs = subscribe(OUTPUTS_A, images=[])
    assert peer.set_vocabulary(["mug", "table"]).success
    before = peer.get_vocabulary().version

    response = peer.set_vocabulary(preset="cityscapes")
    assert response.success and response.version == before + 1, response.message
    in_force = peer.get_vocabulary()
    assert (in_force.version, list(in_force.classes)) == (response.version, list(response.classes))
    assert peer.get_parameter("vocabulary") == []
    assert peer.get_parameter("vocabulary_preset") == "cityscapes"
    peer.spin_for(1.0)
    published = [v.version for v in outputs.vocabularies if v.version > before]
    assert published == [before + 1]
    assert peer.set_vocabulary(preset="coco").success


def set_vocabulary_request(negatives=(), thresholds=(),
                           classes=("cat", "dog, puppy", "grass [stuff]")) -> SetVocabulary.Request:
    return SetVocabulary.Request(classes=list(classes), negative_classes=list(negatives),
                                 class_thresholds=list(thresholds))


def test_negatives_and_class_thresholds_swap_together_and_bad_ones_change_nothing(
        peer, subscribe):
    outputs = subscribe(OUTPUTS_A, images=["labels"])
    assert peer.call(peer.set_client, set_vocabulary_request()).success
    before = peer.get_vocabulary()
    refusals = [
        (["cat"], [], "negative class 0 ('cat') is also a class: 'cat' is a synonym of class 0"),
        (["box", " "], [], "negative classes: class 1: blank entry"),
        ([], [0.5], "1 class thresholds given for 3 classes"),
        ([], [0.0, 2.0, 0.0], "class threshold 2 of class 1 ('dog') is outside 0..1"),
    ]
    for negatives, thresholds, reason in refusals:
        response = peer.call(peer.set_client, set_vocabulary_request(negatives, thresholds))
        assert not response.success and reason in response.message, response.message
        assert response.version == before.version
    for name, value, reason in [("class_thresholds", ["sofa=0.5"], "'sofa' is not a class name"),
                                ("class_thresholds", ["dog=1.5"], "1.5 is outside 0..1"),
                                ("negative_vocabulary", ["puppy"], "is also a class"),
                                ("negative_vocabulary", [""], "blank entry")]:
        [result] = peer.set_parameters(**{name: value})
        assert not result.successful and reason in result.reason, (name, result.reason)
    assert peer.get_vocabulary().version == before.version
    assert peer.get_parameter("negative_vocabulary") == []

    response = peer.call(peer.set_client, set_vocabulary_request(
        ["poster, picture", "statue"], [0.0, 0.25, 0.0]))
    assert response.success and response.version == before.version + 1, response.message
    assert "2 negative classes, 1 class thresholds" in response.message
    assert list(response.classes) == ["cat", "dog, puppy", "grass"]
    assert peer.spin_until(lambda: outputs.vocabularies[-1].version == response.version)
    published = outputs.vocabularies[-1]
    assert list(published.classes) == ["cat", "dog, puppy", "grass"]
    assert list(published.negative_classes) == ["poster, picture", "statue"]
    assert list(published.class_thresholds) == [0.0, 0.25, 0.0]
    assert peer.get_parameter("negative_vocabulary") == ["poster, picture", "statue"]
    assert peer.get_parameter("class_thresholds") == ["dog=0.25"]
    _, frame = peer.publish_until_complete(outputs, CAMERA_A, rgb_frame, ["labels", "segments"])
    assert frame["segments"].vocabulary_version == response.version
    assert {s.class_id for s in frame["segments"].segments} <= {0, 1, 2}
    assert set(np.unique(decode(frame["labels"])).tolist()) <= {0, 1, 2, UNLABELED}

    [result] = peer.set_parameters(vocabulary=["cat", "horse"])  # dog=0.25 has no class left
    assert not result.successful
    assert "'dog' is not a class name" in result.reason
    assert "in force must fit the new classes: change them first" in result.reason
    [result] = peer.set_parameters(negative_vocabulary=["statue"])
    assert result.successful, result.reason
    assert peer.vocabulary_version_reaches(response.version + 1).version == response.version + 1
    assert peer.spin_until(lambda: list(outputs.vocabularies[-1].negative_classes) == ["statue"])
    assert peer.set_vocabulary(preset="coco").success  # replaces negatives and thresholds too
    assert peer.get_parameter("negative_vocabulary") == []
    assert peer.get_parameter("class_thresholds") == []


def test_object_mask_threshold_set_at_runtime_reaches_the_model(peer, subscribe):
    outputs = subscribe(OUTPUTS_A, images=["labels", "instances"])
    names = ["labels", "instances", "segments"]
    try:
        assert all(r.successful for r in peer.set_parameters(object_mask_threshold=1.0))
        _, frame = peer.publish_until_complete(outputs, CAMERA_A, rgb_frame, names)
        assert frame["segments"].segments == []  # no class probability is above 1
        assert (decode(frame["labels"]) == UNLABELED).all()
        assert (decode(frame["instances"]) == 0).all()
    finally:
        assert all(r.successful for r in peer.set_parameters(object_mask_threshold=0.0))
    _, frame = peer.publish_until_complete(outputs, CAMERA_A, rgb_frame, names)
    assert frame["segments"].segments


def test_slow_swaps_hold_no_executor_thread_and_a_second_one_is_refused_as_busy(peer, subscribe):
    outputs = subscribe(OUTPUTS_A, images=[])
    before = peer.get_vocabulary()
    peer.stream(CAMERA_A, 15.0, rgb_frame((0, 0)))
    assert peer.spin_until(lambda: len(outputs.frames) >= 2)

    many = [f"household object number {i}" for i in range(600)]  # uncached: seconds to encode
    swap = peer.set_client.call_async(SetVocabulary.Request(classes=many))
    try:
        assert peer.spin_until(lambda: "busy" in _busy_reason(peer), 10.0), "the swap never started"
        others = [peer.set_client.call_async(SetVocabulary.Request(preset=p))
                  for p in ("ade20k", "cityscapes", "pascal_voc")]
        assert peer.spin_until(lambda: all(f.done() for f in others), 5.0)
        for other in others:
            assert not other.result().success and other.result().message.startswith("busy:")
            assert other.result().version == before.version
        [by_parameter] = peer.set_parameters(vocabulary_preset="lvis")
        assert not by_parameter.successful and by_parameter.reason.startswith("busy:")

        # The swap's reply and a later GetVocabulary reply travel on separate clients, so the node
        # may already answer with the new version before `swap` is done here: judge the answers.
        served_during_swap, latencies, versions = set(), [], []
        while not swap.done():
            start = time.monotonic()
            versions.append(peer.get_vocabulary().version)
            latencies.append(time.monotonic() - start)
            if versions[-1] == before.version:
                served_during_swap |= {
                    k
                    for k, f in outputs.frames.items()
                    if f["segments"].vocabulary_version == before.version
                }
                assert peer.get_parameter("overlap_threshold") == pytest.approx(0.8)
            peer.spin_for(0.1)

        assert swap.result().success and swap.result().version == before.version + 1
        # the old vocabulary until the swap is done, then the new one, never a mix
        assert set(versions) <= {before.version, before.version + 1}, versions
        assert versions == sorted(versions), versions
        assert len(latencies) >= 3, "the swap was too quick to test anything"
        assert sorted(latencies)[len(latencies) // 2] < 0.1, latencies
        assert max(latencies) < 0.5, latencies
        assert len(served_during_swap) >= 3, "frames stopped while the vocabulary was encoded"
    finally:
        peer.stop_streams()
        assert peer.spin_until(swap.done, 60.0)
        assert peer.set_vocabulary(preset="coco").success


def _busy_reason(peer: Peer) -> str:
    """What a request for an unknown preset is told: busy, or else that the preset is unknown
    (either way nothing changes)."""
    return peer.set_vocabulary(preset="no such preset").message


def test_embeddings_are_published_only_while_subscribed_one_unit_row_per_segment(peer, subscribe):
    outputs = subscribe(OUTPUTS_A, images=[], embeddings=True)
    _, frame = peer.publish_until_complete(outputs, CAMERA_A, rgb_frame, ["segments", "embeddings"])
    segments, embeddings = frame["segments"], frame["embeddings"]
    assert embeddings.header == segments.header
    assert embeddings.vocabulary_version == segments.vocabulary_version
    assert list(embeddings.segment_ids) == [s.id for s in segments.segments]
    assert embeddings.model == "tiny" and embeddings.dimension > 0
    rows = np.asarray(embeddings.data, np.float32).reshape(-1, embeddings.dimension)
    assert rows.shape[0] == len(segments.segments) > 0
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)

    outputs.close()
    peer.spin_for(1.5)  # diagnostics come at 1 Hz: one from after the last embeddings
    published = int(peer.camera_status(CAMERA_A)["embedding_arrays_published"])
    assert published >= 1
    quiet = subscribe(OUTPUTS_A, images=[])
    peer.publish_until_complete(quiet, CAMERA_A, rgb_frame, ["segments"])
    peer.publish_until_complete(quiet, CAMERA_A, rgb_frame, ["segments"])
    peer.spin_for(1.5)  # diagnostics come at 1 Hz
    assert int(peer.camera_status(CAMERA_A)["embedding_arrays_published"]) == published


def test_query_scores_the_latest_frame_from_its_kept_embeddings(peer, subscribe):
    outputs = subscribe(OUTPUTS_A, images=[])
    peer.publish_until_complete(outputs, CAMERA_A, rgb_frame, ["segments"])
    processed = settled_frames_processed(peer, CAMERA_A)
    latest = outputs.frames[max(outputs.frames)]  # the newest stamp: the last frame served

    response = peer.query(["person", "a red mug, a coffee cup"], camera=CAMERA_A, top_k=2)
    assert response.success, response.message
    assert [(r.camera, r.text) for r in response.results] == [
        (CAMERA_A, "person"), (CAMERA_A, "a red mug, a coffee cup")]
    ids = {s.id for s in latest["segments"].segments}
    for result in response.results:
        assert result.header == latest["segments"].header
        assert 0 < len(result.segment_ids) <= 2 and set(result.segment_ids) <= ids
        assert list(result.scores) == sorted(result.scores, reverse=True)
        assert all(-1.0 <= score <= 1.0 for score in result.scores)
    every_camera = peer.query(["person"])  # each camera that has segmented a frame answers
    assert every_camera.success and CAMERA_A in {r.camera for r in every_camera.results}
    assert settled_frames_processed(peer, CAMERA_A) == processed  # nothing was run again


def settled_frames_processed(peer: Peer, camera: str) -> str:
    """The camera's frames_processed once two diagnostics a second apart agree."""
    previous = None
    for _ in range(30):
        peer.spin_for(1.1)
        current = peer.camera_status(camera)["frames_processed"]
        if current == previous:
            return current
        previous = current
    raise AssertionError(f"{camera} kept processing frames")


@pytest.mark.parametrize(
    ("texts", "camera", "reason"),
    [
        ([], "", "no text given"),
        (["mug", "  "], "", "text 1 is blank"),
        (["mug"] * 65, "", "65 texts given; at most 64"),
        (["mug"], "/nobody/image", "unknown camera '/nobody/image'"),
    ],
)
def test_bad_queries_are_refused_with_the_reason(peer, texts, camera, reason):
    response = peer.query(texts, camera=camera)
    assert not response.success and reason in response.message, response.message
    assert list(response.results) == []


def run_command(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="fcclip-ros")
    add_subcommands(parser.add_subparsers(required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_command_line_gets_and_sets_the_vocabulary_of_the_running_node(peer, capsys):
    version = peer.get_vocabulary().version
    assert run_command("get-vocabulary", "--timeout", "20") == 0
    printed = capsys.readouterr().out
    assert f"vocabulary v{version}: 133 classes" in printed and "thing person" in printed

    assert run_command("set-vocabulary", "mug, cup", "table", "--timeout", "20") == 0
    printed = capsys.readouterr().out
    assert f"vocabulary v{version + 1}" in printed and "0  mug, cup" in printed

    assert run_command("set-vocabulary", "mug", "mug", "--timeout", "20") == 1
    assert "refused: duplicate class names" in capsys.readouterr().err
    assert run_command("set-vocabulary", "--preset", "coco", "--timeout", "20") == 0
    assert run_command("get-vocabulary", "--namespace", "/nobody", "--timeout", "1") == 1
    assert "no service /nobody/get_vocabulary" in capsys.readouterr().err


def test_command_line_sets_negatives_and_class_thresholds_of_the_running_node(peer, capsys):
    version = peer.get_vocabulary().version
    assert run_command("set-vocabulary", "mug, cup", "table", "--negative", "plate; bowl, dish",
                       "--class-threshold", "table=0.4", "--timeout", "20") == 0
    assert f"vocabulary v{version + 1}" in capsys.readouterr().out
    assert peer.get_parameter("negative_vocabulary") == ["plate", "bowl, dish"]
    assert peer.get_parameter("class_thresholds") == ["table=0.4"]

    assert run_command("set-vocabulary", "mug", "--class-threshold", "sofa=0.4") == 2
    assert "'sofa' is not a class name" in capsys.readouterr().err
    assert run_command("set-vocabulary", "mug", "--negative", "mug", "--timeout", "20") == 1
    assert "refused: negative class 0 ('mug') is also a class" in capsys.readouterr().err
    assert peer.get_vocabulary().version == version + 1
    assert run_command("set-vocabulary", "--preset", "coco", "--timeout", "20") == 0


def test_command_line_queries_the_latest_frame(peer, subscribe, capsys):
    outputs = subscribe(OUTPUTS_A, images=[])
    peer.publish_until_complete(outputs, CAMERA_A, rgb_frame, ["segments"])
    assert run_command("query", "person", "a red mug", "--camera", CAMERA_A, "--top-k", "1",
                       "--timeout", "20") == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("2 texts scored on the latest frame of")
    assert printed[1].startswith(f"{CAMERA_A} @ ") and "'person': segment " in printed[1]
    assert "'a red mug': segment " in printed[2]
    assert run_command("query", "mug", "--camera", "/nobody/image", "--timeout", "20") == 1
    assert "refused: unknown camera '/nobody/image'" in capsys.readouterr().err


def test_random_weights_are_announced_loudly(peer, node):
    assert "RANDOM weights" in node.output() and "MEANINGLESS" in node.output()
    in_force = peer.get_vocabulary()  # earlier tests in this module may have swapped it

    def engine_values() -> dict[str, str]:
        for array in reversed(peer.diagnostics):
            for status in array.status:
                if status.name == "fcclip: engine":
                    assert status.level == status.WARN and "RANDOM" in status.message
                    return {kv.key: kv.value for kv in status.values}
        return {}

    # Diagnostics come at 1 Hz: wait for one that reports the vocabulary now in force.
    assert peer.spin_until(
        lambda: engine_values().get("vocabulary_version") == str(in_force.version)
    )
    values = engine_values()
    assert values["device"] == "cpu"
    assert values["dds_transport"] == "Fast DDS builtin transports DEFAULT, localhost discovery"
    assert int(values["vocabulary_size"]) == len(in_force.classes)


@pytest.fixture
def compressed_node(tmp_path):
    """A second node, started through `fcclip-ros run` as a user without `ros2 run` would."""
    node = NodeProcess(
        tmp_path / "node.log",
        *TEST_PARAMETERS,
        "transport:=compressed",
        "image_topics:=[/cam_c/image]",
        f"cache_dir:={tmp_path}",
        namespace="/c",  # beside the module's node, whose services are at /
        params_file=PARAMS_FILE,
        run_command=True,  # `fcclip-ros run --params-file F --ros-args ...`
    )
    yield node
    node.stop()


def test_compressed_transport_decodes_png_and_jpeg_and_ctrl_c_stops_cleanly(ros, compressed_node):
    node = compressed_node
    peer = Peer(ros, namespace="/c")
    peer.wait_for_node(node)
    assert all(r.successful for r in peer.set_parameters(**PLAIN_OVERLAY))
    outputs = Outputs(peer, "/cam_c/segmentation", images=["labels", "overlay"])
    bgr = np.ascontiguousarray(PHOTO[..., ::-1])

    def encoded(extension: str, fmt: str):
        data = cv2.imencode(extension, bgr)[1].tobytes()
        return lambda stamp: compressed_message(data, fmt, stamp, "cam_c")

    topic = "/cam_c/image/compressed"
    msg, frame = peer.publish_until_complete(
        outputs, topic, encoded(".png", "rgb8; png compressed bgr8"), ["overlay", "segments"]
    )
    assert frame["overlay"].header == msg.header
    np.testing.assert_array_equal(decode(frame["overlay"]), PHOTO)  # PNG is lossless
    _, frame = peer.publish_until_complete(
        outputs, topic, encoded(".jpg", "jpeg"), ["overlay", "labels", "segments"]
    )
    assert np.abs(decode(frame["overlay"]).astype(int) - PHOTO).mean() < 6
    assert peer.node.count_subscribers("/cam_c/image") == 0

    peer.publish(topic, compressed_message(b"\xff\xd8 garbage", "jpeg", peer.new_stamp(), "c"))
    peer.spin_for(0.5)
    peer.publish_until_complete(outputs, topic, encoded(".png", "png"), ["segments"])
    assert "skipping a malformed frame on /cam_c/image/compressed" in node.output()

    assert node.stop() == 0
    assert "Traceback" not in node.output()


def test_start_up_errors_exit_non_zero_with_the_reason_and_no_traceback(tmp_path):
    cases = {  # one engine error, one node configuration error
        "weights": ("weights:=/nonexistent/fcclip.pth", "no such file"),
        "topics": ("image_topics:=[left/image, left/image_raw]", "would both publish to left/"),
    }
    processes = {
        name: NodeProcess(tmp_path / f"{name}.log", "model:=tiny", "clip_weights:=random", value)
        for name, (value, _) in cases.items()
    }
    try:
        for name, process in processes.items():
            assert process.process.wait(timeout=120) == 1, process.output()
            output = process.output()
            assert "cannot start" in output and cases[name][1] in output, output
            assert "Traceback" not in output, output
    finally:
        for process in processes.values():
            process.stop()


def test_without_pre_set_callbacks_a_preset_beside_classes_is_refused_with_the_reason():
    """Humble's rclpy has no pre-set parameter callbacks, so nothing clears the class list when
    the preset is set alone: that must be refused, not silently shadowed by the classes."""
    import rclpy

    from fcclip_ros.ros.node import SegmenterNode

    context = rclpy.Context()
    rclpy.init(context=context, args=["test", "--ros-args", "-p", "vocabulary:=[mug]"])
    try:
        node = SegmenterNode(context=context)  # unconfigured: no engine is built
        result = node._on_set_parameters([Parameter("vocabulary_preset", value="ade20k")])
        assert not result.successful and "take precedence over a preset" in result.reason
        both = [Parameter("vocabulary_preset", value="ade20k"),
                Parameter("vocabulary", Parameter.Type.STRING_ARRAY, [])]
        assert node._on_set_parameters(both).successful
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
