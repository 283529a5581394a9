"""qcow2-analyze: the command line over the core (JSON and human output).

    qcow2-analyze -f FILE [-o json|raw] [-v] [-H]        drop-in for the older Go tool
    qcow2-analyze info [--output human|json] [--backing-chain] FILE
    qcow2-analyze header [--output human|json] FILE
    qcow2-analyze usage [--output human|json] [--no-chain] [--no-live] [--libvirt-uri URI]
                        [--qmp SOCKET]... TARGET...
    qcow2-analyze check | dump | measure ...            (see analyze/check.py, analyze/tables.py)
    qcow2-analyze config [NAME]                           shipped configuration files

Exit codes: 0 success; 1 a target could not be analysed; for `check` also 2 corruptions and
3 leaks (as qemu-img check); 64 bad command line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Optional, TextIO

from qcow2_monitor.collectors.errors import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    Qcow2Error,
    internal_error,
)
from qcow2_monitor.collectors.selection import add_live_arguments
from qcow2_monitor.collectors.version import add_version_argument

from . import check, config, tables
from .common import EXIT_CODES, OUTPUT_HELP, PROG, ArgumentParser, UsageError, epilog, report_error


# Each command's module is imported when it runs: a check loads neither usage's live sources
# and discovery nor the legacy output (less start-up time and memory beside the check's).
def run_info(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .info import run_info as run

    return run(args, out, err)


def run_header(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .info import run_header as run

    return run(args, out, err)


def run_usage(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .usage import run_usage as run

    return run(args, out, err)


def run_legacy(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .legacy import run_legacy as run

    return run(args, out, err)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG, description="Read-only qcow2 analyzer: what qemu-img info/check/measure "
        "report, plus usage and metadata views, without ever writing or locking an image.",
        epilog=epilog("info --backing-chain vm.qcow2", "usage --output json /srv/vm/*.qcow2",
                      "check vm.qcow2", "-f vm.qcow2 -o raw",
                      exit_codes=EXIT_CODES + "\n`check` adds qemu-img check's: 2 corruptions, "
                      "3 leaked clusters only.\nEach command has its own --help."))
    parser.add_argument("-f", "--file", help="analyse FILE with the key set of the older Go "
                        "qcow2-analyze (drop-in)")
    parser.add_argument("-o", dest="legacy_output", choices=["json", "raw"], default="json",
                        help="output of -f: json (default) or raw text")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="with -f: also every header field and feature flag")
    parser.add_argument("-H", "--hex", action="store_true",
                        help="with -f: offsets and sizes in hex")
    add_version_argument(parser)
    sub = parser.add_subparsers(dest="command", parser_class=ArgumentParser, metavar="COMMAND")

    info = sub.add_parser(
        "info", help="what `qemu-img info` reports, laid out as it prints it (no key needed)",
        description="What `qemu-img info` reports, laid out as it prints it (no key needed).",
        epilog=epilog("info vm.qcow2", "info --backing-chain --output json vm.qcow2",
                      exit_codes=EXIT_CODES + "\nWith --backing-chain a missing, unreadable or "
                      "looping backing layer is said on stderr and exits 1."))
    info.add_argument("--output", choices=["human", "json"], default="human", help=OUTPUT_HELP)
    info.add_argument("--backing-chain", action="store_true",
                      help="also every layer of the backing chain, as qemu-img info does")
    info.add_argument("file", metavar="FILE", help="qcow2 image file or block device")
    info.set_defaults(handler=run_info)

    header = sub.add_parser(
        "header", help="every header field, feature, extension, the LUKS header, snapshot "
        "table and bitmap directory",
        description="Every header field, feature bit, header extension, the LUKS header, the "
        "snapshot table and the bitmap directory.",
        epilog=epilog("header vm.qcow2", "header --output json vm.qcow2"))
    header.add_argument("--output", choices=["human", "json"], default="human", help=OUTPUT_HELP)
    header.add_argument("file", metavar="FILE", help="qcow2 image file or block device")
    header.set_defaults(handler=run_header)

    usage = sub.add_parser(
        "usage", help="image end offset, container and headroom (fast)",
        description="How full each image's container is: the image end offset (on disk, and "
        "live from libvirt or QMP for running VMs), the container (the block device, or the "
        "filesystem holding the image file) and the headroom left.",
        epilog=epilog("usage /var/lib/libvirt/images", "usage --no-chain --output json "
                      "'/srv/vm/*.qcow2' /dev/vg0/vm1"))
    usage.add_argument("--output", choices=["human", "json"], default="human", help=OUTPUT_HELP)
    usage.add_argument("--no-chain", action="store_true",
                       help="do not analyse backing layers")
    usage.add_argument("targets", nargs="+", metavar="TARGET",
                       help="image file, block device, glob or directory (searched recursively)")
    add_live_arguments(usage)
    usage.set_defaults(handler=run_usage)

    check.register(sub)
    tables.register(sub)
    config.register(sub)
    return parser


def _commands(parser: ArgumentParser) -> list[str]:
    for action in parser._subparsers._group_actions if parser._subparsers else []:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
    return []


def main(argv: Optional[Sequence[str]] = None, stdout: Optional[TextIO] = None,
         stderr: Optional[TextIO] = None) -> int:
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None and args.file is None:
            raise UsageError(f"{PROG}: give -f FILE or a command "
                             f"({', '.join(_commands(parser))}); see --help")
    except UsageError as exc:
        print(exc, file=err)
        return EXIT_USAGE
    except SystemExit as exc:  # --help, --version
        return int(exc.code or 0)
    try:
        if args.command is None:
            return run_legacy(args, out, err)
        return int(args.handler(args, out, err))
    except Qcow2Error as exc:
        file = getattr(args, "file", None)
        report_error(exc.with_filename(file) if file else exc, err)
        return EXIT_FAILED
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:  # last resort: one line, never a traceback
        report_error(internal_error(exc, getattr(args, "file", None)), err)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
