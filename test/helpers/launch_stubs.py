"""launch/segment.launch.py run without ROS: `launch` and `launch_ros` (not on PyPI) stubbed out."""

from __future__ import annotations

import importlib.util
import sys
import types

from helpers.paths import PARAMS_FILE, ROOT


class _Recorded:
    """Stands in for a launch class: remembers how it was constructed."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class _LaunchConfiguration(_Recorded):
    def perform(self, context):
        return context.launch_configurations[self.args[0]]


class _FindPackageShare(_Recorded):
    def perform(self, context):
        return str(ROOT)  # the source tree has the installed share/ layout


class _LaunchContext:
    def __init__(self, **arguments):
        self.launch_configurations = arguments


class _Logger:
    def __init__(self):
        self.warnings = []

    def warning(self, text):
        self.warnings.append(text)


def load_launch_file(monkeypatch):
    """The launch file as a module, with the stubs in sys.modules while the test runs."""
    logger = _Logger()
    stubs = {
        "launch": {"LaunchDescription": _Recorded},
        "launch.actions": {"DeclareLaunchArgument": _Recorded, "OpaqueFunction": _Recorded},
        "launch.logging": {"get_logger": lambda name: logger},
        "launch.substitutions": {
            "LaunchConfiguration": _LaunchConfiguration,
            "PathJoinSubstitution": _Recorded,
        },
        "launch_ros.actions": {"Node": _Recorded},
        "launch_ros.substitutions": {"FindPackageShare": _FindPackageShare},
    }
    for name, attributes in stubs.items():
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location(
        "segment_launch", ROOT / "launch/segment.launch.py"
    )
    launch_file = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launch_file)
    launch_file.logger = logger
    return launch_file


def declared_arguments(monkeypatch) -> dict[str, dict]:
    """The launch arguments: name -> DeclareLaunchArgument's keyword arguments."""
    actions = load_launch_file(monkeypatch).generate_launch_description().args[0]
    return {action.args[0]: action.kwargs for action in actions if action.args}


def launch(monkeypatch, **given):
    """The actions the launch file starts for `ros2 launch ... name:=value` (given)."""
    launch_file = load_launch_file(monkeypatch)
    actions = launch_file.generate_launch_description().args[0]
    declared = {a.args[0]: a.kwargs["default_value"] for a in actions if a.args}
    [nodes] = [a for a in actions if "function" in a.kwargs]
    arguments = declared | {"params_file": str(PARAMS_FILE)} | given
    return nodes.kwargs["function"](_LaunchContext(**arguments)), declared, launch_file.logger
