"""qcow2-analyze: the command line over the core (JSON and human output).

    qcow2-analyze -f FILE [-o json|raw] [-v] [-H]        drop-in for the older Go tool
    qcow2-analyze info [--output human|json] [--backing-chain] FILE
    qcow2-analyze header [--output human|json] FILE
    qcow2-analyze usage [--output human|json] [--no-chain] TARGET...
    qcow2-analyze check | dump | measure ...            (see analyze/check.py, analyze/tables.py)

Exit codes: 0 success; 1 a target could not be analysed; for `check` also 2 corruptions and
3 leaks (as qemu-img check); 64 bad command line.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Optional, TextIO

from collectors.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Qcow2Error, internal_error

from . import check, tables
from .common import PROG, ArgumentParser, UsageError, report_error
from .info import run_header, run_info
from .legacy import run_legacy
from .usage import run_usage


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog=PROG, description="Read-only qcow2 analyzer.")
    parser.add_argument("-f", "--file", help="analyse FILE (drop-in for the Go tool)")
    parser.add_argument("-o", dest="legacy_output", choices=["json", "raw"], default="json",
                        help="output of -f: json (default) or raw text")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="with -f: also every header field and feature flag")
    parser.add_argument("-H", "--hex", action="store_true",
                        help="with -f: offsets and sizes in hex")
    sub = parser.add_subparsers(dest="command", parser_class=ArgumentParser)

    info = sub.add_parser("info", help="what `qemu-img info` reports, without key")
    info.add_argument("--output", choices=["human", "json"], default="human")
    info.add_argument("--backing-chain", action="store_true")
    info.add_argument("file")
    info.set_defaults(handler=run_info)

    header = sub.add_parser("header", help="every header field, feature, extension, the "
                            "LUKS header, snapshot table and bitmap directory")
    header.add_argument("--output", choices=["human", "json"], default="human")
    header.add_argument("file")
    header.set_defaults(handler=run_header)

    usage = sub.add_parser("usage", help="image end offset, container and headroom (fast)")
    usage.add_argument("--output", choices=["human", "json"], default="human")
    usage.add_argument("--no-chain", action="store_true",
                       help="do not analyse backing layers")
    usage.add_argument("targets", nargs="+", metavar="TARGET",
                       help="image file, block device, glob or directory")
    usage.set_defaults(handler=run_usage)

    check.register(sub)
    tables.register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None, stdout: Optional[TextIO] = None,
         stderr: Optional[TextIO] = None) -> int:
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None and args.file is None:
            raise UsageError(f"{PROG}: give -f FILE or a command (info, usage, check, dump, "
                             "measure); see --help")
    except UsageError as exc:
        print(exc, file=err)
        return EXIT_USAGE
    except SystemExit as exc:  # --help
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
