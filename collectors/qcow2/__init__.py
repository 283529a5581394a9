"""The qcow2 format, pure Python (no numpy): every layout declared once, the one read-only
reader, header, image, bitmaps, LUKS, the backing chain, the fast end offset from the refcounts,
qemu's size formula, and the `qemu-img info` and header views."""
