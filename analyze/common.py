"""What every qcow2-analyze subcommand shares: the program name, the help's epilog, and how an
error is printed (the parser is every front end's: cli/parser.py)."""

from __future__ import annotations

import textwrap

from qcow2_monitor.cli.argparse_replay import HELP_WIDTH
from qcow2_monitor.cli.exits import EXIT_FAILED
from qcow2_monitor.cli.outcome import UsageError
from qcow2_monitor.cli.parser import ArgumentParser, invalid_value
from qcow2_monitor.cli.text import json_text
from qcow2_monitor.collectors.common.errors import Qcow2Error
from qcow2_monitor.collectors.common.text import printable
from qcow2_monitor.collectors.qcow2.snapshots import SnapshotSelectorError
from qcow2_monitor.collectors.report.model import LayerStatus

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Optional, TextIO

PROG = "qcow2-analyze"

EXIT_CODES = "exit codes: 0 success; 1 a target could not be analysed (said on stderr); " \
    "64 bad command line."


OUTPUT_HELP = "human: text for people (default); json: one JSON document on stdout"


def add_output_argument(parser: ArgumentParser, more: str = "") -> None:
    """--output human|json, alike on every command; `more` adds what json holds there."""
    parser.add_argument("--output", choices=["human", "json"], default="human",
                        help=OUTPUT_HELP + more)


def add_file_argument(parser: ArgumentParser) -> None:
    """The one image a command reads: FILE, alike on every command."""
    parser.add_argument("file", metavar="FILE", help="qcow2 image file or block device")


def count_option(text: str) -> int:
    """argparse type of a count (--max-findings, --limit): an integer >= 0."""
    if not text.isdigit():
        raise invalid_value(f"invalid count {text!r} (an integer >= 0)")
    return int(text)


SNAPSHOT_HELP = ("SEL: active (the image's current L1 table), inactive (every snapshot), "
                 "all, a snapshot ID or a name (IDs first, as qemu-img snapshot resolves them)")


def add_snapshot_argument(parser: ArgumentParser, what: str,
                          default: Optional[str] = None) -> None:
    """--snapshot SEL (collectors/qcow2/snapshots.py); `what` says what it limits."""
    shown = f" (default {default})" if default else ""
    parser.add_argument("--snapshot", metavar="SEL", default=None,
                        help=f"{what}{shown}. {SNAPSHOT_HELP}")


class SnapshotSelection:
    """``with SnapshotSelection(command):`` around what reads --snapshot: a selector that
    names no snapshot of the image, or several, is a bad argument. (A class, not
    contextlib's decorator: importing contextlib is a start-up cost of every command.)"""

    def __init__(self, command: str) -> None:
        self.command = command

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: Optional[BaseException], trace: object) -> None:
        if isinstance(exc, SnapshotSelectorError):
            raise UsageError(f"argument --snapshot: {exc}", f"{PROG} {self.command}") from None


def epilog(*examples: str, exit_codes: str = EXIT_CODES) -> str:
    """The end of a --help: examples, then the exit codes."""
    return "examples:\n" + "".join(f"  {PROG} {example}\n" for example in examples) \
        + "\n" + "\n".join(textwrap.fill(part, HELP_WIDTH) for part in exit_codes.split("\n")) \
        + "\n"


def report_error(err: Qcow2Error, stream: TextIO) -> None:
    """An error, once, on stderr, on one printable line: the error names its file itself."""
    print(f"{PROG}: {printable(str(err))}", file=stream)


def error_document(err: Qcow2Error, filename: Optional[str] = None,
                   status: LayerStatus = LayerStatus.ERROR, **extra: Any) -> dict[str, Any]:
    """The one JSON shape of a target or layer that failed, in every command: its file, its
    status and the error (kind, structure, offset, value, message, filename); `extra` keys
    (a chain entry's depth) go between the status and the error."""
    return {"filename": filename or err.filename, "status": status.value, **extra,
            "error": err.as_dict()}


def fail(err: Qcow2Error, output: Optional[str], out: TextIO, stream: TextIO) -> int:
    """A target that could not be analysed: the line on stderr, and with --output json the
    error document on stdout (never an empty stdout). Exit status 1."""
    report_error(err, stream)
    if output == "json":
        out.write(json_text(error_document(err), indent=2))
    return EXIT_FAILED
