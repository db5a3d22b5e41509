"""The one settings table: the node, `fcclip-ros segment` / `bag` / `export`, EngineConfig, the
launch file and config/segment.yaml take their defaults, limits and help texts from it."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields

import pytest
import yaml
from helpers.launch_stubs import declared_arguments, launch, load_launch_file
from helpers.paths import PARAMS_FILE

from fcclip_ros import cli
from fcclip_ros.engine import EngineConfig
from fcclip_ros.settings import SETTINGS, SETTINGS_BY_NAME, default, flags, note

pytestmark = pytest.mark.fast

# The shortest command line of each command: what it needs besides the settings' flags.
REQUIRED = {
    "segment": ["segment", "photo.png", "--out", "out"],
    "bag": ["bag", "input.mcap", "--out", "out"],
    "export": ["export", "--size", "640x480"],
}


def squashed(text: str) -> str:
    """Text with its line breaks and indentation gone, to compare wrapped text."""
    return " ".join(text.split())


def test_every_default_has_its_settings_type_and_fits_its_choices_and_range():
    assert len(SETTINGS_BY_NAME) == len(SETTINGS)
    for setting in SETTINGS:
        if setting.type is tuple:
            assert all(isinstance(item, str) for item in setting.default), setting.name
        assert type(setting.default) is setting.type, setting.name
        assert not setting.choices or setting.default in setting.choices, setting.name
        if setting.value_range:
            low, high = setting.value_range
            assert type(low) is type(high) is setting.type, setting.name
            assert low <= setting.default <= high, setting.name
        assert bool(setting.flag) == bool(setting.commands), setting.name
        assert not setting.separator or setting.type is tuple, setting.name


def test_one_default_for_what_used_to_drift():
    from fcclip_ros.image_conversion import DEFAULT_MAX_INPUT_PIXELS

    assert default("points_stride") == 2
    assert default("depth_max_delay_s") == 0.05
    assert default("max_input_pixels") == DEFAULT_MAX_INPUT_PIXELS


def test_the_3d_defaults_are_the_geometrys_and_the_frame_pipelines():
    from fcclip_ros.frame_pipeline import FramePipeline
    from fcclip_ros.geometry import MIN_BOX_DEPTH_PIXELS

    assert default("min_box_depth_pixels") == MIN_BOX_DEPTH_PIXELS == (
        FramePipeline("tiny", 1).min_box_depth_pixels)
    assert default("rectification") == "auto"


def test_the_bag_job_defaults_are_the_tables():
    from fcclip_ros.ros.bag import BagOptions

    options = BagOptions()
    for name in ("points_stride", "depth_max_delay_s", "max_input_pixels", "rectification",
                 "min_box_depth_pixels"):
        assert getattr(options, name) == default(name), name


def test_choices_are_the_lists_of_the_modules_that_use_them():
    from fcclip_ros.backends import BACKENDS
    from fcclip_ros.engine import MODES, PRECISIONS
    from fcclip_ros.model.config import VARIANTS
    from fcclip_ros.topics import RECTIFICATIONS
    from fcclip_ros.vocabulary import PRESETS

    choices = {setting.name: setting.choices for setting in SETTINGS if setting.choices}
    assert choices == {"transport": ("raw", "compressed"), "model": tuple(VARIANTS),
                       "precision": PRECISIONS, "backend": BACKENDS, "mode": MODES,
                       "vocabulary_preset": PRESETS, "rectification": RECTIFICATIONS}


def test_the_table_loads_no_torch_as_the_launch_file_imports_it():
    code = "import sys, fcclip_ros.settings; print(sorted(m for m in sys.modules if m == 'torch'))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"


def test_engine_config_defaults_are_the_tables():
    config = EngineConfig()
    for field in fields(EngineConfig):
        if field.name not in ("seed", "cache_dir"):
            assert getattr(config, field.name) == default(field.name), field.name
    assert config.cache_dir is None and default("cache_dir") == ""  # both: the default cache
    defaults = {setting.name: setting.default for setting in SETTINGS}
    assert EngineConfig.from_settings(defaults) == config
    node_values = defaults | {"vocabulary": ["cup, mug"], "onnxruntime_providers": []}
    assert EngineConfig.from_settings(node_values).vocabulary == ("cup, mug",)


def test_overlay_style_defaults_are_the_tables():
    from fcclip_ros.overlay import OverlayStyle
    from fcclip_ros.ros.parameters import OVERLAY_FIELDS

    style = OverlayStyle()
    assert {name: getattr(style, field) for name, field in OVERLAY_FIELDS.items()} == {
        name: default(name) for name in OVERLAY_FIELDS}


def test_node_declares_every_setting_with_the_tables_default_and_descriptor(ros):
    from rcl_interfaces.msg import ParameterType

    from fcclip_ros.ros import parameters

    parameters.declare(ros.node)
    types = {str: ParameterType.PARAMETER_STRING, int: ParameterType.PARAMETER_INTEGER,
             float: ParameterType.PARAMETER_DOUBLE, bool: ParameterType.PARAMETER_BOOL,
             tuple: ParameterType.PARAMETER_STRING_ARRAY}
    values = parameters.values(ros.node)
    assert values == {setting.name: list(setting.default) if setting.type is tuple
                      else setting.default for setting in SETTINGS}
    assert parameters.engine_config(values) == EngineConfig()
    for setting in SETTINGS:
        [descriptor] = ros.node.describe_parameters([setting.name])
        assert descriptor.type == types[setting.type], setting.name
        assert descriptor.description == setting.help
        assert descriptor.read_only == (not setting.tunable), setting.name
        assert descriptor.additional_constraints == (
            "one of: " + ", ".join(setting.choices) if setting.choices else "")
        ranges = [*descriptor.floating_point_range, *descriptor.integer_range]
        assert [(r.from_value, r.to_value) for r in ranges] == (
            [setting.value_range] if setting.value_range else []), setting.name


def _parser(command: str):
    subcommands = next(a for a in cli.build_parser()._actions if a.dest == "command")
    return subcommands.choices[command]


@pytest.mark.parametrize("command", list(REQUIRED))
def test_command_flags_take_the_tables_defaults_and_choices(command):
    args = cli.build_parser().parse_args(REQUIRED[command])
    taken = flags(command)
    assert taken
    for setting in taken:
        # bag's --batch-size: the table's default on CUDA, 1 on the CPU, a given value anywhere
        expected = None if (command, setting.flag) == ("bag", "--batch-size") else (
            setting.default)
        assert getattr(args, setting.dest) == expected, setting.flag
    actions = {action.option_strings[0]: action for action in _parser(command)._actions
               if action.option_strings}
    for setting in taken:
        assert tuple(actions[setting.flag].choices or ()) == setting.choices, setting.flag


def test_the_commands_share_the_flags_that_used_to_drift():
    assert {"--points-stride", "--max-input-pixels", "--short-side"} <= {
        setting.flag for setting in flags("segment")} & {setting.flag for setting in flags("bag")}
    assert {setting.flag for setting in flags("bag")} >= {"--depth-max-delay", "--batch-size"}
    assert {setting.flag for setting in flags("export")} == {
        "--model", "--weights", "--clip-weights", "--short-side", "--max-long-side", "--cache-dir"}


@pytest.mark.parametrize("command", list(REQUIRED))
def test_command_help_is_the_settings_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    shown = squashed(capsys.readouterr().out)
    for setting in flags(command):
        assert squashed(setting.help) in shown, setting.flag


def test_a_bool_setting_is_a_flag_pair_that_defaults_to_the_table():
    parse = cli.build_parser().parse_args
    assert parse(REQUIRED["bag"]).tracking is default("tracking") is True
    assert parse([*REQUIRED["bag"], "--no-tracking"]).tracking is False
    assert parse([*REQUIRED["bag"], "--tracking"]).tracking is True


def test_the_tracker_config_defaults_are_the_tables():
    from fcclip_ros.settings import TRACKER_SETTINGS
    from fcclip_ros.tracking import TrackerConfig

    config = TrackerConfig()
    assert {name: getattr(config, field) for name, field in TRACKER_SETTINGS.items()} == {
        name: default(name) for name in TRACKER_SETTINGS}
    assert TrackerConfig.from_settings({name: default(name) for name in SETTINGS_BY_NAME}) == (
        config)
    assert TrackerConfig.from_settings({"tracking_min_iou": 0.5}).min_iou == 0.5


def test_a_flag_outside_its_settings_range_is_refused_with_the_range(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*REQUIRED["segment"], "--points-stride", "0"])
    assert exit_info.value.code == 2
    assert "--points-stride: 0 is outside 1..64" in capsys.readouterr().err


def test_params_file_holds_every_setting_at_its_default_under_its_help():
    """Each key (or, for an empty array, which a params file cannot write, a commented example)
    sits under its help text and note, at the table's default."""
    text = PARAMS_FILE.read_text()
    lines = text.splitlines()
    parameters = yaml.safe_load(text)["/**"]["ros__parameters"]
    assert set(parameters) <= set(SETTINGS_BY_NAME)
    for setting in SETTINGS:
        if setting.default == ():
            assert setting.name not in parameters
            line = f"    # {setting.name}: ["
        else:
            value = list(setting.default) if setting.type is tuple else setting.default
            assert parameters[setting.name] == value, setting.name
            line = f"    {setting.name}: "
        at = next(i for i, text in enumerate(lines) if text.startswith(line))
        comment = []
        while lines[at - 1 - len(comment)].lstrip().startswith("#"):
            comment.insert(0, lines[at - 1 - len(comment)].lstrip()[1:])
        assert squashed(f"{setting.help} ({note(setting)})") in squashed(" ".join(comment)), (
            setting.name)


def test_launch_arguments_describe_their_parameters_from_the_table(monkeypatch):
    overrides = load_launch_file(monkeypatch).OVERRIDES
    assert {"image_topics", "device"} <= set(overrides)  # the contract's launch arguments
    arguments = declared_arguments(monkeypatch)
    for name in overrides:
        setting = SETTINGS_BY_NAME[name]
        description = arguments[name]["description"]
        assert arguments[name]["default_value"] == ""  # empty: the params file's value
        assert setting.help in description and note(setting) in description, name
        shown = f"[{', '.join(setting.default)}]" if setting.type is tuple else setting.default
        assert f"the node's default: {shown}" in description, name


def test_launch_overrides_have_the_parameters_types(monkeypatch):
    [node], _, _ = launch(monkeypatch, autostart="false", input_short_side="480",
                          transport="compressed")
    assert node.kwargs["parameters"][1] == {"autostart": False, "input_short_side": 480,
                                            "transport": "compressed", "use_sim_time": False}
