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

import sys
from collections.abc import Iterable, Sequence

from qcow2_monitor.cli.entry import last_resort, output_streams
from qcow2_monitor.cli.exits import EXIT_OK, EXIT_USAGE
from qcow2_monitor.cli.options import add_live_arguments, add_thin_arguments, target_option
from qcow2_monitor.cli.outcome import Namespace, ParserExit, UsageError
from qcow2_monitor.cli.parser import ArgumentParser
from qcow2_monitor.cli.version import add_version_argument
from qcow2_monitor.collectors.common.errors import Qcow2Error, internal_error
from qcow2_monitor.collectors.common.text import printable

from . import check, config, map, tables
from .common import EXIT_CODES, PROG, add_file_argument, add_output_argument, epilog, fail

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional, TextIO


# Each command's module is imported when it runs: a check loads neither usage's live sources
# and discovery nor the legacy output (less start-up time and memory beside the check's).
def run_info(args: Namespace, out: TextIO, err: TextIO) -> int:
    from .info import run_info as run

    return run(args, out, err)


def run_header(args: Namespace, out: TextIO, err: TextIO) -> int:
    from .info import run_header as run

    return run(args, out, err)


def run_usage(args: Namespace, out: TextIO, err: TextIO) -> int:
    from .usage import run_usage as run

    return run(args, out, err)


def run_legacy(args: Namespace, out: TextIO, err: TextIO) -> int:
    from .legacy import run_legacy as run

    return run(args, out, err)


def _lead_parser() -> ArgumentParser:
    """The program's own options: -f mode's (the older Go tool's command line) and --version."""
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
    return parser


def build_parser() -> ArgumentParser:
    parser = _lead_parser()
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = sub.add_parser(
        "info", help="what `qemu-img info` reports, laid out as it prints it (no key needed)",
        description="What `qemu-img info` reports, laid out as it prints it (no key needed).",
        epilog=epilog("info vm.qcow2", "info --backing-chain --output json vm.qcow2",
                      exit_codes=EXIT_CODES + "\nWith --backing-chain a missing, unreadable or "
                      "looping backing layer is said on stderr and exits 1."))
    add_output_argument(info)
    info.add_argument("--backing-chain", action="store_true",
                      help="also every layer of the backing chain, as qemu-img info does")
    add_file_argument(info)
    info.set_defaults(handler=run_info)

    header = sub.add_parser(
        "header", help="every header field, feature, extension, the LUKS header, snapshot "
        "table and bitmap directory",
        description="Every header field, feature bit, header extension, the LUKS header, the "
        "snapshot table and the bitmap directory.",
        epilog=epilog("header vm.qcow2", "header --output json vm.qcow2"))
    add_output_argument(header)
    add_file_argument(header)
    header.set_defaults(handler=run_header)

    usage = sub.add_parser(
        "usage", help="image end offset, container and headroom (fast)",
        description="How full each image's container is: the image end offset (on disk, and "
        "live from libvirt or QMP for running VMs; FROM says which), the container (the block "
        "device, or the filesystem holding the image file) and the headroom left. USED is the "
        "container's use: end offset / device size for a block device, the filesystem's Use% "
        "(as df shows it, the same for every image on it) for an image file.",
        epilog=epilog("usage /var/lib/libvirt/images", "usage --no-chain --output json "
                      "'/srv/vm/*.qcow2' /dev/vg0/vm1"))
    add_output_argument(usage)
    usage.add_argument("--no-chain", action="store_true",
                       help="list only the images, not their backing layers; every layer is "
                       "still opened, as qemu opens it, so a missing, looping or unreadable "
                       "one is still shown and exits 1")
    usage.add_argument("targets", nargs="+", type=target_option, metavar="TARGET",
                       help="image file, block device, glob or directory (searched recursively); "
                       "a glob or directory without a qcow2 image is an error (exit 1)")
    add_live_arguments(usage)
    add_thin_arguments(usage.add_argument_group("thin provisioning"), keep_state=False)
    usage.set_defaults(handler=run_usage)

    check.register(sub)
    tables.register(sub)
    map.register(sub)
    config.register(sub)
    for subparser in parser.commands.values():  # `info --version` as `--version`
        add_version_argument(subparser, PROG)
    return parser


def _legacy_mode(argv: Sequence[str], commands: Iterable[str]) -> bool:
    """-f FILE given without a command (and without --help, which shows every command): the
    older tool's command line, whatever else follows."""
    words = set(argv)
    return not words & {*commands, "-h", "--help"} and _has_file_option(argv)


def _has_file_option(argv: Iterable[str]) -> bool:
    return any(arg in ("-f", "--file") or arg.startswith("--file=")
               or (arg.startswith("-f") and not arg.startswith("--")) for arg in argv)


def _mode_conflict(command: str) -> UsageError:
    return UsageError(f"-f FILE is a mode of its own; not with a command ({command} takes its "
                      "FILE itself)", PROG)


def _parse_legacy(words: Sequence[str]) -> Namespace:
    """-f mode's command line, by the program's own options alone (no command to take a second
    word for): what the older tool's command line cannot say gets a clearer message."""
    if any(word == "--output" or word.startswith("--output=") for word in words):
        raise UsageError(f"-f mode takes -o json|raw, not --output (or use a command: {PROG} "
                         "info --output json FILE)", PROG)
    args, extra = _lead_parser().parse_known_args(words)
    if extra:
        raise UsageError("-f mode analyses one FILE and takes only -o json|raw, -v and -H "
                         f"(unrecognized arguments: {' '.join(extra)})", PROG)
    args.command = None
    return args



def _json_output(args: Namespace) -> Optional[str]:
    """The --output of a command (-f mode keeps the older tool's stderr-only errors)."""
    return getattr(args, "output", None) if args.command is not None else None


def _parse(words: list[str]) -> Namespace:
    """The command line; raises UsageError, or ParserExit for --help and --version. -f mode
    (the older tool's) takes one FILE and no command."""
    parser = build_parser()
    legacy_mode = _legacy_mode(words, parser.commands)
    try:
        args = _parse_legacy(words) if legacy_mode else parser.parse_args(words)
    except UsageError:
        # `-f FILE info` fails in info's parser first ("FILE required"): say what is wrong.
        command = next((word for word in words if word in parser.commands), None)
        if command is not None and _has_file_option(words[:words.index(command)]):
            raise _mode_conflict(command) from None
        raise
    legacy = args.legacy_files or []
    if args.command is None and not legacy:
        raise UsageError(f"give -f FILE or a command ({', '.join(parser.commands)}); see "
                         "--help", PROG)
    if legacy and args.command is not None:
        raise _mode_conflict(args.command)
    if len(legacy) > 1:
        raise UsageError(f"-f analyses one file, as the older tool did (given {len(legacy)}: "
                         f"{', '.join(legacy)}); for several use `{PROG} usage` or "
                         f"`{PROG} info` per file", PROG)
    if args.command is None:
        args.file = legacy[0]
    return args


def _run(args: Namespace, out: TextIO, err: TextIO) -> int:
    """The command the line asked for; a target that failed is its error line (and, with
    --output json, its error document)."""
    try:
        if args.command is None:
            return run_legacy(args, out, err)
        return int(args.handler(args, out, err))
    except UsageError as exc:  # an argument the image itself refutes (--snapshot SEL)
        print(f"{exc.prog}: {printable(exc.message)}", file=err)
        return EXIT_USAGE
    except Qcow2Error as exc:
        file = getattr(args, "file", None)
        return fail(exc.with_filename(file) if file else exc, _json_output(args), out, err)
    except BrokenPipeError:
        return EXIT_OK  # the reader went away (`| head`): nothing is left to say


def main(argv: Optional[Sequence[str]] = None, stdout: Optional[TextIO] = None,
         stderr: Optional[TextIO] = None) -> int:
    out, err = output_streams(stdout, stderr)
    parsed: list[Namespace] = []  # for the last resort's report, once known

    def body() -> int:
        try:
            parsed.append(_parse(list(sys.argv[1:] if argv is None else argv)))
        except ParserExit as exc:  # --help, --version: 0
            out.write(exc.text)
            return exc.status
        except UsageError as exc:
            print(f"{exc.prog}: {printable(exc.message)}", file=err)
            return EXIT_USAGE
        return _run(parsed[0], out, err)

    def failure(exc: BaseException) -> int:
        # One line (and, with --output json, the error document), never a traceback.
        args = parsed[0] if parsed else Namespace(command=None)
        return fail(internal_error(exc, getattr(args, "file", None)), _json_output(args), out,
                    err)

    return last_resort(body, failure)


if __name__ == "__main__":
    sys.exit(main())
