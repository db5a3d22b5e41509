"""The ROS side of the `fcclip-ros` command: run the node, set or get its vocabulary, query it.

Lets a user without the `ros2` command line (e.g. a pip-only install) start the node and change
what it looks for; inside a ROS install `ros2 run` / `ros2 service call` do the same. rclpy and
the node are imported only when a command runs, so `fcclip-ros segment` works without ROS.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fcclip_ros.vocabulary import VocabularyError

DEFAULT_TIMEOUT_S = 60.0  # a swap to a large uncached vocabulary encodes for a while on a CPU


def add_subcommands(subparsers: Any) -> None:
    """Add `run`, `set-vocabulary`, `get-vocabulary` and `query`, each with a
    `func(args) -> int`."""
    run = subparsers.add_parser(
        "run",
        help="start the segmenter node (what `ros2 run fcclip_ros segmenter` starts)",
        description="Start the FC-CLIP segmenter node; stop it with Ctrl-C.",
    )
    run.add_argument("--params-file", type=Path, help="ROS 2 parameter YAML (config/segment.yaml)")
    run.add_argument(
        "--ros-args",
        dest="ros_args",
        nargs=argparse.REMAINDER,
        default=[],
        help="everything after it goes to ROS, e.g. --ros-args -p model:=rn50 -r __ns:=/robot",
    )
    run.set_defaults(func=_run)

    set_vocabulary = subparsers.add_parser(
        "set-vocabulary",
        help="replace the running node's vocabulary",
        description='Replace the vocabulary: classes "name" or "name, synonym, ..." (an optional'
        " [thing] or [stuff] tag at the end), or a built-in preset; with the negative classes and"
        " class thresholds given (none when not given: a request replaces all three).",
    )
    set_vocabulary.add_argument("classes", nargs="*", help='e.g. "cup, mug" table "floor [stuff]"')
    set_vocabulary.add_argument("--preset", default="", help="coco, ade20k, cityscapes, lvis, ...")
    set_vocabulary.add_argument(
        "--negative", metavar='"A; B, B2"',
        help="negative classes, separated by \";\": they compete in classification and what "
        "they win is left unlabeled, with no segment")
    set_vocabulary.add_argument(
        "--class-threshold", action="append", default=[], metavar="NAME=VALUE",
        help="panoptic: the threshold of the class NAME (its first synonym) in place of "
        "object_mask_threshold; repeatable")
    add_service_options(set_vocabulary)
    set_vocabulary.set_defaults(func=_set_vocabulary)

    get_vocabulary = subparsers.add_parser(
        "get-vocabulary", help="print the running node's vocabulary and its version"
    )
    add_service_options(get_vocabulary)
    get_vocabulary.set_defaults(func=_get_vocabulary)

    query = subparsers.add_parser(
        "query",
        help="which segments of the latest frame fit these texts (the network is not re-run)",
        description="Score the segments of each camera's latest frame against texts, by the "
        "cosine of their CLIP embeddings (the node's `query` service). A text is \"text\" or "
        "\"text, synonym, ...\" and scores as its best synonym.",
    )
    query.add_argument("texts", nargs="+", help='e.g. "a red mug" "something to sit on"')
    query.add_argument("--camera", default="", help="one input topic (default: every camera)")
    query.add_argument("--top-k", type=int, default=3, help="segments per text (0: all)")
    add_service_options(query)
    query.set_defaults(func=_query)


def add_service_options(parser: argparse.ArgumentParser) -> None:
    """--namespace and --timeout of a command that calls one of the node's services."""
    parser.add_argument(
        "--namespace", default="/",
        help="the node's namespace (default /: its services are /get_vocabulary, ...)"
    )
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds to wait for the answer"
    )


def _run(args: argparse.Namespace) -> int:
    from fcclip_ros.ros.main import run

    ros_args = ["--ros-args"]
    if args.params_file is not None:
        if not args.params_file.is_file():
            print(f"fcclip-ros run: no such parameter file: {args.params_file}", file=sys.stderr)
            return 2
        ros_args += ["--params-file", str(args.params_file)]
    return run(["fcclip-ros", *ros_args, *args.ros_args])


def call_service(args: argparse.Namespace, service_type: Any, name: str, request: Any) -> Any:
    """Call the node's service once; None (with the reason printed) when no answer came."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    service = f"{args.namespace.rstrip('/')}/{name}"
    context = rclpy.Context()
    rclpy.init(args=[], context=context)
    node = rclpy.create_node("fcclip_ros_cli", context=context, start_parameter_services=False)
    try:
        client = node.create_client(service_type, service)
        if not client.wait_for_service(timeout_sec=min(args.timeout, 10.0)):
            print(
                f"no service {service}: is the node running, in this ROS_DOMAIN_ID and namespace?",
                file=sys.stderr,
            )
            return None
        future = client.call_async(request)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        executor.spin_until_future_complete(future, timeout_sec=args.timeout)
        if not future.done():
            print(f"{service} did not answer within {args.timeout:g} s", file=sys.stderr)
            return None
        return future.result()
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=context)


def _print_classes(classes: list[str], is_thing: list[bool] | None = None) -> None:
    for class_id, entry in enumerate(classes):
        kind = "" if is_thing is None else ("thing " if is_thing[class_id] else "stuff ")
        print(f"{class_id:6d}  {kind}{entry}")


def _set_vocabulary(args: argparse.Namespace) -> int:
    from fcclip_ros.srv import SetVocabulary

    if bool(args.classes) == bool(args.preset):
        print("set-vocabulary: give classes or --preset NAME (one of the two)", file=sys.stderr)
        return 2
    try:
        negatives, thresholds = _vocabulary_control(args)
    except VocabularyError as error:
        print(f"set-vocabulary: {error}", file=sys.stderr)
        return 2
    request = SetVocabulary.Request(classes=list(args.classes), preset=args.preset,
                                    negative_classes=list(negatives),
                                    class_thresholds=list(thresholds))
    response = call_service(args, SetVocabulary, "set_vocabulary", request)
    if response is None:
        return 1
    if not response.success:
        reason = f"refused: {response.message} (vocabulary v{response.version} stays)"
        print(reason, file=sys.stderr)
        return 1
    print(response.message)
    _print_classes(list(response.classes))
    return 0


def _vocabulary_control(args: argparse.Namespace) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """The negatives of --negative and the thresholds of --class-threshold, aligned with the
    classes asked for as the service wants them (VocabularyError for a name that is not one)."""
    from fcclip_ros.cli.arguments import flag_value
    from fcclip_ros.vocabulary import Vocabulary, thresholds_by_name

    negatives = () if args.negative is None else flag_value("negative_vocabulary", args.negative)
    if not args.class_threshold:
        return negatives, ()
    vocabulary = Vocabulary.from_request(args.classes or None, args.preset or None)
    return negatives, thresholds_by_name(vocabulary, args.class_threshold)


def _get_vocabulary(args: argparse.Namespace) -> int:
    from fcclip_ros.srv import GetVocabulary

    response = call_service(args, GetVocabulary, "get_vocabulary", GetVocabulary.Request())
    if response is None:
        return 1
    print(f"vocabulary v{response.version}: {len(response.classes)} classes")
    _print_classes(list(response.classes), list(response.is_thing))
    return 0


def _query(args: argparse.Namespace) -> int:
    from fcclip_ros.srv import Query

    if not 0 <= args.top_k <= 65535:
        print("query: --top-k must be 0..65535", file=sys.stderr)
        return 2
    request = Query.Request(texts=list(args.texts), camera=args.camera, top_k=args.top_k)
    response = call_service(args, Query, "query", request)
    if response is None:
        return 1
    if not response.success:
        print(f"refused: {response.message}", file=sys.stderr)
        return 1
    print(response.message)
    for result in response.results:
        stamp = f"{result.header.stamp.sec}.{result.header.stamp.nanosec:09d}"
        matches = ", ".join(f"segment {segment_id} ({score:.3f})"
                            for segment_id, score in zip(result.segment_ids, result.scores,
                                                         strict=True))
        print(f"{result.camera} @ {stamp}  {result.text!r}: {matches or 'no segments'}")
    return 0
