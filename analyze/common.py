"""What every qcow2-analyze subcommand shares: the program name, the command-line error, how an
error is printed, and qemu's human size format."""

from __future__ import annotations

import argparse
from typing import NoReturn, TextIO

from collectors.errors import Qcow2Error

PROG = "qcow2-analyze"


class UsageError(Exception):
    """A bad command line: exit 64, not argparse's 2 (2 means corruptions for `check`)."""


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def report_error(err: Qcow2Error, stream: TextIO) -> None:
    print(f"{PROG}: {err}", file=stream)


def human_size(value: int) -> str:
    """qemu's size_to_str(): 1024-based with three significant digits."""
    units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
    size = float(value)
    unit = 0
    while size >= 1024 and unit < len(units) - 1:
        size /= 1024
        unit += 1
    if unit == 0:
        return f"{value} B"
    return f"{size:.3g} {units[unit]}"
