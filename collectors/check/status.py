"""The status of a guest range, as qemu-img measure's walk over bdrv_block_status_above() sees
it, one small code per range (docs/qcow2-format.md §7)."""

STATUS_UNALLOCATED = 0  # look at the layer below (zero if none)
STATUS_ZERO = 1
STATUS_DATA = 2
# A range whose L2 entry qcow2_get_host_offset() refuses as corrupt (EIO): see .refused.
REFUSED_UNALIGNED = 3
REFUSED_ZERO_V2 = 4
REFUSED_INVALID = 5
REFUSED_COMPRESSED_DATA_FILE = 6
REFUSED_L2_TABLE_UNALIGNED = 7
FIRST_REFUSED = REFUSED_UNALIGNED
