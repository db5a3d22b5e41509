"""Peak memory of `fcclip-ros bag` as the non-image data of a recording grows tenfold.

A recording as a robot makes it: a camera that stops after a few seconds (640x480 rgb8) while a
lidar-sized topic (--lidar-kb per message at 10 Hz) records on for --seconds. Written twice, with
1x and 10x lidar data, each chunked (zstd, as `ros2 bag record` writes) and unchunked (rosbag2's
fastwrite preset), then segmented by `fcclip-ros bag --batch-size 4` (frames wait for a batch that
never fills once the camera stops: what used to hold the rest of the bag in memory). Prints each
run's peak RSS (the child's own, from wait4) side by side, and the 10x/1x difference against the
stated bound (fcclip_ros.ros.bag.job.BUFFER_MAX_BYTES plus a reorder window).

    .venv/bin/python bench/bench_bag_memory.py [--seconds 30] [--lidar-kb 100]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import skimage.data
from mcap.writer import CompressionType, Writer
from rclpy.serialization import serialize_message
from sensor_msgs.msg import Image
from std_msgs.msg import UInt8MultiArray

from fcclip_ros.ros.bag.job import BUFFER_MAX_BYTES
from fcclip_ros.ros.bag.message_definitions import message_definition

START_NS = 1_700_000_000 * 10**9
CAMERA_FRAMES = 8  # at 10 Hz: the camera stops after 0.8 s


def write_recording(path: Path, seconds: float, lidar_bytes: int, chunked: bool) -> None:
    photo = cv2.resize(skimage.data.astronaut(), (640, 480))
    noise = np.random.default_rng(0).integers(0, 255, lidar_bytes, dtype=np.uint8)
    events = [(START_NS + i * 100_000_000, "camera", i) for i in range(CAMERA_FRAMES)]
    events += [(START_NS + i * 100_000_000 + 1, "lidar", i) for i in range(int(seconds * 10))]
    with path.open("wb") as stream:
        writer = Writer(stream, use_chunking=chunked, compression=CompressionType.ZSTD)
        writer.start(profile="ros2", library="bench")
        channels = {}
        for topic, type_name in (("/camera/image", "sensor_msgs/msg/Image"),
                                 ("/lidar/packets", "std_msgs/msg/UInt8MultiArray")):
            schema = writer.register_schema(type_name, "ros2msg",
                                            message_definition(type_name).encode())
            channels[topic] = writer.register_channel(topic, "cdr", schema,
                                                      {"offered_qos_profiles": ""})
        for log_time, kind, i in sorted(events):
            if kind == "camera":
                msg = Image(height=480, width=640, encoding="rgb8", step=640 * 3,
                            data=photo.tobytes())
                msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(log_time, 10**9)
                topic = "/camera/image"
            else:
                msg = UInt8MultiArray(data=np.roll(noise, i).tobytes())
                topic = "/lidar/packets"
            writer.add_message(channels[topic], log_time, serialize_message(msg), log_time, i)
        writer.finish()


def peak_rss_mb(recording: Path, out: Path) -> tuple[float, float]:
    """(peak RSS in MB of one `fcclip-ros bag` run, its seconds)."""
    command = [sys.executable, "-m", "fcclip_ros.cli", "bag", str(recording), "--out", str(out),
               "--model", "tiny", "--weights", "random", "--clip-weights", "random",
               "--short-side", "240", "--batch-size", "4", "--outputs", "labels", "segments"]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        sys.exit(f"bag failed ({process.returncode}): {process.stderr.read().decode()[-2000:]}")
    return usage.ru_maxrss / 1024, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the recording")
    parser.add_argument("--lidar-kb", type=int, default=100, help="1x lidar message size")
    args = parser.parse_args()
    print(f"# fcclip-ros bag peak RSS: camera {CAMERA_FRAMES} frames then stops; lidar at 10 Hz "
          f"for {args.seconds:g} s; tiny model, --batch-size 4; {os.cpu_count()} CPU cores")
    print("| input | lidar data MB | file MB | peak RSS MB | seconds |")
    print("|---|---:|---:|---:|---:|")
    peaks: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for chunked in (True, False):
            layout = "chunked (zstd)" if chunked else "unchunked (fastwrite)"
            for scale in (1, 10):
                lidar = args.lidar_kb * 1024 * scale
                recording = Path(folder) / f"in_{scale}_{chunked}.mcap"
                write_recording(recording, args.seconds, lidar, chunked)
                peak, seconds = peak_rss_mb(recording, Path(folder) / f"out_{scale}_{chunked}")
                peaks.setdefault(layout, []).append(peak)
                print(f"| {layout} | {lidar * args.seconds * 10 / 2**20:.0f} | "
                      f"{recording.stat().st_size / 2**20:.0f} | {peak:.0f} | {seconds:.1f} |",
                      flush=True)
                recording.unlink()
    for layout, (one, ten) in peaks.items():
        print(f"{layout}: 10x/1x peak RSS {ten / one:.2f}, +{ten - one:.0f} MB "
              f"(bound on buffered messages: {BUFFER_MAX_BYTES / 2**20:.0f} MB)")


if __name__ == "__main__":
    main()
