"""The one command-line parser of every front end (qcow2-analyze, check_qcow2, qcow2-telegraf,
qcow2-textfile).

A command declares its line with argparse's calls (`add_argument`, `add_argument_group`,
`set_defaults`, `add_subparsers`); argparse is the authority on what a line means. It is also
the largest part of a plugin's start: argparse, re, gettext and locale, and a parser object
built action by action, for a line that is nearly always `-f IMAGE -w 80 -c 90`. So the
declaration is recorded here, and:

* a plain line is read straight from the declaration (:meth:`ArgumentParser.parse_plain`):
  options spelt out in full, each value in the next word or after ``--option=``, positionals
  anywhere; every value through the option's own type and choices;
* anything else -- --help, --version, an abbreviation, ``--``, a value that starts with ``-``,
  a value the type refuses, a missing one, an unknown option, a command with subcommands -- is
  argparse's: the declaration is replayed into argparse (cli/argparse_replay.py), which
  answers with the namespace, the help or the error.

A plain reading never answers otherwise than argparse would: tests/test_cli_parser.py compares
both on generated lines for every front end's parser.

Nothing is printed and nothing exits: a bad command line raises :class:`UsageError` and
--help/--version raise :class:`ParserExit` with the text to print, and each entry point says it
its own way with its documented exit code (qcow2-analyze and the collectors: 64 and 0;
check_qcow2: UNKNOWN, 3, for both, as the monitoring-plugins guidelines want). Options and
positional arguments may come in any order (`usage a.qcow2 --no-chain b.qcow2`): a parser
without subcommands parses intermixed.
"""

from __future__ import annotations

import os
import sys

from qcow2_monitor.cli.outcome import Namespace, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any, Callable, NoReturn, Optional, Protocol

    class ArgumentContainer(Protocol):
        """Where options are added: a parser, or one of its groups (add_argument_group())."""

        def add_argument(self, *name_or_flags: str, **kwargs: Any) -> None: ...

        def set_defaults(self, **kwargs: Any) -> None: ...

# The actions a plain reading carries out as argparse does; "help" and "version" end the
# command (argparse's answer: cli/argparse_replay.py), any other action is argparse's alone.
VALUE_ACTIONS = ("store", "append")
FLAG_ACTIONS = ("store_true", "store_false", "count")
EXIT_ACTIONS = ("help", "version")


def invalid_value(message: str) -> Exception:
    """What an option's type raises for a value it refuses: argparse's ArgumentTypeError, whose
    message argparse shows as it is (a plain reading leaves the line to argparse then)."""
    import argparse

    return argparse.ArgumentTypeError(message)


def add_help_argument(container: ArgumentContainer) -> None:
    """-h/--help, in `container` (a parser made with add_help=False puts it in a group)."""
    container.add_argument("-h", "--help", action="help", help="show this help and exit")


class Argument:
    """One add_argument() call, and what a plain reading needs of it."""

    def __init__(self, flags: tuple[str, ...], kwargs: dict[str, Any]) -> None:
        self.flags = flags
        self.kwargs = kwargs
        self.action: str = kwargs.get("action", "store")
        self.positional = not flags[0].startswith("-")
        self.dest: str = kwargs.get("dest") or self._default_dest()
        # argparse's own defaults: False for store_true, True for store_false, else None.
        self.default: Any = kwargs.get("default", {"store_true": False,
                                                   "store_false": True}.get(self.action))
        self.type: Optional[Callable[[str], Any]] = kwargs.get("type")
        self.choices = kwargs.get("choices")
        self.nargs = kwargs.get("nargs")

    def _default_dest(self) -> str:
        if self.positional:
            return self.flags[0]
        long = next((flag for flag in self.flags if flag.startswith("--")), self.flags[0])
        return long.lstrip("-").replace("-", "_")

    def plain(self) -> bool:
        """Whether a plain reading can carry it out (anything else is argparse's)."""
        known = {"action", "dest", "default", "type", "choices", "nargs", "metavar", "help",
                 "name"}
        if not set(self.kwargs) <= known:
            return False
        if self.positional:
            return self.action == "store" and self.nargs in ("*", "+") and self.choices is None
        return self.nargs is None and self.action in (*VALUE_ACTIONS, *FLAG_ACTIONS,
                                                      *EXIT_ACTIONS)

    def convert(self, text: str) -> Any:
        """The value of one word by the type and choices; raises if they refuse it."""
        value = text if self.type is None else self.type(text)
        if self.choices is not None and value not in self.choices:
            raise ValueError(text)
        return value


class Group:
    """An argument group: its arguments are the parser's, shown under the group's title."""

    def __init__(self, parser: ArgumentParser, index: int) -> None:
        self.parser = parser
        self.index = index

    def add_argument(self, *flags: str, **kwargs: Any) -> None:
        self.parser.declare(Argument(flags, kwargs), self.index)

    def set_defaults(self, **kwargs: Any) -> None:
        self.parser.set_defaults(**kwargs)


class Commands:
    """add_subparsers()'s answer: add_parser() declares a subcommand, a parser of its own."""

    def __init__(self, parser: ArgumentParser, kwargs: dict[str, Any]) -> None:
        self.kwargs = kwargs
        self.parsers = parser.commands
        self.listed: dict[str, dict[str, Any]] = {}  # how each is listed: help=, aliases=

    def add_parser(self, name: str, **kwargs: Any) -> ArgumentParser:
        listing = ("help", "aliases")
        command = ArgumentParser(**{k: v for k, v in kwargs.items() if k not in listing})
        self.parsers[name] = command
        self.listed[name] = {k: v for k, v in kwargs.items() if k in listing}
        return command


class ArgumentParser:
    """A command line's declaration (argparse's calls), read plainly when it can be and by
    argparse otherwise; raises UsageError/ParserExit instead of printing and exiting.

    `commands` maps each subcommand's name to its parser once add_subparsers() was called.
    """

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.prog: str = kwargs.get("prog") or os.path.basename(sys.argv[0])
        # What replaying needs, in the order of the calls: ("argument", Argument, group),
        # ("group", args, kwargs), ("defaults", kwargs), ("commands", Commands).
        self.calls: list[tuple[Any, ...]] = []
        self.arguments: list[Argument] = []
        self.defaults: dict[str, Any] = {}
        self.commands: dict[str, ArgumentParser] = {}
        if kwargs.get("add_help", True):
            add_help_argument(self)

    # The declaration.

    def declare(self, argument: Argument, group: Optional[int] = None) -> None:
        self.calls.append(("argument", argument, group))
        self.arguments.append(argument)

    def add_argument(self, *flags: str, **kwargs: Any) -> None:
        self.declare(Argument(flags, kwargs))

    def add_argument_group(self, *args: Any, **kwargs: Any) -> Group:
        self.calls.append(("group", args, kwargs))
        return Group(self, len(self.calls) - 1)

    def set_defaults(self, **kwargs: Any) -> None:
        self.calls.append(("defaults", kwargs))
        self.defaults.update(kwargs)
        for argument in self.arguments:  # as argparse: the arguments declared so far
            if argument.dest in kwargs:
                argument.default = kwargs[argument.dest]

    def add_subparsers(self, **kwargs: Any) -> Commands:
        commands = Commands(self, kwargs)
        self.calls.append(("commands", commands))
        return commands

    # The reading.

    def argparse(self) -> Any:
        """The declaration replayed into argparse (cli/argparse_replay.py)."""
        from qcow2_monitor.cli.argparse_replay import replay

        return replay(self)

    def parse_args(self, args: Optional[Sequence[str]] = None) -> Namespace:
        words = list(sys.argv[1:] if args is None else args)
        parsed = self.parse_plain(words)
        return parsed if parsed is not None else self.argparse().parse_args(words, Namespace())

    def parse_known_args(self, args: Sequence[str]) -> tuple[Namespace, list[str]]:
        result: tuple[Namespace, list[str]] = self.argparse().parse_known_args(
            list(args), Namespace())
        return result

    def format_help(self) -> str:
        return str(self.argparse().format_help())

    def format_usage(self) -> str:
        return str(self.argparse().format_usage())

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.prog, self.format_usage())

    def parse_plain(self, words: Sequence[str]) -> Optional[Namespace]:
        """The namespace of a plain line, as argparse gives it; None for any other line (and
        for a parser with subcommands or an argument a plain reading does not carry out)."""
        if self.commands or not all(argument.plain() for argument in self.arguments):
            return None
        positionals = [argument for argument in self.arguments if argument.positional]
        try:
            found, given = self._read(words)
            if len(positionals) == 1:
                found[positionals[0].dest] = self._positional_value(positionals[0], given)
            elif given or positionals:
                return None
            return self._with_defaults(found)
        except Exception:  # not plain; a value its type or choices refuse; a word missing
            return None

    def _read(self, words: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
        """The options' values by destination, and the positional words; raises ValueError
        where the line is not plain."""
        options = {flag: arg for arg in self.arguments if not arg.positional for flag in arg.flags}
        found: dict[str, Any] = {}
        given: list[str] = []
        index = 0
        while index < len(words):
            word = words[index]
            index += 1
            if not word.startswith("-") or word == "-":
                given.append(word)
                continue
            name, equals, inline = word.partition("=") if word.startswith("--") else \
                (word, "", "")
            option = options.get(name)
            # argparse drops a "--" from an option's values: such a value is its to read.
            if option is None or option.action in EXIT_ACTIONS or \
                    (equals and (option.action in FLAG_ACTIONS or inline in ("", "--"))):
                raise ValueError(word)
            if option.action in FLAG_ACTIONS:
                found[option.dest] = True if option.action == "store_true" else \
                    False if option.action == "store_false" else \
                    found.get(option.dest, option.default or 0) + 1
                continue
            if not equals:
                if index == len(words) or words[index].startswith("-"):
                    raise ValueError(word)
                inline = words[index]
                index += 1
            value = option.convert(inline)
            found[option.dest] = value if option.action == "store" else \
                [*found.get(option.dest, option.default or []), value]
        return found, given

    @staticmethod
    def _positional_value(argument: Argument, words: list[str]) -> Any:
        if not words:
            if argument.nargs == "+":
                raise ValueError(f"{argument.dest} required")
            return argument.default if argument.default is not None else []
        return [argument.convert(word) for word in words]

    def _with_defaults(self, found: dict[str, Any]) -> Namespace:
        namespace = Namespace()
        for argument in self.arguments:
            if argument.action in EXIT_ACTIONS or argument.dest in vars(namespace):
                continue
            if argument.dest in found:
                setattr(namespace, argument.dest, found[argument.dest])
            elif isinstance(argument.default, str) and not argument.positional:
                # argparse passes a default given as text through the type, as a value.
                setattr(namespace, argument.dest, argument.convert(argument.default))
            else:
                setattr(namespace, argument.dest, argument.default)
        for dest, value in self.defaults.items():
            if dest not in vars(namespace):
                setattr(namespace, dest, value)
        return namespace
