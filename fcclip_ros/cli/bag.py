"""`fcclip-ros bag`: every frame of a recorded MCAP bag through the engine, into a new bag."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fcclip_ros.cli.arguments import add_setting_flags, engine_config


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from fcclip_ros.outputs import FRAME_OUTPUTS, OUTPUTS, bag_defaults

    depth_only = [o.name for o in OUTPUTS if o.needs_depth and not o.needs_vision_msgs]
    parser = subparsers.add_parser(
        "bag",
        help="segment every frame of a recorded MCAP bag into a new bag (no ROS install needed)",
        description="Read a rosbag2 MCAP (a .mcap file or a bag folder), segment every frame of "
        "its sensor_msgs/Image and CompressedImage topics, and write a rosbag2 folder "
        "OUT/OUT_0.mcap + metadata.yaml with every input message unchanged plus, per camera, "
        "the node's outputs under <camera namespace>/segmentation/ (stamped with each frame's "
        "header, logged at its log time) and the latched vocabulary. Ctrl-C finishes a valid "
        "bag of the frames done; --resume continues it, also after a failure or a kill. Only a "
        "finished run writes metadata.yaml. Exit status: 0 done, 1 done but some frames could "
        "not be segmented (copied without outputs) or damaged input was skipped, 2 unusable "
        "input or settings, or the run failed (resumable), 130 interrupted.",
    )
    parser.add_argument("input", type=Path, metavar="INPUT",
                        help="an MCAP file, or a rosbag2 folder holding MCAP files")
    parser.add_argument("--out", required=True, type=Path,
                        help="output bag folder (must not exist unless --resume)")
    parser.add_argument("--topics", nargs="+", default=[], metavar="TOPIC",
                        help="image topics to segment (default: every image topic)")
    parser.add_argument("--every", type=_positive_int, default=1, metavar="N",
                        help="segment every N-th frame of each camera; the others are copied "
                        "without outputs (default 1: every frame)")
    parser.add_argument("--outputs", nargs="+", choices=FRAME_OUTPUTS,
                        help="per-frame outputs to write (default: "
                        f"{' '.join(bag_defaults(False, False))}, plus with --depth-topics "
                        f"{' '.join(depth_only)}, plus detections (and detections_3d with "
                        "depth) where vision_msgs is importable)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run that wrote OUT (interrupted, failed or killed; "
                        "same input and settings): the result equals an uninterrupted run's")
    parser.add_argument("--skip-damaged", action="store_true",
                        help="skip the parts of the input that cannot be read (a chunk with a "
                        "bad CRC or compression), count them per topic and exit 1; without it "
                        "damage stops the run (exit 2, resumable)")
    add_setting_flags(parser, "bag")
    # None: one frame at a time on the CPU, the table's default on CUDA; a given value is kept.
    parser.set_defaults(batch_size=None)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import signal

    try:
        from tqdm import tqdm

        from fcclip_ros.ros.bag import BagError, BagJob, BagOptions
    except ModuleNotFoundError as error:
        if error.name not in ("mcap", "mcap_ros2", "tqdm"):
            raise
        print(f"fcclip-ros bag needs the {error.name} package: pip install mcap "
              "mcap-ros2-support tqdm", file=sys.stderr)
        return 2
    from fcclip_ros.engine import Engine, EngineError, resolved_settings
    from fcclip_ros.settings import default
    from fcclip_ros.tracking import TrackerConfig

    config = engine_config(args, "bag")
    try:
        settings = resolved_settings(config)
        batch_size = args.batch_size or (
            default("max_batch_size") if settings["device"].startswith("cuda") else 1)
        options = BagOptions(
            topics=tuple(args.topics), every=args.every,
            outputs=tuple(args.outputs or ()),
            batch_size=batch_size, max_input_pixels=args.max_input_pixels,
            depth_topics=tuple(args.depth_topics),
            camera_info_topics=tuple(args.camera_info_topics),
            depth_max_delay_s=args.depth_max_delay, points_stride=args.points_stride,
            skip_damaged=args.skip_damaged,
            tracking=TrackerConfig.from_settings(vars(args)) if args.tracking else None)
        job = BagJob(args.input, args.out, options, settings, resume=args.resume)
        engine = Engine(config)
    except (BagError, EngineError) as error:
        print(f"fcclip-ros bag: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fcclip-ros bag: interrupted before the first frame; nothing written",
              file=sys.stderr)
        return 130

    if job.recovered:
        print(f"fcclip-ros bag: {job.recovered}", file=sys.stderr)

    def stop(_signum: int, _frame: object) -> None:
        if not job.stopping:
            print("\nfcclip-ros bag: stopping; finishing the bag of the frames done",
                  file=sys.stderr)
        job.stop()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    cameras = ", ".join(job.cameras)
    failure = None
    with tqdm(total=job.report.frames_total, unit="frame", desc=f"segmenting {cameras}",
              file=sys.stderr, dynamic_ncols=True) as bar:
        try:
            report = job.run(engine, on_frame=lambda done: bar.update(done - bar.n))
        except BagError as error:
            failure = error
    if failure is not None:  # after the bar's last line: the reason is what the terminal ends on
        print(f"fcclip-ros bag: {failure}", file=sys.stderr)
        return 2
    for reason in report.failures:
        print(f"not segmented: {reason}", file=sys.stderr)
    for reason in report.depth_notes:
        print(f"no 3D: {reason}", file=sys.stderr)
    if report.frames_failed > len(report.failures):
        print(f"... {report.frames_failed - len(report.failures)} more frames not segmented",
              file=sys.stderr)
    for topic, lost in sorted(report.damaged.items()):
        print(f"damaged input skipped: {lost} messages of {topic}", file=sys.stderr)
    summary = (f"{args.out}: {report.frames_done - report.frames_failed} of "
               f"{report.frames_total} frames segmented, {report.frames_failed} not segmented, "
               f"batch size {report.batch_size}")
    if job.depth:
        summary += (f"; 3D for {report.frames_3d}, no depth in time for "
                    f"{report.frames_without_depth}, depth refused for "
                    f"{report.frames_depth_refused}")
    if report.interrupted:
        print(f"{summary}; interrupted: the bag holds the input up to the last whole frame. "
              "Continue with the same command and --resume", file=sys.stderr)
        return 130
    if report.damaged:
        summary += f"; {sum(report.damaged.values())} damaged input messages skipped"
    print(summary)
    return 1 if report.frames_failed or report.damaged else 0
