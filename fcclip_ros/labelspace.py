"""The vocabulary as the label-space files of mapping stacks (Hydra, Kimera-Semantics).

A class id is the class's index in the vocabulary, the value of the `labels` image and of the low
16 bits of the `semantic` image. Two files:

- ``label_space.yaml``, Hydra's label space (the keys of its ``config/label_spaces/*.yaml``, read
  by ``LabelSpaceConfig`` and ``label_names``): ``total_semantic_labels`` is the class count,
  ``object_labels`` the things, ``surface_places_labels`` the stuff classes, ``dynamic_labels``
  the classes named as dynamic, ``label_names`` one ``{label, name}`` per class (the name is the
  first synonym).
- ``colors.csv``, ``name,red,green,blue,alpha,id``: the overlay's colour of each class
  (``overlay.class_color``), one row per class in id order. Hydra's ``SemanticColorMap`` and
  Kimera-Semantics' ``SemanticLabel2Color`` read this header; Kimera's variant is shifted (see
  ``colour_rows``).

Unlabeled pixels (65535) are left out of ``total_semantic_labels``: Hydra integrates their depth
and its default (MLE) semantic update skips them. With ``mask_unlabeled`` 65535 is also an
``invalid_label``, and Hydra leaves those pixels out of the map entirely. Hydra masks dynamic
labels the same way. Negative classes are never reported, so they appear nowhere.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from fcclip_ros.mapping_images import UNLABELED_COLOR
from fcclip_ros.overlay import class_color
from fcclip_ros.result import UNLABELED
from fcclip_ros.vocabulary import VocabularyClass, VocabularyError

HYDRA_FILE = "label_space.yaml"
COLOURS_FILE = "colors.csv"
COLOUR_HEADER = ("name", "red", "green", "blue", "alpha", "id")
KIMERA_UNKNOWN_ID = 0  # Kimera-Semantics' label of unknown colours, never integrated
KIMERA_MAX_LABELS = 21  # kTotalNumberOfLabels, fixed when Kimera-Semantics is compiled


def dynamic_class_ids(classes: Sequence[VocabularyClass], names: Sequence[str]) -> tuple[int, ...]:
    """The ids of the classes named (by their first synonym; a name several classes share marks
    them all), ascending; VocabularyError names the first unknown name."""
    known = {c.name for c in classes}
    for name in names:
        if name not in known:
            listed = ", ".join(repr(c.name) for c in classes[:10])
            more = ", ..." if len(classes) > 10 else ""
            raise VocabularyError(f"dynamic class {name!r} is not a class name of the vocabulary "
                                  f"({listed}{more})")
    wanted = set(names)
    return tuple(index for index, c in enumerate(classes) if c.name in wanted)


def hydra_label_space(
    classes: Sequence[VocabularyClass],
    dynamic: Sequence[str] = (),
    mask_unlabeled: bool = False,
) -> dict[str, Any]:
    """Hydra's label space of these classes, keys in the order of Hydra's own files."""
    return {
        "total_semantic_labels": len(classes),
        "dynamic_labels": list(dynamic_class_ids(classes, dynamic)),
        "invalid_labels": [UNLABELED] if mask_unlabeled else [],
        "object_labels": [index for index, c in enumerate(classes) if c.is_thing],
        "surface_places_labels": [index for index, c in enumerate(classes) if not c.is_thing],
        "label_names": [{"label": index, "name": c.name} for index, c in enumerate(classes)],
    }


def colour_rows(classes: Sequence[VocabularyClass], kimera: bool = False) -> list[tuple]:
    """One CSV row per class in id order: name, red, green, blue, alpha (opaque), id.

    ``kimera``: for Kimera-Semantics, which keeps label 0 for unknown colours (and logs every
    point of a colour its CSV lacks): ids are class id + 1, after a first row that gives
    label_colors' unlabeled colour label 0.
    """
    if not kimera:
        return [(c.name, *class_color(c.name), 255, index) for index, c in enumerate(classes)]
    unlabeled = ("unlabeled", *UNLABELED_COLOR, 255, KIMERA_UNKNOWN_ID)
    return [unlabeled, *((name, *rgb, alpha, index + 1)
                         for name, *rgb, alpha, index in colour_rows(classes))]


def classes_sharing_a_colour(classes: Sequence[VocabularyClass]) -> list[tuple[int, ...]]:
    """Ids of classes drawn in one colour (a repeated name, or two names hashing alike): a
    consumer decoding colours back to ids cannot tell them apart."""
    ids_of_colour: dict[tuple[int, int, int], list[int]] = {}
    for index, c in enumerate(classes):
        ids_of_colour.setdefault(class_color(c.name), []).append(index)
    return [tuple(ids) for ids in ids_of_colour.values() if len(ids) > 1]


def write_label_space(
    directory: Path,
    classes: Sequence[VocabularyClass],
    source: str,
    dynamic: Sequence[str] = (),
    mask_unlabeled: bool = False,
    kimera: bool = False,
) -> tuple[Path, Path]:
    """Write label_space.yaml and colors.csv into ``directory`` (made if missing); ``source``
    says in the YAML's first comment where the classes came from. OSError when it cannot be
    written, VocabularyError for an unknown dynamic class name."""
    label_space = hydra_label_space(classes, dynamic, mask_unlabeled)
    directory.mkdir(parents=True, exist_ok=True)
    hydra_path, colours_path = directory / HYDRA_FILE, directory / COLOURS_FILE
    comment = (
        f"# Hydra label space written by `fcclip-ros labelspace` from {source}.\n"
        "# label = class id = index in the vocabulary (the labels image, semantic & 0xFFFF);\n"
        f"# unlabeled pixels are {UNLABELED}, outside total_semantic_labels"
        f"{' and invalid' if mask_unlabeled else ''}.\n"
    )
    body = yaml.safe_dump(label_space, sort_keys=False, default_flow_style=None, width=100,
                          allow_unicode=True)
    hydra_path.write_text("---\n" + comment + body, encoding="utf-8")
    with colours_path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(COLOUR_HEADER)
        writer.writerows(colour_rows(classes, kimera))
    return hydra_path, colours_path
