"""check_qcow2: Nagios / Icinga plugin for qcow2 images (how full their container is, and health).

The entry point only: it wires the plugin's parts together, one concept per module as
nagiosplugin splits them --

* :mod:`nagios.options`: the command line (cli/parser.py: argparse never exits 2 here);
* :mod:`nagios.thresholds`: -w/-c, headroom and overcommit limits on top of each image's
  health, which the core judges once (collectors/report/health.py) for every adapter;
* :mod:`nagios.summary` and :mod:`nagios.perfdata`: the text and the perfdata;
* :mod:`nagios.runtime`: the write-once output, the timeout and the exit codes.

Everything that is not a verdict on an image -- bad arguments, --help, --version, timeouts,
unreadable or non-qcow2 files, internal errors -- is UNKNOWN, never argparse's exit 2 (which a
monitoring system would read as CRITICAL).
"""

from __future__ import annotations

import sys

from qcow2_monitor.cli.entry import exception_text, last_resort, output_streams
from qcow2_monitor.cli.options import collect_selected
from qcow2_monitor.cli.outcome import Namespace, ParserExit, UsageError
from qcow2_monitor.collectors.report.health import OK, UNKNOWN, worst
from qcow2_monitor.nagios.options import build_parser
from qcow2_monitor.nagios.runtime import PREFIX, PROG, Output, Watchdog
from qcow2_monitor.nagios.summary import render
from qcow2_monitor.nagios.text import clean_label, clean_text, percent_text
from qcow2_monitor.nagios.thresholds import (
    FilesystemVerdict,
    Thresholds,
    evaluate,
    evaluate_filesystem,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional, Sequence, TextIO

    from qcow2_monitor.collectors.report.model import Collection

__all__ = ["build_parser", "clean_label", "clean_text", "main", "percent_text", "verdict"]


def verdict(collection: Collection, limits: Thresholds, verbosity: int = 0,
            *, running_only: bool = False) -> tuple[int, str]:
    """The plugin's state and whole output for what the collector found."""
    verdicts = [evaluate(record, limits) for record in collection.records]
    if not verdicts:
        if running_only:
            return OK, f"{PREFIX} OK - no qcow2 image is open in a running qemu process\n"
        return UNKNOWN, f"{PREFIX} UNKNOWN - no images found\n"
    fs_verdicts: list[FilesystemVerdict] = []
    if limits.overcommit:
        from qcow2_monitor.collectors.report.metrics import filesystems  # --overcommit only

        fs_verdicts = [evaluate_filesystem(fs, limits) for fs in filesystems(collection)]
    state = worst([v.state for v in verdicts] + [f.state for f in fs_verdicts])
    return state, render(verdicts, fs_verdicts, limits, state, verbosity, collection.notes)


def _collect(args: Namespace) -> Collection:
    return collect_selected(args.files, args)


def _run(argv: Optional[Sequence[str]], output: Output, options: dict[str, int]) -> tuple[int, str]:
    """(state, text); raises UsageError or anything unexpected. Fills `options["verbose"]` as
    soon as it is known, for main's error report."""
    try:
        args = build_parser().parse_args(argv)
    except ParserExit as exc:
        # --help / --version: exit 3 per the guidelines.
        return UNKNOWN, exc.text
    options["verbose"] = args.verbose
    args.files = [*args.files, *args.images]
    if not args.files and not args.running:
        raise UsageError("no images given (use -f IMAGE or --running)")
    limits = Thresholds.from_args(args)
    watchdog = Watchdog(args.timeout, output)
    try:
        collection = _collect(args)
        state, text = verdict(collection, limits, args.verbose,
                              running_only=args.running and not args.files)
    finally:
        watchdog.cancel()
    return state, text


def main(argv: Optional[Sequence[str]] = None, stdout: Optional[TextIO] = None,
         stderr: Optional[TextIO] = None) -> int:
    out, err = output_streams(stdout, stderr)
    output = Output(out)
    options = {"verbose": 0}

    def body() -> int:
        try:
            state, text = _run(argv, output, options)
        except UsageError as exc:
            state = UNKNOWN
            text = f"{PREFIX} UNKNOWN - bad arguments: {clean_text(exc.message)}\n" \
                   f"Usage: {PROG} -f IMAGE [-f IMAGE ...] [-w RANGE] [-c RANGE] ... " \
                   "(see --help)\n"
        output.write_last(text)
        return state

    def failure(exc: BaseException) -> int:
        # Any failure of ours is UNKNOWN, on one line (-vvv: the traceback on stderr).
        if options["verbose"] >= 3:
            import traceback  # only then: it imports linecache and tokenize

            traceback.print_exception(type(exc), exc, exc.__traceback__, file=err)
        output.write_failure(
            f"{PREFIX} UNKNOWN - internal error: {clean_text(exception_text(exc))}\n")
        return UNKNOWN

    return last_resort(body, failure)


if __name__ == "__main__":
    sys.exit(main())
