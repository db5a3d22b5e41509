"""`fcclip-ros`: offline segmentation, weight download, and the node's ROS commands."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np

from fcclip_ros.result import Segmentation


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
    from fcclip_ros.engine import MODES, PRECISIONS, EngineConfig
    from fcclip_ros.model.config import VARIANTS
    from fcclip_ros.vocabulary import PRESETS

    defaults = EngineConfig()
    parser = subparsers.add_parser(
        "segment",
        help="segment image files offline (no ROS needed)",
        description="Segment image files with FC-CLIP and write, per image, <stem>_labels.png and "
        "<stem>_instances.png (16-bit PNG: class id per pixel with 65535 = unlabeled, and "
        "segment id per pixel with 0 = none), <stem>_overlay.png and <stem>_segments.json "
        "(the Segment message fields of every segment); with --embeddings also "
        "<stem>_embeddings.npy.",
    )
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    parser.add_argument("--out", required=True, type=Path, help="output folder (created)")
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
                        help="images declaring more pixels (read from the file's header, before "
                        "decoding) are skipped (default %(default)s = 4096x4096)")
    parser.add_argument("--embeddings", action="store_true",
                        help="also write <stem>_embeddings.npy: float32 (segments, D), row i = "
                        "the L2-normalised CLIP embedding of the i-th segment of the json (ids "
                        "ascending), comparable by cosine with CLIP text embeddings")
    parser.set_defaults(func=_segment)


def _segment(args: argparse.Namespace) -> int:
    from fcclip_ros.engine import Engine, EngineConfig, EngineError
    from fcclip_ros.image_conversion import ImageConversionError
    from fcclip_ros.overlay import draw_overlay

    config = EngineConfig(
        model=args.model, weights=args.weights, clip_weights=args.clip_weights,
        device=args.device, precision=args.precision, mode=args.mode,
        input_short_side=args.short_side, max_long_side=args.max_long_side,
        object_mask_threshold=args.object_mask_threshold,
        overlap_threshold=args.overlap_threshold, cache_dir=args.cache_dir,
        vocabulary=args.vocabulary or (), vocabulary_preset=args.preset,
        max_input_pixels=args.max_input_pixels,
        backend=args.backend, onnxruntime_providers=args.onnxruntime_providers,
    )
    try:
        engine = Engine(config)
    except EngineError as error:
        print(f"fcclip-ros segment: {error}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    failures = 0
    for path in args.images:
        try:
            rgb = _read_image(path, args.max_input_pixels)
        except (OSError, ImageConversionError) as error:
            print(f"{path}: {error}, skipped", file=sys.stderr)
            failures += 1
            continue
        try:
            result = engine.segment(rgb, with_confidence=False, with_embeddings=args.embeddings)
        except EngineError as error:
            print(f"{path}: {error}", file=sys.stderr)
            failures += 1
            continue
        _write_result(args.out / path.stem, rgb, result, draw_overlay(rgb, result.instances,
                                                                      result.segments))
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


def _write_result(prefix: Path, rgb: np.ndarray, result: Segmentation,
                  overlay: np.ndarray) -> None:
    cv2.imwrite(f"{prefix}_labels.png", result.labels)
    cv2.imwrite(f"{prefix}_instances.png", result.instances)
    cv2.imwrite(f"{prefix}_overlay.png", overlay[:, :, ::-1])
    segments = []
    for segment in result.segments:
        fields = asdict(segment)
        x, y, width, height = segment.bbox
        fields["bbox"] = {"x_offset": x, "y_offset": y, "width": width, "height": height}
        segments.append(fields)
    document = {"image_size": list(rgb.shape[:2]),
                "vocabulary_version": result.vocabulary_version, "segments": segments}
    Path(f"{prefix}_segments.json").write_text(json.dumps(document, indent=2))
    if result.embeddings is not None:
        np.save(f"{prefix}_embeddings.npy", result.embeddings)


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
