"""`fcclip-ros export`: the network as ONNX or OpenVINO, for the onnxruntime / openvino backends."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fcclip_ros.cli.arguments import add_setting_flags, engine_config, image_size


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from fcclip_ros.settings import EXPORT_FORMATS

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
    parser.add_argument("--size", required=True, type=image_size, metavar="WIDTHxHEIGHT",
                        help="camera image size, e.g. 640x480; the network input is that size "
                        "resized by --short-side / --max-long-side and padded to a multiple of 32")
    parser.add_argument("--format", choices=EXPORT_FORMATS, default="openvino",
                        help="onnx (for --backend onnxruntime) or openvino (default)")
    parser.add_argument("--out", type=Path, default=None,
                        help="write the artifact into this folder instead of the cache")
    add_setting_flags(parser, "export")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fcclip_ros.engine import Engine, EngineError
    from fcclip_ros.export import ExportError, export_artifact

    backend = {"onnx": "onnxruntime", "openvino": "openvino"}[args.format]
    config = engine_config(args, "export", device="cpu", backend=backend)
    width, height = args.size
    try:
        engine = Engine(config)
        if args.out is None:
            directory = engine.prepare_backend((height, width))
        else:
            key = engine.exported.key(engine.network_input_size((height, width)))
            directory = export_artifact(engine.model, engine.vocabulary.current.classifier, key,
                                        args.out)
    except (EngineError, ExportError) as error:
        print(f"fcclip-ros export: {error}", file=sys.stderr)
        return 1
    network_height, network_width = engine.network_input_size((height, width))
    print(f"{directory}: {args.model} for {width}x{height} images -> network input "
          f"{network_width}x{network_height}, {args.format}")
    return 0
