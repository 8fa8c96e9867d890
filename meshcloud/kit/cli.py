"""The CLI kit: how a package registers its verbs, and the helpers every verb uses.

A domain's ``cli.py`` adds its sub-parsers with a function appended to ``EXTENSIONS`` and
its handlers with ``@command(name)``; the agent's composition module lists those modules
(:func:`meshcloud.agent.compose.load_cli_verbs`) and ``meshcloud/cli.py`` loads them before
parsing, so one verb module that fails to import fails the command line loudly.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from meshcloud.datadir import DataDir

if TYPE_CHECKING:
    from meshcloud.client import ApiClient

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}

COMMANDS: dict[str, Callable[[argparse.Namespace], int | None]] = {}


def command(name: str) -> Callable[[Callable[[argparse.Namespace], int | None]],
                                   Callable[[argparse.Namespace], int | None]]:
    def register(fn: Callable[[argparse.Namespace], int | None]
                 ) -> Callable[[argparse.Namespace], int | None]:
        COMMANDS[name] = fn
        return fn

    return register


def parse_duration(text: str) -> float:
    match = _DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 30m, 1h, 2d")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, value


def datadir(args: argparse.Namespace) -> DataDir:
    return DataDir(args.data_dir)


def client(args: argparse.Namespace) -> ApiClient:
    from meshcloud.client import ApiClient

    return ApiClient(datadir(args))


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


EXTENSIONS: list[Callable[[Any], None]] = []
"""Functions adding verb groups (resources) to the parser."""
