"""Where an image lives (regular file or block device), how far it can grow there, and
whether a running qemu holds it open for writing."""

from __future__ import annotations

import fcntl
import os
import struct

from .model import CONTAINER_BLOCK, CONTAINER_FILE, Container
from .reader import ImageFile

# qemu's file-posix permission lock bytes (docs/qcow2-format.md §11): a process using
# the WRITE permission holds a shared lock on byte 100 + 1.
QEMU_LOCK_BYTE_WRITE = 101
F_OFD_GETLK = getattr(fcntl, "F_OFD_GETLK", 36)
# struct flock on Linux: short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid.
_FLOCK = struct.Struct("@hhqqi4x")


def mount_point(path: str) -> str:
    """The mount point of the filesystem holding `path`: the highest directory above it on the
    same device (os.path.ismount() misses bind mounts of a directory of the same device)."""
    current = os.path.dirname(os.path.realpath(path)) or "/"
    device = os.stat(current).st_dev
    while current != "/":
        parent = os.path.dirname(current)
        try:
            if os.stat(parent).st_dev != device:
                break
        except OSError:
            break
        current = parent
    return current


def container_of(file: ImageFile, image_end_offset: int) -> Container:
    """A block device is its own container. A file's container is its filesystem: the image
    shares it with every other file there, so only the filesystem's own figures say how full
    it is and how far the image can still grow."""
    if file.is_block_device:
        return Container(CONTAINER_BLOCK, file.length,
                         max(file.length - image_end_offset, 0), file.length, None,
                         used=min(image_end_offset, file.length))
    st = os.statvfs(os.path.dirname(os.path.abspath(file.path)) or "/")
    used = (st.f_blocks - st.f_bfree) * st.f_frsize  # df's Used
    available = st.f_bavail * st.f_frsize  # df's Available: blocks reserved for root excluded
    # The size as df's Use% counts it (used / (used + available)): what the images can have.
    return Container(CONTAINER_FILE, used + available, available, file.length,
                     file.stat.st_blocks * 512, used=used, filesystem=mount_point(file.path))


def held_for_writing(file: ImageFile) -> bool:
    """True when another open file description holds qemu's write-permission lock byte.

    F_OFD_GETLK only asks: it takes no lock, so a running VM is not disturbed, and it works on
    a read-only descriptor. Images opened with locking=off cannot be detected this way.
    """
    probe = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, QEMU_LOCK_BYTE_WRITE, 1, 0)
    try:
        answer = fcntl.fcntl(file.fd, F_OFD_GETLK, probe)
    except OSError:
        return False  # filesystem without OFD locks: qemu cannot lock it either
    return bool(_FLOCK.unpack(answer)[0] != fcntl.F_UNLCK)
