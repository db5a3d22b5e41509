"""A second process for the interface tests: publishes a SegmentArray or serves SetVocabulary.

Usage: interface_peer.py publish TOPIC | serve SERVICE. Prints "ready" once its endpoint exists.
"""

from __future__ import annotations

import contextlib
import sys

import rclpy
from geometry_msgs.msg import Point, Vector3
from rclpy.executors import ExternalShutdownException
from sensor_msgs.msg import RegionOfInterest

from fcclip_ros.msg import Segment, SegmentArray
from fcclip_ros.srv import SetVocabulary


def sample_segment_array() -> SegmentArray:
    """A message that exercises every field with values that differ from the defaults."""
    msg = SegmentArray()
    msg.header.frame_id = "camera_optical_frame"
    msg.header.stamp.sec = 1_700_000_123
    msg.header.stamp.nanosec = 456_789
    msg.vocabulary_version = 7
    for i, (label, thing) in enumerate([("person", True), ("wall, partition", False)]):
        msg.segments.append(
            Segment(
                id=i + 1,
                class_id=65534 - i,
                label=label,
                score=0.25 + 0.5 * i,
                is_thing=thing,
                area=4_000_000_000 + i,
                bbox=RegionOfInterest(x_offset=3 + i, y_offset=5, height=480, width=640 - i),
                center=Point(x=-0.25 * i, y=0.125, z=1.5 + i),
                size=Vector3(x=0.1, y=0.2 + i, z=0.05),
                depth_pixels=1234 + i,
            )
        )
    return msg


def publish(node: rclpy.node.Node, topic: str) -> None:
    publisher = node.create_publisher(SegmentArray, topic, 10)
    message = sample_segment_array()
    node.create_timer(0.05, lambda: publisher.publish(message))


def serve(node: rclpy.node.Node, name: str) -> None:
    def answer(request: SetVocabulary.Request, response: SetVocabulary.Response):
        if not request.classes and not request.preset:
            response.success = False
            response.message = "empty vocabulary"
            return response
        response.success = True
        response.classes = list(reversed(request.classes)) or [request.preset]
        response.version = len(response.classes)
        response.message = f"{len(response.classes)} classes"
        return response

    node.create_service(SetVocabulary, name, answer)


def main() -> None:
    role, name = sys.argv[1], sys.argv[2]
    rclpy.init()
    node = rclpy.create_node("interface_peer")
    {"publish": publish, "serve": serve}[role](node, name)
    print("ready", flush=True)
    with contextlib.suppress(KeyboardInterrupt, ExternalShutdownException):
        rclpy.spin(node)


if __name__ == "__main__":
    main()
