"""The check of an image a running qemu is writing (docs/qcow2-format.md §11): read again until
what it finds holds still, and say what could not be settled.

One pass reads the L1/L2 tables and the refcounts one after the other, over milliseconds to
seconds, while qemu writes them back from its caches in dependency order
(qcow2_cache_set_dependency() in block/qcow2-cache.c): a new cluster's refcount before the L2
entry that points to it, a new L2 table before the L1 entry naming it, and, when a cluster is
freed, the L2 entry cleared before the refcount drops. Whatever order one pass reads in, an
entry read after qemu wrote it beside a refcount read before (or the other way round) shows a
refcount error, an OFLAG_COPIED mismatch or a leak that was never on disk at any one moment.
And when qemu grows the L1 or the refcount table it writes the new table, then the header, then
frees the old one, which a later allocation may fill with data: a pass that parsed the old
header reads garbage.

So an image held for writing is checked in passes (at most MAX_PASSES, PAUSES seconds apart):
- a pass counts only when cluster 0 reads the same after it as when the pass parsed it
  (Qcow2Image.header_moved); otherwise the image is parsed and read again;
- each finding of the first pass is followed, by its spot (kind and cluster for refcount
  findings, kind and entry for the others), through the next passes. Gone from a later pass, it
  was a write in flight: dropped. Found the same (same entries, same values) in
  CONFIRMING_PASSES passes after the first, it is confirmed: the refcount a pass read lies
  between two reads of the same referencing entries, so it is the refcount those entries had on
  disk, and qemu's ordering never leaves a refcount below its references on disk;
- a leak is exactly what a write in flight leaves on disk until the guest's next flush (the
  refcount written, the entry not yet; the entry cleared, the refcount not dropped yet), so it
  is confirmed only together with a confirmed OFLAG_COPIED mismatch on the same cluster (qemu
  sets COPIED only while a cluster's refcount is 1; no write in flight explains both); the
  other leaks are read again while passes are left, in case the write lands;
- what is still changing, and the leaks still there, when the passes run out are reported as
  unconfirmed: marked on the finding and counted in CheckResult.unconfirmed, never in
  check_errors, corruptions or leaks.
A problem that first shows after the first pass is left to the next check. On a dirty
lazy-refcounts image the refcount debt (LAZY_DEBT_KINDS) is reported as at rest.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import NamedTuple, Optional

from ..common.record import field, mutable_record, replace
from ..common.units import counted
from ..qcow2.image import Qcow2Image
from ..qcow2.steady import moving_header, read_held_still
from ..report.model import CheckResult, Finding, Severity
from .findings import LAZY_DEBT_KINDS

# Passes of one check of an image held for writing, the first included.
MAX_PASSES = 5
# Passes after the first that must find a problem unchanged for it to be confirmed.
CONFIRMING_PASSES = 2
# Seconds waited before the second, third, ... pass (the last value repeats): writes in flight
# land meanwhile, and a read racing the same write twice in a row becomes unlikely. At most
# 0.05 + 0.1 * 2 = 0.25 s per check.
PAUSES = (0.0, 0.05, 0.1)
# Findings listed, and so followed one by one, per pass; the rest are counted as unconfirmed.
SETTLE_FINDINGS = 10_000

# Refcount findings are known by their cluster (their location names the entries referencing
# it, which may change); the others by the entry they are at.
BY_CLUSTER = frozenset({"refcount-too-low", "leak", "refcount-overflow"})
# Messages that state the file's length, which grows while qemu writes.
LENGTH_IN_MESSAGE = frozenset({"reference-past-eof", "refcount-block-outside-image"})

Spot = tuple[object, ...]


class Pass(NamedTuple):
    """One pass of the check: its result, what each of its findings counts in the figures, and
    whether the image was a dirty lazy-refcounts one (its refcount differences are debt)."""

    result: CheckResult
    weights: tuple[int, ...]
    lazy_debt: bool


# (image, findings to list, clusters whose refcount findings are located (None: all)).
RunPass = Callable[[Qcow2Image, int, Optional[frozenset[int]]], Pass]


def spot(f: Finding) -> Spot:
    """Where a problem is, whatever its values: the same spot in two passes is one problem."""
    return (f.kind, f.cluster_index) if f.kind in BY_CLUSTER else (f.kind, f.location)


def evidence(f: Finding) -> Spot:
    """What the finding says about its spot: the entries and values it was read from."""
    return (f.location, f.host_offset, f.cluster_index, f.expected, f.found,
            None if f.kind in LENGTH_IN_MESSAGE else f.message)


@mutable_record
class _Followed:
    """One problem of the first pass, as the latest pass found it."""

    evidence: list[Spot] = field(default_factory=list)
    unchanged: int = 0  # passes in a row, after the first, that found it the same


class _Passes:
    """The passes of one check: each over the image as it is now, kept only when qemu moved no
    table meanwhile (collectors/qcow2/steady.py); at most MAX_PASSES."""

    def __init__(self, image: Qcow2Image, run: RunPass, limit: int) -> None:
        self.image = image
        self.run = run
        self.limit = limit
        self.count = 0

    def next(self, wanted: Optional[frozenset[int]]) -> Optional[Pass]:
        """The next pass during which the header held still, or None when none is left."""
        if self.count >= MAX_PASSES:
            return None
        if self.count:
            time.sleep(PAUSES[min(self.count, len(PAUSES)) - 1])
        found, made = read_held_still(self.image, partial(self._run, wanted),
                                      MAX_PASSES - self.count)
        self.count += made
        return found

    def _run(self, wanted: Optional[frozenset[int]], image: Qcow2Image) -> Pass:
        return self.run(image, self.limit, wanted)

    def first(self) -> Pass:
        """The first pass; raises when qemu rewrote the header during every one."""
        found = self.next(None)
        if found is None:
            raise moving_header(self.image, MAX_PASSES)
        return found


def stable_pass(image: Qcow2Image, limit: int, run: RunPass) -> Pass:
    """The first pass of an image held for writing during which qemu moved no table."""
    return _Passes(image, run, limit).first()


def settled_check(image: Qcow2Image, max_findings: int, run: RunPass) -> CheckResult:
    """The check of an image held for writing: confirmed findings in the figures, the others
    marked unconfirmed (see the module's docstring)."""
    # A dirty lazy-refcounts image lists its refcount debt as at rest: it is not followed.
    debt = image.header.dirty and image.header.lazy_refcounts
    passes = _Passes(image, run, max_findings if debt else max(max_findings, SETTLE_FINDINGS))
    first = passes.first()
    settling = _Settling(first)
    while settling.pending():
        later = passes.next(settling.clusters())
        if later is None:
            break
        settling.update(later)
    return settling.result(max_findings, passes.count)


class _Settling:
    """The problems of the first pass, followed through the later ones."""

    def __init__(self, first: Pass) -> None:
        self.last = first
        self.followed: dict[Spot, _Followed] = {}
        for f, key in self._spots(first):
            self.followed.setdefault(key, _Followed()).evidence.append(evidence(f))

    @staticmethod
    def _spots(found: Pass) -> list[tuple[Finding, Spot]]:
        """The findings to settle, with their spots (a lazy-refcounts debt is not settled)."""
        return [(f, spot(f)) for f in found.result.findings
                if not (found.lazy_debt and f.kind in LAZY_DEBT_KINDS)]

    def pending(self) -> bool:
        """Whether a followed problem is not confirmed yet. A leak that holds still but cannot
        be confirmed keeps the passes going too, while any are left: a write in flight may
        still land and take it away."""
        return len(self._confirmed()) < len(self.followed)

    def clusters(self) -> frozenset[int]:
        """The clusters of the refcount findings followed: only these are located again."""
        return frozenset(int(key[1]) for key in self.followed
                         if key[0] in BY_CLUSTER and isinstance(key[1], int))

    def update(self, later: Pass) -> None:
        now: dict[Spot, list[Spot]] = {}
        for f, key in self._spots(later):
            if key in self.followed:
                now.setdefault(key, []).append(evidence(f))
        for key in list(self.followed):
            problem = self.followed[key]
            if key not in now:
                del self.followed[key]  # a write in flight: gone
                continue
            problem.unchanged = problem.unchanged + 1 if now[key] == problem.evidence else 0
            problem.evidence = now[key]
        self.last = later

    def _confirmed(self) -> set[Spot]:
        held = {key for key, p in self.followed.items() if p.unchanged >= CONFIRMING_PASSES}
        copied = {f.cluster_index for f in self.last.result.findings
                  if f.kind == "copied-flag" and spot(f) in held}
        return {key for key in held if key[0] != "leak" or key[1] in copied}

    def result(self, max_findings: int, passes: int) -> CheckResult:
        """The last pass's result with only the confirmed findings in its figures."""
        last = self.last.result
        confirmed = self._confirmed()
        units = {Severity.CORRUPTION: 0, Severity.LEAK: 0, Severity.CHECK_ERROR: 0}
        listed = dict(units)
        unconfirmed = 0
        kept: list[Finding] = []
        for f, weight in zip(last.findings, self.last.weights):
            listed[f.severity] += weight
            key = spot(f)
            if (self.last.lazy_debt and f.kind in LAZY_DEBT_KINDS) or key in confirmed:
                units[f.severity] += weight
                kept.append(f)
            elif key in self.followed:
                unconfirmed += weight
                kept.append(replace(f, unconfirmed=True))
            # else: first seen after the first pass; the next check follows it.
        figures = {Severity.CORRUPTION: last.corruptions, Severity.LEAK: last.leaks,
                   Severity.CHECK_ERROR: last.check_errors}
        # Findings past SETTLE_FINDINGS were counted, not listed: they cannot be followed.
        unlisted = {severity: figures[severity] - listed[severity] for severity in figures}
        if self.last.lazy_debt:
            units = {severity: units[severity] + unlisted[severity] for severity in units}
        else:
            unconfirmed += sum(unlisted.values())
        return replace(
            last, check_errors=units[Severity.CHECK_ERROR],
            corruptions=units[Severity.CORRUPTION], leaks=units[Severity.LEAK],
            findings=tuple(kept[:max_findings]),
            findings_total=len(kept) + last.findings_total - len(last.findings),
            unconfirmed=unconfirmed, passes=passes,
            notes=(*last.notes, *in_use_notes(passes, unconfirmed)))


def in_use_notes(passes: int, unconfirmed: int) -> tuple[str, ...]:
    """What a check of an image held for writing can say, for the operator."""
    notes = [f"held for writing by a running qemu: read {counted(passes, 'time')}, and only "
             "findings that held still between reads are counted; the on-disk metadata lags "
             "behind qemu's cache until the guest's next flush"]
    if unconfirmed:
        notes.append(
            f"{counted(unconfirmed, 'finding')} unconfirmed: qemu was changing the entries "
            "behind them while they were read, or they are leaks, which a write in flight also "
            "leaves on disk; certain after the guest's next flush, or with the VM stopped")
    return tuple(notes)
