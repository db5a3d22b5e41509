"""`fcclip-ros labelspace`: the vocabulary as a Hydra label space and a colour CSV for mappers.

From a preset or a class list without ROS, or from the running node (its get_vocabulary
service), so that the files match what the node labels right now.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from fcclip_ros.cli import node_commands
from fcclip_ros.cli.arguments import converter
from fcclip_ros.settings import SETTINGS_BY_NAME
from fcclip_ros.vocabulary import (
    PRESETS,
    Vocabulary,
    VocabularyClass,
    VocabularyError,
    split_synonyms,
)

PROGRAM = "fcclip-ros labelspace"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from fcclip_ros.labelspace import COLOURS_FILE, HYDRA_FILE, KIMERA_MAX_LABELS

    parser = subparsers.add_parser(
        "labelspace",
        help="write the vocabulary as a Hydra label space and a colour CSV (docs/mapping.md)",
        description=f"Write {HYDRA_FILE} (Hydra's label space: things are object_labels, stuff "
        f"classes surface_places_labels) and {COLOURS_FILE} (name,red,green,blue,alpha,id: the "
        "overlay's class colours, as Hydra and Kimera-Semantics read them) for a preset, a class "
        "list, or, with neither, the running node's vocabulary. Class id = index in the "
        "vocabulary; unlabeled pixels (65535) are outside total_semantic_labels. Exit status: 0 "
        "written, 1 no answer from the node, 2 bad arguments or an unwritable --out.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", choices=PRESETS, help="a built-in vocabulary")
    vocabulary = SETTINGS_BY_NAME["vocabulary"]
    source.add_argument(
        "--vocabulary", type=converter(vocabulary), metavar='"A; B, B2 [stuff]"',
        help=f'classes separated by "{vocabulary.separator}", each "name" or "name, synonym, ..." '
        "with an optional [thing] or [stuff] tag, as for segment and bag")
    parser.add_argument("--out", type=Path, required=True, help="folder to write the files into")
    parser.add_argument(
        "--dynamic", type=converter(vocabulary), default=(), metavar='"A; B"',
        help="class names (first synonyms) listed as Hydra's dynamic_labels, e.g. \"person; dog\"; "
        "Hydra leaves their pixels out of the map (default: none)")
    parser.add_argument(
        "--mask-unlabeled", action="store_true",
        help="also list 65535 as an invalid label: Hydra then leaves unlabeled pixels out of the "
        "map instead of keeping their geometry without a label")
    parser.add_argument(
        "--kimera", action="store_true",
        help="CSV for Kimera-Semantics, which keeps id 0 for unknown colours: ids are class id "
        "+ 1, after a first row giving the unlabeled colour of label_colors (black) id 0 (it is "
        f"compiled for {KIMERA_MAX_LABELS} labels, so at most {KIMERA_MAX_LABELS - 1} classes)")
    node_commands.add_service_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fcclip_ros.labelspace import write_label_space

    try:
        if args.preset:
            classes, source = Vocabulary.from_preset(args.preset).classes, f"preset {args.preset}"
        elif args.vocabulary is not None:
            entries = [] if args.vocabulary == ("",) else args.vocabulary  # --vocabulary ""
            classes, source = Vocabulary.from_entries(entries).classes, "--vocabulary"
        else:
            node_vocabulary = _node_vocabulary(args)
            if node_vocabulary is None:
                return 1
            classes, source = node_vocabulary
        written = write_label_space(args.out, classes, source, args.dynamic, args.mask_unlabeled,
                                    args.kimera)
    except VocabularyError as error:
        print(f"{PROGRAM}: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"{PROGRAM}: cannot write into {args.out}: {error.strerror or error}",
              file=sys.stderr)
        return 2
    things = sum(c.is_thing for c in classes)
    print(f"{' and '.join(str(path) for path in written)}: {len(classes)} classes from {source} "
          f"({things} things, {len(classes) - things} stuff)")
    _warn_for_colour_decoders(classes, args.kimera)
    return 0


def _node_vocabulary(args: argparse.Namespace) -> tuple[tuple[VocabularyClass, ...], str] | None:
    """The classes in force on the node, as its get_vocabulary service answers; None (the reason
    printed) when no node answered."""
    from fcclip_ros.srv import GetVocabulary

    response = node_commands.call_service(args, GetVocabulary, "get_vocabulary",
                                          GetVocabulary.Request())
    if response is None:
        return None
    classes = tuple(VocabularyClass(split_synonyms(entry), bool(is_thing))
                    for entry, is_thing in zip(response.classes, response.is_thing, strict=True))
    service = f"{args.namespace.rstrip('/')}/get_vocabulary"
    return classes, f"the node's {service} (vocabulary v{response.version})"


def _warn_for_colour_decoders(classes: Sequence[VocabularyClass], kimera: bool) -> None:
    """What a consumer that maps colours back to ids (Kimera-Semantics) gets wrong."""
    from fcclip_ros.labelspace import KIMERA_MAX_LABELS, classes_sharing_a_colour

    for ids in classes_sharing_a_colour(classes):
        names = ", ".join(f"{index} {classes[index].name!r}" for index in ids)
        print(f"{PROGRAM}: classes {names} share a colour: a colour decoder cannot tell them "
              "apart", file=sys.stderr)
    if kimera and len(classes) >= KIMERA_MAX_LABELS:
        print(f"{PROGRAM}: {len(classes)} classes, but Kimera-Semantics is compiled for "
              f"{KIMERA_MAX_LABELS} labels (id 0 unknown): recompile it with kTotalNumberOfLabels "
              f"of at least {len(classes) + 1}", file=sys.stderr)
