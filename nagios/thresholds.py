"""Threshold evaluation: the user's -w/-c, headroom and overcommit limits, on top of each
image's health (judged once in the core by collectors/report/health.py, never here), in its
states."""

from __future__ import annotations

from qcow2_monitor.cli.outcome import Namespace, UsageError
from qcow2_monitor.collectors.common.record import frozen_record
from qcow2_monitor.collectors.common.units import human_duration, human_rate, human_size
from qcow2_monitor.collectors.report.health import CRITICAL, WARNING, worst
from qcow2_monitor.nagios.ranges import Range
from qcow2_monitor.nagios.text import percent_text, usage_percent

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional

    from qcow2_monitor.collectors.report.metrics import FilesystemFigures
    from qcow2_monitor.collectors.report.model import ImageRecord, ImageUsage


@frozen_record
class Thresholds:
    """The limits that turn figures into a state."""

    usage_warning: Optional[Range] = None
    usage_critical: Optional[Range] = None
    headroom_warning: Optional[int] = None
    headroom_critical: Optional[int] = None
    overcommit_warning: Optional[Range] = None
    overcommit_critical: Optional[Range] = None
    time_to_full_warning: Optional[float] = None  # seconds
    time_to_full_critical: Optional[float] = None

    @classmethod
    def from_args(cls, args: Namespace) -> Thresholds:
        """The limits of the command line; raises UsageError for a warning that cannot fire."""
        limits = cls(
            usage_warning=args.warning,
            usage_critical=args.critical,
            headroom_warning=args.warning_headroom,
            headroom_critical=args.critical_headroom,
            overcommit_warning=args.warning_overcommit,
            overcommit_critical=args.critical_overcommit,
            time_to_full_warning=args.warning_time_to_full,
            time_to_full_critical=args.critical_time_to_full,
        )
        problem = limits.silent_warning()
        if problem:
            raise UsageError(problem)
        return limits

    def silent_warning(self) -> Optional[str]:
        """Why a warning limit can never fire, if one cannot.

        Critical is evaluated first, so a warning whose every alerting value is already
        critical gives OK until it is CRITICAL: `-w 90 -c 80` (and `-w 80 -c 80`),
        `--warning-headroom 5G --critical-headroom 20G`, `--warning-time-to-full 4h
        --critical-time-to-full 24h`. Usage, headroom and ratios are
        never negative, so only values from 0 up count.
        """
        for (warn_option, crit_option, what, example), warning, critical in (
            (("-w", "-c", "usage", "-w 80 -c 90"), self.usage_warning, self.usage_critical),
            (("--warning-overcommit", "--critical-overcommit", "ratio",
              "--warning-overcommit 1.5 --critical-overcommit 3"),
             self.overcommit_warning, self.overcommit_critical),
        ):
            if warning is not None and critical is not None \
                    and not warning.alerts_beyond(critical):
                return (f"{warn_option} {warning} can never fire: every {what} it alerts on "
                        f"is CRITICAL under {crit_option} {critical} first (give a warning "
                        f"reached before the critical, e.g. {example}, or no {warn_option})")
        # Limits alerting below a value (free space, time left): the warning must be the larger.
        for (name, show, larger, example), warning_value, critical_value in (
            (("headroom", lambda size: human_size(int(size)), "above",
              "more free space than the critical, e.g. "
              "--warning-headroom 20G --critical-headroom 5G"),
             self.headroom_warning, self.headroom_critical),
            (("time-to-full", human_duration, "longer than", "the longer time, e.g. "
              "--warning-time-to-full 24h --critical-time-to-full 4h"),
             self.time_to_full_warning, self.time_to_full_critical),
        ):
            if warning_value is not None and critical_value is not None \
                    and warning_value <= critical_value:
                return (f"--warning-{name} {show(warning_value)} can never fire: it is not "
                        f"{larger} --critical-{name} {show(critical_value)} (give the warning "
                        f"{example}, or no --warning-{name})")
        return None

    @property
    def overcommit(self) -> bool:
        return self.overcommit_warning is not None or self.overcommit_critical is not None


@frozen_record
class Problem:
    state: int
    text: str


@frozen_record
class Verdict:
    """The state of one image and why."""

    record: ImageRecord
    state: int
    problems: tuple[Problem, ...]


@frozen_record
class FilesystemVerdict:
    figures: FilesystemFigures
    state: int
    problems: tuple[Problem, ...]


def _range_problem(value: float, what: str, unit: str,
                   critical: Optional[Range], warning: Optional[Range]) -> list[Problem]:
    """Critical is evaluated before warning (guidelines); at most one problem."""
    for state, limit in ((CRITICAL, critical), (WARNING, warning)):
        if limit is not None and limit.alert(value):
            shown = percent_text(value, limit)
            return [Problem(state, f"{what} {shown}{unit} {limit.describe(unit=unit)}")]
    return []


def evaluate(record: ImageRecord, limits: Thresholds) -> Verdict:
    """One image's state: its health problems, then the thresholds (critical first)."""
    problems = [Problem(reason.state, reason.text) for reason in record.health.problems]
    usage = record.usage
    if usage is not None:
        problems += _range_problem(usage_percent(usage.usage_ratio), "usage", "%",
                                   limits.usage_critical, limits.usage_warning)
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
        problems += _time_to_full_problem(usage, limits)
    return Verdict(record, worst([problem.state for problem in problems]), tuple(problems))


def _time_to_full_problem(usage: ImageUsage, limits: Thresholds) -> list[Problem]:
    """Rule time-to-full: the container is full within the limit at the current growth."""
    growth = usage.growth
    if growth is None or growth.time_to_full is None or growth.bytes_per_second is None:
        return []
    for state, limit in ((CRITICAL, limits.time_to_full_critical),
                         (WARNING, limits.time_to_full_warning)):
        if limit is not None and growth.time_to_full < limit:
            return [Problem(state, f"time-to-full: full in {human_duration(growth.time_to_full)}"
                            f" < {human_duration(limit)} (growing "
                            f"{human_rate(growth.bytes_per_second)})")]
    return []


def evaluate_filesystem(figures: FilesystemFigures, limits: Thresholds) -> FilesystemVerdict:
    problems = _range_problem(figures.overcommit_ratio, "overcommit", "",
                              limits.overcommit_critical, limits.overcommit_warning)
    return FilesystemVerdict(figures, worst([p.state for p in problems]), tuple(problems))
