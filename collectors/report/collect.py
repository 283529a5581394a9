"""Collecting, the one pipeline of every front end (the adapters and `qcow2-analyze usage`):
discover the targets, analyse each image and its backing chain, optionally run the full check,
judge each image's health, and gather the records of the result model (:mod:`.model`) that the
metric catalogue (:mod:`.metrics`) and the front ends render.

The core is imported lazily (it may pull in numpy): the Nagios plugin imports this module on
every check and must stay light.
"""

from __future__ import annotations

import time

from ..common.enums import Enum
from ..common.errors import IO_ERROR, Qcow2Error, internal_error
from ..common.record import TypeVar, replace
from ..common.units import counted
from ..host.discovery import dedupe_targets, expand_targets, scan_running
from ..host.identity import canonical_path
from ..host.sources import NO_LIVE_SOURCES, LiveSources, no_live_source_note
from .health import BACKING_STATUS, Policy, assess, broken_layer
from .model import (
    DEFAULT_MAX_DEPTH,
    RUNNING_PROCESSES,
    ChainLayer,
    CheckResult,
    Collection,
    ImageRecord,
    LayerStatus,
    Target,
    UsageResult,
)
from .thin import DEFAULT_JUDGING, Judging, decide

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Iterator, Optional, Sequence, TypeAlias, Union

    from ..host.live import LiveView, PendingLive


class ChainScope(Enum):
    """Which backing layers a run reports."""

    NONE = "none"  # opened only (a broken one is the top image's problem: broken_below)
    NOT_OK = "not-ok"  # opened; those whose status is not ok reported too, without figures
    ALL = "all"  # every layer analysed and reported (--chain)


AnalyzeFn: TypeAlias = "Callable[..., UsageResult]"
CheckFn: TypeAlias = "Callable[..., CheckResult]"
T = TypeVar("T")

# The target (and `path` label) of the error about qemu processes --running could not inspect.
RUNNING_TARGET = RUNNING_PROCESSES


def _analyze_fn() -> AnalyzeFn:
    from .usage import analyze_usage

    return analyze_usage


def _check_fn() -> CheckFn:
    from ..check.checker import check_image

    return check_image


def guarded(work: Callable[[], T], filename: str) -> T:
    """`work` for the image at `filename`, anything unexpected raised as that image's
    Qcow2Error (internal-error, or io-error for an OSError).

    The core's one last-resort guard, here because collect() is where the per-image work of
    every front end starts: one image (a target, or one layer of its chain: usage.py runs each
    layer's work through it) must never blind the monitoring of all the others, so a bug met
    on one image becomes that image's error, with its type so that it can be reported. Every
    other part of the core lets unexpected exceptions through, to this guard or to the entry
    point's own last-resort catch."""
    try:
        return work()
    except Qcow2Error:
        raise
    except Exception as exc:
        raise internal_error(exc, filename) from exc


def _records_for(
    target: Target, analyze: AnalyzeFn, *, scope: ChainScope, max_depth: int,
    live: Optional[LiveView],
) -> Iterator[ImageRecord]:
    if target.path is None:
        yield ImageRecord(target.spec, None, 0, None, None, target.error)
        return
    path = target.path
    canonical = canonical_path(path)
    try:
        result: UsageResult = guarded(lambda: analyze(
            path, chain=scope == ChainScope.ALL, max_depth=max_depth, live=live,
            guard=guarded), path)
    except Qcow2Error as exc:
        yield ImageRecord(target.spec, path, 0, None, None, exc, canonical=canonical)
        return
    # The chain is always opened (headers only without --chain): a broken one is the top's
    # problem too, since qemu cannot open the top without it; its status says so.
    broken = broken_layer(result.chain)
    yield ImageRecord(target.spec, path, 0, result.usage, None, result.error,
                      status=backing_status(LayerStatus.OK, broken), canonical=canonical,
                      broken_below=broken)
    for index, layer in enumerate(result.chain):
        if scope == ChainScope.NONE or (
                scope == ChainScope.NOT_OK and layer.status == LayerStatus.OK):
            continue
        broken = broken_layer(result.chain[index + 1 :])
        status = backing_status(layer.status, broken)
        yield ImageRecord(
            target.spec,
            layer.path,
            layer.depth,
            layer.usage,
            None,
            layer.error,
            status=status,
            name=layer.name,
            canonical=canonical_path(layer.path) if layer.path else None,
            layer=replace(layer, status=status),
            broken_below=broken,
        )


def backing_status(status: LayerStatus, broken_below: Optional[ChainLayer]) -> LayerStatus:
    """An ok image's status when a layer below it is broken: BACKING_* of that layer's."""
    if status != LayerStatus.OK or broken_below is None:
        return status
    return BACKING_STATUS[broken_below.status]


def _with_check(record: ImageRecord, check_fn: CheckFn) -> ImageRecord:
    if record.usage is None or record.path is None or record.error is not None:
        return record
    path = record.path
    try:
        result = guarded(lambda: check_fn(path), path)
    except Qcow2Error as exc:
        return replace(record, error=exc)
    return replace(record, check=result)


def judge(record: ImageRecord, policy: Optional[Policy] = None) -> ImageRecord:
    """`record` with its health by the one policy (collectors.report.health)."""
    health = assess(usage=record.usage, check=record.check, error=record.error,
                    layer=record.layer, broken_below=record.broken_below, policy=policy)
    return replace(record, health=health)


def collect(
    specs: Sequence[str],
    *,
    running: bool = False,
    chain: Union[bool, ChainScope] = False,
    check: bool = False,
    max_depth: int = DEFAULT_MAX_DEPTH,
    live_sources: LiveSources = NO_LIVE_SOURCES,
    judging: Judging = DEFAULT_JUDGING,
) -> Collection:
    """Discover targets, analyse each (and its backing chain), optionally run the full check,
    and judge each image's health by `judging.rules` (default: every rule's default state).

    `chain` (a ChainScope; True is ALL, False NONE): with ALL every backing layer is analysed
    and reported; otherwise the layers are only opened (a broken one is the top image's
    problem, `broken_below`), and with NOT_OK those whose status is not ok are reported too,
    without figures (`qcow2-analyze usage --no-chain` lists them).

    Live figures come from `live_sources` (by default none is asked); with `running`, the
    disks these name come first (libvirt's running domains, then the QMP qemus), then those of
    other qemu processes found through /proc.

    Block volumes below the extension watermark get their advice, and with `judging.growth` every
    top image its growth and time to full (collectors.report.thin).

    Never raises for image problems: a failing target is a record with `error` set and the others
    still report. Each image is reported once, by canonical path: a base shared by several
    overlays, or also named as a target, keeps the depth at which it was first met.
    """
    started = time.monotonic()
    scope = chain if isinstance(chain, ChainScope) else ChainScope.ALL if chain else \
        ChainScope.NONE
    analyze = _analyze_fn()
    check_fn = _check_fn() if check else None
    pending = start_live(live_sources)
    targets = expand_targets(specs)
    live = _wait(pending) if pending is not None else None
    failed: list[ImageRecord] = []
    if live is not None:
        failed += [ImageRecord(e.filename or "--qmp", e.filename, 0, None, None, e,
                               source=True) for e in live.errors]
    if running:
        if live is not None:
            scan = scan_running(live.libvirt_domains, live.qmp_pids)
            found = [*live.paths, *scan.paths]
        else:
            scan = scan_running()
            found = scan.paths
        targets = dedupe_targets([*targets, *(Target(p, p) for p in found)])
        if scan.uninspected:
            failed.append(_uninspected_record(scan.uninspected))
    seen: set[tuple[str, Optional[int]]] = set()
    records: list[ImageRecord] = []
    times: list[float] = []
    for target in targets:
        for record in _records_for(target, analyze, scope=scope, max_depth=max_depth,
                                   live=live):
            # A failed layer is keyed with its depth too: a chain looping back to its top names
            # an already reported file, and that loop must still be reported.
            key = (record.label_path, record.depth if record.error is not None else None)
            if key in seen and record.depth == 0:
                break  # a target reported already (as a layer of an earlier one): its chain too
            if key in seen:
                continue
            seen.add(key)
            times.append(time.time())
            if check_fn is not None:
                record = _with_check(record, check_fn)
            records.append(record)
    records, thin_notes = decide(records, times, judging, time.time())
    records = [judge(record, judging.rules) for record in [*records, *failed]]
    return Collection(tuple(records), time.monotonic() - started, time.time(),
                      (*_run_notes(records, live), *thin_notes),
                      live.libvirt_note if live is not None else None)


def start_live(sources: LiveSources) -> Optional[PendingLive]:
    """Start asking the live sources, or None when none is asked (--no-live, no --qmp): only
    then are their clients (threads, sockets, virsh) imported."""
    if not sources.asked:
        return None
    from ..host.live import PendingLive

    return PendingLive(sources.libvirt_uri, list(sources.qmp))


def _wait(pending: PendingLive) -> LiveView:
    """The live sources' answers; a bug of ours there must not cost the on-disk figures."""
    from ..host.live import LiveView

    try:
        return guarded(pending.wait, "live sources")
    except Qcow2Error as exc:
        return LiveView(libvirt_note=f"live sources failed: {exc.message}")


def _run_notes(records: Sequence[ImageRecord], live: Optional[LiveView]) -> tuple[str, ...]:
    # Said once per run, and only when it matters: images being written whose figures may lag.
    # A host without libvirt that monitors images at rest hears nothing.
    lagging = [r for r in records
               if r.usage is not None and r.usage.in_use and r.usage.live_end_offset is None]
    if live is None or not lagging:
        return ()
    held = counted(len(lagging), "image") + (" is" if len(lagging) == 1 else " are")
    return (f"{held} held for writing by a running qemu with only on-disk figures, which may "
            f"lag; {no_live_source_note(live.libvirt_note)}",)


def _uninspected_record(pids: Sequence[int]) -> ImageRecord:
    # Never an OK with zero images: qemu processes whose images we cannot see are a failure of
    # this run, reported like an image that could not be read.
    shown = ", ".join(str(pid) for pid in pids[:10]) + (", ..." if len(pids) > 10 else "")
    error = Qcow2Error(
        f"{counted(len(pids), 'qemu process', 'qemu processes')} not inspectable by this user "
        f"(pid {shown}): their images "
        "are not reported; let libvirt answer (read-only socket) or run as root",
        structure="running qemu processes", kind=IO_ERROR, filename=None,
    )
    return ImageRecord(RUNNING_TARGET, None, 0, None, None, error)
