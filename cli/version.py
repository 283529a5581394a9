"""The version every command's --version prints."""

from __future__ import annotations

import argparse

from qcow2_monitor.cli.parser import ExitAction, ParserExit

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn, Optional

    from qcow2_monitor.cli.parser import ArgumentContainer

DISTRIBUTION = "qcow2-monitor"


def package_version() -> str:
    try:
        from importlib.metadata import version

        return version(DISTRIBUTION)
    except Exception:  # not installed as a distribution (running from a source tree)
        return "unknown"


class VersionAction(ExitAction):
    """-V/--version: the program and the package version as a ParserExit (cli/parser.py),
    looked up only when asked (reading the installed distribution's metadata costs about 2 MiB
    and 20 ms every run otherwise). `name` is the program shown (a subcommand shows its
    program's name, not `prog info`)."""

    def __init__(self, option_strings: list[str], name: str = "", **kwargs: Any) -> None:
        super().__init__(option_strings, **kwargs)
        self.name = name

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: Optional[str] = None) -> NoReturn:
        raise ParserExit(f"{self.name or parser.prog} {package_version()}\n")


def add_version_argument(container: ArgumentContainer, name: str = "") -> None:
    """-V/--version on a command (or in one of its groups): its name (`name`, or the
    parser's) and the package version, on stdout."""
    container.add_argument("-V", "--version", action=VersionAction, name=name,
                           help="print the program's version and exit")
