"""The real `colcon build` of this package, as a ROS user runs it, with the venv as the underlay
(as /opt/ros/<distro> would be), and what lands in the install space."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.paths import ROOT

VENV = Path(sys.prefix)
COLCON = VENV / "bin" / "colcon"


def checkout_files(destination: Path) -> None:
    """The files a clone of the checkout has, with uncommitted edits (not build outputs)."""
    listing = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True, check=True,
    )
    for relative in filter(None, listing.stdout.decode().split("\0")):
        source = ROOT / relative
        if source.is_file():
            (destination / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / relative)


def underlay_environment() -> dict[str, str]:
    """A shell with the venv as the only ROS install, and nothing of this checkout on it."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AMENT_", "COLCON_", "CMAKE_PREFIX", "PYTHONPATH"))
    }
    env.update(
        AMENT_PREFIX_PATH=str(VENV),
        CMAKE_PREFIX_PATH=str(VENV),
        VIRTUAL_ENV=str(VENV),
        PATH=f"{VENV / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
    )
    return env


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A colcon workspace holding this checkout, built with a plain `colcon build`."""
    if not COLCON.exists():
        pytest.fail(f"{COLCON} missing: run scripts/setup.sh (requirements/dev.txt has colcon)")
    ws = tmp_path_factory.mktemp("colcon_ws")
    checkout_files(ws / "src" / "fcclip_ros")
    build = subprocess.run(
        [str(COLCON), "build", "--event-handlers", "console_direct-"],
        cwd=ws, env=underlay_environment(), capture_output=True, text=True, timeout=1200,
    )
    log = ws / "log" / "latest_build" / "fcclip_ros" / "stderr.log"
    details = log.read_text() if log.exists() else build.stdout + build.stderr
    assert build.returncode == 0, f"colcon build failed:\n{details[-4000:]}"
    return ws


def in_sourced_workspace(ws: Path, command: str) -> subprocess.CompletedProcess:
    """`command` in a shell that ran `source install/setup.bash`, outside the source tree."""
    return subprocess.run(
        ["bash", "-c", f'source "{ws}/install/setup.bash" && {command}'],
        cwd=ws.parent, env=underlay_environment(), capture_output=True, text=True, timeout=300,
    )


def test_colcon_build_installs_the_generated_interfaces_beside_the_python_package(workspace):
    prefix = workspace / "install" / "fcclip_ros"
    package = prefix / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    package = package / "site-packages" / "fcclip_ros"
    for generated in ("msg/_segment.py", "msg/_segment_array.py", "msg/_vocabulary.py",
                      "srv/_set_vocabulary.py", "srv/_get_vocabulary.py"):
        assert (package / generated).is_file(), generated
    assert len(list(package.glob("fcclip_ros_s__rosidl_typesupport_*.so"))) >= 2
    sources = sorted(p.relative_to(ROOT) for p in (ROOT / "fcclip_ros").rglob("*.py"))
    assert sources and all((package.parent / p).is_file() for p in sources)
    presets = sorted(p.name for p in (ROOT / "fcclip_ros" / "presets").glob("*.txt"))
    assert presets and all((package / "presets" / name).is_file() for name in presets)
    assert (package / "__init__.py").read_text() == (ROOT / "fcclip_ros/__init__.py").read_text()
    for interface in ("msg/Segment.msg", "msg/SegmentArray.msg", "msg/Vocabulary.msg",
                      "srv/SetVocabulary.srv", "srv/GetVocabulary.srv"):
        assert (prefix / "share" / "fcclip_ros" / interface).is_file(), interface


def test_colcon_build_installs_the_executables_and_the_launch_config_and_rviz_files(workspace):
    prefix = workspace / "install" / "fcclip_ros"
    for executable in (prefix / "lib" / "fcclip_ros" / "segmenter", prefix / "bin" / "fcclip-ros"):
        assert executable.is_file() and os.access(executable, os.X_OK), executable
    for folder in ("launch", "config", "rviz"):
        shipped = sorted(p.name for p in (ROOT / folder).iterdir())
        installed = sorted(p.name for p in (prefix / "share" / "fcclip_ros" / folder).iterdir())
        assert shipped and installed == shipped, folder


def test_the_install_space_imports_engine_and_messages_and_runs_the_cli(workspace):
    prefix = workspace / "install" / "fcclip_ros"
    result = in_sourced_workspace(
        workspace,
        "python -c 'import fcclip_ros, fcclip_ros.engine, fcclip_ros.topics;"
        " from fcclip_ros.msg import Segment, SegmentArray, Vocabulary;"
        " from fcclip_ros.srv import SetVocabulary, GetVocabulary;"
        " from fcclip_ros.vocabulary import Vocabulary as V;"
        " print(fcclip_ros.engine.__file__, len(V.from_preset(\"lvis\")))'"
        " && command -v fcclip-ros && fcclip-ros --help",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    engine_file, classes = result.stdout.splitlines()[0].split()
    assert Path(engine_file).is_relative_to(prefix) and classes == "1203"
    assert result.stdout.splitlines()[1] == str(prefix / "bin" / "fcclip-ros")
    assert "set-vocabulary" in result.stdout and "segment" in result.stdout
