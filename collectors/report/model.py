"""The one result model: what the core found and what a run collected, as value types in base
units (bytes, seconds, ratios 0..1) with enums for every status and state, and the keys of their
JSON (common/jsonform.py writes any of them). Every room fills these in and every front end reads
them; it imports nothing of the project but common/ (tests/test_architecture.py). Statuses are
str enums valued as the README documents them; the health state is numbered as Nagios's."""

from __future__ import annotations

from ..common.enums import IntEnum, TextEnum
from ..common.errors import Qcow2Error
from ..common.jsonform import JsonKey, omit_falsy, omit_none
from ..common.record import field, frozen_record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import ClassVar, Optional

# Backing-chain depth limit used everywhere (usage, info, measure, adapters).
DEFAULT_MAX_DEPTH = 32


class LayerStatus(TextEnum):
    """Status of one backing-chain layer (the README's `backing_chain` `status` values)."""

    OK = "ok"
    MISSING = "missing"
    LOOP = "loop"
    PROTOCOL = "protocol"  # json:, nbd:, ... reported, never interpreted
    TOO_DEEP = "too-deep"
    NOT_QCOW2 = "not-qcow2"  # declared qcow2 but is not: qemu cannot open the chain
    OTHER_FORMAT = "other-format"  # declared raw/other, or not qcow2 (probed as raw): as is
    INVALID_NAME = "invalid-name"  # the name cannot be a path (e.g. a NUL byte): not opened
    ERROR = "error"
    # An image above a broken layer (qemu cannot open it): "backing-" and that layer's status.
    BACKING_MISSING, BACKING_LOOP = "backing-missing", "backing-loop"
    BACKING_NOT_QCOW2, BACKING_ERROR = "backing-not-qcow2", "backing-error"


class ContainerKind(TextEnum):
    FILE = "file"
    BLOCK = "block"


class EndOffsetSource(TextEnum):
    """Where an end offset comes from."""

    REFCOUNTS = "refcounts"  # fast path: highest nonzero on-disk refcount
    CHECK = "check"  # full metadata walk (refcounts untrusted)
    LIVE = "live"  # a running qemu has written past the on-disk figure (host/live.py)


class LiveSource(TextEnum):
    """Which live source said what a running qemu has written."""

    LIBVIRT = "libvirt"
    QMP = "qmp"


class Severity(TextEnum):
    """Finding severities of the full check."""

    CORRUPTION = "corruption"
    LEAK = "leak"
    CHECK_ERROR = "check-error"


class TableName(TextEnum):
    """The metadata tables a finding can be located in (Place.table)."""

    HEADER = "header"
    L1 = "l1"
    L2 = "l2"
    REFCOUNT_TABLE = "refcount-table"
    REFCOUNT_BLOCK = "refcount-block"
    SNAPSHOTS = "snapshot-table"
    BITMAP = "bitmap-table"


class State(IntEnum):
    """A health state, numbered and named as Nagios numbers and names them."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3  # could not look

    def __str__(self) -> str:
        return str(int(self))


# --- usage and the backing chain -------------------------------------------------------------

class PauseReason(TextEnum):
    """Why a VM is paused, as one disk sees it (README `pause_reason`; mapped in host/pause.py)."""

    NOSPACE, IOERROR, OTHER_DISK = "nospace", "ioerror", "other-disk"  # an I/O error stopped it
    UNKNOWN, USER, MIGRATION, SAVE, DUMP = "unknown", "user", "migration", "save", "dump"
    WATCHDOG, FROM_SNAPSHOT, SHUTTING_DOWN = "watchdog", "from-snapshot", "shutting-down"
    SNAPSHOT, CRASHED, STARTING_UP = "snapshot", "crashed", "starting-up"
    POSTCOPY, POSTCOPY_FAILED, API_ERROR = "postcopy", "postcopy-failed", "api-error"
    PANICKED, INTERNAL_ERROR, DEBUG, COLO = "panicked", "internal-error", "debug", "colo"  # QMP's


@frozen_record
class Pause:
    """A paused VM, as it concerns one of its disks."""

    domain: str  # libvirt domain, or "qemu PID"
    disk: str  # this disk's target (vda, vda[2]) or QMP node name
    reason: PauseReason
    error_disk: Optional[str] = None  # other-disk: the disk whose error paused the VM
    resume: str = ""  # the command that resumes the VM once the cause is gone


@frozen_record
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


@frozen_record
class Growth:
    """How fast an image grows, from the samples of earlier runs (collectors.report.growth)."""

    bytes_per_second: Optional[float]  # least-squares slope of end_offset; None: too little
    time_to_full: Optional[float]  # seconds until the headroom is gone; None: not growing
    samples: int  # samples in the window, this run's included
    span: float  # seconds between the first and the last of them
    note: Optional[str] = None  # a reset, or a state file that could not be used


@frozen_record
class Container:
    """Where an image lives and how far it can grow there."""

    kind: ContainerKind
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


@frozen_record
class ImageUsage:
    """The fast usage figures of one qcow2 image."""

    filename: str
    image_end_offset: int  # the on-disk figure (= qemu-img check)
    image_end_offset_source: EndOffsetSource  # REFCOUNTS or CHECK
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
    # covers the image; domain and disk name where it came from (host/live.py).
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
    def pause_reason(self) -> Optional[PauseReason]:
        return self.pause.reason if self.pause is not None else None

    # The keys of `qcow2-analyze usage --output json`, in its order (README, "Figures
    # reported by usage").
    JSON: ClassVar[tuple[JsonKey, ...]] = (
        JsonKey("filename"), JsonKey("image_end_offset"), JsonKey("image_end_offset_source"),
        JsonKey("live_end_offset"), JsonKey("end_offset"), JsonKey("end_offset_source"),
        JsonKey("domain"), JsonKey("disk"), JsonKey("container_type", "container.kind"),
        JsonKey("container_size", "container.size"),
        JsonKey("container_length", "container.length"),
        JsonKey("headroom", "container.headroom"), JsonKey("usage_ratio"),
        JsonKey("fully_allocated_size"), JsonKey("virtual_size"), JsonKey("cluster_size"),
        JsonKey("qcow_version"), JsonKey("in_use"), JsonKey("dirty"), JsonKey("corrupt"),
        JsonKey("lazy_refcounts"), JsonKey("refcounts_trusted"), JsonKey("encrypted"),
        JsonKey("backing_filename"), JsonKey("backing_format"), JsonKey("external_data_file"),
        JsonKey("snapshots"), JsonKey("bitmaps"),
        # Thin provisioning (null where not known or not due).
        JsonKey("paused"), JsonKey("pause_reason"),
        JsonKey("free_below_end_bytes", "free_below_end"),
        *(JsonKey(f"{key}_bytes", f"extension.{key}") for key in ("extend_by", "extend_to")),
        JsonKey("extend_command", "extension.command"),
        JsonKey("growth_bytes_per_second", "growth.bytes_per_second"),
        JsonKey("time_to_full_seconds", "growth.time_to_full"), JsonKey("notes"),
        JsonKey("allocated_bytes", "container.allocated_bytes", omit=omit_none),
    )

    @property
    def end_offset(self) -> int:
        """How far the image really reaches: the larger of the on-disk and the live figure."""
        return max(self.image_end_offset, self.live_end_offset or 0)

    @property
    def end_offset_source(self) -> EndOffsetSource:
        """LIVE when the live figure is ahead, else where image_end_offset came from."""
        if self.live_end_offset is not None and self.live_end_offset > self.image_end_offset:
            return EndOffsetSource.LIVE
        return self.image_end_offset_source


@frozen_record
class ChainLayer:
    """One layer of a backing chain: a backing layer (depth >= 1) below a top image, or the top
    image itself (depth 0) as the chain walker reports it."""

    depth: int
    name: str  # as written in the image above
    path: Optional[str]  # resolved path, None for protocols
    status: LayerStatus
    format: Optional[str]  # backing format named by the layer above, if any
    usage: Optional[ImageUsage] = None
    error: Optional[Qcow2Error] = None

    # A `backing_chain` entry of `usage`: the layer, its figures (qcow2 layers), its error.
    JSON: ClassVar[tuple[JsonKey, ...]] = (
        JsonKey("depth"), JsonKey("name"), JsonKey("path"), JsonKey("status"),
        JsonKey("format"), JsonKey("usage", omit=omit_none, flatten=True),
        JsonKey("error", omit=omit_none),
    )

    @property
    def filename(self) -> str:
        """The layer's file as errors name it: its resolved path, else its name."""
        return self.path or self.name

    @property
    def is_raw(self) -> bool:
        """A present layer that qemu reads as raw (declared raw, or probed as raw)."""
        return self.status == LayerStatus.OTHER_FORMAT and self.format == "raw" \
            and self.path is not None


@frozen_record
class UsageResult:
    """The outcome for one target: usage of the top image plus its backing chain, or an error."""

    target: str
    usage: Optional[ImageUsage]
    chain: tuple[ChainLayer, ...] = ()
    error: Optional[Qcow2Error] = None


# --- the full check --------------------------------------------------------------------------

@frozen_record
class Place:
    """One entry (or, without `entry`, one whole table) of the metadata a finding is at: the
    structured twin of a finding's `location` text."""

    table: TableName
    table_offset: Optional[int] = None  # host offset of the table
    entry: Optional[int] = None  # index of the entry in the table
    l1_index: Optional[int] = None  # the L1 entry (of an L1 entry, or of an L2 table's)
    guest_offset: Optional[int] = None  # first guest byte the entry maps
    snapshot: Optional[str] = None  # snapshot id, when the table is a snapshot's
    refcount_table_offset: Optional[int] = None  # for refcount table and block entries

    # `places` of a finding in `check --output json`: those that apply.
    JSON: ClassVar[tuple[JsonKey, ...]] = tuple(JsonKey(name, omit=omit_none) for name in (
        "table", "table-offset", "entry", "l1-index", "guest-offset", "snapshot",
        "refcount-table-offset"))


def _omit_unset(value: object) -> bool:
    return value is None or value == ""


@frozen_record
class Finding:
    """One problem found by the full check, located precisely."""

    kind: str  # e.g. "refcount-too-low", "leak", "copied-flag", "unaligned-l2-offset"
    severity: Severity
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

    # A finding in `check --output json`: `location` for people, `places` the same entries
    # structured; what does not apply is left out.
    JSON: ClassVar[tuple[JsonKey, ...]] = (
        *(JsonKey(name, omit=_omit_unset) for name in (
            "kind", "severity", "message", "location", "host-offset", "cluster-index",
            "expected", "found", "advice")),
        JsonKey("unconfirmed", omit=omit_falsy),
        JsonKey("places", omit=omit_falsy),
    )


@frozen_record
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

    # qemu-img check --output=json (check-errors always, the other figures only when nonzero:
    # qemu's has_* rules), then our findings. `filename` and `format` come first, from the
    # front end (the file as named on its command line).
    JSON: ClassVar[tuple[JsonKey, ...]] = (
        JsonKey("check-errors"),
        *(JsonKey(name, omit=omit_falsy) for name in (
            "image-end-offset", "corruptions", "leaks", "total-clusters",
            "allocated-clusters", "fragmented-clusters", "compressed-clusters")),
        # Ours: findings an image held for writing left unsettled (collectors/check/settle.py).
        JsonKey("unconfirmed", omit=omit_falsy),
        JsonKey("findings-total"), JsonKey("findings"), JsonKey("notes", omit=omit_falsy),
    )


# --- health ----------------------------------------------------------------------------------

@frozen_record
class Reason:
    """One health rule that applied to an image, the state the policy gives it, and why."""

    rule: str  # a rule of the policy (report/health.py RULES)
    state: State
    text: str


@frozen_record
class Health:
    """The verdict on one image: its state and every rule that applied (OK ones are notes)."""

    state: State
    reasons: tuple[Reason, ...] = ()

    @property
    def problems(self) -> tuple[Reason, ...]:
        return tuple(reason for reason in self.reasons if reason.state != State.OK)

    @property
    def notes(self) -> tuple[Reason, ...]:
        return tuple(reason for reason in self.reasons if reason.state == State.OK)


HEALTHY = Health(State.OK)


# --- where images come from: targets and live sources ---------------------------------------

@frozen_record
class Target:
    """One image to analyse, or the reason a spec yielded none (host/discovery.py)."""

    spec: str  # as given by the user (or the path, for running images)
    path: Optional[str]
    error: Optional[Qcow2Error] = None


@frozen_record
class LiveDisk:
    """One image as a running qemu sees it (host/live.py)."""

    path: str  # as the source names it
    end_offset: int  # highest byte qemu has written to the image's storage node
    domain: str  # libvirt domain name, or "qemu PID" for QMP
    disk: str  # libvirt target (sda, vda[2] for a backing layer), or the QMP node name
    source: LiveSource
    pause: Optional[Pause] = None  # the VM is paused (host/pause.py)


# --- one run ---------------------------------------------------------------------------------

# The `path` of the record about qemu processes --running could not inspect: not a path (no
# file can be named so by the scan), and not an image (qcow2_images does not count it).
RUNNING_PROCESSES = "(running qemu processes)"


@frozen_record
class ImageRecord:
    """One analysed image: a target (depth 0) or one of its backing layers (depth >= 1)."""

    target: str  # the spec that led here
    path: Optional[str]  # as reached (the user's name, a /proc link, a resolved backing name)
    depth: int
    usage: Optional[ImageUsage]
    check: Optional[CheckResult]
    error: Optional[Qcow2Error]
    status: LayerStatus = LayerStatus.OK  # its own; BACKING_* above a broken layer
    name: Optional[str] = None  # backing file name as written in the layer above
    canonical: Optional[str] = None  # identity.canonical_path(path)
    layer: Optional[ChainLayer] = None  # the chain layer this record reports (depth >= 1)
    broken_below: Optional[ChainLayer] = None  # first broken layer under this image
    health: Health = HEALTHY
    source: bool = False  # a failed live source (a --qmp socket), not an image

    @property
    def label_path(self) -> str:
        """The value of the `path` label: never empty, even for a glob that matched nothing."""
        return self.canonical or self.path or self.name or self.target

    @property
    def filename(self) -> str:
        """The file as the user reached it (a failed target: its spec)."""
        return self.path or self.target

    @property
    def is_image(self) -> bool:
        """False for the records about where images come from: qemu processes that could not
        be inspected, a QMP socket that did not answer."""
        return not self.source and not (self.path is None and self.target == RUNNING_PROCESSES)


@frozen_record
class Collection:
    """Everything one collector run found."""

    records: tuple[ImageRecord, ...]
    duration_seconds: float
    timestamp: float  # Unix time at the end of the run
    notes: tuple[str, ...] = ()  # about the run, e.g. images whose figures may lag
    libvirt_note: Optional[str] = None  # why libvirt gave no live figures, when it did not

    @property
    def failed(self) -> tuple[ImageRecord, ...]:
        return tuple(r for r in self.records if r.error is not None)
