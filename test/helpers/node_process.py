"""The segmenter node in its own process, and a test-side peer that talks to it over DDS.

The DDS domain is chosen at random per test session by conftest.py (imported first), and
inherited by the node processes started here.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.parameter import Parameter, parameter_value_to_python
from rclpy.parameter_client import AsyncParameterClient
from rclpy.qos import DurabilityPolicy, QoSProfile
from sensor_msgs.msg import CompressedImage, Image

from fcclip_ros.msg import SegmentArray, SegmentEmbeddings, Vocabulary
from fcclip_ros.srv import GetVocabulary, Query, SetVocabulary
from helpers.ros_harness import RosHarness

# The real node with the small test configuration and random weights: fast on a CPU.
TEST_PARAMETERS = (
    "model:=tiny",
    "weights:=random",
    "clip_weights:=random",
    "input_short_side:=128",
)
IMAGE_OUTPUTS = {"labels": Image, "instances": Image, "confidence": Image, "overlay": Image}
LATCHED = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)


# `fcclip-ros ARGS` without depending on the console script being installed.
RUN_COMMAND = (
    "import argparse, sys; from fcclip_ros.cli.node_commands import add_subcommands; "
    "parser = argparse.ArgumentParser(); add_subcommands(parser.add_subparsers(required=True)); "
    "args = parser.parse_args(); sys.exit(args.func(args))"
)


class NodeProcess:
    """The node started as a user would, its output captured in a file.

    `python -m fcclip_ros.ros.main --ros-args ...`, or with `run_command` `fcclip-ros run
    --params-file F --ros-args ...`; `ros_arguments` are passed after --ros-args as they are.
    """

    def __init__(
        self,
        log: Path,
        *parameters: str,
        namespace: str = "/",
        params_file: Path | None = None,
        run_command: bool = False,
        ros_arguments: Iterable[str] = (),
    ) -> None:
        self.log = log
        if run_command:
            args = [sys.executable, "-c", RUN_COMMAND, "run"]
            args += ["--params-file", str(params_file)] if params_file else []
            args += ["--ros-args"]
        else:
            args = [sys.executable, "-m", "fcclip_ros.ros.main", "--ros-args"]
            args += ["--params-file", str(params_file)] if params_file else []
        args += ["-r", f"__ns:={namespace}", *ros_arguments]
        for parameter in parameters:
            args += ["-p", parameter]
        with open(log, "w") as out:
            self.process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text()

    def stop(self, timeout: float = 30.0) -> int:
        """Ctrl-C, as a user would; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise


def image_message(fields: Any, stamp: tuple[int, int], frame_id: str) -> Image:
    """A sensor_msgs/Image from an object with the Image fields (test_image_conversion.message)."""
    msg = Image(
        height=fields.height,
        width=fields.width,
        encoding=fields.encoding,
        is_bigendian=fields.is_bigendian,
        step=fields.step,
        data=bytes(fields.data),
    )
    msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
    msg.header.frame_id = frame_id
    return msg


def stamp_key(header: Any) -> tuple[int, int]:
    return header.stamp.sec, header.stamp.nanosec


class Peer:
    """The test side: publishes camera frames, collects the node's outputs, calls its services."""

    def __init__(self, harness: RosHarness, namespace: str = "") -> None:
        """Talks to the node `fcclip` in `namespace` ("" or e.g. "/robot")."""
        self.harness = harness
        self.node = harness.node
        self.set_client = self.node.create_client(SetVocabulary, f"{namespace}/set_vocabulary")
        self.get_client = self.node.create_client(GetVocabulary, f"{namespace}/get_vocabulary")
        self.query_client = self.node.create_client(Query, f"{namespace}/query")
        self.parameters = AsyncParameterClient(self.node, f"{namespace}/fcclip")
        self.diagnostics: list[DiagnosticArray] = []
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 10)
        self._publishers: dict[tuple[str, type], Any] = {}
        self._last_stamp_ns = 0
        self._timers: list[Any] = []

    def spin_until(self, condition: Callable[[], bool], timeout: float = 20.0) -> bool:
        return self.harness.spin_until(condition, timeout)

    def spin_for(self, seconds: float) -> None:
        self.harness.spin_until(lambda: False, seconds)

    def wait_for_node(self, node: NodeProcess, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.get_client.service_is_ready():
            assert node.process.poll() is None, "node exited:\n" + node.output()
            assert time.monotonic() < deadline, "node not ready:\n" + node.output()
            self.get_client.wait_for_service(timeout_sec=0.5)

    def new_stamp(self) -> tuple[int, int]:
        """Now, made unique, so outputs can be matched to the frame they came from."""
        now = self.node.get_clock().now().nanoseconds
        self._last_stamp_ns = max(now, self._last_stamp_ns + 1)
        sec, nanosec = divmod(self._last_stamp_ns, 10**9)
        return sec, nanosec

    def publish(self, topic: str, msg: Any) -> None:
        key = (topic, type(msg))
        if key not in self._publishers:
            self._publishers[key] = self.node.create_publisher(type(msg), topic, 10)
        self._publishers[key].publish(msg)

    def publisher_ready(self, topic: str, message_type: type = Image) -> bool:
        """True once the node has subscribed (publish before that and the frame is lost)."""
        key = (topic, message_type)
        if key not in self._publishers:
            self._publishers[key] = self.node.create_publisher(message_type, topic, 10)
        return self.spin_until(lambda: self._publishers[key].get_subscription_count() > 0, 20.0)

    def call(self, client: Any, request: Any, timeout: float = 30.0) -> Any:
        future = client.call_async(request)
        assert self.spin_until(future.done, timeout), f"{client.srv_name} did not answer"
        return future.result()

    def set_vocabulary(self, classes: Iterable[str] = (), preset: str = "") -> Any:
        request = SetVocabulary.Request(classes=list(classes), preset=preset)
        return self.call(self.set_client, request)

    def get_vocabulary(self) -> Any:
        return self.call(self.get_client, GetVocabulary.Request())

    def query(self, texts: Iterable[str], camera: str = "", top_k: int = 0) -> Any:
        request = Query.Request(texts=list(texts), camera=camera, top_k=top_k)
        return self.call(self.query_client, request)

    def vocabulary_version_reaches(self, version: int, timeout: float = 30.0) -> Any:
        """The vocabulary in force once it has `version` (parameter swaps encode in the
        background); fails the test if it does not get there in time."""
        deadline = time.monotonic() + timeout
        while (in_force := self.get_vocabulary()).version < version:
            assert time.monotonic() < deadline, f"still v{in_force.version}, waiting for v{version}"
            self.spin_for(0.05)
        return in_force

    def set_parameters(self, *parameters: Parameter, **values: Any) -> list[Any]:
        """Results (successful, reason) of setting each parameter on the node."""
        parameters += tuple(Parameter(name, value=value) for name, value in values.items())
        future = self.parameters.set_parameters(list(parameters))
        assert self.spin_until(future.done, 30.0), "set_parameters did not answer"
        return list(future.result().results)

    def get_parameter(self, name: str) -> Any:
        future = self.parameters.get_parameters([name])
        assert self.spin_until(future.done, 30.0), "get_parameters did not answer"
        return parameter_value_to_python(future.result().values[0])

    def publish_until_complete(
        self,
        outputs: Outputs,
        topic: str,
        make: Callable[[tuple[int, int]], Any],
        names: Iterable[str],
        timeout: float = 40.0,
    ) -> tuple[Any, dict[str, Any]]:
        """Publish fresh frames until one has every output in `names`; (input, its outputs).

        Outputs of the first frames can be lost while DDS is still matching endpoints, so
        this retries with a new stamp instead of waiting forever for one frame.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = make(self.new_stamp())
            self.publish(topic, msg)
            key = stamp_key(msg.header)
            if self.spin_until(lambda key=key: outputs.complete(key, names), 1.5):
                return msg, outputs.frames[key]
        raise AssertionError(f"no frame on {topic} got all of {list(names)} in {timeout} s")

    def stream(self, topic: str, rate_hz: float, msg: Image) -> list[tuple[int, int]]:
        """Publish `msg` with fresh stamps at `rate_hz` while spinning; the stamps sent so far."""
        stamps: list[tuple[int, int]] = []

        def tick() -> None:
            stamps.append(self.new_stamp())
            msg.header.stamp.sec, msg.header.stamp.nanosec = stamps[-1]
            self.publish(topic, msg)

        self._timers.append(self.node.create_timer(1.0 / rate_hz, tick))
        return stamps

    def stop_streams(self) -> None:
        for timer in self._timers:
            self.node.destroy_timer(timer)
        self._timers.clear()

    def camera_status(self, topic: str) -> dict[str, str] | None:
        """The latest diagnostics values of the camera on the fully qualified `topic`."""
        for array in reversed(self.diagnostics):
            for status in array.status:
                if status.name.endswith(f": {topic}"):
                    return {kv.key: kv.value for kv in status.values} | {"level": status.level}
        return None


@contextlib.contextmanager
def peer_session(name: str, node: NodeProcess | None = None, namespace: str = "") -> Iterator[Peer]:
    """A test-side participant named `name` (that has seen `node`'s services, when given),
    closed on exit even when the test fails."""
    harness = RosHarness(name)
    try:
        peer = Peer(harness, namespace)
        if node is not None:
            peer.wait_for_node(node)
        yield peer
    finally:
        harness.close()


class Outputs:
    """Every output of one camera namespace, grouped by the stamp of the frame it came from."""

    def __init__(self, peer: Peer, namespace: str, images: Iterable[str] = IMAGE_OUTPUTS,
                 embeddings: bool = False) -> None:
        self.frames: dict[tuple[int, int], dict[str, Any]] = defaultdict(dict)
        self.arrival: dict[tuple[int, int], float] = {}
        self.vocabularies: list[Vocabulary] = []
        self._node = node = peer.node
        self._subscriptions = [
            node.create_subscription(Image, f"{namespace}/{name}", self._keep(name), 10)
            for name in images
        ]
        self._subscriptions += [
            node.create_subscription(
                SegmentArray, f"{namespace}/segments", self._keep("segments"), 10
            ),
            node.create_subscription(
                Vocabulary, f"{namespace}/vocabulary", self.vocabularies.append, LATCHED
            ),
        ]
        if embeddings:
            self._subscriptions.append(node.create_subscription(
                SegmentEmbeddings, f"{namespace}/embeddings", self._keep("embeddings"), 10
            ))

    def close(self) -> None:
        """Unsubscribe, so the node stops computing overlay and confidence for this test."""
        for subscription in self._subscriptions:
            self._node.destroy_subscription(subscription)

    def _keep(self, name: str) -> Callable[[Any], None]:
        def keep(msg: Any) -> None:
            key = stamp_key(msg.header)
            self.frames[key][name] = msg
            if name == "segments":
                self.arrival[key] = time.time()

        return keep

    def complete(self, key: tuple[int, int], names: Iterable[str]) -> bool:
        return all(name in self.frames.get(key, {}) for name in names)


def decode(msg: Image) -> np.ndarray:
    """Pixels of a published mono16 / 32SC1 / 32FC1 / rgb8 image."""
    dtype, channels = {"mono16": ("u2", 1), "32SC1": ("i4", 1), "32FC1": ("f4", 1),
                       "rgb8": ("u1", 3)}[msg.encoding]
    dtype = np.dtype(dtype).newbyteorder(">" if msg.is_bigendian else "<")
    pixels = np.frombuffer(bytes(msg.data), dtype=dtype).reshape(msg.height, msg.width, channels)
    return pixels[..., 0] if channels == 1 else pixels


def compressed_message(data: bytes, fmt: str, stamp: tuple[int, int], frame_id: str) -> Any:
    msg = CompressedImage(format=fmt, data=data)
    msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
    msg.header.frame_id = frame_id
    return msg
