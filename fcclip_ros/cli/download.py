"""`fcclip-ros download`: the official weights into the caches where `auto` finds them."""

from __future__ import annotations

import argparse
import sys

from fcclip_ros.settings import default


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from fcclip_ros.cache import OFFICIAL_CHECKPOINTS

    parser = subparsers.add_parser(
        "download",
        help="fetch official CLIP and FC-CLIP weights (needs the network)",
        description="Download the CLIP weights (into open_clip's Hugging Face cache, where "
        "clip_weights: auto finds them) and the official FC-CLIP checkpoints (into "
        "<cache-dir>/checkpoints/, where weights: auto finds them). The only command that "
        "uses the network.",
    )
    parser.add_argument("--model", action="append", choices=list(OFFICIAL_CHECKPOINTS),
                        help=f"variant(s) to fetch (repeatable; default {default('model')})")
    parser.add_argument("--cache-dir", default=None, help="default ~/.cache/fcclip_ros")
    parser.add_argument("--no-clip", action="store_true", help="skip the CLIP weights")
    parser.add_argument("--no-checkpoint", action="store_true", help="skip the checkpoints")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fcclip_ros.download import DownloadError, download

    try:
        download(args.model or [default("model")], args.cache_dir, clip=not args.no_clip,
                 checkpoints=not args.no_checkpoint)
    except DownloadError as error:
        print(f"fcclip-ros download: {error}", file=sys.stderr)
        return 1
    return 0
