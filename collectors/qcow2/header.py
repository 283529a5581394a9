"""The qcow2 header: validated and resolved from the image's first bytes with the bounds
qemu's qcow2_do_open() enforces (docs/qcow2-format.md §1 and §10), before anything is
allocated or read from a header value."""

from __future__ import annotations

from ..common.errors import INVALID, NOT_QCOW2, OUT_OF_BOUNDS, TRUNCATED, UNSUPPORTED, Qcow2Error
from . import layout as L

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional

Header = L.Header  # re-exported: the resolved header lives with every other layout


def _err(message: str, structure: str, offset: Optional[int] = None,
         value: Optional[int] = None, kind: str = INVALID) -> Qcow2Error:
    return Qcow2Error(message, structure=structure, offset=offset, value=value, kind=kind)


def parse_header(head: bytes, file_length: int) -> Header:
    """Validate and resolve the header from the first bytes of the image (qcow2_do_open)."""
    if len(head) < 4 or head[:4] != L.QCOW_MAGIC:
        raise _err("not a qcow2 image (bad magic)", "header", 0, kind=NOT_QCOW2)
    if len(head) < L.V2_HEADER_LENGTH:
        raise _err(f"file is only {file_length} bytes, shorter than the 72-byte header",
                   "header", 0, kind=TRUNCATED)
    v2 = L.HeaderV2.from_bytes(head)
    if v2.version not in (2, 3):
        raise _err(f"unsupported qcow2 version {v2.version}", "header.version", 4,
                   v2.version, UNSUPPORTED)
    if not L.MIN_CLUSTER_BITS <= v2.cluster_bits <= L.MAX_CLUSTER_BITS:
        raise _err(f"unsupported cluster_bits {v2.cluster_bits} (qemu accepts 9..21)",
                   "header.cluster_bits", 20, v2.cluster_bits, UNSUPPORTED)
    cluster_size = 1 << v2.cluster_bits
    if v2.version == 2:
        # A version 2 header is 72 bytes: never read v3 fields from it (qcow2.txt); the
        # Header defaults are qemu's v2 values.
        header = L.Header(**vars(v2))
        _validate_header(header)
        return header
    if len(head) < L.V3_HEADER_LENGTH:
        raise _err(f"file is only {file_length} bytes, shorter than the 104-byte v3 header",
                   "header", 0, kind=TRUNCATED)
    v3 = L.HEADER_V3_STRUCT.unpack_from(head, L.HEADER_V3_OFFSET)
    header_length = v3[-1]
    if header_length < L.V3_HEADER_LENGTH:
        raise _err(f"header_length {header_length} is shorter than 104",
                   "header.header_length", 100, header_length)
    if header_length > cluster_size:
        raise _err(f"header_length {header_length} exceeds the cluster size {cluster_size}",
                   "header.header_length", 100, header_length)
    compression_type = L.COMPRESSION_ZLIB
    if header_length > L.COMPRESSION_TYPE_OFFSET:
        compression_type = head[L.COMPRESSION_TYPE_OFFSET]
    incompatible, compatible, autoclear, refcount_order, _ = v3
    header = L.Header(**vars(v2), incompatible_features=incompatible,
                      compatible_features=compatible, autoclear_features=autoclear,
                      refcount_order=refcount_order, header_length=header_length,
                      compression_type=compression_type)
    _validate_header(header)
    return header


def _validate_table(offset: int, entries: int, entry_len: int, max_bytes: int,
                    cluster_size: int, structure: str, field_offset: int) -> None:
    """qcow2_validate_table(): bounded size, aligned offset."""
    if entries > max_bytes // entry_len:
        raise _err(f"{entries} entries exceed qemu's {max_bytes} byte limit", structure,
                   field_offset, entries, OUT_OF_BOUNDS)
    if (2**63 - 1) - entries * entry_len < offset or offset % cluster_size:
        raise _err(f"offset 0x{offset:x} invalid (not cluster aligned or too large)",
                   structure, field_offset, offset)


def _validate_header(h: Header) -> None:
    cs = h.cluster_size
    if h.backing_file_offset > cs:
        raise _err(f"backing_file_offset 0x{h.backing_file_offset:x} beyond the first cluster",
                   "header.backing_file_offset", 8, h.backing_file_offset)
    if h.refcount_order > 6:
        raise _err(f"unsupported refcount_order {h.refcount_order} (max 6)",
                   "header.refcount_order", 96, h.refcount_order, UNSUPPORTED)
    if h.crypt_method > L.CRYPT_LUKS:
        raise _err(f"unsupported crypt_method {h.crypt_method}", "header.crypt_method", 32,
                   h.crypt_method, UNSUPPORTED)
    if h.compression_type not in L.COMPRESSION_TYPE_NAMES:
        raise _err(f"unsupported compression_type {h.compression_type}",
                   "header.compression_type", L.COMPRESSION_TYPE_OFFSET, h.compression_type,
                   UNSUPPORTED)
    if bool(h.incompatible_features & L.QCOW2_INCOMPAT_COMPRESSION) != (h.compression_type != 0):
        raise _err("compression type bit does not match compression_type "
                   f"{h.compression_type}", "header.incompatible_features", 72,
                   h.incompatible_features)
    if h.extended_l2 and h.cluster_bits < 14:
        raise _err(f"extended L2 entries need clusters of at least 16 KiB (cluster size {cs})",
                   "header.incompatible_features", 72, h.incompatible_features)
    if h.data_file_raw and not h.has_data_file:
        raise _err("raw external data bit set without the external data file bit",
                   "header.autoclear_features", 88, h.autoclear_features)
    _validate_table(h.l1_table_offset, h.l1_size, L.L1E_SIZE, L.QCOW_MAX_L1_SIZE, cs,
                    "active L1 table", 40)
    coverage = cs * h.l2_entries
    needed_l1 = -(-h.size // coverage)
    if needed_l1 > 2**31 - 1:
        raise _err(f"virtual size {h.size} is too big", "header.size", 24, h.size,
                   OUT_OF_BOUNDS)
    if h.l1_size < needed_l1:
        raise _err(f"L1 table too small: {h.l1_size} entries for virtual size {h.size} "
                   f"(needs {needed_l1})", "header.l1_size", 36, h.l1_size)
    if h.refcount_table_clusters == 0:
        raise _err("image has no refcount table", "header.refcount_table_clusters", 56, 0)
    _validate_table(h.refcount_table_offset, h.refcount_table_clusters, cs,
                    L.QCOW_MAX_REFTABLE_SIZE, cs, "refcount table", 48)
    if h.nb_snapshots > L.QCOW_MAX_SNAPSHOTS:
        raise _err(f"{h.nb_snapshots} snapshots exceed qemu's limit of "
                   f"{L.QCOW_MAX_SNAPSHOTS}", "header.nb_snapshots", 60, h.nb_snapshots,
                   OUT_OF_BOUNDS)
    _validate_table(h.snapshots_offset, h.nb_snapshots, L.SNAPSHOT_HEADER_STRUCT.size,
                    L.SNAPSHOT_HEADER_STRUCT.size * L.QCOW_MAX_SNAPSHOTS, cs,
                    "snapshot table", 64)


def shorter_than_header(exc: Qcow2Error, file_length: int) -> Qcow2Error:
    """An image refused on the zeros read past its end: say that the file is truncated."""
    if exc.kind == NOT_QCOW2 or file_length >= L.V3_HEADER_LENGTH:
        return exc
    exc.message += f" (the file is only {file_length} bytes, shorter than a qcow2 header)"
    exc.kind = TRUNCATED
    exc.args = (exc.message,)
    return exc
