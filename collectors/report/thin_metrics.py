"""The exported figures of thin provisioning (collectors.report.thin), declared with the
others in collectors.report.metrics: name -> (unit, help, value type)."""

from __future__ import annotations

from .model import ImageUsage

THIN_METRICS: dict[str, tuple[str, str, type]] = {
    "free_below_end_bytes": (
        "bytes",
        "Bytes of clusters below the image end offset whose on-disk refcount is zero (freed by "
        "discards, deleted snapshots): qemu fills them before the image grows, and offline "
        "compaction would give them back.",
        int,
    ),
    "growth_bytes_per_second": (
        "",
        "Growth of the end offset in bytes per second: least-squares slope over the growth "
        "window (default 6h) of the samples kept in the state directory; absent while the "
        "history is too short.",
        float,
    ),
    "time_to_full_seconds": (
        "seconds",
        "Seconds until the container is full at the current growth (headroom / growth of "
        "the device's end offset, or of the filesystem's used bytes for an image file); "
        "absent while not growing or the history is too short.",
        float,
    ),
    "extend_by_bytes": (
        "bytes",
        "Bytes to extend the image's block volume by now (its headroom is below the "
        "watermark chunk x (100 - utilization%)); absent when no extension is due.",
        int,
    ),
}


def thin_values(usage: ImageUsage) -> list[tuple[str, float]]:
    """The thin-provisioning figures `usage` has."""
    values: list[tuple[str, float]] = []
    if usage.free_below_end is not None:
        values.append(("free_below_end_bytes", usage.free_below_end))
    growth = usage.growth
    if growth is not None and growth.bytes_per_second is not None:
        values.append(("growth_bytes_per_second", growth.bytes_per_second))
    if growth is not None and growth.time_to_full is not None:
        values.append(("time_to_full_seconds", growth.time_to_full))
    extension = usage.extension
    if extension is not None:
        values.append(("extend_by_bytes", extension.extend_by))
    return values
