"""What makes two names one disk, said once: by name (the disk's one canonical path, the
``path`` label of every series) and by stat (device and inode, or device number, to match a
live figure to an analysed image).

A disk is reached by many names: a symlink, ``/dev/vg/lv``, ``/dev/mapper/vg-lv``, ``/dev/dm-3``,
a ``/proc/PID/fd`` link, a device node made elsewhere. Both identities look through them all.
"""

from __future__ import annotations

import os
import stat

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional, TypeAlias, Union

# sysfs directory of block devices by "major:minor" (a constant so that tests can stand in a
# device-mapper entry on kernels without device-mapper).
SYS_DEV_BLOCK = "/sys/dev/block"

# (kind, numbers): ("file", st_dev, st_ino) or ("block", st_rdev).
DiskIdentity: TypeAlias = "tuple[Union[str, int], ...]"


def identity_of(st: os.stat_result) -> Optional[DiskIdentity]:
    """What makes two names one disk: device and inode of a file, the device number of a block
    device (every alias of an LVM volume or a dm device has the same st_rdev)."""
    if stat.S_ISBLK(st.st_mode):
        return ("block", st.st_rdev)
    if stat.S_ISREG(st.st_mode):
        return ("file", st.st_dev, st.st_ino)
    return None


def identity_of_path(path: str) -> Optional[DiskIdentity]:
    """identity_of() the file `path` names, or None when it cannot be stat'ed."""
    try:
        return identity_of(os.stat(path))
    except OSError:
        return None


def block_device_stat(path: str) -> Optional[os.stat_result]:
    """The stat of the block device `path` names, or None (not one, or cannot be stat'ed)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st if stat.S_ISBLK(st.st_mode) else None


def sysfs_block_dir(st: os.stat_result) -> str:
    """The sysfs directory of the block device `st`."""
    return os.path.join(SYS_DEV_BLOCK, f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}")


def sysfs_dm(st: os.stat_result, entry: str) -> Optional[str]:
    """The device-mapper attribute `entry` (``name``, ``uuid``) of the block device `st`, or
    None when it is not a device-mapper device (or sysfs cannot be read)."""
    try:
        with open(os.path.join(sysfs_block_dir(st), "dm", entry), encoding="utf-8") as file:
            return file.read().strip()
    except OSError:
        return None


def canonical_path(path: str) -> str:
    """The one name of a disk, whatever symlink or device node reached it.

    Files: their real path. Block devices: ``/dev/mapper/NAME`` for device-mapper (LVM, crypt,
    multipath: the kernel's ``dm-N`` numbers change between boots), else ``/dev/`` plus the
    kernel's name (``/dev/loop0``, ``/dev/sda``), read from sysfs by device number so that a
    device node elsewhere maps to the same name.
    """
    real = os.path.realpath(path)
    st = block_device_stat(real)
    if st is None:
        return real
    dm_name = sysfs_dm(st, "name")
    if dm_name is not None:
        return "/dev/mapper/" + dm_name
    sys_dir = sysfs_block_dir(st)
    if not os.path.exists(sys_dir):  # no sysfs (a container without it): keep the node
        return real
    return "/dev/" + os.path.basename(os.path.realpath(sys_dir))
