"""The one command-line parser of every front end (qcow2-analyze, check_qcow2, qcow2-telegraf,
qcow2-textfile).

argparse on its own prints to stderr and ends the process: exit 2 on a bad command line (2 means
corruptions for `qcow2-analyze check`, and CRITICAL to a monitoring system), exit 0 after
--help. Here nothing is printed and nothing exits: a bad command line raises
:class:`UsageError` and --help/--version raise :class:`ParserExit` with the text to print, and
each entry point says it its own way with its documented exit code (qcow2-analyze and the
collectors: 64 and 0; check_qcow2: UNKNOWN, 3, for both, as the monitoring-plugins guidelines
want).

Options and positional arguments may come in any order (`usage a.qcow2 --no-chain b.qcow2`,
`check_qcow2 a.qcow2 -w 80 b.qcow2`): a parser without subcommands parses intermixed.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn, Optional, Protocol

    class ArgumentContainer(Protocol):
        """Where options are added: a parser, or one of its groups (add_argument_group())."""

        def add_argument(self, *name_or_flags: str, **kwargs: Any) -> argparse.Action: ...

        def set_defaults(self, **kwargs: Any) -> None: ...

HELP_WIDTH = 79


class UsageError(Exception):
    """A bad command line: what is wrong (`message`, without the program name), the program
    whose parser refused it (`prog`, a subcommand's is `qcow2-analyze info`) and its usage
    line."""

    def __init__(self, message: str, prog: str = "", usage: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.prog = prog
        self.usage = usage


class ParserExit(Exception):
    """--help or --version was given: `text` goes to stdout, and the command ends there."""

    def __init__(self, text: str, status: int = 0) -> None:
        super().__init__(text)
        self.text = text
        self.status = status


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


def add_help_argument(container: ArgumentContainer) -> None:
    """-h/--help, in `container` (a parser made with add_help=False puts it in a group)."""
    container.add_argument("-h", "--help", action=HelpAction, help="show this help and exit")


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
    the terminal's width through shutil: a start-up cost of every run, not only of --help."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: Optional[int] = None) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         terminal_columns() - 2 if width is None else width)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser that raises instead of printing and exiting, wraps its description to
    the help width (the epilog keeps its lines: examples, exit codes) and parses options and
    positionals intermixed when it has no subcommands.

    `commands` maps each subcommand's name to its parser once add_subparsers() was called.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        add_help = bool(kwargs.get("add_help", True))
        kwargs["add_help"] = False  # argparse's own -h prints and exits: HelpAction instead
        super().__init__(*args, **kwargs)
        if add_help:
            add_help_argument(self)
        self.commands: dict[str, argparse.ArgumentParser] = {}
        self._intermixing = False

    def add_subparsers(self, **kwargs: Any) -> Any:
        action = super().add_subparsers(**kwargs)
        # The action's own map of names to parsers: the later add_parser() calls show in it.
        choices: dict[str, argparse.ArgumentParser] = action.choices
        self.commands = choices
        return action

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
        self, args: Optional[Sequence[str]] = None, namespace: Optional[argparse.Namespace] = None
    ) -> tuple[argparse.Namespace, list[str]]:
        # argparse's intermixed parsing refuses parsers with subcommands (their subparsers
        # parse intermixed themselves), and calls parse_known_args itself: the flag makes that
        # inner call the plain one.
        if self.commands or self._intermixing:
            return super().parse_known_args(args, namespace)
        # The plain parse first: with the positionals in one run (or none, as in
        # `check_qcow2 -f IMAGE`) it is the intermixed parse's answer, without the whole usage
        # text that argparse's intermixed parse writes up front for its error messages.
        # (A namespace given by the caller would keep what the first parse put in it.)
        if namespace is None:
            parsed = super().parse_known_args(args, None)
            if not parsed[1]:
                return parsed
        self._intermixing = True
        try:
            return super().parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False
