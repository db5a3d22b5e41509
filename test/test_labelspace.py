"""`fcclip-ros labelspace`: the files parsed back as Hydra and Kimera-Semantics read them, and
checked against the vocabulary they were written from (a preset, a class list, the live node)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers.node_process import TEST_PARAMETERS, NodeProcess, Peer

from fcclip_ros.cli import main
from fcclip_ros.labelspace import COLOUR_HEADER, COLOURS_FILE, HYDRA_FILE, write_label_space
from fcclip_ros.mapping_images import label_color_image
from fcclip_ros.overlay import class_color
from fcclip_ros.result import NO_INSTANCE, UNLABELED, Segmentation
from fcclip_ros.vocabulary import Vocabulary, VocabularyClass, VocabularyError

FCCLIP_ROS = str(Path(sys.executable).with_name("fcclip-ros"))  # the installed console script
HYDRA_KEYS = ["total_semantic_labels", "dynamic_labels", "invalid_labels", "object_labels",
              "surface_places_labels", "label_names"]
CUSTOM = ("person", "cup, mug", "floor, ground [stuff]", "sky [stuff]", "chair")


def read_back(directory: Path) -> tuple[dict, list[dict[str, str]]]:
    """The label space as yaml-cpp would see it, and the CSV rows by header."""
    label_space = yaml.safe_load((directory / HYDRA_FILE).read_text(encoding="utf-8"))
    with (directory / COLOURS_FILE).open(newline="", encoding="utf-8") as rows:
        reader = csv.DictReader(rows)
        assert tuple(reader.fieldnames) == COLOUR_HEADER
        return label_space, list(reader)


def assert_describes(directory: Path, classes: tuple[VocabularyClass, ...]) -> None:
    """Every class id once, with its name, kind and overlay colour; unlabeled outside."""
    label_space, rows = read_back(directory)
    assert list(label_space) == HYDRA_KEYS
    assert label_space["total_semantic_labels"] == len(classes)
    assert label_space["label_names"] == [{"label": index, "name": c.name}
                                          for index, c in enumerate(classes)]
    objects, surfaces = label_space["object_labels"], label_space["surface_places_labels"]
    assert objects == [index for index, c in enumerate(classes) if c.is_thing]
    assert surfaces == [index for index, c in enumerate(classes) if not c.is_thing]
    assert sorted(objects + surfaces) == list(range(len(classes)))
    assert all(isinstance(label, int) for label in objects + surfaces)
    assert label_space["total_semantic_labels"] <= UNLABELED  # unlabeled lies outside
    assert [int(row["id"]) for row in rows] == list(range(len(classes)))
    assert [row["name"] for row in rows] == [c.name for c in classes]
    assert [(int(row["red"]), int(row["green"]), int(row["blue"])) for row in rows] == [
        class_color(c.name) for c in classes]
    assert {row["alpha"] for row in rows} == {"255"}


@pytest.mark.parametrize("preset", ["coco", "ade20k_full", "cityscapes"])
def test_a_preset_label_space_has_every_class_once_things_as_objects_stuff_as_surfaces(
        tmp_path, preset):
    classes = Vocabulary.from_preset(preset).classes
    write_label_space(tmp_path, classes, f"preset {preset}")
    assert_describes(tmp_path, classes)
    label_space, _ = read_back(tmp_path)
    assert label_space["dynamic_labels"] == label_space["invalid_labels"] == []


def test_kind_tags_and_synonyms_of_a_class_list_decide_kind_and_name(tmp_path):
    classes = Vocabulary.from_entries(CUSTOM).classes
    write_label_space(tmp_path, classes, "--vocabulary")
    assert_describes(tmp_path, classes)
    label_space, _ = read_back(tmp_path)
    assert label_space["surface_places_labels"] == [2, 3]  # floor, sky: tagged stuff
    assert label_space["label_names"][1] == {"label": 1, "name": "cup"}  # the first synonym


def test_mask_unlabeled_makes_65535_hydras_only_invalid_label(tmp_path):
    write_label_space(tmp_path, Vocabulary.from_entries(CUSTOM).classes, "test",
                      mask_unlabeled=True)
    label_space, _ = read_back(tmp_path)
    assert label_space["invalid_labels"] == [UNLABELED]
    assert label_space["total_semantic_labels"] == len(CUSTOM)


def test_dynamic_names_mark_every_class_of_that_name_and_unknown_names_are_refused(tmp_path):
    classes = Vocabulary.from_preset("ade20k_full").classes
    write_label_space(tmp_path, classes, "test", dynamic=("person", "pot"))
    label_space, _ = read_back(tmp_path)
    expected = [index for index, c in enumerate(classes) if c.name in ("person", "pot")]
    assert len(expected) == 3  # ADE-847 lists "pot" twice
    assert label_space["dynamic_labels"] == expected
    with pytest.raises(VocabularyError, match="'unicorn' is not a class name"):
        write_label_space(tmp_path / "refused", classes, "test", dynamic=("unicorn",))
    assert not (tmp_path / "refused").exists()


def test_for_kimera_classes_start_at_1_and_the_unlabeled_colour_is_its_unknown_0(tmp_path):
    classes = Vocabulary.from_entries(CUSTOM).classes
    write_label_space(tmp_path, classes, "test", kimera=True)
    label_space, rows = read_back(tmp_path)
    assert rows[0] == {"name": "unlabeled", "red": "0", "green": "0", "blue": "0",
                       "alpha": "255", "id": "0"}
    unlabeled_colour = label_color_image(Segmentation(
        labels=np.full((1, 1), UNLABELED, np.uint16),
        instances=np.full((1, 1), NO_INSTANCE, np.uint16), confidence=None, segments=[]))[0, 0]
    assert [int(rows[0][channel]) for channel in ("red", "green", "blue")] == list(
        unlabeled_colour)
    assert [int(row["id"]) for row in rows[1:]] == list(range(1, len(CUSTOM) + 1))
    assert [row["name"] for row in rows[1:]] == [c.name for c in classes]
    assert [entry["label"] for entry in label_space["label_names"]] == list(range(len(CUSTOM)))


def labelspace(*arguments: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([FCCLIP_ROS, "labelspace", *arguments], capture_output=True, text=True,
                          timeout=timeout)


def test_the_command_writes_a_preset_and_a_class_list(tmp_path):
    result = labelspace("--preset", "cityscapes", "--out", str(tmp_path / "city"))
    assert result.returncode == 0, result.stderr
    assert "19 classes from preset cityscapes (8 things, 11 stuff)" in result.stdout
    assert_describes(tmp_path / "city", Vocabulary.from_preset("cityscapes").classes)

    result = labelspace("--vocabulary", "; ".join(CUSTOM), "--dynamic", "person",
                        "--out", str(tmp_path / "custom"))
    assert result.returncode == 0, result.stderr
    assert_describes(tmp_path / "custom", Vocabulary.from_entries(CUSTOM).classes)
    assert read_back(tmp_path / "custom")[0]["dynamic_labels"] == [0]


def test_classes_sharing_a_colour_and_too_many_for_kimera_are_warned_about(tmp_path, capsys):
    assert main(["labelspace", "--preset", "ade20k_full", "--kimera", "--out", str(tmp_path)]) == 0
    warnings = capsys.readouterr().err
    pots = [index for index, name in enumerate(Vocabulary.from_preset("ade20k_full").names)
            if name == "pot"]
    assert f"classes {pots[0]} 'pot', {pots[1]} 'pot' share a colour" in warnings
    assert "847 classes, but Kimera-Semantics is compiled for 21 labels" in warnings
    assert main(["labelspace", "--preset", "cityscapes", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(("arguments", "reason"), [
    (["--preset", "pascal"], "invalid choice: 'pascal'"),
    (["--vocabulary", ""], "empty vocabulary"),
    (["--vocabulary", "cup; cup"], "duplicate class names"),
    (["--preset", "coco", "--dynamic", "unicorn"], "'unicorn' is not a class name"),
    (["--preset", "coco", "--vocabulary", "cup"], "not allowed with argument"),
])
def test_bad_arguments_exit_2_with_the_reason(tmp_path, arguments, reason):
    result = labelspace(*arguments, "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert reason in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_an_unwritable_out_exits_2_saying_where(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result = labelspace("--preset", "coco", "--out", str(blocker / "out"))
    assert result.returncode == 2
    assert f"cannot write into {blocker / 'out'}" in result.stderr
    assert "Traceback" not in result.stderr


def test_without_a_source_and_no_node_it_exits_1_saying_so(tmp_path):
    result = labelspace("--namespace", "/nobody_serves_here", "--timeout", "1",
                        "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    assert "no service /nobody_serves_here/get_vocabulary: is the node running" in result.stderr
    assert not (tmp_path / "out").exists()


def test_from_the_running_node_the_label_space_is_its_vocabulary_also_after_a_swap(
        ros, tmp_path):
    namespace = "/labelspace_test"
    node = NodeProcess(tmp_path / "node.log", *TEST_PARAMETERS, f"cache_dir:={tmp_path}",
                       "image_topics:=[/labelspace_cam/image]", namespace=namespace)
    try:
        peer = Peer(ros, namespace=namespace)
        peer.wait_for_node(node)
        result = labelspace("--namespace", namespace, "--out", str(tmp_path / "preset"))
        assert result.returncode == 0, result.stderr + node.output()
        in_force = peer.get_vocabulary()
        assert f"from the node's {namespace}/get_vocabulary (vocabulary v{in_force.version})" in (
            result.stdout)
        coco = Vocabulary.from_preset("coco")
        assert list(in_force.classes) == list(coco.entries)
        assert_describes(tmp_path / "preset", coco.classes)

        swap = subprocess.run([FCCLIP_ROS, "set-vocabulary", "--namespace", namespace, *CUSTOM],
                              capture_output=True, text=True, timeout=120)
        assert swap.returncode == 0, swap.stderr
        result = labelspace("--namespace", namespace, "--out", str(tmp_path / "custom"))
        assert result.returncode == 0, result.stderr
        in_force = peer.get_vocabulary()
        custom = Vocabulary.from_entries(CUSTOM)
        assert list(in_force.classes) == list(custom.entries)
        assert list(in_force.is_thing) == list(custom.is_thing)
        assert_describes(tmp_path / "custom", custom.classes)
    finally:
        assert node.stop() == 0
