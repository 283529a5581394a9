"""How fast each image grows and when its container is full, from the samples of earlier runs
kept in the state store (collectors.report.state).

Each run adds one sample per top image: the time, the end offset (live when ahead) and the
container's used bytes. Over a window (default 6 h) the growth is the least-squares slope of the
end offset, as Prometheus' ``deriv()`` computes it; the time to full is the headroom divided by
the growth of what fills the container: the end offset on a block device, the filesystem's used
bytes for an image file (every file there fills it). A history restarts where it stops
describing one growing image: the volume was extended or shrunk (container size changed), the
image was replaced (its identity changed), or the end offset went down (compacted).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from ..common.units import human_size
from .model import CONTAINER_BLOCK, Growth, ImageUsage
from .state import CorruptState, StateDirectory, StateError, state_name

DEFAULT_WINDOW = 6 * 3600.0
MIN_SPAN_FRACTION = 12  # a slope needs samples spanning at least window / 12 (30 min of 6 h)
MAX_SAMPLES = 720  # one run a minute from two adapters over 6 h
CLOCK_SLACK = 60.0  # samples this far "in the future" mean the clock went back: dropped
FORMAT_VERSION = 1

Sample = tuple[float, int, int]  # time, end offset, container used


def slope(points: Sequence[tuple[float, float]]) -> Optional[float]:
    """Least-squares slope of y over t (Prometheus' deriv()); None for fewer than 2 points or
    no spread in time."""
    n = len(points)
    if n < 2:
        return None
    t0 = points[0][0]  # centred for precision: epoch seconds squared lose digits
    mean_t = sum(t - t0 for t, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((t - t0 - mean_t) ** 2 for t, _ in points)
    if sxx <= 0:
        return None
    sxy = sum((t - t0 - mean_t) * (y - mean_y) for t, y in points)
    return sxy / sxx


@dataclass(frozen=True)
class DiskSample:
    """One disk as this run saw it."""

    key: str  # its identity: the canonical path (the series' path label)
    identity: list[Any]  # device and inode, or device number: changes when it is replaced
    usage: ImageUsage
    time: float


def _reset_reason(document: dict[str, Any], disk: DiskSample,
                  previous: Optional[Sample]) -> Optional[str]:
    usage = disk.usage
    if document.get("identity") != disk.identity:
        return "the image was replaced"
    size = document.get("container_size")
    if size != usage.container.size and isinstance(size, int):
        how = "extended" if usage.container.size > size else "shrunk"
        return (f"its container was {how} from {human_size(size)} to "
                f"{human_size(usage.container.size)}")
    if previous is not None and usage.end_offset < previous[1]:
        return (f"its end offset went down from {human_size(previous[1])} to "
                f"{human_size(usage.end_offset)} (compacted)")
    return None


def _samples(document: dict[str, Any]) -> list[Sample]:
    raw = document.get("samples")
    if not isinstance(raw, list):
        raise CorruptState("no samples")
    samples: list[Sample] = []
    for item in raw:
        if not (isinstance(item, list) and len(item) == 3
                and all(isinstance(v, (int, float)) for v in item)):
            raise CorruptState("a sample is not [time, end offset, used]")
        samples.append((float(item[0]), int(item[1]), int(item[2])))
    return samples


@dataclass
class History:
    """One disk's samples after this run's, and what happened to them."""

    document: dict[str, Any]
    samples: list[Sample]
    note: Optional[str] = None


def merge(document: Optional[dict[str, Any]], disk: DiskSample, window: float) -> History:
    """`document` (a disk's state, or None) with this run's sample added, reset and pruned."""
    usage = disk.usage
    sample: Sample = (round(disk.time, 3), usage.end_offset, usage.container.used)
    note = None
    kept: list[Sample] = []
    if document is not None:
        old = sorted(_samples(document))
        before = [s for s in old if s[0] <= sample[0]]
        reason = _reset_reason(document, disk, before[-1] if before else None)
        if reason is not None:
            note = f"growth history restarted: {reason}"
        else:
            kept = [s for s in old if disk.time - window <= s[0] <= disk.time + CLOCK_SLACK]
    samples = sorted([*kept, sample])[-MAX_SAMPLES:]
    new = {"version": FORMAT_VERSION, "path": disk.key, "identity": disk.identity,
           "container_size": usage.container.size, "samples": [list(sample) for sample in samples]}
    return History(new, samples, note)


def growth_of(history: History, usage: ImageUsage, window: float) -> Growth:
    samples = history.samples
    span = samples[-1][0] - samples[0][0] if samples else 0.0
    if len(samples) < 2 or span < window / MIN_SPAN_FRACTION:
        return Growth(None, None, len(samples), span, history.note)
    rate = slope([(t, float(end)) for t, end, _ in samples])
    filling = rate if usage.container.kind == CONTAINER_BLOCK else \
        slope([(t, float(used)) for t, _, used in samples])
    time_to_full = None
    if filling is not None and filling > 0:
        time_to_full = max(usage.container.headroom, 0) / filling
    return Growth(rate, time_to_full, len(samples), span, history.note)


@dataclass
class GrowthTracker:
    """Samples of the disks a run saw, kept in the state directory (and, for a long-running
    collector such as Telegraf's execd mode, in memory too: a directory that cannot be used
    then still gives a history)."""

    directory: Optional[str]
    window: float = DEFAULT_WINDOW
    keep_in_memory: bool = False
    memory: dict[str, dict[str, Any]] = field(default_factory=dict)

    def update(self, disks: Sequence[DiskSample], now: float) -> tuple[list[Growth], list[str]]:
        """Each disk's growth, and notes about the run (a state directory that could not be
        used). Never raises for the state: a figure it cannot give is None."""
        notes: list[str] = []
        store: Optional[StateDirectory] = None
        if self.directory is not None and disks:
            try:
                store = StateDirectory(self.directory)
            except StateError as exc:
                notes.append(f"growth: {exc}" + ("; samples kept in memory"
                                                 if self.keep_in_memory else ""))
        try:
            return self._update(store, disks, now, notes), notes
        finally:
            if store is not None:
                store.close()

    def _update(self, store: Optional[StateDirectory], disks: Sequence[DiskSample],
                now: float, notes: list[str]) -> list[Growth]:
        if store is None:
            return [self._one(None, disk, notes) for disk in disks]
        with store.locked() as held:
            if not held:
                notes.append(f"growth: state directory {store.path} busy (parallel runs): "
                             "this run's samples not recorded")
            growths = [self._one(store, disk, notes, write=held) for disk in disks]
            if held and store.prune_due(now):
                store.prune({state_name(disk.key) for disk in disks}, now)
        return growths

    def _one(self, store: Optional[StateDirectory], disk: DiskSample, notes: list[str],
             write: bool = False) -> Growth:
        name = state_name(disk.key)
        document: Optional[dict[str, Any]] = self.memory.get(name)
        problem = None
        if store is not None:
            try:
                document = store.read(name)
            except CorruptState as exc:
                problem = f"state file {store.path}/{name} unusable ({exc}): started anew"
                document = None
        try:
            history = merge(document, disk, self.window)
        except CorruptState as exc:
            problem = f"state file {name} unusable ({exc}): started anew"
            history = merge(None, disk, self.window)
        if problem is not None:
            history.note = problem
        if store is not None and write:
            try:
                store.write(name, history.document)
            except OSError as exc:
                note = f"growth: cannot write in {store.path}: {exc.strerror or exc}"
                if note not in notes:
                    notes.append(note)
        if self.keep_in_memory:
            self.memory[name] = history.document
        return growth_of(history, disk.usage, self.window)
