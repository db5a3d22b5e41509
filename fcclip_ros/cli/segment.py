"""`fcclip-ros segment`: image files through the engine, offline (no ROS needed)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from fcclip_ros.cli.arguments import add_setting_flags, engine_config
from fcclip_ros.geometry import (
    DepthError,
    DepthFrame,
    Intrinsics,
    check_registered,
    depth_in_metres,
    read_camera_info_yaml,
)
from fcclip_ros.topics import images_rectified


def add_parser(subparsers: argparse._SubParsersAction) -> None:
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
                        "needed with --depth. The IMAGE is taken as raw (its pixels undistorted "
                        "with camera_matrix and distortion_coefficients) unless --rectified")
    parser.add_argument("--track", action="store_true",
                        help="the IMAGEs are one sequence, in the order given (frames of one "
                        "camera): give each segment a track id (track_id in the json) that the "
                        "same object keeps from image to image; without it track_id is 0")
    add_setting_flags(parser, "segment")
    parser.add_argument("--rectified", dest="rectification", action="store_const",
                        const="rectified", default=argparse.SUPPRESS,
                        help="the IMAGE is rectified: back-project with projection_matrix and "
                        "ignore the distortion (--rectification rectified)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fcclip_ros.engine import Engine, EngineError
    from fcclip_ros.frame_pipeline import FramePipeline, write_files
    from fcclip_ros.image_conversion import ImageConversionError
    from fcclip_ros.tracking import SegmentTracker, TrackerConfig

    try:
        intrinsics = _depth_arguments(args)
        engine = Engine(engine_config(args, "segment"))
    except (EngineError, DepthError) as error:
        print(f"fcclip-ros segment: {error}", file=sys.stderr)
        return 2
    tracker = SegmentTracker(TrackerConfig.from_settings(vars(args)),
                             panoptic=engine.mode == "panoptic") if args.track else None
    pipeline = FramePipeline(engine.config.model, args.points_stride,
                             max_input_pixels=args.max_input_pixels, tracker=tracker,
                             warn=lambda reason: print(reason, file=sys.stderr),
                             min_box_depth_pixels=args.min_box_depth_pixels)
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
            result = engine.segment(rgb, with_confidence=False,
                                    with_embeddings=args.embeddings or pipeline.needs_embeddings)
        except EngineError as error:
            print(f"{path}: {error}", file=sys.stderr)
            failures += 1
            continue
        frame = pipeline.frame(None, rgb, result, depth)
        write_files(args.out / path.stem, frame, with_embeddings=args.embeddings)
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
        if args.camera_info or args.rectification != "auto":
            raise DepthError("--camera-info and --rectified are only used with --depth (so is "
                             "--rectification)")
        return None
    if len(args.depth) != len(args.images):
        raise DepthError(f"{len(args.depth)} --depth for {len(args.images)} images: give one "
                         "depth image per IMAGE, in the same order")
    if args.camera_info is None:
        raise DepthError("--depth needs --camera-info (the colour camera's calibration YAML)")
    return read_camera_info_yaml(args.camera_info, images_rectified(args.rectification))


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
