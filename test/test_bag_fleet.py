"""`fcclip-ros bag INPUT... --out OUT`: several bags in one process, and on a real two-node Ray
cluster (workers killed, Ctrl-C, --resume), each output equal to a single-process run's."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers.ray_cluster import actor_processes, two_node_cluster
from helpers.recorded_bag import image_topic, write_recorded_bag
from mcap.reader import make_reader

from fcclip_ros import cli

FCCLIP_ROS = [sys.executable, "-m", "fcclip_ros.cli"]
ENGINE_ARGS = ["--model", "tiny", "--weights", "random", "--clip-weights", "random",
               "--short-side", "64", "--overlap-threshold", "0",
               "--vocabulary", "person; cat, kitten; cup; wall [stuff]; floor [stuff]"]
BAGS = 4
FRAMES = 8  # per bag: long enough to kill a worker in the middle of one
# On the CPU torch's float sums depend on its thread count; Ray gives a worker one thread per
# CPU it reserves (OMP_NUM_THREADS), so the single-process references run with as many.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def _recording(path: Path, frames: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    pictures = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(frames)]
    return write_recorded_bag(path, [image_topic("/cam/image", pictures, 10**18, 10**8)])


def _messages(folder: Path) -> list[tuple[str, int, int, bytes]]:
    """(topic, log time, publish time, bytes) of every message of a finished output bag."""
    assert (folder / "metadata.yaml").is_file(), f"{folder} is not complete"
    with (folder / f"{folder.name}_0.mcap").open("rb") as stream:
        return [(channel.topic, message.log_time, message.publish_time, message.data)
                for _, channel, message in make_reader(stream).iter_messages(
                    log_time_order=False)]


def _bag(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*FCCLIP_ROS, "bag", *args, *ENGINE_ARGS], capture_output=True,
                          text=True, timeout=300, env=env)


class _Watched:
    """A `fcclip-ros bag` process whose stderr (tqdm's carriage returns) is read as it comes."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen([*FCCLIP_ROS, "bag", *args, *ENGINE_ARGS],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        self.stderr = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while chunk := self.process.stderr.read1(256):
            self.stderr += chunk.decode(errors="replace")

    def wait_for_frames(self, at_least: int, timeout: float = 180) -> None:
        """Until the bar shows `at_least` frames done (of all bags)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = [int(n) for n in re.findall(rf"(\d+)/{BAGS * FRAMES}\b", self.stderr)]
            if done and max(done) >= at_least:
                return
            time.sleep(0.05)
        raise AssertionError(f"no progress to {at_least} frames:\n{self.stderr}")

    def finish(self) -> tuple[int, str, str]:
        """(exit status, stdout, stderr)."""
        stdout = self.process.stdout.read().decode()
        code = self.process.wait(timeout=300)
        self._reader.join(timeout=10)
        return code, stdout, self.stderr


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of four recordings, drive_0.mcap .. drive_3.mcap."""
    folder = tmp_path_factory.mktemp("recordings")
    for index in range(BAGS):
        _recording(folder / f"drive_{index}.mcap", FRAMES, seed=index)
    return folder


@pytest.fixture(scope="module")
def references(recordings: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The four bags segmented by one process without Ray (a quoted glob pattern as input)."""
    out = tmp_path_factory.mktemp("references") / "segmented"
    result = _bag(str(recordings / "drive_*.mcap"), "--out", str(out), env=ONE_THREAD)
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[str, list[str]]]:
    pytest.importorskip("ray")  # in the test venv (requirements/dev.txt); optional for users
    with two_node_cluster() as running:
        yield running


def _assert_equal_to_references(out: Path, references: Path) -> None:
    for index in range(BAGS):
        name = f"drive_{index}"
        assert _messages(out / name) == _messages(references / name), name


def test_several_inputs_in_one_process_load_the_model_once_and_equal_single_bag_runs(
        recordings, references, tmp_path):
    single = tmp_path / "single"
    result = _bag(str(recordings / "drive_2.mcap"), "--out", str(single), env=ONE_THREAD)
    assert result.returncode == 0, result.stderr
    assert _messages(single) == _messages(references / "drive_2")
    assert sorted(path.name for path in references.iterdir()) == [
        f"drive_{index}" for index in range(BAGS)]

    again = _bag(*(str(recordings / f"drive_{i}.mcap") for i in range(BAGS)),
                 "--out", str(tmp_path / "again"))
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("RANDOM weights") == 1, "one engine for all bags"
    for index in range(BAGS):
        assert re.search(rf"^drive_{index}\s+{FRAMES}/{FRAMES}\s+0\s+[\d.]+\s+1\s+complete$",
                         again.stdout, re.M), again.stdout
    assert f"{tmp_path / 'again'}: 4 of 4 bags complete" in again.stdout


def test_bags_on_a_two_node_ray_cluster_equal_single_process_runs_and_both_nodes_work(
        recordings, references, cluster, tmp_path):
    address, node_ids = cluster
    out = tmp_path / "fleet"
    result = _bag(*(str(recordings / f"drive_{i}.mcap") for i in range(BAGS)), "--out",
                  str(out), "--ray-address", address, "--workers", "2")
    assert result.returncode == 0, result.stderr
    _assert_equal_to_references(out, references)
    workers = re.findall(r"^worker \d+\s+(\d+)\s+[\d.]+\s+([0-9a-f]+)$", result.stdout, re.M)
    assert sorted(node for _, node in workers) == sorted(node_ids), result.stdout
    assert all(int(frames) > 0 for frames, _ in workers), "both nodes segmented frames"
    assert sum(int(frames) for frames, _ in workers) == BAGS * FRAMES


def test_a_worker_killed_mid_bag_costs_that_bag_a_retry_not_the_run(
        recordings, references, cluster, tmp_path):
    address, _ = cluster
    out = tmp_path / "killed"
    run = _Watched(str(recordings / "drive_*.mcap"), "--out", str(out), "--ray-address",
                   address, "--workers", "2")
    run.wait_for_frames(2)
    busy = actor_processes("ray::BagWorker.segment")
    assert busy, "a worker is running a bag"
    os.kill(busy[0], signal.SIGKILL)
    code, stdout, stderr = run.finish()
    assert code == 0, stderr
    assert re.search(r"drive_\d: worker \d died while running it \(\w+\); trying again from "
                     r"its last checkpoint \(attempt 2 of 3\)", stderr), stderr
    assert re.search(r"^drive_\d\s+8/8\s+0\s+[\d.]+\s+2\s+complete$", stdout, re.M), stdout
    _assert_equal_to_references(out, references)


def test_ctrl_c_stops_the_cluster_work_resumably_and_resume_finishes_the_rest(
        recordings, references, cluster, tmp_path):
    address, _ = cluster
    out = tmp_path / "stopped"
    args = [str(recordings / "drive_*.mcap"), "--out", str(out), "--workers", "2"]
    with_address = {**os.environ, "RAY_ADDRESS": address}
    run = _Watched(*args, "--ray", env=with_address)
    run.wait_for_frames(2)
    run.process.send_signal(signal.SIGINT)
    code, _, stderr = run.finish()
    assert code == 130, stderr
    assert "Continue with the same command and --resume" in stderr
    unfinished = [index for index in range(BAGS)
                  if not (out / f"drive_{index}" / "metadata.yaml").exists()]
    assert unfinished, "stopped before the end"

    resumed = _bag(*args, "--ray", "--resume", env=with_address)
    assert resumed.returncode == 0, resumed.stderr
    for index in range(BAGS):
        row = re.search(rf"^drive_{index}\s.*$", resumed.stdout, re.M)[0]
        assert row.endswith("complete") and row.endswith("already complete") == (
            index not in unfinished), resumed.stdout
    _assert_equal_to_references(out, references)


def test_ray_missing_is_said_in_one_line_with_how_to_install_it(recordings, tmp_path):
    """A `ray` module that fails to import as an absent one does, first on the path."""
    (tmp_path / "ray.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'ray'\", name='ray')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    result = _bag(str(recordings / "drive_0.mcap"), "--out", str(tmp_path / "out"), "--ray",
                  env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "fcclip-ros bag --ray needs Ray: pip install ray (or in the fcclip_ros checkout: "
        "pip install '.[ray]')"]
    assert not (tmp_path / "out").exists()


def _closed_port() -> int:
    """A local port that no one listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize(("inputs", "extra", "message"), [
    (["a/drive.mcap", "b/drive.mcap"], [], "would both write"),
    (["a/drive.mcap", "a/drive.mcap"], [], "are the same input"),
    (["a/nothing_*.mcap"], [], "matches no file or folder"),
    (["a/drive.mcap"], ["--ray-address", f"127.0.0.1:{_closed_port()}"],
     "no Ray cluster answers at 127.0.0.1:"),
])
def test_inputs_or_a_cluster_that_cannot_be_used_are_refused_in_one_line(
        tmp_path, capsys, inputs, extra, message):
    for folder in ("a", "b"):
        _recording(tmp_path / folder / "drive.mcap", 1, seed=0)
    code = cli.main(["bag", *(str(tmp_path / name) for name in inputs), "--out",
                     str(tmp_path / "out"), *ENGINE_ARGS, *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()
