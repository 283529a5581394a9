"""`qemu-img measure` of an existing image (qcow2_measure() with a source image): the guest
ranges holding data anywhere in the backing chain, walked as runs of cluster status; the size
formula itself is :mod:`..qcow2.prealloc`."""

from __future__ import annotations

import os
from functools import partial
from typing import TYPE_CHECKING, Callable, ClassVar, Iterator, Optional

from ..common.errors import UNSUPPORTED, Qcow2Error
from ..common.jsonform import JsonKey, omit_none
from ..common.record import frozen_record
from ..qcow2 import layout as L
from ..qcow2.prealloc import prealloc_size
from ..qcow2.reader import held_for_writing
from ..qcow2.steady import read_steadily
from .heap import keep_heap_top
from .status import STATUS_DATA, STATUS_UNALLOCATED, STATUS_ZERO

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from ..qcow2.image import Qcow2Image

    Runs = tuple[npt.NDArray[np.int64], npt.NDArray[np.int8]]
    Locate = Callable[[int, int], Qcow2Error]


# -- qemu-img measure of an existing image (qcow2_measure() with a source image) -------------
# Defaults of the target qemu-img measure -O qcow2 creates: 64 KiB clusters, 16-bit refcounts,
# no extended L2 (block/qcow2.c qcow2_measure / qcow2_co_create_opts defaults).
TARGET_CLUSTER_SIZE = 65536
TARGET_REFCOUNT_ORDER = 4
BME_TABLE_ENTRY_SIZE = 8



def _bitmap_bytes_needed(length: int, granularity: int) -> int:
    """get_bitmap_bytes_needed() in block/qcow2-bitmap.c."""
    bits = -(-length // granularity)
    return -(-bits // 8)


def bitmaps_size(image: Qcow2Image, cluster_size: int = TARGET_CLUSTER_SIZE) -> int:
    """qcow2_get_persistent_dirty_bitmap_size(): every persistent bitmap fully allocated,
    its table, and the directory, in target clusters."""
    from ..qcow2.bitmaps import loaded_bitmaps  # loaded as qemu opens the image

    ssize = image.header.size // 512 * 512
    total = 0
    directory = 0
    for bm in loaded_bitmaps(image):
        clusters = -(-_bitmap_bytes_needed(ssize, bm.granularity) // cluster_size)
        total += clusters * cluster_size
        total += L.align_up(clusters * BME_TABLE_ENTRY_SIZE, cluster_size)
        directory += L.bitmap_dir_entry_size(len(bm.name.encode("utf-8", "surrogateescape")), 0)
    return total + L.align_up(directory, cluster_size)


@frozen_record
class Measure:
    """What `qemu-img measure --output=json -O qcow2` reports."""

    required: int
    fully_allocated: int
    bitmaps: Optional[int] = None  # qemu 7.2, a version 3 source only

    JSON: ClassVar[tuple[JsonKey, ...]] = (JsonKey("bitmaps", omit=omit_none),
                                           JsonKey("required"), JsonKey("fully-allocated"))


def measure_image(image: Qcow2Image, *, path: Optional[str] = None) -> Measure:
    """`qemu-img measure --output=json -O qcow2 FILE`: required, fully-allocated and (qemu 7.2,
    version 3 target) bitmaps. `required` counts every target cluster holding data anywhere in
    the backing chain (bdrv_block_status_above() over the whole chain). Raises Qcow2Error where
    qemu-img fails: a layer or snapshot table it cannot open, an entry it refuses (.refused).
    A held image: from a read during which no table moved (collectors/qcow2/steady.py)."""
    if held_for_writing(image.file):
        return read_steadily(image, partial(_measure, path=path))
    return _measure(image, path=path)


def _measure(image: Qcow2Image, *, path: Optional[str] = None) -> Measure:
    keep_heap_top()
    image.snapshots()  # qemu-img measure opens the image: qcow2_read_snapshots() fails it
    cs = TARGET_CLUSTER_SIZE
    ssize = image.header.size // 512 * 512
    virtual_size = L.align_up(ssize, cs)
    required = _single_layer_required(image, ssize, cs)
    if required is None:
        required = sum((last - first + 1) * cs
                       for first, last in data_segments(image, path or image.filename, ssize, cs))
    fully = prealloc_size(virtual_size, cs, TARGET_REFCOUNT_ORDER, False)
    # has_bitmaps: the (version 3) target and a source that supports persistent bitmaps,
    # i.e. a version 3 qcow2 (qcow2_supports_persistent_dirty_bitmap()).
    bitmaps = bitmaps_size(image) if image.header.version >= 3 else None
    return Measure(fully - virtual_size + required, fully, bitmaps)


def _file_data_extents(fd: int, length: int) -> list[tuple[int, int]]:
    """Data extents of a file as file-posix's block status sees them (SEEK_DATA/SEEK_HOLE)."""
    extents = []
    pos = 0
    try:
        while pos < length:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break  # ENXIO: no data after pos
            end = os.lseek(fd, start, os.SEEK_HOLE)
            extents.append((start, min(end, length)))
            pos = end
    except (AttributeError, OSError):
        return [(0, length)]  # no hole detection here: everything reads as data
    return extents


def _rle(starts: npt.NDArray[np.int64], codes: npt.NDArray[np.int8]) -> Runs:
    """Merge adjacent runs with the same code."""
    import numpy as np

    if len(codes) <= 1:
        return starts, codes
    keep = np.concatenate(([True], codes[1:] != codes[:-1]))
    return starts[keep], codes[keep]


def _host_file_extents(image: Qcow2Image) -> list[tuple[int, int]]:
    """Data extents of the file the data clusters live in: the image file, or its external
    data file (qcow2_co_block_status() hands the block layer s->data_file there). The data
    file's name is resolved like a backing file name, against the image's directory (qemu 7.2
    resolves it against its working directory; the two agree when run from there)."""
    from ..qcow2.chain import backing_path, has_protocol
    from ..qcow2.reader import ImageFile

    if not image.header.has_data_file:
        return _file_data_extents(image.file.fd, image.file.length)
    name = image.data_file_name
    if name is None or has_protocol(name):
        raise Qcow2Error("the external data file is not named by a plain file path",
                         structure="external data file name", value=name, kind=UNSUPPORTED,
                         filename=image.filename)
    with ImageFile(backing_path(image.filename, name)) as data_file:
        return _file_data_extents(data_file.fd, data_file.length)


def _extent_bounds(extents: list[tuple[int, int]]) -> npt.NDArray[np.int64]:
    """Sorted boundaries [start0, end0, start1, end1, ...] of disjoint data extents: a position
    lies in data when the last boundary at or before it has an even index."""
    import numpy as np

    return np.array([bound for extent in extents for bound in extent], dtype=np.int64)


def _descend_into_file(starts: npt.NDArray[np.int64], codes: npt.NDArray[np.int8],
                       hosts: npt.NDArray[np.int64], normal: npt.NDArray[np.bool_], unit: int,
                       host_bounds: npt.NDArray[np.int64]) -> Runs:
    """BDRV_BLOCK_RECURSE in bdrv_co_block_status(): for a data unit (cluster or subcluster)
    with a host offset, qemu asks the host file for the status of [host, host + unit) and
    takes the file's answer at the file's granularity, with no rounding (file-posix
    request_alignment is 1 without O_DIRECT): the parts over holes of the file (SEEK_HOLE) and
    past its end read as zeros, the parts over data extents (SEEK_DATA) stay data. Each data
    unit of `starts`/`codes` (guest offsets, one entry per unit) is split at the file's extent
    boundaries that fall inside it."""
    import numpy as np

    units = np.flatnonzero(normal)
    if not len(units):
        return starts, codes
    guest = starts[units]
    host = hosts[units]
    # Status at the first byte of each unit: data when inside an extent.
    at = np.searchsorted(host_bounds, host, side="right") - 1
    first_codes = np.where((at >= 0) & (at % 2 == 0), STATUS_DATA, STATUS_ZERO).astype(np.int8)
    # Extent boundaries strictly inside each unit, flattened unit by unit.
    lo = at + 1
    hi = np.searchsorted(host_bounds, host + unit, side="left")
    counts = hi - lo
    owner = np.repeat(np.arange(len(units)), counts)
    rank = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    bound_index = lo[owner] + rank
    inner_starts = guest[owner] + host_bounds[bound_index] - host[owner]
    inner_codes = np.where(bound_index % 2 == 0, STATUS_DATA, STATUS_ZERO).astype(np.int8)
    codes = codes.copy()
    codes[units] = first_codes
    # Inner boundaries lie strictly inside their unit, so no position repeats.
    all_starts = np.concatenate((starts, inner_starts))
    order = np.argsort(all_starts, kind="stable")
    return all_starts[order], np.concatenate((codes, inner_codes))[order]


def _table_runs(image: Qcow2Image, offsets: npt.NDArray[np.uint64],
                l1_indices: npt.NDArray[np.intp], unit: int,
                host_bounds: Optional[npt.NDArray[np.int64]]) -> Runs:
    """Status of every unit (cluster or subcluster) the L2 tables at `offsets` map, the
    tables named by L1 entries `l1_indices`, classified together."""
    import numpy as np

    from .l2 import COMPRESSED, NORMAL, ZERO_ALLOC, ZERO_PLAIN, cluster_types, split_entries
    from .refused import apply_refusals, refused_entries
    from .tablewalk import read_tables

    h = image.header
    n = h.l2_entries
    sub = 32 if h.extended_l2 else 1
    e, bitmap = split_entries(read_tables(image, offsets, h.cluster_size), h.extended_l2)
    off = e & np.uint64(L.L2E_OFFSET_MASK)
    types = cluster_types(e, extended=h.extended_l2, data_file=h.has_data_file)
    comp = types == COMPRESSED
    zero = (types == ZERO_PLAIN) | (types == ZERO_ALLOC)
    allocated = (types == NORMAL) | (types == ZERO_ALLOC)
    if bitmap is not None:
        shifts = np.arange(32, dtype=np.uint64)
        alloc_bits = ((bitmap[:, None] >> shifts) & np.uint64(1)) != 0
        zero_bits = ((bitmap[:, None] >> (shifts + np.uint64(32))) & np.uint64(1)) != 0
        grid = np.full((len(e), sub), STATUS_UNALLOCATED, dtype=np.int8)
        grid[zero_bits] = STATUS_ZERO
        grid[allocated[:, None] & alloc_bits & ~zero_bits] = STATUS_DATA
        grid[~allocated[:, None] & ~zero_bits & alloc_bits] = STATUS_DATA  # invalid
        grid[comp] = STATUS_DATA
        host_grid = off[:, None] + np.arange(sub, dtype=np.uint64) * np.uint64(unit)
        codes = grid.reshape(-1)
        host = host_grid.reshape(-1)
        normal = (allocated[:, None] & alloc_bits & ~zero_bits).reshape(-1)
    else:
        codes = np.full(len(e), STATUS_UNALLOCATED, dtype=np.int8)
        codes[allocated] = STATUS_DATA
        codes[comp] = STATUS_DATA
        codes[zero] = STATUS_ZERO
        host = off
        normal = allocated & ~zero
    apply_refusals(codes, normal, refused_entries(h, types, e, bitmap))
    per_table = n * sub
    starts = (np.repeat(l1_indices.astype(np.int64) * (per_table * unit), per_table)
              + np.tile(np.arange(per_table, dtype=np.int64) * unit, len(l1_indices)))
    if host_bounds is not None:
        return _descend_into_file(starts, codes, host.astype(np.int64), normal, unit,
                                  host_bounds)
    return starts, codes


def _layer_mapping(image: Qcow2Image) -> tuple[npt.NDArray[np.uint64], int,
                                                Optional[npt.NDArray[np.int64]]]:
    """The active L1's L2 table offsets over the virtual size, the status unit (cluster or
    subcluster), and the host file's extent bounds when qemu descends into it (else None)."""
    import numpy as np

    from .refblocks import metadata_preallocated
    from .refused import refuse_unaligned_tables

    h = image.header
    coverage = h.l2_entries * h.cluster_size
    entries = -(-(h.size // 512 * 512) // coverage)
    raw = image.file.read_zero_padded(h.l1_table_offset, entries * 8, "active L1 table")
    l1 = np.frombuffer(raw, dtype=">u8").astype(np.uint64) & np.uint64(L.L1E_OFFSET_MASK)
    refuse_unaligned_tables(l1, h, image.filename)
    unit = h.cluster_size // (32 if h.extended_l2 else 1)
    # qcow2_co_block_status() gives no host offset for encrypted images: no descent there.
    recurse = h.crypt_method == L.CRYPT_NONE and metadata_preallocated(image)
    return l1, unit, _extent_bounds(_host_file_extents(image)) if recurse else None


def _qcow2_runs(image: Qcow2Image) -> tuple[Runs, npt.NDArray[np.uint64]]:
    """Status runs of one qcow2 layer over [0, its virtual size), per qcow2_co_block_status()
    and qcow2_get_subcluster_type(), and the L2 tables of its L1 entries."""
    import numpy as np

    from .tablewalk import L2_BATCH_ENTRIES

    h = image.header
    n = h.l2_entries
    size = h.size // 512 * 512
    coverage = n * h.cluster_size
    l1, unit, host_bounds = _layer_mapping(image)
    _refuse_repeated_tables(image, l1)
    all_starts: list[npt.NDArray[np.int64]] = []
    all_codes: list[npt.NDArray[np.int8]] = []
    per_batch = max(1, L2_BATCH_ENTRIES // n)  # tables classified together
    for lo in range(0, len(l1), per_batch):
        offsets = l1[lo:lo + per_batch]
        rows = np.flatnonzero(offsets)
        gaps = np.flatnonzero(offsets == 0)  # one unallocated run each
        starts = ((gaps + lo) * coverage).astype(np.int64)
        codes = np.full(len(gaps), STATUS_UNALLOCATED, dtype=np.int8)
        if len(rows):
            table_starts, table_codes = _table_runs(image, offsets[rows], rows + lo, unit,
                                                    host_bounds)
            if len(gaps):  # unallocated tables between the others: merged in order
                starts = np.concatenate((starts, table_starts))
                codes = np.concatenate((codes, table_codes))
                order = np.argsort(starts, kind="stable")
                starts, codes = starts[order], codes[order]
            else:
                starts, codes = table_starts, table_codes
        s_, c_ = _rle(starts, codes)
        all_starts.append(s_)
        all_codes.append(c_)
    if not all_starts:
        return (np.array([0], dtype=np.int64), np.array([STATUS_ZERO], dtype=np.int8)), l1
    starts = np.concatenate(all_starts)
    codes = np.concatenate(all_codes)
    keep = starts < size
    starts, codes = _rle(starts[keep], codes[keep])
    # Past the layer's end everything reads as zeros.
    return (np.append(starts, np.int64(size)), np.append(codes, np.int8(STATUS_ZERO))), l1


# L2 entries a layer's runs may take when its L1 names some tables more than once (about half
# a second): past it, such a (corrupt) image is refused rather than walked for minutes.
REPEATED_WALK_BUDGET = 1 << 24


def _refuse_repeated_tables(image: Qcow2Image, l1: npt.NDArray[np.uint64]) -> None:
    """A valid image names each L2 table once. A corrupt one can name one table millions of
    times, and the guest ranges it maps (not the file) would set the time: past the budget
    that is said, as unsupported, instead."""
    import numpy as np

    used = l1[l1 != 0]
    walk = len(used) * image.header.l2_entries
    if walk > REPEATED_WALK_BUDGET and len(np.unique(used)) < len(used):
        distinct = len(np.unique(used))
        raise Qcow2Error(
            f"the active L1 table names {distinct} L2 tables {len(used)} times (a corrupt "
            f"image: see `check`): measuring it here would classify {walk} entries; not "
            "supported", structure="active L1 table", offset=image.header.l1_table_offset,
            kind=UNSUPPORTED, filename=image.filename)


def _single_layer_required(image: Qcow2Image, ssize: int, cluster_size: int
                           ) -> Optional[int]:
    """The data part of `required` for an image without a backing file whose L1 entries each
    map a whole number of target clusters: the target clusters with data under one L1 entry
    depend on its L2 table only, so each distinct table is classified once and counted as
    often as it is named (a hostile L1 names one table millions of times). None when that
    does not hold: the runs of the whole chain are needed then."""
    import numpy as np

    from .tablewalk import L2_BATCH_ENTRIES

    h = image.header
    coverage = h.l2_entries * h.cluster_size
    if h.backing_file_offset or coverage % cluster_size or ssize == 0:
        return None
    l1, unit, host_bounds = _layer_mapping(image)
    full = l1[:-1] if ssize % coverage else l1  # a last entry cut by the virtual size aside
    tables, times = np.unique(full[full != 0], return_counts=True)
    per_table = coverage // cluster_size
    counts = np.zeros(len(tables), dtype=np.int64)
    per_batch = max(1, L2_BATCH_ENTRIES // h.l2_entries)
    for lo in range(0, len(tables), per_batch):
        batch = tables[lo:lo + per_batch]
        starts, codes = _table_runs(image, batch, np.arange(len(batch), dtype=np.intp), unit,
                                    host_bounds)
        _refuse(starts, codes, len(batch) * coverage, cluster_size, image, batch)
        first, last = _data_clusters(starts, codes, len(batch) * coverage, cluster_size)
        counts[lo:lo + len(batch)] = np.bincount(first // per_table, weights=last - first + 1,
                                                 minlength=len(batch)).astype(np.int64)
        # Ranges of one table sharing a cluster (never across tables: they are aligned).
        shared = np.flatnonzero(first[1:] == last[:-1])
        np.subtract.at(counts, lo + first[1:][shared] // per_table, 1)
    required = int((counts * times).sum()) * cluster_size
    if len(full) < len(l1) and int(l1[-1]):  # the cut last entry, clipped at the size
        base = (len(l1) - 1) * coverage
        starts, codes = _table_runs(image, l1[-1:], np.zeros(1, dtype=np.intp), unit,
                                    host_bounds)
        _refuse(starts, codes, ssize - base, cluster_size, image, l1[-1:])
        first, last = _data_clusters(starts, codes, ssize - base, cluster_size)
        required += int((last - first + 1).sum() - np.count_nonzero(first[1:] == last[:-1])
                        ) * cluster_size
    return required


def _data_clusters(starts: npt.NDArray[np.int64], codes: npt.NDArray[np.int8], end: int,
                   cluster_size: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """The target clusters [first, last] each data run below `end` touches, in order."""
    import numpy as np

    starts, codes = _rle(starts, codes)
    ends = np.append(starts[1:], np.int64(end))
    data = (codes == STATUS_DATA) & (starts < end)
    ends = np.minimum(ends, end)
    return starts[data] // cluster_size, (ends[data] - 1) // cluster_size


def _raw_runs(path: str) -> Runs:
    """A raw layer: file-posix data extents are data, holes and the space past EOF zeros."""
    import numpy as np

    from ..qcow2.reader import ImageFile

    with ImageFile(path) as file:
        extents = _file_data_extents(file.fd, file.length)
        length = file.length
    starts, codes = [0], [STATUS_ZERO]
    for a, b in extents:
        starts += [a, b]
        codes += [STATUS_DATA, STATUS_ZERO]
    starts, codes = [*starts, length], [*codes, STATUS_ZERO]
    order = np.array(starts, dtype=np.int64)
    # Later entries win at equal offsets (zero-length runs).
    result_starts, idx = np.unique(order[::-1], return_index=True)
    result_codes = np.array(codes[::-1], dtype=np.int8)[idx]
    return _rle(result_starts, result_codes)


def _refuse(starts: npt.NDArray[np.int64], codes: npt.NDArray[np.int8], end: int,
            cluster_size: int, image: Qcow2Image, tables: npt.NDArray[np.uint64]) -> None:
    """Raise for the first refused entry of one layer's runs that qemu-img measure asks about."""
    from .refused import first_asked_refusal, refused_at

    found = first_asked_refusal(starts, codes, end, cluster_size)
    if found is not None:
        raise refused_at(*found, tables=tables, header=image.header, filename=image.filename)


def _qcow2_layer(image: Qcow2Image) -> tuple[Runs, Locate]:
    """A qcow2 layer's runs, and what names an entry of it that qemu refuses."""
    from ..qcow2.bitmaps import loaded_bitmaps
    from .refused import refused_at

    image.snapshots()  # qcow2_read_snapshots() when qemu opens a layer: it fails on a bad one
    loaded_bitmaps(image)
    runs, l1 = _qcow2_runs(image)
    return runs, partial(refused_at, tables=l1, header=image.header, filename=image.filename)


def _chain_runs(image: Qcow2Image, path: str) -> list[tuple[Runs, Optional[Locate]]]:
    """Runs of the image and of every layer of its backing chain, top first; a raw layer
    (named raw, or no magic: qemu probes raw) by its data extents. Raises Qcow2Error for a
    layer qemu-img could not open either."""
    from ..qcow2.chain import not_read_error, visit

    layers: list[tuple[Runs, Optional[Locate]]] = []
    for visited in visit(path, lambda opened, _: _qcow2_layer(opened),
                         read_raw=lambda layer: (_raw_runs(layer.filename), None), opened=image):
        if visited.value is None:
            raise visited.layer.error or not_read_error(visited.layer)
        layers.append(visited.value)
    return layers


def data_segments(image: Qcow2Image, path: str, ssize: int,
                  cluster_size: int) -> Iterator[tuple[int, int]]:
    """Target cluster ranges [first, last] holding data somewhere in the chain: the loop of
    qcow2_measure() over bdrv_block_status_above(), where every data extent is rounded out to
    whole target clusters."""
    import numpy as np

    from .refused import first_asked_refusal

    layers = _chain_runs(image, path)
    # Each layer's run starts are sorted and distinct: one layer needs no sort (a hostile
    # layer has millions of runs), several are merged by one sort.
    runs = layers[0][0][0]
    if len(layers) == 1 and bool(np.all(runs[1:] > runs[:-1])):
        bounds = np.concatenate(([0], runs[(runs > 0) & (runs < ssize)], [ssize]))
    else:
        bounds = np.sort(np.concatenate([starts for (starts, _), _r in layers] + [
            np.array([0, ssize], dtype=np.int64)]))
        bounds = bounds[(bounds >= 0) & (bounds <= ssize)]
        bounds = bounds[np.concatenate(([True], bounds[1:] != bounds[:-1]))]
    seg_starts = bounds[:-1]
    seg_ends = bounds[1:]
    status = np.full(len(seg_starts), STATUS_UNALLOCATED, dtype=np.int8)
    source = np.zeros(len(seg_starts), dtype=np.intp)  # the layer that says
    for k, ((starts, codes), _locate) in enumerate(layers):
        pending = status == STATUS_UNALLOCATED
        if not pending.any():
            break
        at = codes[np.searchsorted(starts, seg_starts, side="right") - 1]
        status[pending] = at[pending]  # a refused entry ends the descent too (an error)
        source[pending] = k
    found = first_asked_refusal(seg_starts, status, ssize, cluster_size)
    locate = None if found is None else layers[source[np.searchsorted(
        seg_starts, found[0], side="right") - 1]][1]
    if found is not None and locate is not None:  # raw layers refuse nothing
        raise locate(*found)
    data = status == STATUS_DATA
    first = seg_starts[data] // cluster_size
    last = (seg_ends[data] - 1) // cluster_size
    if not len(first):
        return
    # Sorted, disjoint segments (so `last` never decreases): merge the cluster ranges they
    # touch where one starts at most one cluster after the previous one ends.
    breaks = np.flatnonzero(first[1:] > last[:-1] + 1) + 1
    run_first = first[np.concatenate(([0], breaks))]
    run_last = last[np.concatenate((breaks - 1, [len(last) - 1]))]
    yield from zip(run_first.tolist(), run_last.tolist())
