"""One side of the DDS transport test, in its own process so that frames cross a process boundary.

Usage:
    dds_peer.py sub STREAM...   print "ready", then "got STREAM SEQ" for every measured frame
    dds_peer.py pub STREAM...   wait for each stream's subscriber, publish, print "sent STREAM N"

A STREAM is NAME:WIDTHxHEIGHT:RATE_HZ:SECONDS:RELIABILITY (reliable or best_effort). Streams run
one after the other, so a 12 MB stream does not steal bandwidth from a 640x480 one. The subscriber
is best effort, depth 1, like the camera subscriptions of our node. The publisher sends frames
for one second after matching before it starts counting ("warm", frame_id "-1"), so discovery
of the writer on the subscriber's side does not count as loss. The subscriber also offers a
trivial service (the publisher calls it) and the publisher checks the graph, so the test notices
a transport profile that breaks services or topic introspection.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_srvs.srv import Trigger

WARMUP_S = 1.0
SERVICE = "dds_peer_ping"


@dataclass(frozen=True)
class Stream:
    """One measured image stream."""

    name: str
    width: int
    height: int
    rate_hz: float
    seconds: float
    reliable: bool

    @classmethod
    def parse(cls, text: str) -> Stream:
        name, size, rate, seconds, reliability = text.split(":")
        width, height = (int(v) for v in size.split("x"))
        return cls(name, width, height, float(rate), float(seconds), reliability == "reliable")

    @property
    def topic(self) -> str:
        return f"dds_peer/{self.name}"


def subscriber_qos() -> QoSProfile:
    """Best effort, keep last 1: what our node uses for camera input."""
    return QoSProfile(
        depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.BEST_EFFORT
    )


def publisher_qos(stream: Stream) -> QoSProfile:
    """Like a typical camera driver: reliable depth 10 or best effort depth 1."""
    if stream.reliable:
        return QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    return QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)


def subscribe(node: Node, executor: SingleThreadedExecutor, streams: list[Stream]) -> None:
    for stream in streams:

        def on_image(msg: Image, name: str = stream.name) -> None:
            if msg.header.frame_id != "-1":
                print(f"got {name} {msg.header.frame_id} {len(msg.data)}", flush=True)

        node.create_subscription(Image, stream.topic, on_image, subscriber_qos())

    def ping(_request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        response.success = True
        response.message = "pong"
        return response

    node.create_service(Trigger, SERVICE, ping)
    print("ready", flush=True)
    executor.spin()


def spin_until(
    executor: SingleThreadedExecutor, condition: Callable[[], bool], timeout: float
) -> bool:
    """Spin (so discovery and services progress) until condition() holds or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        executor.spin_once(timeout_sec=0.02)
    return condition()


def publish(node: Node, executor: SingleThreadedExecutor, streams: list[Stream]) -> None:
    # Services and graph queries travel over the same transports as the images.
    client = node.create_client(Trigger, SERVICE)
    if not client.wait_for_service(timeout_sec=15.0):
        print("error no service", flush=True)
        return
    future = client.call_async(Trigger.Request())
    spin_until(executor, future.done, 10.0)
    print(f"service {future.result().message if future.done() else 'timeout'}", flush=True)

    for stream in streams:
        publisher = node.create_publisher(Image, stream.topic, publisher_qos(stream))
        msg = Image(height=stream.height, width=stream.width, encoding="rgb8")
        msg.step = 3 * stream.width
        msg.data = bytes(range(256)) * (msg.step * msg.height // 256) + bytes(
            msg.step * msg.height % 256
        )
        if not spin_until(executor, lambda p=publisher: p.get_subscription_count() > 0, 15.0):
            print(f"error no subscriber {stream.name}", flush=True)
            continue
        topics = dict(node.get_topic_names_and_types())
        print(f"graph {stream.name} {topics.get('/' + stream.topic)}", flush=True)
        period = 1.0 / stream.rate_hz
        start = time.monotonic()
        sent = 0
        frame = 0
        while True:
            elapsed = time.monotonic() - start
            if elapsed >= WARMUP_S + stream.seconds:
                break
            measured = elapsed >= WARMUP_S
            msg.header.frame_id = str(sent) if measured else "-1"
            msg.header.stamp = node.get_clock().now().to_msg()
            publisher.publish(msg)
            sent += measured
            frame += 1
            # Keep the rate steady even when one publish was slow.
            deadline = start + frame * period
            spin_until(executor, lambda d=deadline: time.monotonic() >= d, period)
        print(f"sent {stream.name} {sent}", flush=True)
        # Let the last frames drain before the next stream starts.
        spin_until(executor, lambda: False, 0.3)
        node.destroy_publisher(publisher)


def main(argv: list[str]) -> None:
    role, streams = argv[1], [Stream.parse(text) for text in argv[2:]]
    rclpy.init()
    node = rclpy.create_node(f"dds_peer_{role}")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        (subscribe if role == "sub" else publish)(node, executor, streams)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main(sys.argv)
