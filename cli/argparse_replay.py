"""A command line's declaration (cli/parser.py) replayed into argparse, which answers every line
a plain reading leaves: --help and --version, abbreviations, ``--``, errors, subcommands.

argparse on its own prints to stderr and ends the process: exit 2 on a bad command line (2 means
corruptions for `qcow2-analyze check`, and CRITICAL to a monitoring system), exit 0 after
--help. The parser here raises instead (UsageError, ParserExit), wraps its description to the
help width (the epilog keeps its lines: examples, exit codes) and parses options and
positionals intermixed when it has no subcommands.
"""

from __future__ import annotations

import argparse
import os
import sys

from qcow2_monitor.cli.outcome import Namespace, ParserExit, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any, NoReturn, Optional

    from qcow2_monitor.cli.parser import ArgumentParser

HELP_WIDTH = 79


class ExitAction(argparse.Action):
    """An option that takes no value and ends the command with a text (--help, --version)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS,
                 default: Any = argparse.SUPPRESS, help: Optional[str] = None) -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)


class HelpAction(ExitAction):
    """-h/--help: the parser's help as a ParserExit (argparse's own prints it and exits)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: Optional[str] = None) -> NoReturn:
        raise ParserExit(parser.format_help())


class VersionAction(ExitAction):
    """-V/--version: the program and the package version as a ParserExit, looked up only when
    asked (reading the installed distribution's metadata costs about 2 MiB and 20 ms). `name`
    is the program shown (a subcommand shows its program's name, not `prog info`)."""

    def __init__(self, option_strings: list[str], name: str = "", **kwargs: Any) -> None:
        super().__init__(option_strings, **kwargs)
        self.name = name

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: Optional[str] = None) -> NoReturn:
        from qcow2_monitor.cli.version import package_version

        raise ParserExit(f"{self.name or parser.prog} {package_version()}\n")


EXIT_ACTIONS = {"help": HelpAction, "version": VersionAction}


def terminal_columns() -> int:
    """The terminal's width as shutil.get_terminal_size() finds it ($COLUMNS, then the terminal
    on stdout, else 80), without importing shutil (and with it bz2 and lzma)."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    if sys.__stdout__ is None:
        return 80
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80
    except (ValueError, OSError):
        return 80


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """argparse's formatter that keeps the lines of a description and an epilog (examples,
    exit codes). argparse makes one for every add_argument() (to try its metavar), each asking
    the terminal's width through shutil, which this one does not import."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: Optional[int] = None) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         terminal_columns() - 2 if width is None else width)


class ReplayedParser(argparse.ArgumentParser):
    """argparse's parser that raises instead of printing and exiting, wraps its description to
    the help width and parses intermixed when it has no subcommands."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self.has_commands = False
        self._intermixing = False

    def add_subparsers(self, **kwargs: Any) -> Any:
        self.has_commands = True
        return super().add_subparsers(**kwargs)

    def format_help(self) -> str:
        import textwrap  # for --help only

        description = self.description
        if description:
            self.description = textwrap.fill(description, HELP_WIDTH)
        try:
            return super().format_help()
        finally:
            self.description = description

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.prog, self.format_usage())

    def exit(self, status: int = 0, message: Optional[str] = None) -> NoReturn:
        raise ParserExit(message or "", status)

    def parse_known_args(  # type: ignore[override]
        self, args: Optional[Sequence[str]] = None, namespace: Any = None
    ) -> tuple[Any, list[str]]:
        namespace = Namespace() if namespace is None else namespace
        # argparse's intermixed parsing refuses parsers with subcommands (their subparsers
        # parse intermixed themselves), and calls parse_known_args itself: the flag makes that
        # inner call the plain one.
        if self.has_commands or self._intermixing:
            return super().parse_known_args(args, namespace)
        # The plain parse first: with the positionals in one run (or none, as in
        # `check_qcow2 -f IMAGE`) it is the intermixed parse's answer, without the whole usage
        # text that argparse's intermixed parse writes up front for its error messages.
        parsed = super().parse_known_args(args, Namespace(**vars(namespace)))
        if not parsed[1]:
            return parsed
        self._intermixing = True
        try:
            return super().parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def _replay_calls(declared: ArgumentParser, parser: ReplayedParser) -> None:
    groups: dict[int, Any] = {}
    for index, call in enumerate(declared.calls):
        if call[0] == "argument":
            _, argument, group = call
            kwargs = dict(argument.kwargs)
            if kwargs.get("action") in EXIT_ACTIONS:
                kwargs["action"] = EXIT_ACTIONS[kwargs["action"]]
            (parser if group is None else groups[group]).add_argument(*argument.flags,
                                                                      **kwargs)
        elif call[0] == "group":
            groups[index] = parser.add_argument_group(*call[1], **call[2])
        elif call[0] == "defaults":
            parser.set_defaults(**call[1])
        else:
            commands = parser.add_subparsers(**call[1].kwargs)
            for name, command in call[1].parsers.items():
                _replay_calls(command, commands.add_parser(
                    name, **command.kwargs, **call[1].listed[name], add_help=False))


def replay(declared: ArgumentParser) -> ReplayedParser:
    """argparse's parser of the declaration: the same arguments, groups, defaults and
    subcommands, in the order they were declared (the help and usage show that order)."""
    parser = ReplayedParser(**{**declared.kwargs, "add_help": False})  # -h: a declared call
    _replay_calls(declared, parser)
    return parser
