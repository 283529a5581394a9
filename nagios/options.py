"""check_qcow2's command line: options, their types and the help text.

The parser is every front end's (cli/parser.py): it raises instead of printing to stderr and
exiting 2 (which a monitoring system reads as CRITICAL), so that bad arguments, --help and
--version all end as UNKNOWN in check_qcow2.main, on stdout.
"""

from __future__ import annotations

from qcow2_monitor.cli.options import (
    add_health_arguments,
    add_selection_arguments,
    target_option,
)
from qcow2_monitor.cli.parser import ArgumentParser, add_help_argument, invalid_value
from qcow2_monitor.cli.version import add_version_argument
from qcow2_monitor.collectors.common.units import parse_size
from qcow2_monitor.nagios.ranges import Range, RangeError
from qcow2_monitor.nagios.runtime import DEFAULT_TIMEOUT, PROG


def range_option(text: str) -> Range:
    try:
        return Range.parse(text)
    except RangeError as exc:
        raise invalid_value(str(exc)) from None


def size_option(text: str) -> int:
    # The shared parser, so that every adapter reads "10G" alike: all units binary, as
    # qemu-img reads sizes (10G = 10GB = 10GiB).
    try:
        return parse_size(text)
    except ValueError as exc:
        raise invalid_value(f"{exc}; units B, K, M, G, T, P, all binary") from None


def _duration(text: str) -> float:
    from qcow2_monitor.cli.options import duration_option

    return duration_option(text)


def timeout_option(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < 86400:
        raise invalid_value(f"invalid timeout {text!r} (seconds, > 0)")
    return seconds


EPILOG = """\
thresholds:
  -w/-c take Nagios ranges on the usage in percent of the container: for a block device the
  image end offset / device size; for an image file its filesystem's used / size (as df shows
  it: every image on a filesystem shares it). Endpoints are inclusive; critical is evaluated
  before warning:
    -w 80 -c 90        WARNING above 80 %, CRITICAL above 90 %
    -w ~:80 -c ~:90    the same, written explicitly
    -w @0:50           WARNING while usage is between 0 and 50 % (inverted range)
  --warning-headroom/--critical-headroom take a size: alert when the free space left in the
  container falls below it (equal is fine). Units B, K, M, G, T, P (also KB/KiB, MB/MiB, ...),
  all binary: 10G = 10GB = 10GiB = 10737418240 bytes. Example:
    --warning-headroom 20G --critical-headroom 5G
  --warning-time-to-full/--critical-time-to-full take a duration (90s, 30m, 4h, 2d): alert
  when the container is full sooner at the growth of the growth window (the least-squares
  slope of the end offset over the samples of earlier runs, kept in the state directory):
    --warning-time-to-full 24h --critical-time-to-full 4h
  A warning must be able to fire before its critical: -w 90 -c 80 or --warning-headroom 5G
  --critical-headroom 20G are refused (UNKNOWN), as they would never give WARNING.
  --warning-overcommit/--critical-overcommit take ranges on each filesystem's overcommit
  ratio, summed virtual sizes of its images / filesystem size: -w ... --warning-overcommit 1.5
  warns when the guests could write 1.5 times what the filesystem holds. The sums cover
  only the images this check was given (-f targets, --running): give every image of the
  filesystem (e.g. its directory) for a ratio that means the whole filesystem.

health: one policy for every adapter (qcow2-telegraf and qcow2-textfile export it as the
  health figure): each rule's state can be changed with its --RULE-state option above.
  Unreadable and non-qcow2 files are UNKNOWN; damaged metadata is CRITICAL. When images
  disagree the worst state wins, in the order CRITICAL, UNKNOWN, WARNING, OK.

exit codes: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (also for bad arguments, timeout, --help
and --version).
"""


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Check how full the containers of qcow2 images are, and the images' health.",
        epilog=EPILOG,
        add_help=False,  # -h/--help goes in the "general" group, last
    )
    sel = parser.add_argument_group("images")
    sel.add_argument(
        "-f", "--file", dest="files", action="append", default=[], type=target_option,
        metavar="IMAGE",
        help="image file, block device, directory (searched recursively) or glob; repeatable; "
        "a directory or glob without a qcow2 image is UNKNOWN",
    )
    # Positional images too, so that a shell glob works: check_qcow2 -w 80 /images/*.qcow2
    sel.add_argument("images", nargs="*", type=target_option, metavar="IMAGE",
                     help="same as -f IMAGE")
    add_selection_arguments(sel)
    thr = parser.add_argument_group("thresholds")
    thr.add_argument("-w", "--warning", type=range_option, metavar="RANGE",
                     help="usage range in percent for WARNING, e.g. 80")
    thr.add_argument("-c", "--critical", type=range_option, metavar="RANGE",
                     help="usage range in percent for CRITICAL, e.g. 90")
    thr.add_argument("--warning-headroom", type=size_option, metavar="SIZE",
                     help="WARNING when the free space in the container is below SIZE")
    thr.add_argument("--critical-headroom", type=size_option, metavar="SIZE",
                     help="CRITICAL when the free space in the container is below SIZE")
    thr.add_argument("--warning-time-to-full", type=_duration, metavar="DURATION",
                     help="WARNING when the container is full within DURATION at the current "
                     "growth, e.g. 24h (needs the state kept between runs: --state-dir)")
    thr.add_argument("--critical-time-to-full", type=_duration, metavar="DURATION",
                     help="CRITICAL when the container is full within DURATION, e.g. 4h")
    thr.add_argument("--warning-overcommit", type=range_option, metavar="RANGE",
                     help="overcommit ratio range of a filesystem for WARNING, e.g. 1.5")
    thr.add_argument("--critical-overcommit", type=range_option, metavar="RANGE",
                     help="overcommit ratio range of a filesystem for CRITICAL, e.g. 3")
    add_health_arguments(parser.add_argument_group(
        "health states (each: ok, warning, critical or unknown)"))
    gen = parser.add_argument_group("general")
    gen.add_argument("-t", "--timeout", type=timeout_option, default=DEFAULT_TIMEOUT,
                     metavar="SECONDS", help="UNKNOWN after this many seconds (default 30)")
    gen.add_argument("-v", "--verbose", action="count", default=0,
                     help="more detail in the long output; repeatable (-vvv: tracebacks on stderr)")
    add_version_argument(gen)
    add_help_argument(gen)
    return parser
