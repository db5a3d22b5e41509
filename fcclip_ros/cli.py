"""`fcclip-ros`: offline segmentation, weight download, and the node's ROS commands."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from fcclip_ros.geometry import (
    NO_GEOMETRY,
    DepthError,
    DepthFrame,
    Intrinsics,
    check_registered,
    depth_in_metres,
    point_cloud,
    read_camera_info_yaml,
    segment_geometry,
    write_ply,
)
from fcclip_ros.result import Segmentation

if TYPE_CHECKING:
    from fcclip_ros.engine import EngineConfig


def _split_vocabulary(text: str) -> tuple[str, ...]:
    """ "a; b, b2" -> ("a", "b, b2"): semicolons separate classes, commas synonyms."""
    return tuple(entry.strip() for entry in text.split(";"))


def _split_providers(text: str) -> tuple[str, ...]:
    """ "CUDAExecutionProvider,CPUExecutionProvider" -> a tuple, in order of preference."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    from fcclip_ros.backends import BACKENDS

    parser.add_argument("--backend", default="torch", choices=BACKENDS,
                        help="network forward: torch (eager PyTorch), openvino (CPU; needs pip "
                        "package openvino) or onnxruntime (needs onnxruntime); the exported "
                        "network is built once per input size under <cache-dir>/exported/")
    parser.add_argument("--onnxruntime-providers", type=_split_providers, default=(),
                        help="comma-separated ONNX Runtime execution providers in order of "
                        "preference, e.g. TensorrtExecutionProvider,CUDAExecutionProvider,"
                        "CPUExecutionProvider (default: CPU, or CUDA then CPU on a CUDA device)")


def _add_segment_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment image files offline (no ROS needed)",
        description="Segment image files with FC-CLIP and write, per image, <stem>_labels.png and "
        "<stem>_instances.png (16-bit PNG: class id per pixel with 65535 = unlabeled, and "
        "segment id per pixel with 0 = none), <stem>_overlay.png and <stem>_segments.json "
        "(the Segment message fields of every segment); with --embeddings also "
        "<stem>_embeddings.npy; with --depth and --camera-info the 3D fields in the json and "
        "<stem>_points.ply.",
    )
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    parser.add_argument("--out", required=True, type=Path, help="output folder (created)")
    _add_engine_arguments(parser, "images")
    parser.add_argument("--embeddings", action="store_true",
                        help="also write <stem>_embeddings.npy: float32 (segments, D), row i = "
                        "the L2-normalised CLIP embedding of the i-th segment of the json (ids "
                        "ascending), comparable by cosine with CLIP text embeddings")
    parser.add_argument("--depth", action="append", type=Path, metavar="DEPTH",
                        help="depth image registered to the IMAGE (same size): 16-bit PNG in "
                        "millimetres or 32-bit float TIFF in metres, 0 = no reading; one per "
                        "IMAGE, in the same order. Fills center, size and depth_pixels in the json "
                        "and writes <stem>_points.ply (x y z red green blue label instance)")
    parser.add_argument("--camera-info", type=Path, metavar="K.yaml",
                        help="the colour camera's calibration YAML (ROS camera_info format); "
                        "needed with --depth. The IMAGE is taken as raw: its pixels are "
                        "undistorted with camera_matrix and distortion_coefficients")
    parser.add_argument("--rectified", action="store_true",
                        help="the IMAGE is rectified: back-project with projection_matrix and "
                        "ignore the distortion")
    parser.add_argument("--points-stride", type=int, default=1,
                        help="the PLY keeps every n-th pixel in both directions (default 1)")
    parser.set_defaults(func=_segment)


def _add_engine_arguments(parser: argparse.ArgumentParser, inputs: str) -> None:
    """The model, vocabulary and pre/post-processing flags, named as the node's parameters."""
    from fcclip_ros.engine import MODES, PRECISIONS, EngineConfig
    from fcclip_ros.model.config import VARIANTS
    from fcclip_ros.vocabulary import PRESETS

    defaults = EngineConfig()
    parser.add_argument("--model", default=defaults.model, choices=list(VARIANTS),
                        help=f"FC-CLIP variant (default {defaults.model})")
    parser.add_argument("--weights", default=defaults.weights,
                        help="FC-CLIP checkpoint: a path, 'auto' (downloaded by `fcclip-ros "
                        "download`) or 'random' (pipeline tests; labels are meaningless)")
    parser.add_argument("--clip-weights", default=defaults.clip_weights,
                        help="CLIP weights: 'auto' (open_clip's pretrained tag from its local "
                        "cache), a path, or 'random'")
    vocabulary = parser.add_mutually_exclusive_group()
    vocabulary.add_argument("--vocabulary", type=_split_vocabulary,
                            help='classes separated by ";", synonyms by ",": "cup, mug; table"')
    vocabulary.add_argument("--preset", default=defaults.vocabulary_preset, choices=PRESETS,
                            help=f"built-in vocabulary (default {defaults.vocabulary_preset})")
    parser.add_argument("--mode", choices=MODES, default=defaults.mode)
    parser.add_argument("--short-side", type=int, default=defaults.input_short_side,
                        help="resize so the short side has this many pixels; the image's own "
                        "short side (or 0) means no resize (default %(default)s)")
    parser.add_argument("--max-long-side", type=int, default=defaults.max_long_side,
                        help="cap on the long side after resizing (default %(default)s)")
    parser.add_argument("--device", default=defaults.device, help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--precision", default=defaults.precision, choices=PRECISIONS,
                        help="auto: fp16 on CUDA, fp32 on CPU (and fp32 for the exported "
                        "backends); bf16 with --backend openvino uses the CPU's native bf16")
    _add_backend_arguments(parser)
    parser.add_argument("--object-mask-threshold", type=float,
                        default=defaults.object_mask_threshold)
    parser.add_argument("--overlap-threshold", type=float, default=defaults.overlap_threshold)
    parser.add_argument("--cache-dir", default=None,
                        help="checkpoints and text-embedding cache (default ~/.cache/fcclip_ros)")
    parser.add_argument("--max-input-pixels", type=int, default=defaults.max_input_pixels,
                        help=f"{inputs} declaring more pixels (read from the header, before "
                        "decoding) are skipped (default %(default)s = 4096x4096)")


def _engine_config(args: argparse.Namespace) -> EngineConfig:
    from fcclip_ros.engine import EngineConfig

    return EngineConfig(
        model=args.model, weights=args.weights, clip_weights=args.clip_weights,
        device=args.device, precision=args.precision, mode=args.mode,
        input_short_side=args.short_side, max_long_side=args.max_long_side,
        object_mask_threshold=args.object_mask_threshold,
        overlap_threshold=args.overlap_threshold, cache_dir=args.cache_dir,
        vocabulary=args.vocabulary or (), vocabulary_preset=args.preset,
        max_input_pixels=args.max_input_pixels,
        backend=args.backend, onnxruntime_providers=args.onnxruntime_providers,
    )


def _segment(args: argparse.Namespace) -> int:
    from fcclip_ros.engine import Engine, EngineError
    from fcclip_ros.image_conversion import ImageConversionError
    from fcclip_ros.overlay import draw_overlay

    try:
        intrinsics = _depth_arguments(args)
        engine = Engine(_engine_config(args))
    except (EngineError, DepthError) as error:
        print(f"fcclip-ros segment: {error}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    failures = 0
    for index, path in enumerate(args.images):
        try:
            rgb = _read_image(path, args.max_input_pixels)
        except (OSError, ImageConversionError) as error:
            print(f"{path}: {error}, skipped", file=sys.stderr)
            failures += 1
            continue
        depth = None
        if intrinsics is not None:
            try:
                depth = _read_depth(args.depth[index], rgb.shape, intrinsics,
                                    args.max_input_pixels)
            except (OSError, ImageConversionError, DepthError) as error:
                print(f"{args.depth[index]}: {error}; {path} is written without 3D",
                      file=sys.stderr)
                failures += 1
        try:
            result = engine.segment(rgb, with_confidence=False, with_embeddings=args.embeddings)
        except EngineError as error:
            print(f"{path}: {error}", file=sys.stderr)
            failures += 1
            continue
        _write_result(args.out / path.stem, rgb, result, draw_overlay(rgb, result.instances,
                                                                      result.segments),
                      depth, args.points_stride)
        print(f"{path}: {len(result.segments)} segments -> {args.out / path.stem}_*")
    return 1 if failures else 0


def _read_image(path: Path, max_pixels: int) -> np.ndarray:
    """RGB pixels of an image file whose header declares at most `max_pixels` (checked before
    decoding, so a small file declaring a huge image is never decoded)."""
    from fcclip_ros.image_conversion import ImageConversionError, declared_size

    data = path.read_bytes()
    declared_size(data, max_pixels)
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageConversionError("not a readable image")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def _depth_arguments(args: argparse.Namespace) -> Intrinsics | None:
    """The camera's intrinsics when --depth is given (DepthError says what is wrong)."""
    if not args.depth:
        if args.camera_info or args.rectified:
            raise DepthError("--camera-info and --rectified are only used with --depth")
        return None
    if len(args.depth) != len(args.images):
        raise DepthError(f"{len(args.depth)} --depth for {len(args.images)} images: give one "
                         "depth image per IMAGE, in the same order")
    if args.camera_info is None:
        raise DepthError("--depth needs --camera-info (the colour camera's calibration YAML)")
    if args.points_stride < 1:
        raise DepthError(f"--points-stride must be at least 1, got {args.points_stride}")
    return read_camera_info_yaml(args.camera_info, args.rectified)


def _read_depth(path: Path, shape: tuple[int, ...], intrinsics: Intrinsics,
                max_pixels: int) -> DepthFrame:
    """A registered depth image file in metres, checked against the colour image."""
    from fcclip_ros.image_conversion import declared_size

    data = path.read_bytes()
    check_registered(declared_size(data, max_pixels), shape)
    intrinsics.check_image(shape[1], shape[0])
    depth = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_ANYDEPTH)
    if depth is None or depth.dtype not in (np.uint16, np.float32):
        raise DepthError(f"{path} is not a 16-bit (millimetres) or float32 (metres) depth image")
    return DepthFrame(depth_in_metres(depth, 1e-3 if depth.dtype == np.uint16 else 1.0),
                      intrinsics)


def _write_result(prefix: Path, rgb: np.ndarray, result: Segmentation,
                  overlay: np.ndarray, depth: DepthFrame | None = None,
                  points_stride: int = 1) -> None:
    geometry = {} if depth is None else segment_geometry(result.instances, depth.metres,
                                                         depth.intrinsics)
    cv2.imwrite(f"{prefix}_labels.png", result.labels)
    cv2.imwrite(f"{prefix}_instances.png", result.instances)
    cv2.imwrite(f"{prefix}_overlay.png", overlay[:, :, ::-1])
    segments = []
    for segment in result.segments:
        fields = asdict(segment)
        x, y, width, height = segment.bbox
        fields["bbox"] = {"x_offset": x, "y_offset": y, "width": width, "height": height}
        box = geometry.get(segment.id, NO_GEOMETRY)
        fields["center"] = dict(zip("xyz", box.center, strict=True))
        fields["size"] = dict(zip("xyz", box.size, strict=True))
        fields["depth_pixels"] = box.depth_pixels
        segments.append(fields)
    document = {"image_size": list(rgb.shape[:2]),
                "vocabulary_version": result.vocabulary_version, "segments": segments}
    Path(f"{prefix}_segments.json").write_text(json.dumps(document, indent=2))
    if result.embeddings is not None:
        np.save(f"{prefix}_embeddings.npy", result.embeddings)
    if depth is not None:
        write_ply(f"{prefix}_points.ply",
                  point_cloud(rgb, result, depth.metres, depth.intrinsics, points_stride))


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def _add_bag_command(subparsers: argparse._SubParsersAction) -> None:
    from fcclip_ros.topics import BAG_DEFAULT_OUTPUTS, BAG_OUTPUTS, DEPTH_OUTPUTS

    parser = subparsers.add_parser(
        "bag",
        help="segment every frame of a recorded MCAP bag into a new bag (no ROS install needed)",
        description="Read a rosbag2 MCAP (a .mcap file or a bag folder), segment every frame of "
        "its sensor_msgs/Image and CompressedImage topics, and write a rosbag2 folder "
        "OUT/OUT_0.mcap + metadata.yaml with every input message unchanged plus, per camera, "
        "the node's outputs under <camera namespace>/segmentation/ (stamped with each frame's "
        "header, logged at its log time) and the latched vocabulary. Ctrl-C finishes a valid "
        "bag of the frames done; --resume continues it. Exit status: 0 done, 1 done but some "
        "frames could not be segmented (copied without outputs), 2 unusable input or "
        "settings, 130 interrupted.",
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
    parser.add_argument("--outputs", nargs="+", choices=BAG_OUTPUTS,
                        help="per-frame outputs to write (default: "
                        f"{' '.join(BAG_DEFAULT_OUTPUTS)}, plus with --depth-topics "
                        f"{' '.join(DEPTH_OUTPUTS)}, plus detections (and detections_3d with "
                        "depth) where vision_msgs is importable)")
    parser.add_argument("--depth-topics", nargs="+", default=[], metavar="TOPIC",
                        help="depth topic (sensor_msgs/Image 16UC1 mm or 32FC1 m, registered to "
                        "the colour image) of each camera in --topics, same order, '' for a "
                        "camera without: adds the 3D fields, points, markers, detections_3d")
    parser.add_argument("--camera-info-topics", nargs="+", default=[], metavar="TOPIC",
                        help="CameraInfo topic of each camera in --topics (default: camera_info "
                        "beside each image topic)")
    parser.add_argument("--depth-max-delay", type=float, default=0.05, metavar="SECONDS",
                        help="colour and depth pair by header stamp: the same, else the nearest "
                        "within this (default %(default)s)")
    parser.add_argument("--points-stride", type=_positive_int, default=1, metavar="N",
                        help="points keeps every N-th pixel in both directions (default 1)")
    parser.add_argument("--batch-size", type=_positive_int, default=4,
                        help="frames per forward pass on CUDA (default %(default)s); on the CPU "
                        "frames go one at a time, as batching does not speed it up")
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted run that wrote OUT (same input and "
                        "settings): the result equals an uninterrupted run's")
    _add_engine_arguments(parser, "frames")
    parser.set_defaults(func=_bag)


def _bag_outputs(asked: list[str] | None, with_depth: bool) -> tuple[str, ...]:
    """The outputs asked for, or the default set for what this run has, in BAG_OUTPUTS order."""
    from fcclip_ros.ros.spatial_outputs import vision_msgs
    from fcclip_ros.topics import BAG_DEFAULT_OUTPUTS, BAG_OUTPUTS, DEPTH_OUTPUTS

    if asked is None:
        asked = [*BAG_DEFAULT_OUTPUTS, *(DEPTH_OUTPUTS if with_depth else ())]
        if vision_msgs is not None:
            asked += ["detections", "detections_3d"] if with_depth else ["detections"]
    return tuple(name for name in BAG_OUTPUTS if name in asked)


def _bag(args: argparse.Namespace) -> int:
    import signal
    from dataclasses import asdict

    try:
        from tqdm import tqdm

        from fcclip_ros.ros.bag import BagError, BagJob, BagOptions
    except ModuleNotFoundError as error:
        if error.name not in ("mcap", "mcap_ros2", "tqdm"):
            raise
        print(f"fcclip-ros bag needs the {error.name} package: pip install mcap "
              "mcap-ros2-support tqdm", file=sys.stderr)
        return 2
    from fcclip_ros.engine import Engine, EngineError, resolve_device

    config = _engine_config(args)
    try:
        on_cuda = resolve_device(config.device).type == "cuda"
        options = BagOptions(
            topics=tuple(args.topics), every=args.every,
            outputs=_bag_outputs(args.outputs, bool(args.depth_topics)),
            batch_size=args.batch_size if on_cuda else 1, max_input_pixels=args.max_input_pixels,
            depth_topics=tuple(args.depth_topics),
            camera_info_topics=tuple(args.camera_info_topics),
            depth_max_delay_s=args.depth_max_delay, points_stride=args.points_stride)
        settings = {key: value for key, value in asdict(config).items() if key != "cache_dir"}
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
    with tqdm(total=job.report.frames_total, unit="frame", desc=f"segmenting {cameras}",
              file=sys.stderr, dynamic_ncols=True) as bar:
        try:
            report = job.run(engine, on_frame=lambda done: bar.update(done - bar.n))
        except BagError as error:
            print(f"fcclip-ros bag: {error}", file=sys.stderr)
            return 2
    for reason in report.failures:
        print(f"not segmented: {reason}", file=sys.stderr)
    for reason in report.depth_notes:
        print(f"no 3D: {reason}", file=sys.stderr)
    if report.frames_failed > len(report.failures):
        print(f"... {report.frames_failed - len(report.failures)} more frames not segmented",
              file=sys.stderr)
    summary = (f"{args.out}: {report.frames_done - report.frames_failed} of "
               f"{report.frames_total} frames segmented, {report.frames_failed} not segmented")
    if job.depth:
        summary += (f"; 3D for {report.frames_3d}, no depth in time for "
                    f"{report.frames_without_depth}, depth refused for "
                    f"{report.frames_depth_refused}")
    if report.interrupted:
        print(f"{summary}; interrupted: the bag holds the input up to the last whole frame. "
              "Continue with the same command and --resume", file=sys.stderr)
        return 130
    print(summary)
    return 1 if report.frames_failed else 0


def _add_download_command(subparsers: argparse._SubParsersAction) -> None:
    from fcclip_ros.download import OFFICIAL_CHECKPOINTS

    parser = subparsers.add_parser(
        "download",
        help="fetch official CLIP and FC-CLIP weights (needs the network)",
        description="Download the CLIP weights (into open_clip's Hugging Face cache, where "
        "clip_weights: auto finds them) and the official FC-CLIP checkpoints (into "
        "<cache-dir>/checkpoints/, where weights: auto finds them). The only command that "
        "uses the network.",
    )
    parser.add_argument("--model", action="append", choices=list(OFFICIAL_CHECKPOINTS),
                        help="variant(s) to fetch (repeatable; default convnext_large)")
    parser.add_argument("--cache-dir", default=None, help="default ~/.cache/fcclip_ros")
    parser.add_argument("--no-clip", action="store_true", help="skip the CLIP weights")
    parser.add_argument("--no-checkpoint", action="store_true", help="skip the checkpoints")
    parser.set_defaults(func=_download)


def _download(args: argparse.Namespace) -> int:
    from fcclip_ros.download import DownloadError, download

    try:
        download(args.model or ["convnext_large"], args.cache_dir, clip=not args.no_clip,
                 checkpoints=not args.no_checkpoint)
    except DownloadError as error:
        print(f"fcclip-ros download: {error}", file=sys.stderr)
        return 1
    return 0


def _image_size(text: str) -> tuple[int, int]:
    """ "480x640" -> (480, 640)."""
    try:
        height, width = (int(side) for side in text.lower().split("x"))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not HEIGHTxWIDTH, e.g. 480x640") from error
    if height <= 0 or width <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: both sides must be positive")
    return height, width


def _add_export_command(subparsers: argparse._SubParsersAction) -> None:
    from fcclip_ros.engine import EngineConfig
    from fcclip_ros.export import FORMATS
    from fcclip_ros.model.config import VARIANTS

    defaults = EngineConfig()
    parser = subparsers.add_parser(
        "export",
        help="export the network to ONNX or OpenVINO for the onnxruntime / openvino backends",
        description="Export FC-CLIP's network for camera images of one size: the text "
        "classifier is a graph input with a dynamic number of rows, so vocabulary swaps need no "
        "re-export. Writes the network and fcclip_export.json (model, weight fingerprint, "
        "input size, exporter versions, file checksums). By default into the cache where the "
        "engine looks (<cache-dir>/exported/), so a node started with the same settings and "
        "backend finds it instead of exporting on its first frame.",
    )
    parser.add_argument("--model", default=defaults.model, choices=list(VARIANTS))
    parser.add_argument("--weights", default=defaults.weights,
                        help="FC-CLIP checkpoint: a path, 'auto' or 'random'")
    parser.add_argument("--clip-weights", default=defaults.clip_weights,
                        help="CLIP weights: 'auto', a path, or 'random'")
    parser.add_argument("--size", required=True, type=_image_size, metavar="HxW",
                        help="camera image size, e.g. 480x640; the network input is that size "
                        "resized by --short-side / --max-long-side and padded to a multiple of 32")
    parser.add_argument("--short-side", type=int, default=defaults.input_short_side)
    parser.add_argument("--max-long-side", type=int, default=defaults.max_long_side)
    parser.add_argument("--format", choices=FORMATS, default="openvino",
                        help="onnx (for --backend onnxruntime) or openvino (default)")
    parser.add_argument("--out", type=Path, default=None,
                        help="write the artifact into this folder instead of the cache")
    parser.add_argument("--cache-dir", default=None, help="default ~/.cache/fcclip_ros")
    parser.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    from fcclip_ros.engine import Engine, EngineConfig, EngineError
    from fcclip_ros.export import ExportError, export_artifact

    backend = {"onnx": "onnxruntime", "openvino": "openvino"}[args.format]
    config = EngineConfig(model=args.model, weights=args.weights, clip_weights=args.clip_weights,
                          device="cpu", input_short_side=args.short_side,
                          max_long_side=args.max_long_side, cache_dir=args.cache_dir,
                          backend=backend)
    try:
        engine = Engine(config)
        if args.out is None:
            directory = engine.prepare_backend(args.size)
        else:
            key = engine.exported.key(engine.network_input_size(args.size))
            directory = export_artifact(engine.model, engine.vocabulary.current.classifier, key,
                                        args.out)
    except (EngineError, ExportError) as error:
        print(f"fcclip-ros export: {error}", file=sys.stderr)
        return 1
    print(f"{directory}: {args.model} for {args.size[0]}x{args.size[1]} images -> network input "
          f"{'x'.join(map(str, engine.network_input_size(args.size)))}, {args.format}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from fcclip_ros.ros.commands import add_subcommands

    parser = argparse.ArgumentParser(
        prog="fcclip-ros",
        description="FC-CLIP open-vocabulary panoptic segmentation for ROS 2.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_subcommands(subparsers)
    _add_segment_command(subparsers)
    _add_bag_command(subparsers)
    _add_download_command(subparsers)
    _add_export_command(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args, extra = build_parser().parse_known_args(argv)
    if extra and args.command != "run":
        build_parser().error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
