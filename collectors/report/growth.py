"""How fast each image grows and when its container is full, from the samples of earlier runs
kept in the state store (collectors.report.state).

Each run adds one sample per top image: the time, the end offset (live when ahead) and the
container's used bytes. Over a window (default 6 h) the growth is the least-squares slope of the
end offset, as Prometheus' ``deriv()`` computes it, over every sample of the window. A state file
keeps the samples as the sums least squares needs, in BUCKETS buckets of the window (a bucket
leaves when all of it is older than the window): small and cheap to read however often the
adapters run, and no sample of the window is dropped; the time to full is the headroom divided by
the growth of what fills the container: the end offset on a block device, the filesystem's used
bytes for an image file (every file there fills it). A history restarts where it stops
describing one growing image: the volume was extended or shrunk (container size changed), the
image was replaced (its identity changed), or the end offset went down (compacted).
"""

from __future__ import annotations

import math
import os

from ..common.record import field, frozen_record, mutable_record
from ..common.text import printable
from ..common.units import human_size
from .model import ContainerKind, Growth, ImageUsage
from .state import CorruptState, StateDirectory, StateError, state_name

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Optional, Sequence

DEFAULT_WINDOW = 6 * 3600.0
MIN_SPAN_FRACTION = 12  # a slope needs samples spanning at least window / 12 (30 min of 6 h)
BUCKETS = 24  # the window in buckets of sums (15 min each of 6 h): a state file stays small
CLOCK_SLACK = 60.0  # samples this far "in the future" mean the clock went back: dropped
FORMAT = b"qcow2-monitor-growth 3"  # a state file's first words: what it is, its version
COMPACT_EVERY = 16  # samples appended to a state file before it is rewritten whole

Sample = tuple[float, int, int]  # time, end offset, container used
# The samples of one bucket, as the sums least squares needs; times relative to its start:
# start, n, first time, last time, sum t, sum t*t, sum end, sum t*end, sum used, sum t*used.
Bucket = list[float]
BUCKET_FIELDS = 10


def slope(points: Sequence[tuple[float, float]]) -> Optional[float]:
    """Least-squares slope of y over t (Prometheus' deriv()); None for fewer than 2 points or
    no spread in time."""
    if len(points) < 2:
        return None
    buckets: dict[float, Bucket] = {}
    for t, y in points:
        _add(buckets, points[0][0], (t, int(y), int(y)))
    return _slope(list(buckets.values()), 6, 7)


def _add(buckets: dict[float, Bucket], start: float, sample: Sample) -> None:
    t, end, used = sample
    bucket = buckets.setdefault(start, [start, 0, t, t, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    dt = t - start
    bucket[1] += 1
    bucket[2], bucket[3] = min(bucket[2], t), max(bucket[3], t)
    bucket[4] += dt
    bucket[5] += dt * dt
    bucket[6] += end
    bucket[7] += dt * end
    bucket[8] += used
    bucket[9] += dt * used


def _slope(buckets: Sequence[Bucket], y: int, ty: int) -> Optional[float]:
    """The least-squares slope of the samples summed in `buckets` (fields `y` and `ty`: the
    sums of a figure and of time times it), centred on the earliest sample for precision."""
    n = sum(b[1] for b in buckets)
    if n < 2:
        return None
    origin = min(b[2] for b in buckets)
    s_t = s_tt = s_y = s_ty = 0.0
    for b in buckets:
        d, count = b[0] - origin, b[1]
        s_t += b[4] + count * d
        s_tt += b[5] + 2 * d * b[4] + count * d * d
        s_y += b[y]
        s_ty += b[ty] + d * b[y]
    sxx = s_tt - s_t * s_t / n
    if sxx <= 1e-9:
        return None
    return (s_ty - s_t * s_y / n) / sxx


@frozen_record
class DiskSample:
    """One disk as this run saw it."""

    key: str  # its identity: the canonical path (the series' path label)
    identity: list[Any]  # device and inode, or device number: changes when it is replaced
    usage: ImageUsage
    time: float


# A state file is text, a line per record, numbers as Python writes them (repr), read back
# exactly (sizes by int(), times and sums by float()), a comma between the numbers of one
# record:
#   qcow2-monitor-growth 3 identity=file,DEV,INO container_size=N last=T,END,USED
#       total=<the sums of every bucket: BUCKET_FIELDS numbers> expires=T path=PATH
#   <the buckets, a space between two>
#   T,END,USED          (one line per sample appended since)
# The path (the disk's canonical path, printable: one line) is for a reader of the directory,
# whose file names are hashes; the identity says whether the disk is still the same one.


@frozen_record
class Header:
    """A state file's first line."""

    identity: str
    container_size: int
    last: Sample
    total: Bucket  # the sums of all its buckets, as one bucket
    expires: float  # when its oldest bucket leaves the window


def _identity_text(identity: Sequence[Any]) -> str:
    return ",".join(map(str, identity))


def _reset_reason(header: Header, disk: DiskSample, last: Optional[Sample]) -> Optional[str]:
    usage = disk.usage
    if header.identity != _identity_text(disk.identity):
        return "the image was replaced"
    size = header.container_size
    if size != usage.container.size:
        how = "extended" if usage.container.size > size else "shrunk"
        return (f"its container was {how} from {human_size(size)} to "
                f"{human_size(usage.container.size)}")
    if last is not None and disk.time >= last[0] and usage.end_offset < last[1]:
        return (f"its end offset went down from {human_size(last[1])} to "
                f"{human_size(usage.end_offset)} (compacted)")
    return None


def _numbers(text: Optional[bytes], count: int, what: str) -> list[float]:
    try:
        numbers = [float(word) for word in text.split(b",")] if text is not None else []
    except ValueError:
        numbers = []
    if len(numbers) != count or not all(map(math.isfinite, numbers)):
        raise CorruptState(f"{what} is not {count} numbers")
    return numbers


def _sample(text: Optional[bytes], what: str) -> Sample:
    """A sample, `T,END,USED`: the time as a number, the two sizes as integers, exactly."""
    words = (text or b"").split(b",")
    try:
        sample = (float(words[0]), int(words[1]), int(words[2])) if len(words) == 3 else None
    except ValueError:
        sample = None
    if sample is None or not math.isfinite(sample[0]):
        raise CorruptState(f"{what} is not a time and two sizes")
    return sample


def _integer(text: Optional[bytes], what: str) -> int:
    """An integer written by %d, exactly (float() would round one above 2**53)."""
    try:
        return int(text or b"")
    except ValueError:
        raise CorruptState(f"{what} is not an integer") from None


def _encode(numbers: Sequence[float]) -> bytes:
    return ",".join(map(repr, numbers)).encode()


def _header(line: bytes) -> Header:
    head = line.partition(b" path=")[0]
    if not head.startswith(FORMAT + b" "):
        raise CorruptState("not a state file of this version")
    fields = {key: value for key, _, value in
              (word.partition(b"=") for word in head[len(FORMAT) + 1:].split(b" "))}
    size = _integer(fields.get(b"container_size"), "the container size")
    return Header(fields.get(b"identity", b"").decode("utf-8", "replace"), size,
                  _sample(fields.get(b"last"), "the last sample"),
                  _numbers(fields.get(b"total"), BUCKET_FIELDS, "the total"),
                  _numbers(fields.get(b"expires"), 1, "the expiry")[0])


def _header_line(header: Header, path: str) -> bytes:
    return b" ".join((FORMAT, b"identity=" + header.identity.encode(),
                      b"container_size=%d" % header.container_size,
                      b"last=" + _encode(header.last), b"total=" + _encode(header.total),
                      b"expires=" + _encode([header.expires]),
                      b"path=" + printable(path).encode("utf-8")))


def _buckets(line: bytes) -> list[Bucket]:
    buckets = [_numbers(item, BUCKET_FIELDS, "a bucket") for item in line.split(b" ")]
    if any(b[1] < 1 for b in buckets):
        raise CorruptState("an empty bucket")
    return buckets


def _combined(buckets: Sequence[Bucket]) -> Bucket:
    """The sums of `buckets` as one bucket starting at the earliest of them."""
    origin = min(b[0] for b in buckets)
    total: Bucket = [origin, 0, math.inf, -math.inf, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    for b in buckets:
        _merge_bucket({origin: total}, b, origin)
    return total


@mutable_record
class History:
    """One disk's samples after this run's (as sums: the window's buckets, or their total),
    what to write, and what happened to them."""

    lines: list[bytes]  # the whole state, to write when `rewrite`
    buckets: list[Bucket]
    sample: Sample  # this run's, to append when not `rewrite`
    rewrite: bool
    note: Optional[str] = None


def merge(lines: Optional[list[bytes]], disk: DiskSample, window: float) -> History:
    """A disk's state file (a header with the total of its buckets, the buckets, then the
    samples appended since; or None) with this run's sample added. Usually the total and the
    appended samples give the growth and the sample is appended (the buckets are not even
    parsed); the file is rewritten whole, buckets wholly older than the window (or from a clock
    that went back) dropped, when it is new, restarted, when its oldest bucket left the window,
    or every COMPACT_EVERY samples."""
    usage = disk.usage
    sample: Sample = (round(disk.time, 3), usage.end_offset, usage.container.used)
    width = window / BUCKETS
    note = None
    buckets: dict[float, Bucket] = {}
    if lines:
        header = _header(lines[0])
        total, previous, expires = header.total, header.last, header.expires
        appended = [_sample(line, "an appended sample") for line in lines[2:]]
        previous = max([previous, *appended])
        reason = _reset_reason(header, disk, previous)
        if reason is not None:
            note = f"growth history restarted: {reason}"
        elif (len(appended) + 1 < COMPACT_EVERY and disk.time < expires
              and total[3] <= disk.time + CLOCK_SLACK and len(lines) >= 2):
            for one in [*appended, sample]:
                _add({total[0]: total}, total[0], one)
            return History(lines, [total], sample, False)
        else:
            for one in appended:
                _add(buckets, one[0] - one[0] % width, one)
            for bucket in _buckets(lines[1]) if len(lines) >= 2 else []:
                _merge_bucket(buckets, bucket, bucket[0])
            buckets = {start: b for start, b in buckets.items()
                       if start + width > disk.time - window
                       and b[3] <= disk.time + CLOCK_SLACK}
            _add(buckets, sample[0] - sample[0] % width, sample)
            # A parallel run may have recorded a later sample already: the latest stays last.
            later = sample[0] < previous[0] <= disk.time + CLOCK_SLACK
            return _rewritten(disk, buckets, previous if later else sample, width, window,
                              note)
    _add(buckets, sample[0] - sample[0] % width, sample)
    return _rewritten(disk, buckets, sample, width, window, note)


def _rewritten(disk: DiskSample, buckets: dict[float, Bucket], last: Sample, width: float,
               window: float, note: Optional[str]) -> History:
    kept = sorted(buckets.values())
    header = Header(_identity_text(disk.identity), disk.usage.container.size, last,
                    _combined(kept), min(b[0] for b in kept) + width + window)
    sample = (round(disk.time, 3), disk.usage.end_offset, disk.usage.container.used)
    return History([_header_line(header, disk.key), b" ".join(map(_encode, kept))], kept,
                   sample, True, note)



def _merge_bucket(buckets: dict[float, Bucket], bucket: Bucket, start: float) -> None:
    """Add a bucket's sums to the bucket of `buckets` that starts at `start` (shifting its
    times there), or keep it as it is when there is none."""
    mine = buckets.get(start)
    if mine is None:
        buckets[start] = list(bucket)
        return
    d, n = bucket[0] - start, bucket[1]
    mine[1] += n
    mine[2], mine[3] = min(mine[2], bucket[2]), max(mine[3], bucket[3])
    mine[5] += bucket[5] + 2 * d * bucket[4] + n * d * d
    mine[4] += bucket[4] + n * d
    for y, ty in ((6, 7), (8, 9)):
        mine[y] += bucket[y]
        mine[ty] += bucket[ty] + d * bucket[y]


def growth_of(history: History, usage: ImageUsage, window: float) -> Growth:
    buckets = history.buckets
    samples = int(sum(b[1] for b in buckets))
    span = max(b[3] for b in buckets) - min(b[2] for b in buckets) if buckets else 0.0
    if samples < 2 or span < window / MIN_SPAN_FRACTION:
        return Growth(None, None, samples, span, history.note)
    rate = _slope(buckets, 6, 7)
    filling = rate if usage.container.kind == ContainerKind.BLOCK else _slope(buckets, 8, 9)
    time_to_full = None
    if filling is not None and filling > 0:
        time_to_full = max(usage.container.headroom, 0) / filling
    return Growth(rate, time_to_full, samples, span, history.note)


@mutable_record
class GrowthTracker:
    """Samples of the disks a run saw, kept in the state directory (and, for a long-running
    collector such as Telegraf's execd mode, in memory too: a directory that cannot be used
    then still gives a history)."""

    directory: Optional[str]
    window: float = DEFAULT_WINDOW
    keep_in_memory: bool = False
    memory: dict[str, list[bytes]] = field(default_factory=dict)

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
        document: Optional[list[bytes]] = self.memory.get(name)
        problem = None
        fd: Optional[int] = None
        if store is not None:
            try:
                document, fd = store.read(name, for_append=write)
            except CorruptState as exc:
                problem = f"state file {store.path}/{name} unusable ({exc}): started anew"
                document = None
        try:
            history = self._merged(document, disk, problem)
            if store is not None and write:
                self._write(store, name, fd, history, notes)
        finally:
            if fd is not None:
                os.close(fd)
        if self.keep_in_memory:
            self.memory[name] = history.lines if history.rewrite else [
                *history.lines, _encode(history.sample)]
        return growth_of(history, disk.usage, self.window)

    def _merged(self, document: Optional[list[bytes]], disk: DiskSample,
                problem: Optional[str]) -> History:
        try:
            history = merge(document, disk, self.window)
        except CorruptState as exc:
            problem = f"state file {state_name(disk.key)} unusable ({exc}): started anew"
            history = merge(None, disk, self.window)
        if problem is not None:
            history.note = problem
        return history

    @staticmethod
    def _write(store: StateDirectory, name: str, fd: Optional[int], history: History,
               notes: list[str]) -> None:
        try:
            if history.rewrite or fd is None:
                store.write(name, history.lines)
            else:
                store.append(fd, _encode(history.sample))
        except OSError as exc:
            note = f"growth: cannot write in {store.path}: {exc.strerror or exc}"
            if note not in notes:
                notes.append(note)
