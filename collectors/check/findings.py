"""The findings catalogue of the full check: every kind of problem with its severity, message
template and advice, the one place a :class:`~collectors.report.model.Finding` is built, and the
tally (qemu's BdrvCheckResult counters plus bounded lists of findings) the check fills."""

from __future__ import annotations

import string
from typing import Any, Callable, NamedTuple, Optional, Union

from ..common.units import counted
from ..report.model import Finding, Place, Severity

ADVICE_LEAK = (
    "Leaked clusters are harmless wasted space, no harm to data; `qemu-img check -r leaks` "
    "reclaims them offline (stop the VM first)."
)
ADVICE_REFCOUNT = (
    "Refcount error: take a backup, then run `qemu-img check -r all` on the stopped VM."
)
ADVICE_DATA = (
    "Cluster referenced twice or metadata overlap: guest data may be damaged; restore from "
    "backup (`qemu-img check -r all` only makes the refcounts consistent)."
)
ADVICE_METADATA = (
    "Damaged metadata entry: take a backup, then run `qemu-img check -r all` on the stopped VM; "
    "guest data behind this entry may be lost."
)
ADVICE_OVERFLOW = (
    "Refcount overflow: use `qemu-img amend -o refcount_bits=...` to widen refcounts, or "
    "`qemu-img convert` to a clean copy."
)
ADVICE_UNREADABLE = (
    "The refcount block cannot be used: take a backup, then run `qemu-img check -r all` on the "
    "stopped VM (it rebuilds the refcount structures)."
)


class Kind(NamedTuple):
    severity: Severity
    template: str  # format template over the finding's values ({n:counted noun}: plurals)
    advice: str


_C = Severity.CORRUPTION

# Every kind of finding, in the order qemu's check meets them.
CATALOGUE: dict[str, Kind] = {
    "snapshot-incomplete": Kind(
        _C, "snapshot table entry {index} is incomplete: {found} bytes of extra data, version "
        "3 needs {expected}", ADVICE_REFCOUNT),
    "reference-past-eof": Kind(
        _C, "{what} at 0x{host_offset:x} lies a cluster or more past the end of the file "
        "(length 0x{file_length:x})", ADVICE_METADATA),
    "copied-flag": Kind(
        _C, "OFLAG_COPIED {what}: {entry_name}={entry:x} refcount={found}", ADVICE_REFCOUNT),
    "l1-reserved-bits": Kind(
        _C, "L1 entry with reserved bits set: {entry:x}", ADVICE_METADATA),
    "unaligned-l2-offset": Kind(
        _C, "l2_offset={host_offset:x}: table is not cluster aligned; L1 entry corrupted",
        ADVICE_METADATA),
    "l2-reserved-bits": Kind(
        _C, "L2 entry with reserved bits set: {entry:x}", ADVICE_METADATA),
    "compressed-copied": Kind(
        _C, "coffset=0x{host_offset:x}: copied flag must never be set for compressed clusters",
        ADVICE_METADATA),
    "compressed-invalid": Kind(
        _C, "compressed cluster with {reason}, entry=0x{entry:x}", ADVICE_METADATA),
    "subcluster-bitmap": Kind(
        _C, "offset={host_offset:x}: allocated cluster has corrupted subcluster allocation "
        "bitmap 0x{found:016x} (subclusters both allocated and zero)", ADVICE_METADATA),
    "unaligned-data-offset": Kind(
        _C, "offset={host_offset:x}: {what} is not properly aligned; L2 entry corrupted",
        ADVICE_METADATA),
    "unallocated-subcluster-bitmap": Kind(
        _C, "unallocated cluster has non-zero subcluster allocation map 0x{found:016x}",
        ADVICE_METADATA),
    "snapshots-with-data-file": Kind(
        _C, "{found} snapshots in image with data file", ADVICE_METADATA),
    "snapshot-l1-unaligned": Kind(
        _C, "{snapshot} l1_offset=0x{host_offset:x}: L1 table is not cluster aligned; snapshot "
        "table entry corrupted", ADVICE_METADATA),
    "snapshot-l1-too-large": Kind(
        _C, "{snapshot} l1_size=0x{found:x}: L1 table is too large; snapshot table entry "
        "corrupted", ADVICE_METADATA),
    "refcount-table-reserved-bits": Kind(
        _C, "refcount table entry {index} has reserved bits set (0x{entry:x})",
        ADVICE_UNREADABLE),
    "unaligned-refcount-block": Kind(
        _C, "refcount block {index} at 0x{host_offset:x} is not cluster aligned; refcount "
        "table entry corrupted", ADVICE_UNREADABLE),
    "refcount-block-outside-image": Kind(
        _C, "refcount block {index} at 0x{host_offset:x} is outside the image (length "
        "0x{file_length:x})", ADVICE_UNREADABLE),
    "refcount-block-refcount": Kind(
        _C, "refcount block {index} at 0x{host_offset:x} refcount={found} (it must be "
        "referenced exactly once; it overlaps other metadata or data)", ADVICE_DATA),
    "refcount-overflow": Kind(
        _C, "overflow cluster offset=0x{host_offset:x}: {excess:counted reference} beyond the "
        "maximum refcount {found} of {refcount_bits}-bit refcounts", ADVICE_OVERFLOW),
    "refcount-unreadable": Kind(
        Severity.CHECK_ERROR, "can't get refcounts of clusters {first}..{last}: refcount block "
        "offset 0x{host_offset:x} is not cluster aligned or beyond what qemu can read",
        ADVICE_UNREADABLE),
    "refcount-too-low": Kind(
        _C, "ERROR cluster {cluster_index} refcount={found} reference={expected}",
        ADVICE_REFCOUNT),
    "leak": Kind(
        Severity.LEAK, "Leaked cluster {cluster_index} refcount={found} reference={expected}",
        ADVICE_LEAK),
}

# What a dirty lazy-refcounts image shows as long as qemu has not written its refcounts: the
# expected debt, not damage (collectors/check/checker.py, the health policy's `dirty` rule).
LAZY_DEBT_KINDS = frozenset({"refcount-too-low", "leak", "copied-flag"})

Value = Union[int, str, None]

# Kinds known by their cluster only until collectors/check/locate.py finds the entries that
# reference it.
RELOCATED_KINDS = ("refcount-too-low", "leak", "refcount-overflow")


class _Formatter(string.Formatter):
    """str.format plus the format spec `counted NOUN`: `{n:counted reference}` is
    "1 reference" or "2 references"."""

    def format_field(self, value: Any, format_spec: str) -> str:
        if format_spec.startswith("counted "):
            return counted(int(value), format_spec.removeprefix("counted "))
        return str(super().format_field(value, format_spec))


_FORMATTER = _Formatter()


def finding(kind: str, location: str, place: Optional[Place] = None, /, **values: Value
            ) -> Finding:
    """The finding of `kind` at `location` (`place`: the same, structured): its message is
    the kind's template filled with `values`; host_offset, cluster_index, expected and found
    are also kept as fields. An `advice` value overrides the kind's advice."""
    spec = CATALOGUE[kind]
    advice = values.pop("advice", None)
    return Finding(kind, spec.severity, _FORMATTER.format(spec.template, **values), location,
                   host_offset=_int(values.get("host_offset")),
                   cluster_index=_int(values.get("cluster_index")),
                   expected=_int(values.get("expected")), found=_int(values.get("found")),
                   advice=spec.advice if advice is None else str(advice),
                   places=() if place is None else (place,))


def _int(value: Value) -> Optional[int]:
    return value if isinstance(value, int) else None


# Whether a finding lies in the tables a view selects (check --snapshot): True, False, or None
# while it is not located yet (a refcount finding, known by its cluster until locate.py runs).
Keep = Callable[[Finding], Optional[bool]]


class Findings:
    """A bounded list of findings with a complete total. With `keep` (a view of some tables)
    the list holds only the findings kept: those it refuses are counted as `elsewhere`, those
    counted but never built (the list was full) as `unexamined`, within `total`."""

    def __init__(self, limit: int, keep: Optional[Keep] = None) -> None:
        self.limit = limit
        self.keep = keep
        self.items: list[Finding] = []
        # What each listed finding counts in qemu's figures: 1, or more for a finding in a
        # table named k times (ReferenceCounts.repeated), a refcount overflow (its excess
        # references) or an unreadable refcount block (one check error per cluster).
        self.weights: list[int] = []
        self.total = 0
        self.elsewhere = 0
        self.unexamined = 0

    @property
    def room(self) -> int:
        return max(0, self.limit - len(self.items))

    def add(self, item: Finding, weight: int = 1) -> None:
        verdict = None if self.keep is None else self.keep(item)
        if verdict is False:
            self.elsewhere += 1
            return
        self.total += 1
        if len(self.items) < self.limit:
            self.items.append(item)
            self.weights.append(weight)
        elif verdict is None and self.keep is not None:
            self.unexamined += 1  # full: where it lies is never looked up

    def multiply_since(self, listed: int, times: int) -> None:
        """The findings listed after the first `listed` count `times` times each."""
        self.weights[listed:] = [weight * times for weight in self.weights[listed:]]

    def count(self, n: int) -> None:
        """Findings counted but not built (the list is already full)."""
        self.total += n
        if self.keep is not None:
            self.unexamined += n

    def mark(self) -> tuple[int, int, int]:
        return self.total, self.elsewhere, self.unexamined

    def repeat(self, mark: tuple[int, int, int], times: int) -> None:
        """What was added since `mark` happened `times` times: the copies are counted, not
        listed, each where its original went (in the view, elsewhere, or not examined)."""
        total, elsewhere, unexamined = mark
        self.total += (self.total - total) * (times - 1)
        self.elsewhere += (self.elsewhere - elsewhere) * (times - 1)
        self.unexamined += (self.unexamined - unexamined) * (times - 1)

    def settle(self) -> None:
        """After location: the findings now placed outside the view leave the list."""
        if self.keep is None:
            return
        kept = [k for k, f in enumerate(self.items) if self.keep(f)]
        self.elsewhere += len(self.items) - len(kept)
        self.total -= len(self.items) - len(kept)
        self.items = [self.items[k] for k in kept]
        self.weights = [self.weights[k] for k in kept]


class Tally:
    """What the check has found so far: qemu's BdrvCheckResult counters and the findings,
    kept apart by the pass that found them so that they are reported in qemu's order."""

    def __init__(self, max_findings: int, keep: Optional[Keep] = None) -> None:
        self.corruptions = 0
        self.leaks = 0
        self.check_errors = 0
        self.allocated = 0
        self.fragmented = 0
        self.compressed = 0
        self.snapshots = Findings(max_findings, keep)  # qcow2_check_read_snapshot_table()
        self.structure = Findings(max_findings, keep)  # calculate_refcounts()
        self.compare = Findings(max_findings, keep)  # compare_refcounts()
        self.copied = Findings(max_findings, keep)  # check_oflag_copied()

    def corruption(self, kind: str, location: str, place: Optional[Place] = None, /,
                   **values: Value) -> None:
        """One corruption found while counting references, with its finding."""
        self.corruptions += 1
        if self.structure.room:
            self.structure.add(finding(kind, location, place, **values))
        else:
            self.structure.count(1)  # nothing built: a hostile table may hold millions

    def _parts(self) -> tuple[Findings, ...]:
        return (self.snapshots, self.structure, self.compare, self.copied)

    def ordered(self) -> tuple[list[Finding], int]:
        """Every finding kept, in qemu's order, and the complete total (with a view: of those
        examined and kept)."""
        parts = self._parts()
        return ([f for part in parts for f in part.items],
                sum(part.total - part.unexamined for part in parts))

    def outside(self) -> tuple[int, int]:
        """With a view: (findings placed outside it, findings never examined)."""
        return (sum(part.elsewhere for part in self._parts()),
                sum(part.unexamined for part in self._parts()))

    def ordered_weights(self) -> list[int]:
        """What each finding of ordered() counts in the figures, in the same order."""
        return [weight for part in self._parts() for weight in part.weights]

