"""`fcclip-ros`: offline segmentation, bags, export, weight download, label spaces for mappers,
and the node's ROS commands.

One module per command, each with `add_parser(subparsers)` and `run(args) -> int`. Importing
this package imports no ROS module: the node commands import rclpy when they run.
"""

from __future__ import annotations

import argparse
import logging

from fcclip_ros.cli import bag, download, export, labelspace, node_commands, segment


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fcclip-ros",
        description="FC-CLIP open-vocabulary panoptic segmentation for ROS 2.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    node_commands.add_subcommands(subparsers)
    for command in (segment, bag, download, export, labelspace):
        command.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args, extra = build_parser().parse_known_args(argv)
    if extra and args.command != "run":
        build_parser().error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    return args.func(args)
