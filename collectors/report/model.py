"""The neutral result model: what the core found, in base units (bytes, seconds, ratios 0..1).

Adapters (nagios/, telegraf/, node_exporter_textfile/) read only these types (through
:mod:`collectors.metrics`); the core never imports an adapter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..common.errors import Qcow2Error

# Backing-chain depth limit used everywhere (usage, info, measure, adapters).
DEFAULT_MAX_DEPTH = 32

CONTAINER_FILE = "file"
CONTAINER_BLOCK = "block"

SOURCE_REFCOUNTS = "refcounts"  # fast path: highest nonzero on-disk refcount
SOURCE_CHECK = "check"  # full metadata walk (refcounts untrusted)
SOURCE_LIVE = "live"  # a running qemu has written past the on-disk figure (collectors.live)

# Status of one backing-chain layer.
LAYER_OK = "ok"
LAYER_MISSING = "missing"
LAYER_LOOP = "loop"
LAYER_PROTOCOL = "protocol"  # json:, nbd:, ... reported, never interpreted
LAYER_TOO_DEEP = "too-deep"
LAYER_NOT_QCOW2 = "not-qcow2"  # declared qcow2 but is not: qemu cannot open the chain
LAYER_OTHER_FORMAT = "other-format"  # declared raw (or other), or undeclared non-qcow2 (qemu
# probes it as raw): present, reported, not analysed
LAYER_ERROR = "error"
LAYER_INVALID_NAME = "invalid-name"  # the name cannot be a path (e.g. a NUL byte): not opened


# Why a running VM is paused, as it concerns one of its disks (collectors.host.pause).
PAUSE_NOSPACE = "nospace"
PAUSE_IOERROR = "ioerror"
PAUSE_OTHER_DISK = "other-disk"
PAUSE_USER = "user"
PAUSE_UNKNOWN = "unknown"
# The reasons that mean an I/O error stopped the VM (the others are no problem of a disk).
IO_PAUSES = frozenset({PAUSE_NOSPACE, PAUSE_IOERROR, PAUSE_OTHER_DISK})

@dataclass(frozen=True)
class Pause:
    """A paused VM, as it concerns one of its disks."""

    domain: str  # libvirt domain, or "qemu PID"
    disk: str  # this disk's target (vda, vda[2]) or QMP node name
    reason: str  # PAUSE_* or the VM's own reason in libvirt's words
    error_disk: Optional[str] = None  # other-disk: the disk whose error paused the VM
    resume: str = ""  # the command that resumes the VM once the cause is gone

    @property
    def io_error(self) -> bool:
        return self.reason in IO_PAUSES


@dataclass(frozen=True)
class Extension:
    """Advice to extend a thin block volume (collectors.report.extend): its headroom fell below
    the watermark chunk x (100 - utilization%) / 100 (oVirt/VDSM's policy)."""

    watermark: int  # bytes of headroom below which the volume should be extended
    chunk: int  # what one extension adds
    extend_by: int  # bytes to add: chunk, rounded up to the granularity
    extend_to: int  # the new device size
    granularity: int  # LVM extent size, else 1 MiB
    volume: Optional[str] = None  # VG/LV of an LVM volume
    command: Optional[str] = None  # lvextend -L +1G VG/LV
    vg_free: Optional[int] = None  # free space of the VG, when vgs told
    vg_needed: Optional[int] = None  # what every advised volume of the VG needs together
    note: Optional[str] = None  # why the granularity or the VG's free space is unknown

    @property
    def vg_short(self) -> bool:
        """The VG itself cannot cover the extensions advised for its volumes."""
        return self.vg_free is not None and self.vg_needed is not None \
            and self.vg_needed > self.vg_free


@dataclass(frozen=True)
class Growth:
    """How fast an image grows, from the samples of earlier runs (collectors.report.growth)."""

    bytes_per_second: Optional[float]  # least-squares slope of end_offset; None: too little
    time_to_full: Optional[float]  # seconds until the headroom is gone; None: not growing
    samples: int  # samples in the window, this run's included
    span: float  # seconds between the first and the last of them
    note: Optional[str] = None  # a reset, or a state file that could not be used


@dataclass(frozen=True)
class Container:
    """Where an image lives and how far it can grow there."""

    kind: str  # CONTAINER_FILE or CONTAINER_BLOCK
    size: int  # block: device size; file: its filesystem's used + available (as df's Use%)
    headroom: int  # block: size - end_offset (ImageUsage); file: free space of its filesystem
    length: int  # length of the file or device itself
    allocated_bytes: Optional[int]  # files: st_blocks * 512; None for block devices
    used: int = 0  # block: image end offset; file: bytes used on its filesystem (df's Used)
    filesystem: Optional[str] = None  # files: mount point of their filesystem

    @property
    def usage_ratio(self) -> float:
        """How full the container is (0..1): used / size."""
        return self.used / self.size if self.size else 1.0


@dataclass(frozen=True)
class ImageUsage:
    """The fast usage figures of one qcow2 image."""

    filename: str
    image_end_offset: int  # the on-disk figure (= qemu-img check)
    image_end_offset_source: str  # SOURCE_REFCOUNTS or SOURCE_CHECK
    container: Container  # headroom of a block device counts from end_offset
    usage_ratio: float  # container.usage_ratio: block end_offset / size; file: filesystem use
    fully_allocated_size: int  # bytes the container needs so the image can never outgrow it
    virtual_size: int
    cluster_size: int
    qcow_version: int
    in_use: bool  # a running qemu holds the write permission lock (byte 101)
    dirty: bool
    corrupt: bool
    lazy_refcounts: bool
    refcounts_trusted: bool
    encrypted: bool
    backing_filename: Optional[str]  # as written in the image
    backing_format: Optional[str]
    external_data_file: Optional[str]
    snapshots: int
    bitmaps: int
    notes: tuple[str, ...] = ()
    # What a running qemu has really written (its wr_highest_offset), None when no live source
    # covers the image; domain and disk name where it came from (collectors.live).
    live_end_offset: Optional[int] = None
    domain: Optional[str] = None
    disk: Optional[str] = None
    pause: Optional[Pause] = None  # the VM using the image is paused, and why
    free_below_end: Optional[int] = None  # zero-refcount clusters below the end, in bytes
    extension: Optional[Extension] = None  # advice to extend its block volume now
    growth: Optional[Growth] = None  # growth rate and time to full

    @property
    def paused(self) -> bool:
        return self.pause is not None

    @property
    def pause_reason(self) -> Optional[str]:
        return self.pause.reason if self.pause is not None else None

    @property
    def end_offset(self) -> int:
        """How far the image really reaches: the larger of the on-disk and the live figure."""
        return max(self.image_end_offset, self.live_end_offset or 0)

    @property
    def end_offset_source(self) -> str:
        """SOURCE_LIVE when the live figure is ahead, else where image_end_offset came from."""
        if self.live_end_offset is not None and self.live_end_offset > self.image_end_offset:
            return SOURCE_LIVE
        return self.image_end_offset_source


@dataclass(frozen=True)
class ChainLayer:
    """One layer of a backing chain: a backing layer (depth >= 1) below a top image, or the top
    image itself (depth 0) as the chain walker reports it."""

    depth: int
    name: str  # as written in the image above
    path: Optional[str]  # resolved path, None for protocols
    status: str  # LAYER_*
    format: Optional[str]  # backing format named by the layer above, if any
    usage: Optional[ImageUsage] = None
    error: Optional[Qcow2Error] = None


@dataclass(frozen=True)
class UsageResult:
    """The outcome for one target: usage of the top image plus its backing chain, or an error."""

    target: str
    usage: Optional[ImageUsage]
    chain: tuple[ChainLayer, ...] = ()
    error: Optional[Qcow2Error] = None
    analyzed_chain: bool = True  # False: the layers were only opened (no usage figures)

    @property
    def reported_chain(self) -> tuple[ChainLayer, ...]:
        """The layers to show: all when analysed, else only those that are not plainly ok."""
        if self.analyzed_chain:
            return self.chain
        return tuple(layer for layer in self.chain if layer.status != LAYER_OK)

    @property
    def ok(self) -> bool:
        return self.error is None


# Finding severities of the full check (issue "The core, part 2").
SEVERITY_CORRUPTION = "corruption"
SEVERITY_LEAK = "leak"
SEVERITY_CHECK_ERROR = "check-error"


# The metadata tables a finding can be located in (Place.table).
TABLE_HEADER = "header"
TABLE_L1 = "l1"
TABLE_L2 = "l2"
TABLE_REFCOUNT_TABLE = "refcount-table"
TABLE_REFCOUNT_BLOCK = "refcount-block"
TABLE_SNAPSHOTS = "snapshot-table"
TABLE_BITMAP = "bitmap-table"


@dataclass(frozen=True)
class Place:
    """One entry (or, without `entry`, one whole table) of the metadata a finding is at: the
    structured twin of a finding's `location` text."""

    table: str  # TABLE_*
    table_offset: Optional[int] = None  # host offset of the table
    entry: Optional[int] = None  # index of the entry in the table
    l1_index: Optional[int] = None  # the L1 entry (of an L1 entry, or of an L2 table's)
    guest_offset: Optional[int] = None  # first guest byte the entry maps
    snapshot: Optional[str] = None  # snapshot id, when the table is a snapshot's
    refcount_table_offset: Optional[int] = None  # for refcount table and block entries


@dataclass(frozen=True)
class Finding:
    """One problem found by the full check, located precisely."""

    kind: str  # e.g. "refcount-too-low", "leak", "copied-flag", "unaligned-l2-offset"
    severity: str  # SEVERITY_*
    message: str
    location: str  # e.g. "L1[3]", "L2 table at 0x50000 entry 12", "snapshot 1", "bitmap 'b0'"
    host_offset: Optional[int] = None
    cluster_index: Optional[int] = None
    expected: Optional[int] = None
    found: Optional[int] = None
    advice: str = ""
    places: tuple[Place, ...] = ()  # every entry `location` names, in its order
    # On an image a running qemu is writing: the finding did not hold still while it was read
    # again, or is a leak, which a write in flight also shows (collectors/check/settle.py).
    # Counted in CheckResult.unconfirmed, not in check_errors, corruptions or leaks.
    unconfirmed: bool = False


@dataclass(frozen=True)
class CheckResult:
    """Everything `qemu-img check` reports, with the same meaning, plus located findings."""

    filename: str
    check_errors: int
    corruptions: int
    leaks: int
    image_end_offset: int
    total_clusters: int
    allocated_clusters: int
    fragmented_clusters: int
    compressed_clusters: int
    findings: tuple[Finding, ...] = ()
    findings_total: int = 0  # complete count even when `findings` was truncated
    corrupt_bit: bool = False
    dirty_bit: bool = False
    notes: tuple[str, ...] = field(default=())
    # An image held for writing is read more than once (collectors/check/settle.py): what its
    # unconfirmed findings count (apart from the figures above), and how often it was read.
    unconfirmed: int = 0
    passes: int = 1

