"""Target-selection options shared by every adapter, declared once so that selection is
identical in check_qcow2, qcow2-telegraf and qcow2-textfile."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Optional, Sequence, TextIO, Union

from qcow2_monitor.cli.entry import exception_text, last_resort, output_streams, write_utf8
from qcow2_monitor.cli.exits import EXIT_FAILED, EXIT_USAGE
from qcow2_monitor.cli.parser import ArgumentContainer, ArgumentParser, ParserExit, UsageError
from qcow2_monitor.collectors.host.live import DEFAULT_LIBVIRT_URI, LiveSources
from qcow2_monitor.collectors.report.health import RULES, STATE_BY_NAME, STATE_NAMES, Policy
from qcow2_monitor.collectors.report.model import DEFAULT_MAX_DEPTH

if TYPE_CHECKING:
    from qcow2_monitor.collectors.report.metrics import Collection

MAX_DEPTH_LIMIT = 256


def depth_option(text: str) -> int:
    """argparse type of --max-depth: a backing-chain depth limit of 1..256."""
    if not text.isdigit() or not 1 <= int(text) <= MAX_DEPTH_LIMIT:
        raise argparse.ArgumentTypeError(f"invalid depth {text!r} (1..{MAX_DEPTH_LIMIT})")
    return int(text)


def add_selection_arguments(group: ArgumentContainer) -> None:
    """--running, --chain, --max-depth and --check (targets themselves are each adapter's:
    positional TARGETs, or Nagios-style -f IMAGE)."""
    group.add_argument(
        "--running", action="store_true",
        help="also every qcow2 image a running qemu process holds open (backing layers "
        "included)",
    )
    group.add_argument(
        "--chain", action="store_true", help="also report each image's backing layers"
    )
    group.add_argument(
        "--max-depth", type=depth_option, default=DEFAULT_MAX_DEPTH, metavar="N",
        help=f"follow at most N backing files (default {DEFAULT_MAX_DEPTH})",
    )
    group.add_argument(
        "--check", action="store_true",
        help="also run the full consistency check like qemu-img check (slower: reads all "
        "metadata)",
    )
    add_live_arguments(group)


def add_live_arguments(group: ArgumentContainer) -> None:
    """--no-live, --libvirt-uri and --qmp: where the live end offsets of running VMs come
    from (collectors.live). Shared by every adapter and by `qcow2-analyze usage`."""
    group.add_argument(
        "--no-live", action="store_true",
        help="do not ask libvirt for the live end offsets of running VMs",
    )
    group.add_argument(
        "--libvirt-uri", metavar="URI",
        help=f"libvirt to ask, read-only (default {DEFAULT_LIBVIRT_URI}); when it does not "
        "answer, the on-disk figures still report",
    )
    group.add_argument(
        "--qmp", action="append", default=[], metavar="SOCKET",
        help="also ask the qemu behind this QMP unix socket (repeatable; query commands only). "
        "A QMP socket serves one client at a time: only for qemu outside libvirt",
    )


def live_uri(args: argparse.Namespace) -> str | None:
    """The libvirt URI to ask, None with --no-live."""
    return None if args.no_live else str(args.libvirt_uri or DEFAULT_LIBVIRT_URI)


def add_targets_argument(parser: argparse.ArgumentParser) -> None:
    """The positional TARGETs of the collectors (qcow2-telegraf, qcow2-textfile)."""
    parser.add_argument(
        "targets", nargs="*", metavar="TARGET",
        help="image file, block device, directory (searched recursively for qcow2 files) or "
        "glob pattern",
    )


def collector_main(parser: Callable[[], ArgumentParser],
                   run: Callable[[argparse.Namespace, TextIO, TextIO], int],
                   argv: Optional[Sequence[str]], stdout: Optional[TextIO],
                   stderr: Optional[TextIO], internal_error: str) -> int:
    """The main() of a collector (qcow2-telegraf, qcow2-textfile): its command line from
    `parser()`, then `run(args, stdout, stderr)`; an unexpected exception is one line on stderr,
    `internal_error` followed by the exception, and exit 1."""
    out, err = output_streams(stdout, stderr)

    def body() -> int:
        args = parse_collector_arguments(parser(), argv, out, err)
        return args if isinstance(args, int) else run(args, out, err)

    def failure(exc: BaseException) -> int:
        write_utf8(err, f"{internal_error}{exception_text(exc)}\n")
        return EXIT_FAILED

    return last_resort(body, failure)


def parse_collector_arguments(parser: ArgumentParser, argv: Optional[Sequence[str]],
                              stdout: TextIO, stderr: TextIO) -> Union[argparse.Namespace, int]:
    """A collector's command line, options and targets in any order; or the exit code when
    there is nothing to run: --help and --version print on `stdout` (0), a bad command line or
    no target prints the usage and the error on `stderr`, as argparse does (64)."""
    try:
        args = parser.parse_args(argv)
        if not args.targets and not args.running:
            parser.error("give TARGETs and/or --running")
    except ParserExit as exc:  # --help, --version: 0
        stdout.write(exc.text)
        return exc.status
    except UsageError as exc:
        stderr.write(f"{exc.usage}{exc.prog}: error: {exc.message}\n")
        return EXIT_USAGE
    return args


def add_selection_and_health_arguments(parser: argparse.ArgumentParser) -> None:
    """Both option sets, in their own help groups (what every adapter offers)."""
    add_selection_arguments(parser.add_argument_group("images"))
    add_health_arguments(parser.add_argument_group(
        "health states (ok, warning, critical or unknown)"))


def collect_selected(targets: list[str], args: argparse.Namespace) -> Collection:
    """collect() with the options add_selection_arguments() and add_live_arguments()
    declared."""
    from qcow2_monitor.collectors.report.collect import (
        collect,  # imported when collecting: the options alone need none of it
    )

    return collect(targets, running=args.running, chain=args.chain, check=args.check,
                   max_depth=args.max_depth, policy=policy_from_args(args),
                   live_sources=LiveSources(live_uri(args), tuple(args.qmp)))


# --- the options, declared once for every adapter ------------------------------------------

def state_option(text: str) -> int:
    """argparse type of a state: ok, warning, critical or unknown."""
    try:
        return STATE_BY_NAME[text.lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(
            f"invalid state {text!r} (choose ok, warning, critical or unknown)"
        ) from None


def add_health_arguments(group: ArgumentContainer) -> None:
    """--<rule>-state STATE for every rule."""
    for rule in RULES.values():
        default = STATE_NAMES[rule.default].lower()
        group.add_argument(
            f"--{rule.name}-state", dest=f"{rule.name.replace('-', '_')}_state",
            type=state_option, default=rule.default, metavar="STATE",
            help=f"state when {rule.applies} (default {default})",
        )


def policy_from_args(args: argparse.Namespace) -> Policy:
    return {name: getattr(args, f"{name.replace('-', '_')}_state", rule.default)
            for name, rule in RULES.items()}
