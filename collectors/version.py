"""The version every command's --version prints."""

from __future__ import annotations

import argparse

DISTRIBUTION = "qcow2-monitor"


def package_version() -> str:
    try:
        from importlib.metadata import version

        return version(DISTRIBUTION)
    except Exception:  # not installed as a distribution (running from a source tree)
        return "unknown"


def add_version_argument(parser: argparse.ArgumentParser, name: str = "") -> None:
    """-V/--version on a command: its name (`name`, or the parser's) and the package version,
    on stdout."""
    parser.add_argument("-V", "--version", action="version",
                        version=f"{name or parser.prog} {package_version()}",
                        help="print the program's version and exit")
