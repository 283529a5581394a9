"""qcow2-telegraf: qcow2 usage (and optionally check) figures as InfluxDB line protocol.

For Telegraf's ``[[inputs.exec]]`` (one batch per run, ``data_format = "influx"``) or
``[[inputs.execd]]`` with ``signal = "STDIN"`` (``--execd``: one batch per line read on stdin,
exit at EOF). Snippets: telegraf/qcow2-exec.conf (Telegraf >= 1.39),
qcow2-exec-legacy.conf (<= 1.38) and qcow2-execd.conf.

One point per image (and per backing layer with --chain) in measurement ``qcow2``. In InfluxDB
every tag is part of the series key, so the only tag is the disk's identity, ``path`` (its
canonical path): one disk, one series, whether it is healthy or broken, restarted, amended or
rebased. Fields are the metrics of :func:`collectors.report.metrics.image_metrics` under the
same names as in every adapter, every descriptive label of
:func:`collectors.report.metrics.info_labels` as a string field (``depth`` an integer), and
``health_reasons``, the health rules that applied.
Flags (in_use, scrape_error) are integers 0/1. One point per filesystem holding image files in
measurement ``qcow2_filesystem``, tagged ``mountpoint``: its sums cover only the images this
run was given.
A target that fails is still a point (``scrape_error=1i`` and an ``error`` string) and an
``E! [inputs.qcow2] ...`` line on stderr, which Telegraf logs at error level; the exit status
stays 0 so that Telegraf keeps the other images' points (exec discards stdout on failure).
"""

from __future__ import annotations

import os
import sys

from qcow2_monitor.cli.entry import exception_text, write_utf8
from qcow2_monitor.cli.exits import EXIT_FAILED, EXIT_OK
from qcow2_monitor.cli.options import (
    add_selection_and_health_arguments,
    add_targets_argument,
    collect_selected,
    collector_main,
)
from qcow2_monitor.cli.outcome import Namespace
from qcow2_monitor.cli.parser import ArgumentParser
from qcow2_monitor.cli.version import add_version_argument
from qcow2_monitor.collectors.common.text import printable
from qcow2_monitor.collectors.report.growth import GrowthTracker
from qcow2_monitor.collectors.report.metrics import (
    FILESYSTEM_LABEL,
    HEALTH_REASON_METRIC,
    IDENTITY_LABELS,
    INFO_METRIC,
    INTEGER_INFO_LABELS,
    failure_line,
    filesystem_metrics,
    filesystems,
    has_series,
    health_text,
    image_metrics,
)
from qcow2_monitor.collectors.report.model import Collection, ImageRecord
from qcow2_monitor.collectors.report.state import default_directory
from qcow2_monitor.telegraf.lineprotocol import FieldValue, format_line, representable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional, Sequence, TextIO

MEASUREMENT = "qcow2"
FILESYSTEM_MEASUREMENT = "qcow2_filesystem"
LOG_PREFIX = "E! [inputs.qcow2]"
NOTE_PREFIX = "W! [inputs.qcow2]"  # a remark about the run, not a failure


def record_point(record: ImageRecord) -> tuple[str, list[str]]:
    """(line, problems) for one record; problems are log messages for stderr."""
    tags: Sequence[tuple[str, str]] = ()
    fields: list[tuple[str, FieldValue]] = []
    problems: list[str] = []
    for metric in image_metrics(record):
        if metric.name == INFO_METRIC:
            # One disk, one series: the identity (the canonical path) is the only tag; every
            # descriptive label is a field, so that a restart, an amend, a rebase or damage
            # keeps the series.
            tags = [(k, v) for k, v in metric.labels if k in IDENTITY_LABELS]
            fields += [(k, int(v) if k in INTEGER_INFO_LABELS else v)
                       for k, v in metric.labels if k not in IDENTITY_LABELS]
        elif metric.name == HEALTH_REASON_METRIC:
            continue  # one field per rule would be sparse: health_reasons carries them all
        elif representable(metric.value):
            fields.append((metric.name, metric.value))
        else:
            problems.append(f"{printable(record.label_path)}: {metric.name}={metric.value} has "
                            "no line-protocol form, field left out")
    reasons = health_text(record)
    if reasons:
        fields.append(("health_reasons", reasons))
    message = failure_line(record)
    if message is not None:
        fields.append(("error", message))
        problems.insert(0, message)
    return format_line(MEASUREMENT, tags, fields), problems


def render(collection: Collection) -> tuple[str, list[str]]:
    """The batch text (newline-terminated lines) and the messages for stderr."""
    lines: list[str] = []
    problems: list[str] = []
    for record in collection.records:
        line, record_problems = record_point(record)
        if has_series(record):
            lines.append(line + "\n")
        problems += record_problems
    for figures in filesystems(collection):
        fields = [(metric.name, metric.value) for metric in filesystem_metrics(figures)]
        lines.append(format_line(FILESYSTEM_MEASUREMENT,
                                 [(FILESYSTEM_LABEL, figures.mountpoint)], fields) + "\n")
    return "".join(lines), problems


_EPILOG = """\
examples:
  qcow2-telegraf /var/lib/libvirt/images --chain
  qcow2-telegraf --running --check '/srv/vm/*.qcow2'

The qcow2_filesystem sums (end offsets, virtual sizes, overcommit ratio) cover only the
images the TARGETs (and --running) name: give a filesystem's whole image directory.

exit codes: 0 points written (a target that cannot be analysed is still a point, with
scrape_error=1i, and an E! line on stderr); 1 stdout closed (Telegraf went away), or an
internal error (one E! line); 64 bad command line.
"""


def _parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="qcow2-telegraf",
        description="Print qcow2 image usage as InfluxDB line protocol for Telegraf's "
        "inputs.exec / inputs.execd.",
        epilog=_EPILOG,
    )
    add_targets_argument(parser)
    add_selection_and_health_arguments(parser)
    parser.add_argument(
        "--execd",
        action="store_true",
        help="serve Telegraf's inputs.execd (signal = \"STDIN\"): one batch per line on stdin",
    )
    add_version_argument(parser)
    return parser


def _batch(args: Namespace, stdout: TextIO, stderr: TextIO,
           tracker: Optional[GrowthTracker] = None) -> None:
    collection = collect_selected(args.targets, args, tracker)
    text, problems = render(collection)
    if problems:
        write_utf8(stderr, "".join(f"{LOG_PREFIX} {problem}\n" for problem in problems))
    if collection.notes:
        write_utf8(stderr, "".join(f"{NOTE_PREFIX} {printable(note)}\n"
                                   for note in collection.notes))
    write_utf8(stdout, text)


def _serve(args: Namespace, stdout: TextIO, stderr: TextIO) -> int:
    """One batch (exec), or one per line read on stdin until EOF (execd)."""
    try:
        if not args.execd:
            _batch(args, stdout, stderr)
            return EXIT_OK
        # Telegraf writes one newline per interval and closes stdin on shutdown. The samples
        # for growth stay in memory too: a state directory that cannot be used still gives a
        # history while the daemon runs.
        tracker = None if args.no_state else GrowthTracker(
            args.state_dir or default_directory(), args.growth_window, keep_in_memory=True)
        for _ in sys.stdin:
            try:
                _batch(args, stdout, stderr, tracker)
            except BrokenPipeError:
                raise
            except Exception as exc:  # one bad interval must not end the daemon
                write_utf8(stderr, f"{LOG_PREFIX} collection failed: {exception_text(exc)}\n")
        return EXIT_OK
    except BrokenPipeError:
        # Telegraf went away; nothing is left to report to. Point stdout at /dev/null so that
        # the interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED


def main(argv: Optional[Sequence[str]] = None, stdout: Optional[TextIO] = None,
         stderr: Optional[TextIO] = None) -> int:
    return collector_main(_parser, _serve, argv, stdout, stderr,
                          internal_error=f"{LOG_PREFIX} internal error: ")


if __name__ == "__main__":
    sys.exit(main())
