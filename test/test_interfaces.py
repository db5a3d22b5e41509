"""Our generated msg/srv import and survive a trip between two processes over real DDS."""

from __future__ import annotations

from helpers.interface_peer import sample_segment_array
from helpers.paths import HELPERS_DIR

from fcclip_ros.msg import Segment, SegmentArray, Vocabulary
from fcclip_ros.srv import GetVocabulary, SetVocabulary

PEER = str(HELPERS_DIR / "interface_peer.py")


def test_generated_interfaces_have_the_contract_fields():
    assert Vocabulary().unlabeled_id == 0  # default; the node publishes 65535
    fields = {
        Segment: {
            "id": "uint16",
            "class_id": "uint16",
            "label": "string",
            "score": "float",
            "is_thing": "boolean",
            "area": "uint32",
            "bbox": "sensor_msgs/RegionOfInterest",
            "center": "geometry_msgs/Point",
            "size": "geometry_msgs/Vector3",
            "depth_pixels": "uint32",
            "track_id": "uint32",
        },
        SegmentArray: {
            "header": "std_msgs/Header",
            "vocabulary_version": "uint32",
            "segments": "sequence<fcclip_ros/Segment>",
        },
        Vocabulary: {
            "header": "std_msgs/Header",
            "version": "uint32",
            "classes": "sequence<string>",
            "is_thing": "sequence<boolean>",
            "unlabeled_id": "uint16",
            "negative_classes": "sequence<string>",
            "class_thresholds": "sequence<float>",
        },
        SetVocabulary.Request: {"classes": "sequence<string>", "preset": "string",
                                "negative_classes": "sequence<string>",
                                "class_thresholds": "sequence<float>"},
        SetVocabulary.Response: {
            "success": "boolean",
            "message": "string",
            "version": "uint32",
            "classes": "sequence<string>",
        },
        GetVocabulary.Response: {
            "version": "uint32",
            "classes": "sequence<string>",
            "is_thing": "sequence<boolean>",
        },
    }
    for message_type, expected in fields.items():
        assert message_type.get_fields_and_field_types() == expected, message_type


def test_segment_array_published_in_one_process_arrives_intact_in_another(ros, spawn):
    topic = "interface_test/segments"
    received: list[SegmentArray] = []
    ros.node.create_subscription(SegmentArray, topic, received.append, 10)
    peer = spawn(PEER, "publish", topic)

    assert ros.spin_until(lambda: bool(received)), peer.poll() or "no message received"
    assert received[0] == sample_segment_array()
    segment = received[0].segments[1]
    assert (segment.class_id, segment.label, segment.area) == (
        65533,
        "wall, partition",
        4_000_000_001,
    )


def test_set_vocabulary_served_in_one_process_answers_a_call_from_another(ros, spawn):
    client = ros.node.create_client(SetVocabulary, "interface_test/set_vocabulary")
    spawn(PEER, "serve", "interface_test/set_vocabulary")
    assert client.wait_for_service(timeout_sec=20.0)

    future = client.call_async(SetVocabulary.Request(classes=["cup, mug", "table"]))
    assert ros.spin_until(future.done)
    response = future.result()
    assert response.success and response.version == 2
    assert list(response.classes) == ["table", "cup, mug"]

    future = client.call_async(SetVocabulary.Request())
    assert ros.spin_until(future.done)
    assert not future.result().success and future.result().message == "empty vocabulary"
