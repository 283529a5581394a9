"""One neutral metric model that every adapter renders (Nagios, Telegraf, node_exporter).

The core's result model (:mod:`collectors.model`) says what an image *is*; this module decides,
once, what is *exported* about it: metric names, units, help texts and labels. Adapters only
change syntax (Prometheus prefixes ``qcow2_``, Telegraf turns metrics into fields of one line),
so a series means the same thing whichever agent collected it.

Collecting the records is :mod:`collectors.collect`'s job. Kept light on purpose: the Nagios
plugin imports this module on every check, so it imports no numpy, psutil, jinja2 or
prometheus_client.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import NamedTuple, Optional, Union

from .errors import Qcow2Error
from .model import (
    LAYER_ERROR,
    LAYER_OK,
    CheckResult,
    ImageUsage,
)

Labels = tuple[tuple[str, str], ...]
MetricValue = Union[bool, int, float]

UNIT_BYTES = "bytes"
UNIT_RATIO = "ratio"
UNIT_SECONDS = "seconds"
UNIT_NONE = ""

# The figures of the full check (CheckResult fields, same names as metrics), in report order.
CHECK_METRICS = (
    "check_errors",
    "corruptions",
    "leaks",
    "total_clusters",
    "allocated_clusters",
    "fragmented_clusters",
    "compressed_clusters",
)

GAUGE = "gauge"
COUNTER = "counter"

# Python type every value of a metric has, so that no field ever changes type between runs or
# targets (InfluxDB fixes a field's type at its first write and rejects the other type after).
_BOOL, _INT, _FLOAT = bool, int, float


class MetricSpec(NamedTuple):
    unit: str
    help: str
    value_type: type
    type: str = GAUGE


# Every exported metric, declared once: name -> unit, help, value type. Names carry their unit
# suffix already so that they read the same in Prometheus and InfluxDB.
METRICS: dict[str, MetricSpec] = {
    "image_end_offset_bytes": MetricSpec(
        UNIT_BYTES,
        "Host offset just past the last cluster the image uses (qemu-img check 'Image end "
        "offset'): how much of its container the image occupies.",
        _INT,
    ),
    "container_size_bytes": MetricSpec(
        UNIT_BYTES,
        "Size the image can grow to in its container: the block device size, or the file "
        "size plus the free space of its filesystem.",
        _INT,
    ),
    "headroom_bytes": MetricSpec(
        UNIT_BYTES,
        "Bytes the image can still grow before its container is full (device size minus "
        "image end offset, or free space of the filesystem holding the file).",
        _INT,
    ),
    "usage_ratio": MetricSpec(
        UNIT_RATIO, "Image end offset divided by container size (0..1).", _FLOAT
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
        UNIT_NONE, "1 if a running qemu holds the image's write lock, else 0.", _BOOL
    ),
    "dirty": MetricSpec(
        UNIT_NONE,
        "1 if the dirty bit is set (lazy refcounts not flushed; refcounts need a repair "
        "if no qemu has the image open), else 0.",
        _BOOL,
    ),
    "corrupt": MetricSpec(
        UNIT_NONE, "1 if qemu has marked the image corrupt (incompatible bit 1), else 0.", _BOOL
    ),
    "refcounts_trusted": MetricSpec(
        UNIT_NONE,
        "1 if the image end offset was taken from the refcount table, 0 if the refcounts "
        "could not be trusted and all metadata was walked instead.",
        _BOOL,
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
    "total_clusters": MetricSpec(
        UNIT_NONE, "Clusters of the virtual disk (qemu-img check total-clusters).", _INT
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
    "scrape_error": MetricSpec(
        UNIT_NONE, "1 if this image (or its check) could not be analysed, else 0.", _INT
    ),
    "image_info": MetricSpec(
        UNIT_NONE, "Descriptive labels of an image; the value is always 1.", _INT
    ),
    "collector_duration_seconds": MetricSpec(
        UNIT_SECONDS, "Time the collector took to analyse all images.", _FLOAT
    ),
    "last_success_timestamp_seconds": MetricSpec(
        UNIT_SECONDS, "Unix time the collector last completed a run.", _FLOAT
    ),
    "images": MetricSpec(UNIT_NONE, "Images (and backing layers) reported by this run.", _INT),
}

INFO_METRIC = "image_info"


@dataclass(frozen=True)
class Metric:
    """One value of one image (or of the collector run), in base units."""

    name: str
    value: MetricValue
    unit: str
    labels: Labels
    help: str
    type: str = GAUGE


@dataclass(frozen=True)
class ImageRecord:
    """One analysed image: a target (depth 0) or one of its backing layers (depth >= 1)."""

    target: str  # the spec that led here
    path: Optional[str]
    depth: int
    usage: Optional[ImageUsage]
    check: Optional[CheckResult]
    error: Optional[Qcow2Error]
    status: str = LAYER_OK  # model.LAYER_*; layers only, targets are "ok" or have `error`
    name: Optional[str] = None  # backing file name as written in the layer above

    @property
    def label_path(self) -> str:
        """The value of the `path` label: never empty, even for a glob that matched nothing."""
        return self.path or self.name or self.target

    @property
    def identity(self) -> Labels:
        """The labels every per-image metric carries: what identifies its series."""
        return (("depth", str(self.depth)), ("path", valid_utf8(self.label_path)))


@dataclass(frozen=True)
class Collection:
    """Everything one collector run found."""

    records: tuple[ImageRecord, ...]
    duration_seconds: float
    timestamp: float  # Unix time at the end of the run

    @property
    def failed(self) -> tuple[ImageRecord, ...]:
        return tuple(r for r in self.records if r.error is not None)


def _metric(name: str, value: MetricValue, labels: Labels) -> Metric:
    spec = METRICS[name]
    # Coerce once here so every adapter sees the declared type (a ratio of exactly 1 stays 1.0).
    return Metric(name, spec.value_type(value), spec.unit, labels, spec.help, spec.type)


def valid_utf8(text: str) -> str:
    """`text` as valid UTF-8: undecodable bytes of a file name (surrogate escapes) become U+FFFD,
    a NUL byte (possible in a backing name read from an image) the four characters \\x00.

    Python keeps undecodable file-name bytes as lone surrogates, which cannot be encoded at
    all; line protocol and the Prometheus text format both require UTF-8.
    """
    if "\0" in text:
        text = text.replace("\0", "\\x00")
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return text


def _bool_label(value: bool) -> str:
    return "true" if value else "false"


def info_labels(record: ImageRecord) -> Labels:
    """Descriptive labels of an image (identity labels included), sorted, no empty values."""
    labels: dict[str, Optional[str]] = dict(record.identity)
    labels["status"] = record.status if record.error is None else LAYER_ERROR
    if record.depth > 0:
        labels["backing_name"] = record.name
    usage = record.usage
    if usage is not None:
        labels.update(
            filename=os.path.basename(usage.filename),  # the short name dashboards show
            container=usage.container.kind,
            qcow_version=str(usage.qcow_version),
            cluster_size=str(usage.cluster_size),
            backing_file=usage.backing_filename,
            backing_format=usage.backing_format,
            data_file=usage.external_data_file,
            encrypted=_bool_label(usage.encrypted),
            lazy_refcounts=_bool_label(usage.lazy_refcounts),
            end_offset_source=usage.image_end_offset_source,
        )
    # Empty label values are dropped: Prometheus treats them as absent, line protocol forbids them.
    return tuple(sorted((k, valid_utf8(v)) for k, v in labels.items() if v))


def image_metrics(record: ImageRecord) -> list[Metric]:
    """The metrics of one record, with the same names and labels in every adapter."""
    labels = record.identity
    metrics: list[Metric] = []
    usage = record.usage
    if usage is not None:
        container = usage.container
        values: list[tuple[str, MetricValue]] = [
            ("image_end_offset_bytes", usage.image_end_offset),
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
            ("dirty", usage.dirty),
            ("corrupt", usage.corrupt),
            ("refcounts_trusted", usage.refcounts_trusted),
            ("snapshots", usage.snapshots),
            ("bitmaps", usage.bitmaps),
        ]
        metrics += [_metric(name, value, labels) for name, value in values]
    check = record.check
    if check is not None:
        metrics += [_metric(name, getattr(check, name), labels) for name in CHECK_METRICS]
    metrics.append(_metric("scrape_error", record.error is not None, labels))
    metrics.append(_metric(INFO_METRIC, 1, info_labels(record)))
    return metrics


def collection_metrics(collection: Collection) -> list[Metric]:
    """Metrics about the run itself (no labels)."""
    return [
        _metric("collector_duration_seconds", collection.duration_seconds, ()),
        _metric("last_success_timestamp_seconds", collection.timestamp, ()),
        _metric("images", len(collection.records), ()),
    ]


def error_text(record: ImageRecord) -> Optional[str]:
    """One line describing why a record failed (for logs and string fields), or None."""
    if record.error is None:
        return None
    # One line for log collectors: a file name may contain newlines.
    return valid_utf8(str(record.error)).replace("\n", "\\n").replace("\r", "\\r")


# --- sizes ----------------------------------------------------------------------------------

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgtpe]?)(i?b?)\s*$", re.IGNORECASE)
_SIZE_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}


def parse_size(text: str) -> int:
    """Parse "10GiB", "512M", "1.5T", "4096" into bytes.

    As qemu-img does, every suffix is a power of 1024 whether written K, KB or KiB: one
    convention for a tool whose users type qemu-img sizes. Fractions round down to a byte.
    Raises ValueError with the offending text.
    """
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError(f"invalid size {text!r} (expected e.g. 512M, 10GiB, 1.5T)")
    number, prefix, suffix = match.groups()
    if suffix.lower() in ("i", "ib") and not prefix:
        raise ValueError(f"invalid size {text!r}: 'i' needs a prefix such as Ki or Mi")
    try:
        amount = Decimal(number) * (1024 ** _SIZE_POWERS[prefix.lower()])
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only decimals
        raise ValueError(f"invalid size {text!r}") from exc
    return int(amount)

