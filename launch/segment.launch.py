"""Start the FC-CLIP segmenter node with config/segment.yaml (or params_file:=...).

    ros2 launch fcclip_ros segment.launch.py image_topics:=/camera/color/image_raw device:=cuda
    ros2 launch fcclip_ros segment.launch.py image_topics:="[/front/image_raw, /rear/image_raw]"
    ros2 launch fcclip_ros segment.launch.py namespace:=robot1 rviz:=true

One node serves every camera in image_topics (one model in memory, round-robin over the
cameras' newest frames). Launch arguments left empty keep the params file's value, so a
params file is never silently overridden by a launch default. rclpy nodes cannot be composed
into a container (ros2/rclpy#575): each image crosses a process boundary once, as a copy.
"""

import yaml
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

# Launch argument -> node parameter; empty means "as in the params file".
OVERRIDES = {
    "image_topics": "camera topic, or a YAML list of topics, e.g. [/front/image, /rear/image]",
    "transport": "raw | compressed",
    "model": "convnext_large | rn50 | rn101 | rn50x4 | rn50x16 | rn50x64",
    "weights": "auto | path to the FC-CLIP checkpoint | random",
    "device": "auto | cpu | cuda | cuda:N",
    "input_short_side": "short side the network sees, e.g. 480 for speed",
}


def _parameter_overrides(context) -> dict:
    """The launch arguments that were given, as typed parameter values."""
    overrides = {}
    for name in OVERRIDES:
        text = LaunchConfiguration(name).perform(context).strip()
        if not text:
            continue
        if name == "image_topics":
            topics = yaml.safe_load(text)
            overrides[name] = [str(t) for t in topics] if isinstance(topics, list) else [text]
        elif name == "input_short_side":
            overrides[name] = int(text)
        else:
            overrides[name] = text
    overrides["use_sim_time"] = LaunchConfiguration("use_sim_time").perform(context) == "true"
    return overrides


def _segmenter(context):
    return [
        Node(
            package="fcclip_ros",
            executable="segmenter",
            name="fcclip",
            namespace=LaunchConfiguration("namespace"),
            parameters=[LaunchConfiguration("params_file"), _parameter_overrides(context)],
            arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level")],
            output="screen",
            emulate_tty=True,
        )
    ]


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare("fcclip_ros")
    arguments = [
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution([share, "config", "segment.yaml"]),
            description="parameter YAML for the node",
        ),
        DeclareLaunchArgument("namespace", default_value="", description="the node's namespace"),
        *(
            DeclareLaunchArgument(name, default_value="", description=help_text)
            for name, help_text in OVERRIDES.items()
        ),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="bag replay"),
        DeclareLaunchArgument("log_level", default_value="info"),
        DeclareLaunchArgument(
            "rviz", default_value="false", description="also open RViz on the overlay image"
        ),
    ]
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        arguments=["-d", PathJoinSubstitution([share, "rviz", "segment.rviz"])],
        condition=IfCondition(LaunchConfiguration("rviz")),
    )
    return LaunchDescription([*arguments, OpaqueFunction(function=_segmenter), rviz])
