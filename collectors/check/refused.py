"""L2 entries qemu's block status refuses: qcow2_get_host_offset() and
count_contiguous_subclusters() (block/qcow2-cluster.c, qemu 7.2) call
qcow2_signal_corruption() and fail with EIO on them, so `qemu-img measure` exits 1 ("Unable to
get block status: Input/output error") as soon as its walk over the guest ranges reaches one.
`qemu-img check` does not read the guest ranges this way and reports such images without
failing; the check here does the same (docs/qcow2-format.md §9).

Their codes extend the guest-range status codes (.status): a range with one of them is a range
qemu cannot get the status of."""

from __future__ import annotations

from typing import Optional

import numpy as np
import numpy.typing as npt

from ..common.errors import IO_ERROR, Qcow2Error
from ..qcow2 import layout as L
from .l2 import COMPRESSED, NORMAL, UNALLOCATED, ZERO_ALLOC, ZERO_PLAIN, Types
from .status import (
    FIRST_REFUSED,
    REFUSED_COMPRESSED_DATA_FILE,
    REFUSED_INVALID,
    REFUSED_L2_TABLE_UNALIGNED,
    REFUSED_UNALIGNED,
    REFUSED_ZERO_V2,
    STATUS_DATA,
)

# qemu's own words for each (qcow2_get_host_offset(), count_contiguous_subclusters()).
_REASONS = {
    REFUSED_UNALIGNED: "cluster allocation offset not cluster aligned",
    REFUSED_ZERO_V2: "zero cluster entry in a version 2 (pre-v3) image",
    REFUSED_INVALID: "invalid cluster entry (its subcluster bitmap has a subcluster both "
                     "allocated and zero, or allocation bits on an unallocated cluster)",
    REFUSED_COMPRESSED_DATA_FILE: "compressed cluster entry in an image with an external "
                                  "data file",
    REFUSED_L2_TABLE_UNALIGNED: "L2 table offset not cluster aligned",
}


def refused_entries(header: L.Header, types: Types, entries: npt.NDArray[np.uint64],
                    bitmaps: Optional[npt.NDArray[np.uint64]]) -> npt.NDArray[np.int8]:
    """The refusal code of each L2 entry (0: qemu gets its status), in the order qemu tests
    them: with extended L2 an invalid bitmap makes the whole cluster INVALID before its offset
    is looked at; a version 2 zero entry fails before its offset is."""
    cs = np.uint64(header.cluster_size)
    refused = np.zeros(len(types), dtype=np.int8)
    # NORMAL and ZERO_ALLOC (with subclusters also UNALLOCATED_ALLOC: a NORMAL cluster type)
    # take the host offset, which must be cluster aligned.
    with_offset = (types == NORMAL) | (types == ZERO_ALLOC)
    refused[with_offset & ((entries & np.uint64(L.L2E_OFFSET_MASK)) % cs != 0)] = (
        REFUSED_UNALIGNED)
    if header.version < 3:
        refused[(types == ZERO_PLAIN) | (types == ZERO_ALLOC)] = REFUSED_ZERO_V2
    if header.has_data_file:
        refused[types == COMPRESSED] = REFUSED_COMPRESSED_DATA_FILE
    if bitmaps is not None:  # qcow2_get_subcluster_type(): QCOW2_SUBCLUSTER_INVALID
        alloc = bitmaps & np.uint64(0xFFFFFFFF)
        zero = bitmaps >> np.uint64(32)
        invalid = (((types == NORMAL) & ((alloc & zero) != 0))
                   | ((types == UNALLOCATED) & (alloc != 0)))
        refused[invalid] = REFUSED_INVALID
    return refused


def first_asked_refusal(starts: npt.NDArray[np.int64], codes: npt.NDArray[np.int8], end: int,
                        target_cluster_size: int) -> Optional[tuple[int, int]]:
    """(guest offset, code) of the first refused range qemu-img measure asks about, or None.
    qcow2_measure() walks [0, end) in order and after data jumps to the next target cluster
    boundary ("extend pnum to end of cluster"): what lies between is never asked about. `starts`
    and `codes`: sorted runs (run i ends where run i + 1 starts)."""
    ends = np.minimum(np.append(starts[1:], np.int64(end)), end)
    data_ends = np.where(codes == STATUS_DATA, ends, 0)
    before = np.concatenate(([0], np.maximum.accumulate(data_ends)[:-1]))
    asked_from = np.maximum(starts, -(-before // target_cluster_size) * target_cluster_size)
    hit = np.flatnonzero((codes >= FIRST_REFUSED) & (asked_from < ends))
    return (int(asked_from[hit[0]]), int(codes[hit[0]])) if len(hit) else None


def refused_at(guest: int, code: int, *, tables: npt.NDArray[np.uint64], header: L.Header,
               filename: str) -> Qcow2Error:
    """The error for a refused entry met at `guest`; `tables[i]` is the L2 table mapping guest
    range i (as many bytes as one L2 table maps)."""
    coverage = header.l2_entries * header.cluster_size
    table = int(tables[guest // coverage])
    return refusal_error(code, f"L2 table at 0x{table:x} entry "
                         f"{guest % coverage // header.cluster_size}", filename=filename)


def refusal_error(code: int, structure: str, *, filename: str, offset: Optional[int] = None,
                  value: Optional[int] = None) -> Qcow2Error:
    """What `measure` says instead of a figure qemu-img measure does not give."""
    return Qcow2Error(
        f"{_REASONS[code]}: qemu's block status refuses it as corrupt, so qemu-img measure "
        "fails (I/O error)", structure=structure, offset=offset, value=value,
        kind=IO_ERROR, filename=filename)


def apply_refusals(codes: npt.NDArray[np.int8], normal: npt.NDArray[np.bool_],
                   refused: npt.NDArray[np.int8]) -> None:
    """Give every unit (cluster, or each subcluster of a row) of a refused entry its refusal
    code, in place; such a unit is not data qemu would descend into the host file for."""
    rows = refused != 0
    codes.reshape(len(refused), -1)[rows] = refused[rows, None]
    normal.reshape(len(refused), -1)[rows] = False


def refuse_unaligned_tables(l1: npt.NDArray[np.uint64], header: L.Header,
                            filename: str) -> None:
    """l2_load() refuses an L2 table offset that is not cluster aligned ("L2 table offset
    %#x unaligned"). Said for any L1 entry of a layer within its virtual size, even one whose
    range a layer above covers (which qemu would not visit): a corrupt layer either way."""
    unaligned = np.flatnonzero(l1 % np.uint64(header.cluster_size))
    if len(unaligned):
        index = int(unaligned[0])
        raise refusal_error(REFUSED_L2_TABLE_UNALIGNED, f"active L1 table entry {index}",
                            offset=header.l1_table_offset + 8 * index, value=int(l1[index]),
                            filename=filename)
