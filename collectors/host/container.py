"""Where an image lives (regular file or block device) and how far it can grow there."""

from __future__ import annotations

import os

from ..qcow2.reader import ImageFile
from ..report.model import Container, ContainerKind


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
        return Container(ContainerKind.BLOCK, file.length,
                         max(file.length - image_end_offset, 0), file.length, None,
                         used=min(image_end_offset, file.length))
    st = os.statvfs(os.path.dirname(os.path.abspath(file.path)) or "/")
    used = (st.f_blocks - st.f_bfree) * st.f_frsize  # df's Used
    available = st.f_bavail * st.f_frsize  # df's Available: blocks reserved for root excluded
    # The size as df's Use% counts it (used / (used + available)): what the images can have.
    return Container(ContainerKind.FILE, used + available, available, file.length,
                     file.stat.st_blocks * 512, used=used, filesystem=mount_point(file.path))
