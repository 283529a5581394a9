"""Target-selection options shared by every adapter, declared once so that selection is
identical in check_qcow2, qcow2-telegraf and qcow2-textfile."""

from __future__ import annotations

from qcow2_monitor.cli.entry import exception_text, last_resort, output_streams, write_utf8
from qcow2_monitor.cli.exits import EXIT_FAILED, EXIT_USAGE
from qcow2_monitor.cli.outcome import Namespace, ParserExit, UsageError
from qcow2_monitor.cli.parser import ArgumentParser, invalid_value
from qcow2_monitor.collectors.common.record import replace
from qcow2_monitor.collectors.host.sources import DEFAULT_LIBVIRT_URI, LiveSources
from qcow2_monitor.collectors.report.extend import (
    DEFAULT_CHUNK,
    DEFAULT_UTILIZATION,
    ExtendPolicy,
)
from qcow2_monitor.collectors.report.growth import DEFAULT_WINDOW, GrowthTracker
from qcow2_monitor.collectors.report.health import RULES, STATE_BY_NAME, STATE_NAMES, Policy
from qcow2_monitor.collectors.report.model import DEFAULT_MAX_DEPTH
from qcow2_monitor.collectors.report.thin import Judging

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Optional, Sequence, TextIO, Union

    from qcow2_monitor.cli.parser import ArgumentContainer
    from qcow2_monitor.collectors.report.model import Collection

MAX_DEPTH_LIMIT = 256


def depth_option(text: str) -> int:
    """argparse type of --max-depth: a backing-chain depth limit of 1..256."""
    if not text.isdigit() or not 1 <= int(text) <= MAX_DEPTH_LIMIT:
        raise invalid_value(f"invalid depth {text!r} (1..{MAX_DEPTH_LIMIT})")
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
    add_thin_arguments(group)


def _size(text: str) -> int:
    from qcow2_monitor.collectors.common.units import parse_size

    try:
        size = parse_size(text)
    except ValueError as exc:
        raise invalid_value(f"{exc}; units B, K, M, G, T, P, all binary") from None
    # At most 1 EiB: a volume extended by it still has a size line protocol's int64 and every
    # figure can write (--extend-chunk 99999999999999999999T advised "9.54e+13 EiB").
    if not 1 << 20 <= size <= 1 << 60:
        raise invalid_value(f"invalid chunk {text!r} (1M to 1024P)")
    return size


def _percent(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 99:
        raise invalid_value(f"invalid percent {text!r} (0..99)")
    return int(text)


def duration_option(text: str) -> float:
    """argparse type of a duration: 90s, 30m, 4h, 2d (plain numbers are seconds)."""
    from qcow2_monitor.collectors.common.units import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise invalid_value(str(exc)) from None
    if seconds <= 0:
        raise invalid_value(f"invalid duration {text!r} (> 0)")
    return seconds


def add_thin_arguments(group: ArgumentContainer, *, keep_state: bool = True) -> None:
    """Thin provisioning: the extension policy (oVirt/VDSM's) and the state kept for growth.
    Without `keep_state` (qcow2-analyze usage, run by hand) samples are kept only where
    --state-dir names a directory."""
    group.add_argument(
        "--extend-chunk", type=_size, default=DEFAULT_CHUNK, metavar="SIZE",
        help="a block volume is extended by SIZE at a time (default 1G); it is due when its "
        "headroom falls below SIZE x (100 - UTILIZATION) / 100",
    )
    group.add_argument(
        "--extend-utilization", type=_percent, default=DEFAULT_UTILIZATION,
        metavar="PERCENT", help="how much of a chunk may be used before extending "
        "(default 50: extend when less than half a chunk is left)",
    )
    where = ("(default $MP_STATE_PATH/qcow2-monitor, $NAGIOS_PLUGIN_STATE_DIRECTORY/"
             "qcow2-monitor, /var/lib/qcow2-monitor for root, else "
             "~/.local/state/qcow2-monitor)" if keep_state else
             "(the adapters' default is /var/lib/qcow2-monitor for root; without this option "
             "no samples are kept)")
    group.add_argument(
        "--state-dir", metavar="DIR",
        help="keep each disk's samples here, for growth and time to full " + where,
    )
    group.add_argument(
        "--no-state", action="store_true", default=not keep_state,
        help="keep no samples: no growth and no time to full",
    )
    group.set_defaults(keep_state_by_default=keep_state)
    group.add_argument(
        "--growth-window", type=duration_option, default=DEFAULT_WINDOW, metavar="DURATION",
        help="growth is the least-squares slope of the end offset over this window "
        "(default 6h; reported once the samples span a twelfth of it)",
    )


def judging_from_args(args: Namespace, tracker: Optional[GrowthTracker] = None
                      ) -> Judging:
    """The rule states, extension policy and growth tracker the options say (`tracker`: one
    kept across batches, as execd mode does)."""
    from qcow2_monitor.collectors.report.state import default_directory

    rules = policy_from_args(args)
    policy = ExtendPolicy(args.extend_chunk, args.extend_utilization)
    if args.no_state and not (args.state_dir and not args.keep_state_by_default):
        return Judging(rules, policy)
    if tracker is None:
        tracker = GrowthTracker(args.state_dir or default_directory(), args.growth_window)
    return Judging(rules, policy, tracker)


def add_live_arguments(group: ArgumentContainer) -> None:
    """--no-live, --libvirt-uri and --qmp: where the live end offsets of running VMs come
    from (collectors.host.live). Shared by every adapter and by `qcow2-analyze usage`."""
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


def live_uri(args: Namespace) -> str | None:
    """The libvirt URI to ask, None with --no-live."""
    return None if args.no_live else str(args.libvirt_uri or DEFAULT_LIBVIRT_URI)


def target_option(text: str) -> str:
    """argparse type of a TARGET: any name but the empty one, which os.path.abspath() makes the
    working directory: `-f ''` (an unset variable in an agent's configuration) scanned it,
    recursively, and from / ran into the timeout."""
    if not text:
        raise invalid_value("an empty name is no target (an unset variable?)")
    return text


def add_targets_argument(parser: ArgumentParser) -> None:
    """The positional TARGETs of the collectors (qcow2-telegraf, qcow2-textfile)."""
    parser.add_argument(
        "targets", nargs="*", type=target_option, metavar="TARGET",
        help="image file, block device, directory (searched recursively for qcow2 files) or "
        "glob pattern; a directory or pattern without a qcow2 image is a failed target",
    )


def collector_main(parser: Callable[[], ArgumentParser],
                   run: Callable[[Namespace, TextIO, TextIO], int],
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
                              stdout: TextIO, stderr: TextIO) -> Union[Namespace, int]:
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


def add_selection_and_health_arguments(parser: ArgumentParser) -> None:
    """Both option sets, in their own help groups (what every adapter offers)."""
    add_selection_arguments(parser.add_argument_group("images"))
    add_health_arguments(parser.add_argument_group(
        "health states (ok, warning, critical or unknown)"))


def collect_selected(targets: list[str], args: Namespace,
                     tracker: Optional[GrowthTracker] = None) -> Collection:
    """collect() with the options add_selection_arguments() and add_live_arguments()
    declared."""
    from qcow2_monitor.collectors.report.collect import (
        collect,  # imported when collecting: the options alone need none of it
    )

    collection = collect(targets, running=args.running, chain=args.chain, check=args.check,
                         max_depth=args.max_depth,
                         live_sources=LiveSources(live_uri(args), tuple(args.qmp)),
                         judging=judging_from_args(args, tracker))
    return with_libvirt_note(collection, args)


def with_libvirt_note(collection: Collection, args: Namespace) -> Collection:
    """The run's notes, and why libvirt gave no live figures when --libvirt-uri named it: a
    mistyped URI must not pass unsaid (the default's silence suits hosts without libvirt)."""
    note = collection.libvirt_note
    if args.libvirt_uri is None or not note or any(note in said for said in collection.notes):
        return collection
    return replace(collection, notes=(*collection.notes, note))


# --- the options, declared once for every adapter ------------------------------------------

def state_option(text: str) -> int:
    """argparse type of a state: ok, warning, critical or unknown."""
    try:
        return STATE_BY_NAME[text.lower()]
    except KeyError:
        raise invalid_value(
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


def policy_from_args(args: Namespace) -> Policy:
    return {name: getattr(args, f"{name.replace('-', '_')}_state", rule.default)
            for name, rule in RULES.items()}
