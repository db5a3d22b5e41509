"""Command-line flags made from the settings table, and the image-size argument of `export` and
the bench scripts.

A flag's default, choices, range and help are its setting's, so `segment`, `bag` and `export`
(and the node) cannot drift apart.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fcclip_ros.settings import SETTINGS_BY_NAME, Setting, constraints, flags

if TYPE_CHECKING:
    from fcclip_ros.engine import EngineConfig

EXCLUSIVE = ("vocabulary", "vocabulary_preset")  # a class list or a preset, not both


def add_setting_flags(parser: argparse.ArgumentParser, command: str) -> None:
    """Add the flags of the settings that `command` takes, in table order."""
    taken = flags(command)
    both = {setting.name for setting in taken} >= set(EXCLUSIVE)
    exclusive = parser.add_mutually_exclusive_group() if both else parser
    for setting in taken:
        target = exclusive if setting.name in EXCLUSIVE else parser
        target.add_argument(setting.flag, **_options(setting))


def _options(setting: Setting) -> dict[str, Any]:
    options: dict[str, Any] = {"default": setting.default, "help": _help(setting)}
    if setting.type is bool:
        return options | {"action": argparse.BooleanOptionalAction}
    if setting.choices:
        options["choices"] = setting.choices
    if setting.repeated:
        options["action"] = _Repeated
    elif setting.type is tuple and not setting.separator:
        options["nargs"] = "+"
    else:
        options["type"] = converter(setting)
    return options


def _help(setting: Setting) -> str:
    """The setting's help, then what the flag's usage line does not show."""
    facts = []
    if setting.separator:
        facts.append(f'one string, entries separated by "{setting.separator}"')
    if setting.repeated:
        facts.append("repeatable, one entry each")
    if setting.value_range:
        facts.append(constraints(setting))
    if setting.default not in ("", ()):
        facts.append(f"default {setting.default}")
    text = f"{setting.help} ({'; '.join(facts)})" if facts else setting.help
    return text.replace("%", "%%")  # argparse formats help with %


class _Repeated(argparse.Action):
    """Each use of the flag adds one entry to the tuple (the default stays untouched)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, (*getattr(namespace, self.dest), values))


def converter(setting: Setting) -> Callable[[str], Any]:
    """The argparse type of a one-value flag: a list split at its separator, a number checked
    against the setting's range, or the plain type."""
    if setting.separator:
        def split(text: str) -> tuple[str, ...]:
            return tuple(part.strip() for part in text.split(setting.separator))

        return split
    if setting.value_range:
        return _bounded(setting)
    return setting.type


def _bounded(setting: Setting) -> Callable[[str], Any]:
    low, high = setting.value_range

    def convert(text: str) -> Any:
        value = setting.type(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} is outside {constraints(setting)}")
        return value

    convert.__name__ = setting.type.__name__  # argparse names it in "invalid int value"
    return convert


def flag_value(name: str, text: str) -> Any:
    """What the flag of setting `name` makes of `text` (e.g. the class tuple of --vocabulary)."""
    return converter(SETTINGS_BY_NAME[name])(text)


def engine_config(args: argparse.Namespace, command: str, **fixed: Any) -> EngineConfig:
    """The engine that the flags of `command` ask for; `fixed` holds what the command decides
    itself (the others keep the table's defaults)."""
    from fcclip_ros.engine import EngineConfig

    given = {setting.name: getattr(args, setting.dest) for setting in flags(command)}
    return EngineConfig.from_settings(given | fixed)


def image_size(text: str) -> tuple[int, int]:
    """ "640x480" -> (640, 480): a camera image size, WIDTHxHEIGHT as cameras are specified."""
    try:
        width, height = (int(side) for side in text.lower().split("x"))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT, e.g. 640x480") from error
    if width <= 0 or height <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: both sides must be positive")
    return width, height
