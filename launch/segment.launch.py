"""Start the FC-CLIP segmenter node with config/segment.yaml (or params_file:=...).

    ros2 launch fcclip_ros segment.launch.py image_topics:=/camera/color/image_raw device:=cuda
    ros2 launch fcclip_ros segment.launch.py image_topics:="[/front/image_raw, /rear/image_raw]"
    ros2 launch fcclip_ros segment.launch.py namespace:=robot1 rviz:=true
    ros2 launch fcclip_ros segment.launch.py image_topics:=/camera/camera/color/image_raw \
        depth_topics:=/camera/camera/aligned_depth_to_color/image_raw rviz:=true

One node serves every camera in image_topics (one model in memory, round-robin over the
cameras' newest frames). Launch arguments left empty keep the params file's value, so a
params file is never silently overridden by a launch default. With rviz:=true, RViz shows the
overlay of every camera the node subscribes to, in its namespace, and the points and markers of
those with a depth topic. rclpy nodes cannot be composed
into a container (ros2/rclpy#575): each image crosses a process boundary once, as a copy.
"""

import atexit
import difflib
import os
import tempfile

import yaml
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.logging import get_logger
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from fcclip_ros.settings import SETTINGS_BY_NAME, Setting, note
from fcclip_ros.topics import (
    DEFAULT_IMAGE_TOPICS,
    image_topics_in_params_file,
    parse_topic_list,
    rviz_config,
)

NODE_NAME = "fcclip"
# Node parameters that are also launch arguments; empty means "as in the params file".
OVERRIDES = (
    "image_topics",
    "depth_topics",
    "transport",
    "model",
    "weights",
    "device",
    "input_short_side",
    "autostart",
    "tracking",
)
OTHER_ARGUMENTS = {
    "image_topic": "one camera topic (same as image_topics:=<topic>)",
    "namespace": "the node's namespace",
    "use_sim_time": "true when replaying a bag",
    "log_level": "the node's log level",
    "rviz": "also open RViz on the overlay of every camera",
}


def _argument(context, name: str) -> str:
    return LaunchConfiguration(name).perform(context).strip()


def _image_topics(context) -> list[str] | None:
    """The cameras the launch arguments name (image_topics wins over image_topic), if any."""
    for name in ("image_topics", "image_topic"):
        if _argument(context, name):
            return parse_topic_list(_argument(context, name))
    return None


def _depth_topics(context) -> list[str] | None:
    text = _argument(context, "depth_topics")
    return parse_topic_list(text) if text else None


def _override_help(setting: Setting) -> str:
    """The parameter's description, limits and default, from the settings table."""
    if setting.type is tuple:
        default = f"[{', '.join(setting.default)}]"
        spelling = " A topic, or a YAML list of topics, e.g. [/front/image, /rear/image]."
    else:
        default, spelling = setting.default, ""
    return (f"{setting.help}{spelling} ({note(setting)}; the node's default: {default}); "
            "empty: as in the params file")


def _typed(setting: Setting, text: str):
    """A launch argument's text as the parameter's type."""
    if setting.type is bool:
        return text.lower() in ("true", "1")
    return setting.type(text)


def _parameter_overrides(context) -> dict:
    """The launch arguments that were given, as typed parameter values."""
    overrides = {}
    for name in OVERRIDES:
        text = _argument(context, name)
        if text and name not in ("image_topics", "depth_topics"):
            overrides[name] = _typed(SETTINGS_BY_NAME[name], text)
    topics = _image_topics(context)
    if topics is not None:
        overrides["image_topics"] = topics
    depth_topics = _depth_topics(context)
    if depth_topics is not None:
        overrides["depth_topics"] = depth_topics
    overrides["use_sim_time"] = _argument(context, "use_sim_time").lower() in ("true", "1")
    return overrides


def _rviz_config_file(context, share: str) -> str:
    """A copy of rviz/segment.rviz whose displays follow the node's cameras and namespace."""
    namespace = _argument(context, "namespace")
    params_file = _argument(context, "params_file")
    topics = (
        _image_topics(context)
        or image_topics_in_params_file(params_file, NODE_NAME, namespace)
        or list(DEFAULT_IMAGE_TOPICS)
    )
    depth_topics = (
        _depth_topics(context)
        or image_topics_in_params_file(params_file, NODE_NAME, namespace, "depth_topics")
        or []
    )
    with open(os.path.join(share, "rviz", "segment.rviz")) as template:
        config = rviz_config(yaml.safe_load(template), topics, namespace, depth_topics)
    handle, path = tempfile.mkstemp(prefix="fcclip_ros_", suffix=".rviz")
    with os.fdopen(handle, "w") as out:
        yaml.safe_dump(config, out, sort_keys=False)
    atexit.register(os.remove, path)
    return path


def _warn_about_misspelled_arguments(context) -> None:
    """ros2 launch accepts any name:=value; say so when one looks like a typo of ours."""
    known = ["params_file", *OVERRIDES, *OTHER_ARGUMENTS]
    for name in context.launch_configurations:
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
        if name not in known and close:
            get_logger("fcclip_ros").warning(
                f"launch argument {name!r} is not used; did you mean {close[0]!r}? "
                "(ros2 launch fcclip_ros segment.launch.py --show-args)"
            )


def _nodes(context):
    share = FindPackageShare("fcclip_ros").perform(context)
    _warn_about_misspelled_arguments(context)
    actions = [
        Node(
            package="fcclip_ros",
            executable="segmenter",
            name=NODE_NAME,
            namespace=_argument(context, "namespace"),
            parameters=[_argument(context, "params_file"), _parameter_overrides(context)],
            arguments=["--ros-args", "--log-level", _argument(context, "log_level")],
            output="screen",
            emulate_tty=True,
        )
    ]
    if _argument(context, "rviz").lower() in ("true", "1"):
        actions.append(
            Node(
                package="rviz2",
                executable="rviz2",
                arguments=["-d", _rviz_config_file(context, share)],
                output="screen",
            )
        )
    return actions


def generate_launch_description() -> LaunchDescription:
    defaults = {"use_sim_time": "false", "log_level": "info", "rviz": "false"}
    arguments = [
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution(
                [FindPackageShare("fcclip_ros"), "config", "segment.yaml"]
            ),
            description="parameter YAML for the node",
        ),
        *(
            DeclareLaunchArgument(
                name, default_value="", description=_override_help(SETTINGS_BY_NAME[name])
            )
            for name in OVERRIDES
        ),
        *(
            DeclareLaunchArgument(name, default_value=defaults.get(name, ""), description=text)
            for name, text in OTHER_ARGUMENTS.items()
        ),
    ]
    return LaunchDescription([*arguments, OpaqueFunction(function=_nodes)])
