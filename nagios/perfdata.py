"""Perfdata: ``'label'=value[UOM];warn;crit;min;max`` in base units, labelled
``<path> <metric name>`` (or ``<mount point> <metric name>`` for filesystems).

Labels depend on nothing but the disk (its canonical path) and the figure, so they never change
with the state and graphs keep their history.
"""

from __future__ import annotations

from qcow2_monitor.collectors.common.units import plain_number
from qcow2_monitor.nagios.text import clean_label, usage_percent
from qcow2_monitor.nagios.thresholds import FilesystemVerdict, Thresholds, Verdict

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Optional

    from qcow2_monitor.collectors.report.metrics import Metric

# Perfdata figures, by their collectors.report.metrics names (one vocabulary for every adapter).
# Only usage_ratio is rescaled, to percent under the label "usage_percent".
# Perfdata: these usage figures, then (with --check) collectors.report.metrics.CHECK_METRICS.
USAGE_PERFDATA_METRICS = (
    "usage_ratio",
    "end_offset_bytes",
    "image_end_offset_bytes",
    "live_end_offset_bytes",
    "container_size_bytes",
    "headroom_bytes",
    "growth_bytes_per_second",
    "time_to_full_seconds",
)
USAGE_PERCENT_LABEL = "usage_percent"
FILESYSTEM_PERFDATA_METRICS = ("filesystem_overcommit_ratio",)


def _perf(label: str, value: str, uom: str = "", warn: str = "", crit: str = "",
          minimum: str = "", maximum: str = "") -> str:
    fields = ";".join((f"{value}{uom}", warn, crit, minimum, maximum)).rstrip(";")
    return f"'{label}'={fields}"


def _perf_item(metric: Metric, path: str, usage_size: Optional[int], limits: Thresholds) -> str:
    """One perfdata item: ``'<path> <metric name>'=value[UOM];warn;crit;min;max``."""
    size = "" if usage_size is None else str(usage_size)
    if metric.name == "usage_ratio":
        percent = plain_number(round(usage_percent(float(metric.value)), 8))
        return _perf(
            f"{path} {USAGE_PERCENT_LABEL}", percent, "%",
            str(limits.usage_warning or ""), str(limits.usage_critical or ""), "0", "100",
        )
    if metric.name == "filesystem_overcommit_ratio":
        return _perf(f"{path} overcommit_ratio", plain_number(round(float(metric.value), 8)),
                     "", str(limits.overcommit_warning or ""),
                     str(limits.overcommit_critical or ""), "0")
    value = str(int(metric.value))
    uom = "B" if metric.unit == "bytes" else ""
    if metric.name == "headroom_bytes":
        # Headroom alerts below SIZE: the Nagios range "SIZE:" says exactly that.
        warn = "" if limits.headroom_warning is None else f"{limits.headroom_warning}:"
        crit = "" if limits.headroom_critical is None else f"{limits.headroom_critical}:"
        return _perf(f"{path} {metric.name}", value, uom, warn, crit, "0", size)
    if metric.name == "time_to_full_seconds":
        warn = "" if limits.time_to_full_warning is None \
            else f"{plain_number(limits.time_to_full_warning)}:"
        crit = "" if limits.time_to_full_critical is None \
            else f"{plain_number(limits.time_to_full_critical)}:"
        return _perf(f"{path} {metric.name}", plain_number(round(float(metric.value), 3)),
                     "s", warn, crit, "0")
    if metric.name == "growth_bytes_per_second":
        return _perf(f"{path} {metric.name}", plain_number(round(float(metric.value), 3)))
    if metric.name in ("end_offset_bytes", "image_end_offset_bytes", "live_end_offset_bytes"):
        return _perf(f"{path} {metric.name}", value, uom, minimum="0", maximum=size)
    return _perf(f"{path} {metric.name}", value, uom, minimum="0")


def perfdata(verdicts: Sequence[Verdict], filesystems: Sequence[FilesystemVerdict],
             limits: Thresholds) -> list[str]:
    """Every image's figures, then (with overcommit thresholds) every filesystem's.

    An image that could not be read has no perfdata this run.
    """
    from qcow2_monitor.collectors.report.metrics import (
        CHECK_METRICS,
        filesystem_metrics,
        image_metrics,
    )

    items: list[str] = []
    seen: set[str] = set()
    for verdict in verdicts:
        record = verdict.record
        path = clean_label(record.label_path)
        # The collector reports each disk once; the cleaning could still merge two
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
    for fs in filesystems:
        label = clean_label(fs.figures.mountpoint)
        items.extend(_perf_item(metric, label, None, limits)
                     for metric in filesystem_metrics(fs.figures)
                     if metric.name in FILESYSTEM_PERFDATA_METRICS)
    return items
