"""The version every command's --version prints."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from qcow2_monitor.cli.parser import ArgumentContainer

DISTRIBUTION = "qcow2-monitor"


def package_version() -> str:
    try:
        from importlib.metadata import version

        return version(DISTRIBUTION)
    except Exception:  # not installed as a distribution (running from a source tree)
        return "unknown"


def add_version_argument(container: ArgumentContainer, name: str = "") -> None:
    """-V/--version on a command (or in one of its groups): its name (`name`, or the
    parser's) and the package version, on stdout (cli/argparse_replay.py: VersionAction,
    which looks the version up only when asked)."""
    container.add_argument("-V", "--version", action="version", name=name,
                           help="print the program's version and exit")
