"""What reading a command line gives (cli/parser.py, cli/argparse_replay.py): the namespace of
its values, or why there is nothing to run -- a bad line, or --help/--version answered."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


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


class Namespace:
    """The parsed line: one attribute per destination (argparse.Namespace's behaviour)."""

    def __init__(self, **kwargs: Any) -> None:
        self.__dict__.update(kwargs)

    if TYPE_CHECKING:  # any attribute, as typeshed declares argparse.Namespace's

        def __getattr__(self, name: str) -> Any: ...

        def __setattr__(self, name: str, value: Any) -> None: ...

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Namespace) and vars(self) == vars(other)

    def __contains__(self, key: str) -> bool:
        return key in self.__dict__

    def __repr__(self) -> str:
        fields = ", ".join(f"{key}={value!r}" for key, value in self.__dict__.items())
        return f"Namespace({fields})"
