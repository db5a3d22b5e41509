"""The output of `fcclip-ros bag`, every output topic of it, read by Foxglove's own libraries:
@mcap/core and @mcap/support to read the MCAP, @foxglove/rosmsg to parse each schema and
@foxglove/rosmsg2-serialization to decode each message (test/helpers/foxglove/decode.mjs,
installed by `make setup`)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
from helpers.paths import HELPERS_DIR
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory
from mcap_ros2.writer import Writer as Ros2Writer

from fcclip_ros import cli
from fcclip_ros.outputs import FRAME_OUTPUTS, OPTIONAL_PACKAGES, OUTPUTS_BY_NAME, available
from fcclip_ros.ros.bag.message_definitions import message_definition

FOXGLOVE_DIR = HELPERS_DIR / "foxglove"
DECODE = FOXGLOVE_DIR / "decode.mjs"
NODE_PACKAGES = ("@mcap/core", "@mcap/support", "@foxglove/rosmsg",
                 "@foxglove/rosmsg2-serialization")
COLOUR, DEPTH, INFO = "/cam/color/image_raw", "/cam/depth/image_raw", "/cam/color/camera_info"
HEIGHT, WIDTH = 48, 64
FRAMES = 3
START_NS = 1_700_000_000 * 10**9
K = [50.0, 0.0, WIDTH / 2, 0.0, 50.0, HEIGHT / 2, 0.0, 0.0, 1.0]
P = [50.0, 0.0, WIDTH / 2, 0.0, 0.0, 50.0, HEIGHT / 2, 0.0, 0.0, 0.0, 1.0, 0.0]
ENGINE_ARGS = ["--model", "tiny", "--weights", "random", "--clip-weights", "random",
               "--short-side", "64", "--overlap-threshold", "0",
               "--vocabulary", "person; rocket; wall [stuff]; floor [stuff]"]


def node_and_packages() -> str:
    """The `node` executable; fails (never skips) when it or the npm packages are missing."""
    node = shutil.which("node")
    missing = [name for name in NODE_PACKAGES
               if not (FOXGLOVE_DIR / "node_modules" / name / "package.json").is_file()]
    if node is None:
        pytest.fail("no `node` on PATH: install Node.js 20 or later, then run `make setup`")
    if missing:
        pytest.fail(f"missing npm packages {', '.join(missing)} in {FOXGLOVE_DIR}: run "
                    "`make setup` (npm ci there)")
    return node


def write_rgbd_recording(path: Path) -> None:
    """The astronaut photo as a 64x48 colour camera at 10 Hz with its CameraInfo and a
    registered 16UC1 depth image (a tilted plane, 1 to 2 m) of the same stamp."""
    rgb = cv2.resize(skimage.data.astronaut(), (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA)
    depth_mm = np.linspace(1000, 2000, HEIGHT * WIDTH).reshape(HEIGHT, WIDTH).astype(np.uint16)
    depth_mm[:4, :4] = 0  # a few pixels without a reading
    with path.open("wb") as stream, Ros2Writer(stream) as writer:
        schema = {name: writer.register_msgdef(name, message_definition(name))
                  for name in ("sensor_msgs/msg/Image", "sensor_msgs/msg/CameraInfo")}
        for i in range(FRAMES):
            stamp = START_NS + i * 100_000_000
            header = {"stamp": {"sec": stamp // 10**9, "nanosec": stamp % 10**9},
                      "frame_id": "camera_color_optical_frame"}
            writer.write_message(INFO, schema["sensor_msgs/msg/CameraInfo"], {
                "header": header, "height": HEIGHT, "width": WIDTH, "k": K, "p": P,
                "distortion_model": "plumb_bob", "d": [], "r": [1, 0, 0, 0, 1, 0, 0, 0, 1]},
                stamp + 5, stamp + 5)
            writer.write_message(DEPTH, schema["sensor_msgs/msg/Image"], {
                "header": header, "height": HEIGHT, "width": WIDTH, "encoding": "16UC1",
                "is_bigendian": 0, "step": WIDTH * 2, "data": depth_mm.tobytes()},
                stamp + 10, stamp + 10)
            writer.write_message(COLOUR, schema["sensor_msgs/msg/Image"], {
                "header": header, "height": HEIGHT, "width": WIDTH, "encoding": "rgb8",
                "is_bigendian": 0, "step": WIDTH * 3, "data": rgb.tobytes()},
                stamp + 20, stamp + 20)


def message_counts(path: Path) -> dict[str, int]:
    with path.open("rb") as stream:
        summary = make_reader(stream).get_summary()
    assert summary is not None and summary.statistics is not None
    return {channel.topic: summary.statistics.channel_message_counts.get(channel_id, 0)
            for channel_id, channel in summary.channels.items()}


def decoded_by_mcap_ros2(path: Path) -> dict[str, list]:
    """Every message, decoded by mcap-ros2-support from the bag's own schemas, per topic."""
    messages: dict[str, list] = {}
    with path.open("rb") as stream:
        reader = make_reader(stream, decoder_factories=[DecoderFactory()])
        for _, channel, _, msg in reader.iter_decoded_messages():
            messages.setdefault(channel.topic, []).append(msg)
    return messages


def test_foxglove_decodes_every_message_of_every_output_topic(tmp_path, capsys):
    node = node_and_packages()
    recording = tmp_path / "rgbd.mcap"
    write_rgbd_recording(recording)
    packages = {name for name in OPTIONAL_PACKAGES if importlib.util.find_spec(name)}
    outputs = available(True, packages, FRAME_OUTPUTS)
    code = cli.main(["bag", str(recording), "--out", str(tmp_path / "out"), *ENGINE_ARGS,
                     "--cache-dir", str(tmp_path), "--topics", COLOUR, "--depth-topics", DEPTH,
                     "--camera-info-topics", INFO, "--points-stride", "4",
                     "--outputs", *outputs])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result_path = tmp_path / "out" / "out_0.mcap"

    counts = message_counts(result_path)
    latched = [o.name for o in OUTPUTS_BY_NAME.values()
               if o.latched and (not o.package or o.package in packages)]
    wanted = {f"/cam/color/segmentation/{name}" for name in (*outputs, *latched)}
    assert wanted <= set(counts), f"output topics missing from the bag: {wanted - set(counts)}"
    assert all(counts[topic] == FRAMES for topic in wanted if topic.rsplit("/", 1)[1]
               in outputs), counts
    # mcap-ros2-support, which wrote our messages from the same schemas, reads them back
    decoded = decoded_by_mcap_ros2(result_path)
    assert {topic: len(msgs) for topic, msgs in decoded.items()} == counts
    assert all(msg.segments for msg in decoded["/cam/color/segmentation/segments"])

    result = subprocess.run([node, str(DECODE), str(result_path)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode in (0, 1), result.stderr
    topics = json.loads(result.stdout)["topics"]
    assert set(topics) == set(counts)
    failures = {topic: entry.get("error") for topic, entry in topics.items()
                if "skipped" not in entry and (entry.get("error") or entry["messages"] == 0
                                               or entry["messages"] != counts[topic])}
    assert failures == {}, (
        f"Foxglove cannot read {len(failures)} topics: "
        + "; ".join(f"{topic}: {error}" for topic, error in sorted(failures.items())))
    skipped = {topic: entry["skipped"] for topic, entry in topics.items() if "skipped" in entry}
    assert skipped == {}, skipped  # every topic of this bag is ros2msg + cdr
    assert result.returncode == 0, result.stdout
