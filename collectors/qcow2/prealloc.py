"""qemu-img measure's size formula (block/qcow2.c qcow2_calc_prealloc_size and
qcow2_refcount_metadata_size in block/qcow2-refcount.c; docs/qcow2-format.md §9): how large
an image grows when every cluster is allocated. Pure arithmetic, on the fast usage path."""

from __future__ import annotations

from . import layout as L
from .image import Qcow2Image


def refcount_metadata_size(clusters: int, cluster_size: int, refcount_order: int) -> int:
    """Bytes of refcount table + blocks needed to count `clusters` clusters plus themselves:
    the fixed point qemu iterates to (generous_increase = false)."""
    blocks_per_table_cluster = cluster_size // L.REFTABLE_ENTRY_SIZE
    refcounts_per_block = cluster_size * 8 // (1 << refcount_order)
    table = blocks = n = 0
    while True:
        last = n
        blocks = -(-(clusters + table + blocks) // refcounts_per_block)
        table = -(-blocks // blocks_per_table_cluster)
        n = clusters + blocks + table
        if n == last:
            return (blocks + table) * cluster_size


def prealloc_size(virtual_size: int, cluster_size: int, refcount_order: int,
                  extended_l2: bool) -> int:
    """qcow2_calc_prealloc_size(): metadata plus every data cluster of a full image."""
    aligned = L.align_up(virtual_size, cluster_size)
    l2e_size = L.L2E_SIZE_EXTENDED if extended_l2 else L.L2E_SIZE_NORMAL
    meta = cluster_size  # header
    nl2e = L.align_up(aligned // cluster_size, cluster_size // l2e_size)
    meta += nl2e * l2e_size
    nl1e = L.align_up(nl2e * l2e_size // cluster_size, cluster_size // L.L1E_SIZE)
    meta += nl1e * L.L1E_SIZE
    meta += refcount_metadata_size((meta + aligned) // cluster_size, cluster_size,
                                   refcount_order)
    return meta + aligned


def fully_allocated_size(image: Qcow2Image) -> int:
    """qemu-img measure's fully-allocated figure with the image's own cluster size, refcount
    width and L2 entry size, plus its LUKS header area."""
    h = image.header
    size = prealloc_size(h.size, h.cluster_size, h.refcount_order, h.extended_l2)
    crypto = image.extension(L.QCOW2_EXT_MAGIC_CRYPTO_HEADER)
    if crypto is not None:
        size += L.align_up(L.CryptoHeaderExtension.from_bytes(crypto.data).length,
                           h.cluster_size)
    return size
