"""`fcclip-ros bag`: every frame of recorded MCAP bags through the engine, into new bags; several
bags one after another in this process, or on a Ray cluster (`--ray`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from fcclip_ros.cli.arguments import add_setting_flags, engine_config

if TYPE_CHECKING:
    from fcclip_ros.engine import EngineConfig
    from fcclip_ros.ros.bag import BagOptions
    from fcclip_ros.ros.bag.fleet import BagOutcome, FrameTally, PlannedBag


RAY_INSTALL = "pip install ray (or in the fcclip_ros checkout: pip install '.[ray]')"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def _not_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value:g}")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from fcclip_ros.outputs import FRAME_OUTPUTS, OUTPUTS, bag_defaults

    depth_only = [o.name for o in OUTPUTS if o.needs_depth and not o.package]
    parser = subparsers.add_parser(
        "bag",
        help="segment every frame of recorded MCAP bags into new bags (no ROS install needed)",
        description="Read a rosbag2 MCAP (a .mcap file or a bag folder), segment every frame of "
        "its sensor_msgs/Image and CompressedImage topics, and write a rosbag2 folder "
        "OUT/OUT_0.mcap + metadata.yaml with every input message unchanged plus, per camera, "
        "the node's outputs under <camera namespace>/segmentation/ (stamped with each frame's "
        "header, logged at its log time) and the latched vocabulary. Ctrl-C finishes a valid "
        "bag of the frames done; --resume continues it, also after a failure or a kill. Only a "
        "finished run writes metadata.yaml. Exit status: 0 done, 1 done but some frames could "
        "not be segmented (copied without outputs) or damaged input was skipped, 2 unusable "
        "input or settings, or the run failed (resumable), 130 interrupted. Several inputs: "
        "one output bag each in the folder OUT, named after its input, one after another in "
        "this process with the model loaded once, or with --ray on Ray workers (a worker that "
        "dies costs its bag a retry from the bag's last checkpoint); a table per bag and per "
        "worker ends the run, and the exit status is the worst of the bags'.",
    )
    parser.add_argument("inputs", type=Path, nargs="+", metavar="INPUT",
                        help="an MCAP file, or a rosbag2 folder holding MCAP files; several (or "
                        "a quoted glob pattern) give one output bag each")
    parser.add_argument("--out", required=True, type=Path,
                        help="output bag folder (must not exist unless --resume); with several "
                        "inputs the folder of their output bags, OUT/<input name> (drive.mcap "
                        "and drive/ both give OUT/drive)")
    parser.add_argument("--topics", nargs="+", default=[], metavar="TOPIC",
                        help="image topics to segment (default: every image topic)")
    parser.add_argument("--every", type=_positive_int, default=1, metavar="N",
                        help="segment every N-th frame of each camera; the others are copied "
                        "without outputs (default 1: every frame)")
    parser.add_argument("--outputs", nargs="+", choices=FRAME_OUTPUTS,
                        help="per-frame outputs to write (default: "
                        f"{' '.join(bag_defaults(False, ()))}, plus with --depth-topics "
                        f"{' '.join(depth_only)}, plus detections (and detections_3d with "
                        "depth) where vision_msgs is importable)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run that wrote OUT (interrupted, failed or killed; "
                        "same input and settings): the result equals an uninterrupted run's. "
                        "With several inputs or --ray: complete outputs are skipped, partial "
                        "ones continued, missing ones started")
    parser.add_argument("--skip-damaged", action="store_true",
                        help="skip the parts of the input that cannot be read (a chunk with a "
                        "bad CRC or compression), count them per topic and exit 1; without it "
                        "damage stops the run (exit 2, resumable)")
    ray = parser.add_argument_group(
        "Ray", f"run the bags on Ray workers, each loading the model once; needs {RAY_INSTALL}")
    ray.add_argument("--ray", action="store_true",
                     help="run on Ray: the cluster of --ray-address or $RAY_ADDRESS, else a "
                     "local Ray instance on this machine")
    ray.add_argument("--ray-address", metavar="ADDRESS",
                     help="the Ray cluster to join (host:port of its head's GCS); implies --ray")
    ray.add_argument("--workers", type=_positive_int, metavar="N",
                     help="Ray workers (default: as many as the cluster holds now, at most one "
                     "per bag)")
    ray.add_argument("--cpus-per-worker", type=_not_negative, default=1.0, metavar="N",
                     help="CPUs Ray reserves per worker (default 1)")
    ray.add_argument("--gpus-per-worker", type=_not_negative, metavar="N",
                     help="GPUs Ray reserves per worker (default 1 where the cluster has GPUs, "
                     "else 0)")
    add_setting_flags(parser, "bag")
    # None: one frame at a time on the CPU, the table's default on CUDA; a given value is kept.
    parser.set_defaults(batch_size=None)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        from fcclip_ros.ros.bag import BagError
        from fcclip_ros.ros.bag.fleet import expand_inputs
    except ModuleNotFoundError as error:
        if error.name not in ("mcap", "mcap_ros2", "tqdm"):
            raise
        print(f"fcclip-ros bag needs the {error.name} package: pip install mcap "
              "mcap-ros2-support tqdm", file=sys.stderr)
        return 2
    args.ray = args.ray or bool(args.ray_address)
    if args.ray:
        try:
            import ray  # noqa: F401  (only whether it is there)
        except ModuleNotFoundError as error:
            if error.name != "ray":
                raise
            print(f"fcclip-ros bag --ray needs Ray: {RAY_INSTALL}", file=sys.stderr)
            return 2
    try:
        inputs = expand_inputs(args.inputs)
    except BagError as error:
        print(f"fcclip-ros bag: {error}", file=sys.stderr)
        return 2
    if len(inputs) == 1 and not args.ray:
        return _run_one(args, inputs[0])
    return _run_many(args, inputs)


def _bag_options(args: argparse.Namespace, settings: dict) -> BagOptions:
    """The bag settings of the flags; the batch size's default depends on the resolved device."""
    from fcclip_ros.ros.bag import BagOptions
    from fcclip_ros.settings import default
    from fcclip_ros.tracking import TrackerConfig

    batch_size = args.batch_size or (
        default("max_batch_size") if settings["device"].startswith("cuda") else 1)
    return BagOptions(
        topics=tuple(args.topics), every=args.every,
        outputs=tuple(args.outputs or ()),
        batch_size=batch_size, max_input_pixels=args.max_input_pixels,
        depth_topics=tuple(args.depth_topics),
        camera_info_topics=tuple(args.camera_info_topics),
        depth_max_delay_s=args.depth_max_delay, points_stride=args.points_stride,
        rectification=args.rectification, min_box_depth_pixels=args.min_box_depth_pixels,
        skip_damaged=args.skip_damaged,
        tracking=TrackerConfig.from_settings(vars(args)) if args.tracking else None)


def _on_stop_signals(stop: Callable[[], None], say: Callable[[str], None], what: str) -> None:
    """Ctrl-C and SIGTERM call `stop` (the work ends after whole frames, resumable); the first
    says so."""
    import signal

    said: list[bool] = []

    def handler(_signum: int, _frame: object) -> None:
        if not said:
            said.append(True)
            say(f"\nfcclip-ros bag: stopping; finishing {what} of the frames done")
        stop()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _run_one(args: argparse.Namespace, source: Path) -> int:
    """One input in this process: OUT is its output bag."""
    from tqdm import tqdm

    from fcclip_ros.engine import Engine, EngineError, resolved_settings
    from fcclip_ros.ros.bag import BagError, BagJob

    config = engine_config(args, "bag")
    try:
        settings = resolved_settings(config)
        job = BagJob(source, args.out, _bag_options(args, settings), settings,
                     resume=args.resume)
        engine = Engine(config)
    except (BagError, EngineError) as error:
        print(f"fcclip-ros bag: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(INTERRUPTED_EARLY, file=sys.stderr)
        return 130

    if job.recovered:
        print(f"fcclip-ros bag: {job.recovered}", file=sys.stderr)
    _on_stop_signals(job.stop, lambda line: print(line, file=sys.stderr), "the bag")
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


INTERRUPTED_EARLY = "fcclip-ros bag: interrupted before the first frame; nothing written"


def _run_many(args: argparse.Namespace, inputs: list[Path]) -> int:
    """Several inputs (or --ray): one output bag each, in this process or on Ray workers."""
    from fcclip_ros.engine import Engine, EngineError, resolved_settings
    from fcclip_ros.ros.bag import BagError
    from fcclip_ros.ros.bag.fleet import FrameTally, LocalRun, output_folders, plan

    config = engine_config(args, "bag")
    tally = FrameTally(f"segmenting {len(inputs)} bag{'s' if len(inputs) > 1 else ''}")
    try:
        output_folders(inputs, args.out)  # name clashes, before anything starts
        if args.ray:
            return _run_on_ray(args, config, inputs, tally)
        settings = resolved_settings(config)
        options = _bag_options(args, settings)
        bags = plan(inputs, args.out, options, settings, args.resume)
        to_do = [bag for bag in bags if not bag.complete]
        run = LocalRun(Engine(config) if to_do else None, tally)
    except (BagError, EngineError) as error:
        tally.close()
        print(f"fcclip-ros bag: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        tally.close()
        print(INTERRUPTED_EARLY, file=sys.stderr)
        return 130
    tally.start(sum(bag.frames_total for bag in to_do))
    _on_stop_signals(run.stop, tally.say, "the bag in progress")
    outcomes = run.run(bags)
    return _finish(args, bags, outcomes, run.stopped, tally)


def _run_on_ray(args: argparse.Namespace, config: EngineConfig, inputs: list[Path],
                tally: FrameTally) -> int:
    import ray

    from fcclip_ros.ros.bag.fleet import plan
    from fcclip_ros.ros.bag.fleet_ray import RayRun, RayUsageError, connect, worker_shape

    try:
        local = connect(args.ray_address)
        shape = worker_shape(args.workers, args.cpus_per_worker, args.gpus_per_worker,
                             len(inputs), local)
        run = RayRun(shape, config, tally)
        settings = run.settings()
        options = _bag_options(args, settings)
        bags = plan(inputs, args.out, options, settings, args.resume)
        tally.start(sum(bag.frames_total for bag in bags if not bag.complete))
        _on_stop_signals(run.stop, tally.say, "the bags")
        outcomes = run.run(bags, options, args.resume)
    except RayUsageError as error:
        tally.close()
        print(f"fcclip-ros bag: {error}", file=sys.stderr)
        return 2
    finally:
        ray.shutdown()
    return _finish(args, bags, outcomes, run.stopped, tally)


def _finish(args: argparse.Namespace, bags: list[PlannedBag], outcomes: dict[int, BagOutcome],
            stopped: bool, tally: FrameTally) -> int:
    """The bar closed, then each bag's notes (stderr), the table and the last line."""
    from fcclip_ros.ros.bag.fleet import complete, exit_status, notes, summary

    tally.close()
    for line in notes(bags, outcomes):
        print(line, file=sys.stderr)
    print("\n".join(summary(bags, outcomes)))
    code = exit_status(bags, outcomes, stopped)
    line = f"{args.out}: {complete(bags, outcomes)} of {len(bags)} bags complete"
    if code == 130:
        print(f"{line}; interrupted: every unfinished bag is resumable. Continue with the same "
              "command and --resume", file=sys.stderr)
    elif code == 2:
        print(f"{line}; the others failed and are resumable: run the same command with "
              "--resume", file=sys.stderr)
    else:
        print(line)
    return code
