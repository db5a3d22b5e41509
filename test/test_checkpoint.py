"""Building FC-CLIP with its weights, and loading official-layout checkpoints: strict for the
head, clear errors otherwise."""

from __future__ import annotations

import io
import os
import shlex
import traceback
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.official_layout import official_state_dict

from fcclip_ros import cache
from fcclip_ros.model.build import BuildError, CheckpointError, build_fcclip, load_fcclip_weights
from fcclip_ros.model.classification import TextClassifier
from fcclip_ros.model.config import VARIANTS
from fcclip_ros.model.fcclip import FCCLIP, FCCLIPHead

TINY = VARIANTS["tiny"]


class TrainerState:
    """Stands for the non-tensor objects some training scripts pickle into checkpoints."""

    iteration = 368_750


class RunsCode:
    """What a malicious checkpoint carries: an object whose unpickling runs a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def segment(model: FCCLIP) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    embeddings = F.normalize(torch.randn(4, TINY.embed_dim, generator=generator), dim=-1)
    classifier = TextClassifier(embeddings, torch.tensor([0, 0, 1, 2]),
                                torch.tensor([True, False, True]))
    with torch.inference_mode():
        return model(torch.randn(1, 3, 64, 64, generator=generator), classifier)


@pytest.fixture(scope="module")
def convnext_large() -> FCCLIP:
    return FCCLIP(VARIANTS["convnext_large"])


def head_keys(model: FCCLIP) -> list[str]:
    return [key for key in model.state_dict() if not key.startswith("backbone.")]


def test_official_layout_checkpoint_loads_strictly_and_reproduces_outputs(tmp_path) -> None:
    trained = FCCLIP(TINY, seed=1)
    path = tmp_path / "fcclip_tiny.pth"
    torch.save({"model": official_state_dict(trained), "iteration": 10}, path)
    model = FCCLIP(TINY, seed=2)
    assert not torch.equal(segment(model)[1], segment(trained)[1])

    report = load_fcclip_weights(model, path)

    for ours, theirs in zip(segment(model), segment(trained), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert report.head_keys == len(head_keys(model))
    assert report.clip_keys == len(model.backbone.state_dict())
    assert report.ignored == ("criterion.empty_weight",)
    assert report.unexpected == ()


def test_head_only_checkpoint_keeps_open_clips_weights(tmp_path) -> None:
    trained = FCCLIP(TINY, seed=1)
    path = tmp_path / "head_only.pth"
    # Like the released files: head weights only, as a bare state dict.
    torch.save({key: value for key, value in official_state_dict(trained).items()
                if not key.startswith("backbone.")}, path)
    model = FCCLIP(TINY, seed=2)
    clip_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    report = load_fcclip_weights(model, path)
    assert report.clip_keys == 0
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, clip_before[key]), key
    for key in head_keys(model):
        assert torch.equal(model.state_dict()[key], trained.state_dict()[key]), key


def test_checkpoint_missing_a_head_weight_is_refused_naming_it(tmp_path) -> None:
    state = official_state_dict(FCCLIP(TINY))
    del state["sem_seg_head.predictor.query_embed.weight"]
    del state["void_embedding.weight"]
    path = tmp_path / "truncated.pth"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError,
                       match=r"lacks sem_seg_head\.predictor\.query_embed\.weight \(and 1 other"):
        load_fcclip_weights(FCCLIP(TINY), path)


def test_convnext_large_writes_the_official_key_layout(convnext_large: FCCLIP) -> None:
    state = official_state_dict(convnext_large)
    clip = [key for key in state if key.startswith("backbone.clip_model.")]
    rest = [key for key in state if not key.startswith("backbone.clip_model.")]
    assert (len(clip), len(rest)) == (543, 303)  # reference section 7.3
    assert {"backbone.clip_model.visual.trunk.head.norm.weight",
            "backbone.clip_model.visual.head.mlp.fc2.weight",
            "backbone.clip_model.transformer.resblocks.15.mlp.c_proj.weight",
            "sem_seg_head.pixel_decoder.transformer.level_embed",
            "sem_seg_head.predictor.logit_scale", "void_embedding.weight",
            "criterion.empty_weight"} <= set(state)
    assert sum(state[key].numel() for key in rest) - 134 == 20_721_601


def test_resnet_checkpoint_is_refused_by_the_convnext_large_model_naming_rn50(
        tmp_path, convnext_large: FCCLIP) -> None:
    rn50 = VARIANTS["rn50"]
    state = {f"sem_seg_head.{key}": value for key, value in FCCLIPHead(rn50).state_dict().items()}
    state["void_embedding.weight"] = torch.zeros(1, rn50.embed_dim)
    path = tmp_path / "fcclip_cocopan_r50.pth"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError, match=r"fits rn50 \(embed_dim 1024, res5 2048 channels\), "
                                              r"not convnext_large"):
        load_fcclip_weights(convnext_large, path)


def test_checkpoint_of_an_unknown_layout_names_a_mismatched_weight(tmp_path) -> None:
    state = official_state_dict(FCCLIP(TINY))
    state["sem_seg_head.predictor.query_feat.weight"] = torch.zeros(7, TINY.hidden_dim)
    path = tmp_path / "other.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"query_feat\.weight has shape \(7, 64\)"):
        load_fcclip_weights(FCCLIP(TINY), path)


def test_unexpected_entries_are_reported_not_loaded(tmp_path) -> None:
    state = official_state_dict(FCCLIP(TINY))
    state["sem_seg_head.predictor.extra_head.weight"] = torch.zeros(3)
    state["pixel_mean"] = torch.zeros(3, 1, 1)
    path = tmp_path / "extra.pth"
    torch.save({"model": state}, path)
    report = load_fcclip_weights(FCCLIP(TINY), path)
    assert report.unexpected == ("sem_seg_head.predictor.extra_head.weight",)
    assert set(report.ignored) == {"criterion.empty_weight", "pixel_mean"}


def test_checkpoint_that_would_run_code_is_refused_and_runs_nothing(tmp_path) -> None:
    marker = tmp_path / "code_ran"
    path = tmp_path / "malicious.pth"
    torch.save({"model": official_state_dict(FCCLIP(TINY, seed=1)), "x": RunsCode(marker)}, path)
    model = FCCLIP(TINY, seed=2)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    with pytest.raises(CheckpointError) as error:
        load_fcclip_weights(model, path)
    assert not marker.exists()
    assert str(error.value) == (
        f"{path} was not loaded: unpickling it would call {os.system.__module__}.system, which "
        "could run code from the file. FC-CLIP checkpoints hold only tensors, numpy arrays and "
        "plain values; use the official file, or re-save just the weights "
        "(torch.save({'model': state_dict}, path)) from a copy you trust")
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_file_with_pickled_objects_is_refused_naming_their_class(tmp_path) -> None:
    path = tmp_path / "with_trainer.pth"
    torch.save({"model": official_state_dict(FCCLIP(TINY)), "trainer": TrainerState()}, path)
    with pytest.raises(CheckpointError, match=r"would call (test\.)?test_checkpoint\.TrainerState"):
        load_fcclip_weights(FCCLIP(TINY), path)


def written_by_numpy_1(path: Path) -> None:
    """Rewrite a torch.save file as numpy 1.x writes it: its array functions in numpy.core."""
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            if name.endswith("/data.pkl"):
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            archive.writestr(name, data)
    path.write_bytes(buffer.getvalue())


@pytest.mark.parametrize("numpy_major", [1, 2])
def test_detectron2_checkpoint_with_numpy_arrays_and_scalars_loads(tmp_path,
                                                                   numpy_major: int) -> None:
    trained = FCCLIP(TINY, seed=1)
    # detectron2's model-zoo layout: weights as numpy arrays (0-d ones as numpy scalars) in an
    # OrderedDict, next to an author string and numpy bookkeeping values.
    weights = OrderedDict((key, value.numpy()[()] if value.dim() == 0 else value.numpy())
                          for key, value in official_state_dict(trained).items())
    path = tmp_path / "fcclip_numpy.pth"
    torch.save({"model": weights, "__author__": "Detectron2 Model Zoo",
                "matching_heuristics": True, "iteration": np.int64(368_749),
                "lr": np.float32(1e-4)}, path)
    if numpy_major == 1:
        written_by_numpy_1(path)
    model = FCCLIP(TINY, seed=2)
    allowed_before = set(torch.serialization.get_safe_globals())

    report = load_fcclip_weights(model, path)

    assert report.head_keys == len(head_keys(model))
    torch.testing.assert_close(segment(model)[1], segment(trained)[1], rtol=0, atol=0)
    assert set(torch.serialization.get_safe_globals()) == allowed_before  # for that load only


def test_object_array_entry_is_refused_as_not_numbers(tmp_path) -> None:
    state = official_state_dict(FCCLIP(TINY))
    state["void_embedding.weight"] = np.array([1.0, "x"], dtype=object)
    path = tmp_path / "objects.pth"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError, match=r"objects\.pth: .* or it holds objects other than "
                                              r"tensors, numeric numpy data and plain values"):
        load_fcclip_weights(FCCLIP(TINY), path)


def truncated(path: Path) -> None:
    torch.save({"model": official_state_dict(FCCLIP(TINY))}, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage", [
    truncated,
    lambda path: path.write_bytes(b"not a checkpoint"),
    lambda path: path.write_bytes(b""),
], ids=["truncated", "garbage", "empty"])
def test_damaged_files_fail_with_one_clear_line_and_no_torch_traceback(tmp_path,
                                                                         damage) -> None:
    path = tmp_path / "fcclip_cocopan.pth"
    damage(path)
    with pytest.raises(CheckpointError) as error:
        load_fcclip_weights(FCCLIP(TINY), path)
    message = str(error.value)
    assert message.startswith(f"cannot read {path}: ") and "\n" not in message
    assert "truncated" in message and "download it again" in message
    shown = "".join(traceback.format_exception(error.value))
    assert Path(torch.__file__).parent.as_posix() not in shown  # no torch internals attached


def test_unreadable_or_absent_files_raise_checkpoint_errors(tmp_path) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    model = FCCLIP(TINY)
    with pytest.raises(CheckpointError, match="cannot read"):
        load_fcclip_weights(model, garbage)
    with pytest.raises(CheckpointError, match="no FC-CLIP checkpoint"):
        load_fcclip_weights(model, tmp_path / "absent.pth")
    empty = tmp_path / "empty.pth"
    torch.save({"iteration": 3}, empty)
    with pytest.raises(CheckpointError, match="not a tensor"):
        load_fcclip_weights(model, empty)


def test_build_with_random_weights_is_reproducible_in_eval_mode_and_flagged() -> None:
    first, again = build_fcclip("tiny", "random", "random", seed=3), build_fcclip(
        "tiny", "random", "random", seed=3)
    assert first.random_weights and first.report is None
    assert not any(module.training for module in first.model.modules())
    for ours, theirs in zip(segment(first.model), segment(again.model), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    other_seed = build_fcclip("tiny", "random", "random", seed=4)
    assert not torch.equal(segment(other_seed.model)[1], segment(first.model)[1])


def test_build_from_a_checkpoint_file_reproduces_the_model_that_wrote_it(tmp_path) -> None:
    trained = FCCLIP(TINY, seed=1)
    path = tmp_path / "fcclip_tiny.pth"
    torch.save({"model": official_state_dict(trained)}, path)

    built = build_fcclip("tiny", weights=str(path), clip_weights="auto", seed=2)

    assert not built.random_weights
    assert built.report.path == str(path) and built.report.clip_keys > 0
    for ours, theirs in zip(segment(built.model), segment(trained), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_build_with_weights_auto_finds_the_checkpoint_where_download_puts_it(
        tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(cache.OFFICIAL_CHECKPOINTS, "tiny", "fcclip_tiny.pth")
    path = cache.checkpoint_path("tiny", tmp_path)
    path.parent.mkdir()
    trained = FCCLIP(TINY, seed=1)
    torch.save({"model": official_state_dict(trained)}, path)

    built = build_fcclip("tiny", weights="auto", clip_weights="random", cache_dir=tmp_path)

    assert built.report.path == str(path)
    torch.testing.assert_close(segment(built.model)[1], segment(trained)[1], rtol=0, atol=0)


@pytest.mark.parametrize(
    ("variant", "weights", "clip_weights", "message"),
    [
        ("vit_huge", "random", "random", "model 'vit_huge': use one of convnext_large, rn50"),
        ("rn50", "auto", "random", r"found no FC-CLIP checkpoint for rn50 \(expected "
                                   r".*/checkpoints/fcclip_cocopan_r50\.pth\); run `fcclip-ros "
                                   r"download --model rn50`"),
        ("tiny", "auto", "random", "no official FC-CLIP checkpoint exists for tiny"),
        ("tiny", "/nonexistent/fcclip.pth", "random", "^weights '/nonexistent/fcclip.pth': no"),
        ("tiny", "random", "/nonexistent/clip.bin", "^clip_weights '/nonexistent/clip.bin': no"),
    ],
)
def test_build_refuses_what_it_cannot_find_before_building_anything(
        tmp_path, variant, weights, clip_weights, message) -> None:
    with pytest.raises(BuildError, match=message):
        build_fcclip(variant, weights, clip_weights, cache_dir=tmp_path)


def test_build_refuses_a_damaged_clip_weight_file_naming_the_variant(tmp_path) -> None:
    path = tmp_path / "clip.bin"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(BuildError, match="cannot load CLIP weights for tiny: "):
        build_fcclip("tiny", "random", str(path))

