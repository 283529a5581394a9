"""check_qcow2: Nagios / Icinga plugin for qcow2 images (how full their container is, and health).

Thin adapter (style.md): targets and figures come from :mod:`collectors.metrics`, exactly as the
other adapters get them; this module only parses the command line, evaluates thresholds, renders
the plugin output and picks the exit code.

Exit codes follow the monitoring-plugins guidelines: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
Everything that is not a verdict on an image -- bad arguments, --help, --version, timeouts,
unreadable or non-qcow2 files, internal errors -- is UNKNOWN, never argparse's exit 2 (which a
monitoring system would read as CRITICAL).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import threading
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn, Optional, Sequence, TextIO

from collectors.units import counted, finding_text, human_size, percent_number
from nagios.ranges import Range, RangeError, format_number

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

    from collectors.metrics import Collection, ImageRecord, Metric

# collectors.* is imported inside the functions that use it, not here: main() must be running
# (inside its safety net) when that happens, so that even a broken installation gives one
# UNKNOWN line instead of a traceback.

PROG = "check_qcow2"
PREFIX = "QCOW2"

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATE_NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
_STATE_BY_NAME = {"ok": OK, "warning": WARNING, "critical": CRITICAL, "unknown": UNKNOWN}
# Which state wins when images disagree. CRITICAL outranks UNKNOWN so that one unreadable image
# cannot hide another one that is full.
_SEVERITY = {OK: 0, WARNING: 1, UNKNOWN: 2, CRITICAL: 3}

DEFAULT_TIMEOUT = 30.0  # well under Icinga's 60 s command timeout, after which it kills us
MAX_IMAGES_IN_SUMMARY = 2  # the first line must stay short; the long output lists everything

# Perfdata figures, by their collectors.metrics names (one vocabulary for every adapter).
# Only usage_ratio is rescaled, to percent under the label "usage_percent" (style.md #6).
# Perfdata: these usage figures, then (with --check) collectors.metrics.CHECK_METRICS.
USAGE_PERFDATA_METRICS = (
    "usage_ratio",
    "image_end_offset_bytes",
    "container_size_bytes",
    "headroom_bytes",
)
USAGE_PERCENT_LABEL = "usage_percent"
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


class UsageError(Exception):
    """The command line is wrong: UNKNOWN with the reason, never argparse's exit 2."""


class _ParserExit(Exception):
    """argparse wants to exit (after --help or --version): exit UNKNOWN per the guidelines."""


class _Parser(argparse.ArgumentParser):
    # argparse prints to stderr and calls sys.exit(2) on its own; both are wrong for a plugin.
    printed = ""  # --help / --version text, written by main() to stdout like all output

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)

    def exit(self, status: int = 0, message: Optional[str] = None) -> NoReturn:
        raise _ParserExit(message or "")

    def _print_message(self, message: str, file: Optional[SupportsWrite[str]] = None) -> None:
        # Monitoring systems show stdout only; collect the text for main() to write there.
        self.printed += message or ""


def _state_option(text: str) -> int:
    try:
        return _STATE_BY_NAME[text.lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(
            f"invalid state {text!r} (choose ok, warning, critical or unknown)"
        ) from None


def _range_option(text: str) -> Range:
    try:
        return Range.parse(text)
    except RangeError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _size_option(text: str) -> int:
    # The shared parser, so that every adapter reads "10G" alike: all units binary, as
    # qemu-img reads sizes (10G = 10GB = 10GiB).
    from collectors.metrics import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc}; units B, K, M, G, T, P, all binary") from None


def _timeout_option(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < 86400:
        raise argparse.ArgumentTypeError(f"invalid timeout {text!r} (seconds, > 0)")
    return seconds


def _version() -> str:
    from collectors.version import package_version

    return package_version()


_EPILOG = """\
thresholds:
  -w/-c take Nagios ranges on the usage in percent, i.e. image end offset / container size
  (container = block device, or file plus the free space of its filesystem). Endpoints are
  inclusive; critical is evaluated before warning:
    -w 80 -c 90        WARNING above 80 %, CRITICAL above 90 %
    -w ~:80 -c ~:90    the same, written explicitly
    -w @0:50           WARNING while usage is between 0 and 50 % (inverted range)
  --warning-headroom/--critical-headroom take a size: alert when the free space left in the
  container falls below it (equal is fine). Units B, K, M, G, T, P (also KB/KiB, MB/MiB, ...),
  all binary: 10G = 10GB = 10GiB = 10737418240 bytes. Example:
    --warning-headroom 20G --critical-headroom 5G

health (each state: ok, warning, critical or unknown):
  corrupt bit set -> --corrupt-state (default critical); corruptions found by --check ->
  --corruptions-state (critical); check errors -> --check-errors-state (critical); leaked
  clusters -> --leaks-state (warning); dirty bit on an image no qemu has open ->
  --dirty-state (warning); an image in use whose on-disk refcounts cannot be trusted (lazy
  refcounts) -> --untrusted-state (warning). Unreadable files and non-qcow2 files are UNKNOWN.
  When images disagree the worst state wins, in the order CRITICAL, UNKNOWN, WARNING, OK.

exit codes: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (also for bad arguments, timeout, --help
and --version).
"""


def build_parser() -> _Parser:
    parser = _Parser(
        prog=PROG,
        description="Check how full the containers of qcow2 images are, and the images' health.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,
    )
    sel = parser.add_argument_group("images")
    sel.add_argument(
        "-f", "--file", dest="files", action="append", default=[], metavar="IMAGE",
        help="image file, block device, directory (searched recursively) or glob; repeatable",
    )
    # Positional images too, so that a shell glob works: check_qcow2 -w 80 /images/*.qcow2
    sel.add_argument("images", nargs="*", metavar="IMAGE", help="same as -f IMAGE")
    from collectors.selection import add_selection_arguments  # inside main's safety net

    add_selection_arguments(sel)
    thr = parser.add_argument_group("thresholds")
    thr.add_argument("-w", "--warning", type=_range_option, metavar="RANGE",
                     help="usage range in percent for WARNING, e.g. 80")
    thr.add_argument("-c", "--critical", type=_range_option, metavar="RANGE",
                     help="usage range in percent for CRITICAL, e.g. 90")
    thr.add_argument("--warning-headroom", type=_size_option, metavar="SIZE",
                     help="WARNING when the free space in the container is below SIZE")
    thr.add_argument("--critical-headroom", type=_size_option, metavar="SIZE",
                     help="CRITICAL when the free space in the container is below SIZE")
    health = parser.add_argument_group("health states")
    for option, default, what in (
        ("--corrupt-state", "critical", "the corrupt bit is set"),
        ("--corruptions-state", "critical", "--check finds corruptions"),
        ("--check-errors-state", "critical", "--check could not walk all metadata"),
        ("--leaks-state", "warning", "--check finds leaked clusters"),
        ("--dirty-state", "warning", "the dirty bit is set and no qemu has the image open"),
        ("--untrusted-state", "warning", "an image in use has untrusted (lazy) refcounts"),
    ):
        health.add_argument(
            option, type=_state_option, default=_STATE_BY_NAME[default], metavar="STATE",
            help=f"state when {what} (default {default})",
        )
    gen = parser.add_argument_group("general")
    gen.add_argument("-t", "--timeout", type=_timeout_option, default=DEFAULT_TIMEOUT,
                     metavar="SECONDS", help="UNKNOWN after this many seconds (default 30)")
    gen.add_argument("-v", "--verbose", action="count", default=0,
                     help="more detail in the long output; repeatable (-vvv: tracebacks on stderr)")
    gen.add_argument("-V", "--version", action="version", version=f"{PROG} {_version()}")
    gen.add_argument("-h", "--help", action="help", help="show this help and exit")
    return parser


@dataclass(frozen=True)
class Thresholds:
    """Every knob that turns figures into a state."""

    usage_warning: Optional[Range] = None
    usage_critical: Optional[Range] = None
    headroom_warning: Optional[int] = None
    headroom_critical: Optional[int] = None
    corrupt_state: int = CRITICAL
    corruptions_state: int = CRITICAL
    check_errors_state: int = CRITICAL
    leaks_state: int = WARNING
    dirty_state: int = WARNING
    untrusted_state: int = WARNING

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Thresholds:
        return cls(
            usage_warning=args.warning,
            usage_critical=args.critical,
            headroom_warning=args.warning_headroom,
            headroom_critical=args.critical_headroom,
            corrupt_state=args.corrupt_state,
            corruptions_state=args.corruptions_state,
            check_errors_state=args.check_errors_state,
            leaks_state=args.leaks_state,
            dirty_state=args.dirty_state,
            untrusted_state=args.untrusted_state,
        )


@dataclass(frozen=True)
class Problem:
    state: int
    text: str


@dataclass(frozen=True)
class Verdict:
    """The state of one image and why."""

    record: ImageRecord
    state: int
    problems: tuple[Problem, ...]


def worst(states: Sequence[int]) -> int:
    return max(states, key=_SEVERITY.__getitem__, default=OK)


def usage_percent(ratio: float) -> float:
    """The one rescaling this adapter does (style.md #6): Nagios users think in percent."""
    return ratio * 100.0


def clean_text(text: str) -> str:
    """Make a path safe for the text part of the output.

    A ``|`` would start the perfdata (Icinga splits at the first ``|`` followed by ``=``), a
    newline would start a new long-output line, and undecodable bytes (surrogate escapes in
    POSIX file names) cannot be encoded on stdout.
    """
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return _CONTROL_CHARS.sub("?", text.replace("|", "_"))


def clean_label(text: str) -> str:
    """A perfdata label: anything but ``=`` and ``'`` (guidelines), and no ``|`` either."""
    return clean_text(text).replace("=", "_").replace("'", "_")


def percent_text(percent: float, limit: Optional[Range] = None) -> str:
    """Two decimals, or two significant digits below 1 % so that tiny usages do not read 0.

    Next to a threshold, as many decimals as it takes not to print the endpoint itself:
    "usage 80% > 80%" for 80.0001 % would read as a false alarm.
    """
    text = percent_number(percent)
    if limit is not None and percent not in (limit.start, limit.end):
        digits = 2
        while float(text) in (limit.start, limit.end) and digits < 12:
            digits += 1
            text = format_number(round(percent, digits))
    return text


def _describe_range(limit: Range) -> str:
    return limit.describe(unit="%")


def _error_text(record: ImageRecord) -> str:
    error = record.error
    text = str(error)
    # The path leads the image's line already; do not repeat it.
    if error is not None and error.filename and text.startswith(error.filename + ": "):
        text = text[len(error.filename) + 2 :]
    return text


def evaluate(record: ImageRecord, limits: Thresholds) -> Verdict:
    """Turn one image's figures into a state. Critical thresholds are evaluated first."""
    problems: list[Problem] = []
    if record.error is not None:
        problems.append(Problem(UNKNOWN, _error_text(record)))
    usage = record.usage
    if usage is not None:
        percent = usage_percent(usage.usage_ratio)
        for state, limit in ((CRITICAL, limits.usage_critical), (WARNING, limits.usage_warning)):
            if limit is not None and limit.alert(percent):
                problems.append(
                    Problem(state, f"usage {percent_text(percent, limit)}% "
                                   f"{_describe_range(limit)}")
                )
                break
        headroom = usage.container.headroom
        for state, minimum in (
            (CRITICAL, limits.headroom_critical),
            (WARNING, limits.headroom_warning),
        ):
            if minimum is not None and headroom < minimum:
                problems.append(
                    Problem(state, f"headroom {human_size(headroom)} < {human_size(minimum)}")
                )
                break
        if usage.corrupt:
            problems.append(Problem(limits.corrupt_state, "corrupt bit set"))
        if usage.dirty and not usage.in_use:
            # Dirty while no qemu has it open: qemu crashed with lazy refcounts; the next open
            # repairs it, but until then the refcounts (and our end offset) may be stale.
            problems.append(Problem(limits.dirty_state, "dirty bit set, not in use"))
        if usage.in_use and not usage.refcounts_trusted:
            problems.append(Problem(limits.untrusted_state, "in use with untrusted refcounts"))
    check = record.check
    if check is not None:
        if usage is not None and usage.in_use and not usage.refcounts_trusted and (
            check.corruptions or check.leaks
        ):
            # A running qemu with lazy refcounts has not written its refcounts yet: the check
            # then finds "corruptions" and leaks by design (qemu repairs them at the next open).
            # Paging someone as CRITICAL for that would be a false alarm: untrusted state.
            problems.append(Problem(
                limits.untrusted_state,
                f"{counted(check.corruptions, 'corruption')}, "
                f"{counted(check.leaks, 'leaked cluster')} "
                "(expected while in use with lazy refcounts)",
            ))
        else:
            if check.corruptions:
                problems.append(
                    Problem(limits.corruptions_state, counted(check.corruptions, "corruption"))
                )
            if check.leaks:
                problems.append(Problem(limits.leaks_state,
                                        counted(check.leaks, "leaked cluster")))
        if check.check_errors:
            problems.append(
                Problem(limits.check_errors_state, counted(check.check_errors, "check error"))
            )
    # A problem the user mapped to "ok" is not a problem: drop it from the texts as well.
    shown = tuple(problem for problem in problems if problem.state != OK)
    return Verdict(record, worst([problem.state for problem in shown]), shown)


def _perf(label: str, value: str, uom: str = "", warn: str = "", crit: str = "",
          minimum: str = "", maximum: str = "") -> str:
    fields = ";".join((f"{value}{uom}", warn, crit, minimum, maximum)).rstrip(";")
    return f"'{label}'={fields}"


def _perf_item(metric: Metric, path: str, usage_size: Optional[int], limits: Thresholds) -> str:
    """One perfdata item: ``'<path> <metric name>'=value[UOM];warn;crit;min;max``."""
    size = "" if usage_size is None else str(usage_size)
    if metric.name == "usage_ratio":
        percent = format_number(round(usage_percent(float(metric.value)), 8))
        return _perf(
            f"{path} {USAGE_PERCENT_LABEL}", percent, "%",
            str(limits.usage_warning or ""), str(limits.usage_critical or ""), "0", "100",
        )
    value = str(int(metric.value))
    uom = "B" if metric.unit == "bytes" else ""
    if metric.name == "headroom_bytes":
        # Headroom alerts below SIZE: the Nagios range "SIZE:" says exactly that.
        warn = "" if limits.headroom_warning is None else f"{limits.headroom_warning}:"
        crit = "" if limits.headroom_critical is None else f"{limits.headroom_critical}:"
        return _perf(f"{path} {metric.name}", value, uom, warn, crit, "0", size)
    if metric.name == "image_end_offset_bytes":
        return _perf(f"{path} {metric.name}", value, uom, minimum="0", maximum=size)
    return _perf(f"{path} {metric.name}", value, uom, minimum="0")


def perfdata(verdicts: Sequence[Verdict], limits: Thresholds) -> list[str]:
    """Perfdata in base units, labelled ``<path> <metric name>``.

    Labels depend on nothing but the image and the figure, so they never change with the state
    and graphs keep their history. An image that could not be read has no perfdata this run.
    """
    from collectors.metrics import CHECK_METRICS, image_metrics

    items: list[str] = []
    seen: set[str] = set()
    for verdict in verdicts:
        record = verdict.record
        path = clean_label(record.label_path)
        # The collector reports each real path once; the cleaning could still merge two
        # names ("a=b", "a_b"), and a repeated label would make the perfdata ambiguous.
        if path in seen:
            continue
        seen.add(path)
        size = record.usage.container.size if record.usage is not None else None
        metrics = {metric.name: metric for metric in image_metrics(record)}
        items.extend(
            _perf_item(metrics[name], path, size, limits)
            for name in (*USAGE_PERFDATA_METRICS, *CHECK_METRICS)
            if name in metrics
        )
    return items


def _image_name(record: ImageRecord) -> str:
    return clean_text(record.label_path)


def _image_line(verdict: Verdict, verbosity: int) -> str:
    record = verdict.record
    usage = record.usage
    parts: list[str] = []
    if usage is not None:
        container = usage.container
        parts.append(
            f"usage {percent_text(usage_percent(usage.usage_ratio))}% "
            f"(end {human_size(usage.image_end_offset)} of {human_size(container.size)} "
            f"{container.kind} container, headroom {human_size(container.headroom)})"
        )
    parts.extend(problem.text for problem in verdict.problems)
    if usage is not None and verbosity >= 1:
        flags = [
            flag for flag, on in (
                ("in use", usage.in_use), ("dirty", usage.dirty), ("corrupt", usage.corrupt),
                ("lazy refcounts", usage.lazy_refcounts), ("encrypted", usage.encrypted),
            ) if on
        ]
        detail = (
            f"qcow2 v{usage.qcow_version}, virtual {human_size(usage.virtual_size)}, "
            f"cluster {human_size(usage.cluster_size)}, end offset from "
            f"{usage.image_end_offset_source}, "
            f"fully allocated {human_size(usage.fully_allocated_size)}"
        )
        if flags:
            detail += ", " + ", ".join(flags)
        if usage.backing_filename:
            detail += f", backing {usage.backing_filename}"
        parts.append(clean_text(detail))
    if record.check is not None and verbosity >= 1:
        check = record.check
        parts.append(
            f"check: {counted(check.corruptions, 'corruption')}, "
            f"{counted(check.leaks, 'leak')}, {counted(check.check_errors, 'check error')}, "
            f"{check.allocated_clusters}/"
            f"{check.total_clusters} clusters allocated"
        )
    where = f" (backing file, depth {record.depth} below {clean_text(record.target)})" \
        if record.depth else ""
    # A raw base or a json:/nbd: layer is reported, not analysed (model.LAYER_*).
    text = "; ".join(clean_text(part) for part in parts) or f"{record.status}, not analysed"
    lines = [f"{STATE_NAMES[verdict.state]}: {_image_name(record)}{where}: {text}"]
    if record.check is not None and verbosity >= 2:
        lines.extend(
            "    " + clean_text(finding_text(finding))
            for finding in record.check.findings
        )
        hidden = record.check.findings_total - len(record.check.findings)
        if hidden > 0:
            lines.append(f"    ... {hidden} more findings")
    return "\n".join(lines)


def _summary(verdicts: Sequence[Verdict], state: int) -> str:
    if state == OK:
        if len(verdicts) == 1:
            verdict = verdicts[0]
            usage = verdict.record.usage
            if usage is None:  # only a backing layer lacks figures without an error
                return f"{_image_name(verdict.record)}: {verdict.record.status}, not analysed"
            return (
                f"{_image_name(verdict.record)}: usage "
                f"{percent_text(usage_percent(usage.usage_ratio))}%, headroom "
                f"{human_size(usage.container.headroom)}"
            )
        measured = [(v.record.usage.usage_ratio, v.record) for v in verdicts
                    if v.record.usage is not None]
        text = f"{len(verdicts)} images"
        if measured:
            ratio, fullest = max(measured, key=lambda pair: pair[0])
            text += (
                f", highest usage {percent_text(usage_percent(ratio))}% "
                f"({_image_name(fullest)})"
            )
        return text
    # Worst first, then in the collector's (stable) order.
    bad = sorted(
        (v for v in verdicts if v.state != OK), key=lambda v: -_SEVERITY[v.state]
    )
    shown = "; ".join(
        f"{_image_name(v.record)}: {', '.join(p.text for p in v.problems)}"
        for v in bad[:MAX_IMAGES_IN_SUMMARY]
    )
    if len(bad) > MAX_IMAGES_IN_SUMMARY:
        shown += f"; +{len(bad) - MAX_IMAGES_IN_SUMMARY} more"
    if len(verdicts) > 1:
        shown = f"{len(bad)} of {len(verdicts)} images: {shown}"
    return clean_text(shown)


def render(collection: Collection, limits: Thresholds, verbosity: int = 0,
           *, running_only: bool = False) -> tuple[int, str]:
    """The whole plugin output (first line, long output) and its exit code."""
    verdicts = [evaluate(record, limits) for record in collection.records]
    if not verdicts:
        if running_only:
            return OK, f"{PREFIX} OK - no qcow2 image is open in a running qemu process\n"
        return UNKNOWN, f"{PREFIX} UNKNOWN - no images found\n"
    state = worst([verdict.state for verdict in verdicts])
    first = f"{PREFIX} {STATE_NAMES[state]} - {_summary(verdicts, state)}"
    perf = perfdata(verdicts, limits)
    if perf:
        first += " | " + " ".join(perf)
    lines = [first]
    # Long output is worth its lines only when it says more than the first line.
    if len(verdicts) > 1 or verbosity >= 1:
        lines.extend(_image_line(verdict, verbosity) for verdict in verdicts)
    return state, "\n".join(lines) + "\n"


def _collect(args: argparse.Namespace) -> Collection:
    # Imported here, inside main()'s safety net: a broken installation must still give one
    # UNKNOWN line, not a traceback.
    from collectors.selection import collect_selected

    return collect_selected(args.files, args)


class _Output:
    """Writes the plugin output exactly once, whether main() or the timeout gets there first."""

    def __init__(self, stream: Optional[TextIO]) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def claim(self) -> bool:
        return self._lock.acquire(blocking=False)

    def write(self, text: str) -> None:
        if self._stream is not None:
            self._stream.write(text)
            self._stream.flush()
            return
        # Bytes, not sys.stdout: monitoring daemons often run plugins with LANG=C, where
        # printing a non-ASCII path would raise.
        sys.stdout.flush()
        sys.stdout.buffer.write(text.encode("utf-8", "replace"))
        sys.stdout.buffer.flush()


def _start_watchdog(seconds: float, output: _Output) -> threading.Timer:
    """Exit UNKNOWN after `seconds` even if the main thread is stuck in a blocking read.

    A thread rather than SIGALRM: a signal handler only runs between bytecodes of the main
    thread, so a read hanging on a dead NFS server would never be interrupted.
    """

    def expire() -> None:
        if output.claim():
            output.write(f"{PREFIX} UNKNOWN - timed out after {format_number(seconds)} s "
                         "(raise -t/--timeout)\n")
            os._exit(UNKNOWN)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    return timer


def main(argv: Optional[Sequence[str]] = None, stream: Optional[TextIO] = None) -> int:
    output = _Output(stream)
    verbosity = 0
    timer: Optional[threading.Timer] = None
    try:
        parser = build_parser()
        try:
            args = parser.parse_intermixed_args(argv)
        except _ParserExit:
            # --help / --version: exit 3 per the guidelines (monitoring.md).
            output.write(parser.printed)
            return UNKNOWN
        verbosity = args.verbose
        args.files = [*args.files, *args.images]
        if not args.files and not args.running:
            raise UsageError("no images given (use -f IMAGE or --running)")
        limits = Thresholds.from_args(args)
        timer = _start_watchdog(args.timeout, output)
        collection = _collect(args)
        state, text = render(collection, limits, verbosity,
                             running_only=args.running and not args.files)
    except UsageError as exc:
        state = UNKNOWN
        text = f"{PREFIX} UNKNOWN - bad arguments: {clean_text(str(exc))}\n" \
               f"Usage: {PROG} -f IMAGE [-f IMAGE ...] [-w RANGE] [-c RANGE] ... (see --help)\n"
    except BaseException as exc:  # any failure of ours is UNKNOWN, on one line (no traceback)
        state = UNKNOWN
        message = clean_text(str(exc).splitlines()[0] if str(exc) else "")
        text = f"{PREFIX} UNKNOWN - internal error: {type(exc).__name__}: {message}\n"
        if verbosity >= 3:
            traceback.print_exc(file=sys.stderr)
    finally:
        if timer is not None:
            timer.cancel()
    if not output.claim():  # the watchdog is writing its UNKNOWN line and will exit
        threading.Event().wait()
    output.write(text)
    return state


if __name__ == "__main__":
    sys.exit(main())
