"""One neutral metric model that every adapter renders (Nagios, Telegraf, node_exporter).

The result model (:mod:`.model`) says what an image *is* and what a run collected; this module
decides, once, what is *exported* about it: metric names, units, help texts and labels.
Adapters only change syntax (Prometheus prefixes ``qcow2_``, Telegraf turns metrics into fields
of one line), so a series means the same thing whichever agent collected it.

Collecting the records is :mod:`.collect`'s job. Kept light on purpose: the Nagios
plugin imports this module on every check, so it imports no numpy, psutil, jinja2 or
prometheus_client.
"""

from __future__ import annotations

import os

from ..common.record import NamedTuple, frozen_record, replace
from ..common.text import printable
from .model import Collection, ImageRecord, LayerStatus, State
from .thin_metrics import THIN_METRICS, thin_values

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional, TypeAlias, Union

Labels: TypeAlias = "tuple[tuple[str, str], ...]"
MetricValue: TypeAlias = "Union[bool, int, float]"

UNIT_BYTES = "bytes"
UNIT_RATIO = "ratio"
UNIT_SECONDS = "seconds"
UNIT_NONE = ""

# The figures of the full check (CheckResult fields, same names as metrics), in report order.
CHECK_METRICS = (
    "check_errors",
    "corruptions",
    "leaks",
    "allocated_clusters",
    "fragmented_clusters",
    "compressed_clusters",
    "unconfirmed",
)

GAUGE = "gauge"
COUNTER = "counter"

# Python type every value of a metric has, so that no field ever changes type between runs or
# targets (InfluxDB fixes a field's type at its first write and rejects the other type after).
# Flags are integers 0/1, not booleans: InfluxQL cannot aggregate booleans.
_INT, _FLOAT = int, float


_RUN_SCOPE = ("Covers only the images this run was given (its targets, and --running): "
              "images on the filesystem that no target names are not summed.")


class MetricSpec(NamedTuple):
    unit: str
    help: str
    value_type: type
    type: str = GAUGE


# Every exported metric, declared once: name -> unit, help, value type. Names carry their unit
# suffix already so that they read the same in Prometheus and InfluxDB.
#
# Each fact is exported once (issue 22: at most 25 series per disk). A figure that is plain
# arithmetic of other exported figures, or that a health rule already exports as its
# qcow2_health_reason series, is not exported again: no total_clusters (virtual_size_bytes /
# image_info's cluster_size), no extend_to_bytes (container_size_bytes + extend_by_bytes), no
# refcounts_trusted (false exactly when dirty; image_info's end_offset_source says `check`
# then), no dirty, corrupt or paused (health_reason{rule="dirty"|"dirty-in-use"},
# {rule="corrupt"}, {rule=~"paused.*"}; pause_reason stays on image_info). The JSON outputs,
# which are not series, keep them all. usage_ratio stays: for an image file it is the
# filesystem's use, not end_offset / container_size.
#
# The worst case, every optional figure present (health_reason apart: one series per applying
# rule, none when healthy), counted by hand (tests/test_metrics.py checks it):
#   image file: image_end_offset, end_offset, container_size, headroom, usage_ratio,
#     fully_allocated_size, virtual_size, allocated, in_use, snapshots, bitmaps,
#     free_below_end (12) + live_end_offset (1) + --check: check_errors, corruptions, leaks,
#     allocated_clusters, fragmented_clusters, compressed_clusters, unconfirmed (7) + growth
#     history: growth_bytes_per_second, time_to_full_seconds (2) + health, scrape_error,
#     image_info (3) = 25.
#   block device: the same without allocated (11) + live (1) + check (7) + growth (2) +
#     extend_by (1) + health, scrape_error, image_info (3) = 25.
METRICS: dict[str, MetricSpec] = {
    "image_end_offset_bytes": MetricSpec(
        UNIT_BYTES,
        "Host offset just past the last cluster the image's on-disk metadata uses (qemu-img "
        "check 'Image end offset'); on a running VM it may lag behind live_end_offset_bytes.",
        _INT,
    ),
    "live_end_offset_bytes": MetricSpec(
        UNIT_BYTES,
        "Highest byte a running qemu has written to the image (libvirt allocation, QMP "
        "wr_highest_offset); absent when no live source covers the image.",
        _INT,
    ),
    "end_offset_bytes": MetricSpec(
        UNIT_BYTES,
        "How far the image really reaches: the larger of the on-disk image end offset and "
        "the live end offset. Usage ratio and headroom count from this figure.",
        _INT,
    ),
    "container_size_bytes": MetricSpec(
        UNIT_BYTES,
        "Size of the image's container: the block device, or the filesystem holding the "
        "image file (used + available, as df's Use% counts it).",
        _INT,
    ),
    "headroom_bytes": MetricSpec(
        UNIT_BYTES,
        "Bytes the image can still grow before its container is full (device size minus "
        "end offset, or what the filesystem holding the file can still give).",
        _INT,
    ),
    "usage_ratio": MetricSpec(
        UNIT_RATIO,
        "How full the container is (0..1): end offset / device size, or filesystem "
        "used / filesystem size for an image file.",
        _FLOAT,
    ),
    "fully_allocated_size_bytes": MetricSpec(
        UNIT_BYTES,
        "Container size the image needs so that it can never outgrow it (all clusters and "
        "metadata allocated, as qemu-img measure).",
        _INT,
    ),
    "virtual_size_bytes": MetricSpec(UNIT_BYTES, "Virtual disk size seen by the guest.", _INT),
    "allocated_bytes": MetricSpec(
        UNIT_BYTES, "Bytes the filesystem has allocated to the image file (st_blocks * 512).", _INT
    ),
    "in_use": MetricSpec(
        UNIT_NONE, "1 if a running qemu holds the image's write lock, else 0.", _INT
    ),
    "snapshots": MetricSpec(UNIT_NONE, "Number of internal snapshots.", _INT),
    "bitmaps": MetricSpec(UNIT_NONE, "Number of persistent dirty bitmaps.", _INT),
    "check_errors": MetricSpec(
        UNIT_NONE, "Errors that prevented checking parts of the image (qemu-img check).", _INT
    ),
    "corruptions": MetricSpec(
        UNIT_NONE, "Corruptions found by the full check (qemu-img check).", _INT
    ),
    "leaks": MetricSpec(
        UNIT_NONE, "Leaked clusters found by the full check (qemu-img check).", _INT
    ),
    "allocated_clusters": MetricSpec(
        UNIT_NONE, "Allocated guest clusters (qemu-img check allocated-clusters).", _INT
    ),
    "fragmented_clusters": MetricSpec(
        UNIT_NONE, "Fragmented guest clusters (qemu-img check fragmented-clusters).", _INT
    ),
    "compressed_clusters": MetricSpec(
        UNIT_NONE, "Compressed guest clusters (qemu-img check compressed-clusters).", _INT
    ),
    "unconfirmed": MetricSpec(
        UNIT_NONE,
        "Findings of the full check that could not be confirmed because a running qemu was "
        "writing the entries behind them (not in corruptions, leaks or check_errors); certain "
        "after the guest's next flush, or with the VM stopped.",
        _INT,
    ),
    "health": MetricSpec(
        UNIT_NONE,
        "Health of the image by the one qcow2 health policy: 0 ok, 1 warning, 2 critical, "
        "3 unknown (could not look); the rules behind it are qcow2_health_reason.",
        _INT,
    ),
    "health_reason": MetricSpec(
        UNIT_NONE,
        "One health rule that applies to the image (label rule), valued with the state it "
        "gives: 0 ok (a note), 1 warning, 2 critical, 3 unknown.",
        _INT,
    ),
    "scrape_error": MetricSpec(
        UNIT_NONE, "1 if this image (or its check) could not be analysed, else 0.", _INT
    ),
    "image_info": MetricSpec(
        UNIT_NONE, "Descriptive labels of an image; the value is always 1.", _INT
    ),
    "filesystem_size_bytes": MetricSpec(
        UNIT_BYTES,
        "Size of a filesystem holding image files: used + available (blocks reserved for root "
        "excluded, as df's Use% counts it).",
        _INT,
    ),
    "filesystem_free_bytes": MetricSpec(
        UNIT_BYTES, "Bytes the filesystem can still give (what an unprivileged writer gets).",
        _INT,
    ),
    "filesystem_end_offset_bytes": MetricSpec(
        UNIT_BYTES,
        "Sum of the end offsets (live when ahead of the on-disk figure) of the top images on "
        "the filesystem that this run looked at. " + _RUN_SCOPE,
        _INT,
    ),
    "filesystem_virtual_size_bytes": MetricSpec(
        UNIT_BYTES,
        "Sum of the virtual sizes of the top images on the filesystem that this run looked at. "
        + _RUN_SCOPE,
        _INT,
    ),
    "filesystem_overcommit_ratio": MetricSpec(
        UNIT_RATIO,
        "Summed virtual sizes of the top images on the filesystem that this run looked at / "
        "filesystem size: above 1 the guests can fill it. " + _RUN_SCOPE,
        _FLOAT,
    ),
    "collector_duration_seconds": MetricSpec(
        UNIT_SECONDS, "Time the collector took to analyse all images.", _FLOAT
    ),
    "last_success_timestamp_seconds": MetricSpec(
        UNIT_SECONDS, "Unix time the collector last completed a run.", _FLOAT
    ),
    "images": MetricSpec(UNIT_NONE, "Images (and backing layers) reported by this run, failed "
                         "ones included; the record about qemu processes --running could not "
                         "inspect is not an image.", _INT),
}

# The thin-provisioning figures follow the image's own (collectors.report.thin_metrics).
_AFTER = list(METRICS).index("bitmaps") + 1
METRICS = dict([*list(METRICS.items())[:_AFTER],
                *((name, MetricSpec(unit, text, kind))
                  for name, (unit, text, kind) in THIN_METRICS.items()),
                *list(METRICS.items())[_AFTER:]])

INFO_METRIC = "image_info"
HEALTH_REASON_METRIC = "health_reason"
FILESYSTEM_LABEL = "mountpoint"

# One disk, one series: the canonical path is the only identity label of a per-image series.
# Every other label of the info series is descriptive: Prometheus keeps them on
# qcow2_image_info only; line protocol carries them as fields, because in InfluxDB every tag
# is part of the series key and these change while the disk stays the same (a VM restart gives
# a new domain/disk name, qemu-img amend / rebase change lazy_refcounts / backing_file, a
# damaged image loses them all).
IDENTITY_LABELS = ("path",)
# Info labels whose field in line protocol is an integer (all others are strings).
INTEGER_INFO_LABELS = ("depth",)


@frozen_record
class Metric:
    """One value of one image (or of the collector run), in base units."""

    name: str
    value: MetricValue
    unit: str
    labels: Labels
    help: str
    type: str = GAUGE


def _metric(name: str, value: MetricValue, labels: Labels) -> Metric:
    spec = METRICS[name]
    # Coerce once here so every adapter sees the declared type (a ratio of exactly 1 stays 1.0).
    return Metric(name, spec.value_type(value), spec.unit, labels, spec.help, spec.type)


def _bool_label(value: bool) -> str:
    return "true" if value else "false"


def identity_labels(record: ImageRecord) -> Labels:
    """The labels every per-image metric carries: what identifies its series."""
    return (("path", printable(record.label_path)),)


def info_labels(record: ImageRecord) -> Labels:
    """Descriptive labels of an image (identity labels included), sorted, no empty values."""
    labels: dict[str, Optional[str]] = dict(identity_labels(record))
    labels["depth"] = str(record.depth)
    # A layer's own status (missing, loop, ...), BACKING_* above a broken one: the words of
    # usage's JSON. A target that could not be analysed: error.
    labels["status"] = str(LayerStatus.ERROR if record.error is not None
                           and record.status == LayerStatus.OK else record.status)
    labels["name"] = record.path or record.name or record.target  # as the disk was reached
    if record.depth > 0:
        labels["backing_name"] = record.name
    usage = record.usage
    if usage is not None:
        labels.update(
            # The short name dashboards show, of the disk itself (not of a symlink to it).
            filename=os.path.basename(record.label_path),
            container=str(usage.container.kind),
            filesystem=usage.container.filesystem,
            qcow_version=str(usage.qcow_version),
            cluster_size=str(usage.cluster_size),
            backing_file=usage.backing_filename,
            backing_format=usage.backing_format,
            data_file=usage.external_data_file,
            encrypted=_bool_label(usage.encrypted),
            lazy_refcounts=_bool_label(usage.lazy_refcounts),
            end_offset_source=str(usage.end_offset_source),
            domain=usage.domain,
            disk=usage.disk,
            pause_reason=usage.pause_reason,
            extend_command=usage.extension.command if usage.extension is not None else None,
        )
    # Empty label values are dropped: Prometheus treats them as absent, line protocol forbids them.
    return tuple(sorted((k, printable(v)) for k, v in labels.items() if v))


def health_text(record: ImageRecord) -> str:
    """The health reasons on one printable line ("rule: text; ..."), for string fields and
    logs."""
    return printable("; ".join(f"{reason.rule}: {reason.text}"
                               for reason in record.health.reasons))


def has_series(record: ImageRecord) -> bool:
    """False for a loop layer: the file it names is reported above it in its own chain (one
    series per disk), and the images above say the loop (status backing-loop, rule backing)."""
    return record.status != LayerStatus.LOOP


def image_metrics(record: ImageRecord) -> list[Metric]:
    """The metrics of one record (none without has_series), with the same names and labels in
    every adapter."""
    if not has_series(record):
        return []
    labels = identity_labels(record)
    metrics: list[Metric] = []
    usage = record.usage
    if usage is not None:
        container = usage.container
        values: list[tuple[str, MetricValue]] = [
            ("image_end_offset_bytes", usage.image_end_offset),
        ]
        if usage.live_end_offset is not None:
            values.append(("live_end_offset_bytes", usage.live_end_offset))
        values += [
            ("end_offset_bytes", usage.end_offset),
            ("container_size_bytes", container.size),
            ("headroom_bytes", container.headroom),
            ("usage_ratio", usage.usage_ratio),
            ("fully_allocated_size_bytes", usage.fully_allocated_size),
            ("virtual_size_bytes", usage.virtual_size),
        ]
        if container.allocated_bytes is not None:
            values.append(("allocated_bytes", container.allocated_bytes))
        values += [
            ("in_use", usage.in_use),
            ("snapshots", usage.snapshots),
            ("bitmaps", usage.bitmaps),
            *thin_values(usage),
        ]
        metrics += [_metric(name, value, labels) for name, value in values]
    check = record.check
    if check is not None:
        metrics += [_metric(name, getattr(check, name), labels) for name in CHECK_METRICS]
    metrics.append(_metric("health", record.health.state, labels))
    # One series per rule: two reasons of the same rule (rare) report the worse state.
    by_rule: dict[str, State] = {}
    for reason in record.health.reasons:
        by_rule[reason.rule] = max(by_rule.get(reason.rule, State.OK), reason.state)
    metrics += [_metric(HEALTH_REASON_METRIC, state, (*labels, ("rule", rule)))
                for rule, state in sorted(by_rule.items())]
    metrics.append(_metric("scrape_error", record.error is not None, labels))
    metrics.append(_metric(INFO_METRIC, 1, info_labels(record)))
    return metrics


@frozen_record
class FilesystemFigures:
    """One filesystem holding image files, and the top images reported on it."""

    mountpoint: str
    size: int
    free: int
    end_offsets: int  # summed end_offset: the live figure where it is ahead
    virtual_sizes: int
    images: int

    @property
    def overcommit_ratio(self) -> float:
        return self.virtual_sizes / self.size if self.size else 0.0


def filesystems(collection: Collection) -> list[FilesystemFigures]:
    """Per filesystem (mount point): its size and free space, and the summed end offsets (live
    when ahead) and virtual sizes of the top images (depth 0) on it, sorted by mount point.
    Backing layers are not summed: they never grow, and --chain must not change the figures.
    Only the images of `collection` are summed: the figures depend on the targets given."""
    found: dict[str, FilesystemFigures] = {}
    for record in collection.records:
        usage = record.usage
        if usage is None or record.depth or usage.container.filesystem is None:
            continue
        container = usage.container
        mount = container.filesystem
        assert mount is not None
        before = found.get(mount, FilesystemFigures(mount, container.size, container.headroom,
                                                    0, 0, 0))
        found[mount] = replace(
            before,
            end_offsets=before.end_offsets + usage.end_offset,
            virtual_sizes=before.virtual_sizes + usage.virtual_size,
            images=before.images + 1,
        )
    return [found[mount] for mount in sorted(found)]


def filesystem_metrics(figures: FilesystemFigures) -> list[Metric]:
    labels: Labels = ((FILESYSTEM_LABEL, printable(figures.mountpoint)),)
    return [_metric(name, value, labels) for name, value in (
        ("filesystem_size_bytes", figures.size),
        ("filesystem_free_bytes", figures.free),
        ("filesystem_end_offset_bytes", figures.end_offsets),
        ("filesystem_virtual_size_bytes", figures.virtual_sizes),
        ("filesystem_overcommit_ratio", figures.overcommit_ratio),
    )]


def collection_metrics(collection: Collection) -> list[Metric]:
    """Metrics about the run itself (no labels)."""
    return [
        _metric("collector_duration_seconds", collection.duration_seconds, ()),
        _metric("last_success_timestamp_seconds", collection.timestamp, ()),
        _metric("images", sum(record.is_image for record in collection.records), ()),
    ]


def failure_line(record: ImageRecord) -> Optional[str]:
    """Why a record failed, on one printable line (a file name may hold a newline) for logs
    and string fields; None when it did not fail."""
    if record.error is None:
        return None
    return printable(str(record.error))
