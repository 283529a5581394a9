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

from qcow2_monitor.cli.exits import EXIT_OK, EXIT_USAGE
from qcow2_monitor.cli.options import add_live_arguments
from qcow2_monitor.cli.version import add_version_argument
from qcow2_monitor.collectors.common.errors import Qcow2Error, internal_error

from . import check, config, tables
from .common import EXIT_CODES, OUTPUT_HELP, PROG, ArgumentParser, UsageError, epilog, fail


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
    parser.add_argument("-f", "--file", dest="legacy_files", action="append", metavar="FILE",
                        help="analyse FILE (one) with the key set of the older Go "
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
    for subparser in _subcommands(parser).values():  # `info --version` as `--version`
        add_version_argument(subparser, PROG)
    return parser


def _subcommands(parser: ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._subparsers._group_actions if parser._subparsers else []:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _commands(parser: ArgumentParser) -> list[str]:
    return list(_subcommands(parser))


def _legacy_mode(argv: Sequence[str]) -> bool:
    """-f FILE given: the older tool's command line, whatever else follows."""
    return any(arg in ("-f", "--file") or arg.startswith("--file=")
               or (arg.startswith("-f") and not arg.startswith("--")) for arg in argv)


def _legacy_usage_error(parser: ArgumentParser, argv: Sequence[str], exc: UsageError
                        ) -> UsageError:
    """A clearer message for what the older tool's command line cannot say: -f mode has its
    own options (-o json|raw, -v, -H) and analyses one file."""
    if not _legacy_mode(argv) or any(arg in _commands(parser) for arg in argv):
        return exc
    if any(arg == "--output" or arg.startswith("--output=") for arg in argv):
        return UsageError(f"{PROG}: -f mode takes -o json|raw, not --output (or use a command: "
                          f"{PROG} info --output json FILE)")
    if "argument COMMAND" in str(exc) or "unrecognized arguments" in str(exc):
        return UsageError(f"{PROG}: -f mode analyses one FILE and takes only -o json|raw, -v "
                          f"and -H ({str(exc).removeprefix(PROG + ': ')})")
    return exc



def _json_output(args: argparse.Namespace) -> Optional[str]:
    """The --output of a command (-f mode keeps the older tool's stderr-only errors)."""
    return getattr(args, "output", None) if args.command is not None else None


def _parse(parser: ArgumentParser, words: list[str]) -> argparse.Namespace:
    """The command line, or UsageError; -f mode (the older tool's) takes one FILE and no
    command."""
    try:
        args = parser.parse_args(words)
    except UsageError as exc:
        raise _legacy_usage_error(parser, words, exc) from None
    legacy = args.legacy_files or []
    if args.command is None and not legacy:
        raise UsageError(f"{PROG}: give -f FILE or a command "
                         f"({', '.join(_commands(parser))}); see --help")
    if legacy and args.command is not None:
        raise UsageError(f"{PROG}: -f FILE is a mode of its own; not with a command "
                         f"({args.command} takes its FILE itself)")
    if len(legacy) > 1:
        raise UsageError(f"{PROG}: -f analyses one file, as the older tool did (given "
                         f"{len(legacy)}: {', '.join(legacy)}); for several use "
                         f"`{PROG} usage` or `{PROG} info` per file")
    if args.command is None:
        args.file = legacy[0]
    return args


def main(argv: Optional[Sequence[str]] = None, stdout: Optional[TextIO] = None,
         stderr: Optional[TextIO] = None) -> int:
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    parser = build_parser()
    try:
        args = _parse(parser, list(sys.argv[1:] if argv is None else argv))
    except UsageError as exc:
        print(exc, file=err)
        return EXIT_USAGE
    except SystemExit as exc:  # --help, --version
        return int(exc.code or 0)
    try:
        if args.command is None:
            return run_legacy(args, out, err)
        return int(args.handler(args, out, err))
    except UsageError as exc:  # an argument the image itself refutes (--snapshot SEL)
        print(exc, file=err)
        return EXIT_USAGE
    except Qcow2Error as exc:
        file = getattr(args, "file", None)
        return fail(exc.with_filename(file) if file else exc, _json_output(args), out, err)
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:  # last resort: one line, never a traceback
        return fail(internal_error(exc, getattr(args, "file", None)), _json_output(args), out,
                    err)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
