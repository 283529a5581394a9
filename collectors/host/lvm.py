"""LVM volumes under images written directly on block devices: which volume group and logical
volume a device-mapper device is, the VG's extent size and free space (read-only ``vgs``).

LVM names each active LV's device-mapper device ``VG-LV`` with every ``-`` inside the VG and LV
names doubled (``vg--with--dash-lv``), and gives it a dm UUID starting ``LVM-``; hidden
sub-volumes add a layer after one more single dash (``vg-lv-real``). dm-crypt, multipath and
other device-mapper users have other UUID prefixes: they are no LV.
"""

from __future__ import annotations

from ..common.record import frozen_record
from . import identity

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional

LVM_UUID_PREFIX = "LVM-"
VGS_TIMEOUT = 5.0


@frozen_record
class LogicalVolume:
    vg: str
    lv: str

    @property
    def name(self) -> str:
        """As lvextend takes it: VG/LV."""
        return f"{self.vg}/{self.lv}"


@frozen_record
class VolumeGroup:
    name: str
    extent_size: int  # bytes
    free: int  # bytes


def split_dm_name(name: str) -> Optional[LogicalVolume]:
    """VG and LV of an LVM device-mapper name, or None when it is not one (no separator, or a
    hidden layer such as ``-real``)."""
    parts: list[str] = [""]
    i = 0
    while i < len(name):
        if name[i] == "-":
            if name[i + 1:i + 2] == "-":
                parts[-1] += "-"
                i += 2
                continue
            parts.append("")
        else:
            parts[-1] += name[i]
        i += 1
    if len(parts) != 2 or not all(parts):
        return None
    return LogicalVolume(parts[0], parts[1])


def logical_volume(path: str) -> Optional[LogicalVolume]:
    """The LV a block device is, from sysfs (``dm/name``, ``dm/uuid``), or None."""
    st = identity.block_device_stat(path)
    if st is None:
        return None
    name = identity.sysfs_dm(st, "name")
    if not name:
        return None
    uuid = identity.sysfs_dm(st, "uuid")
    if uuid is not None and not uuid.startswith(LVM_UUID_PREFIX):
        return None  # dm-crypt, multipath, ...: device-mapper but no LV
    return split_dm_name(name)


def parse_vgs(text: str) -> dict[str, VolumeGroup]:
    """``vgs --noheadings --nosuffix --units b --separator '|' -o
    vg_name,vg_extent_size,vg_free`` output."""
    groups: dict[str, VolumeGroup] = {}
    for line in text.splitlines():
        fields = [field.strip() for field in line.split("|")]
        if len(fields) == 3 and fields[1].isdigit() and fields[2].isdigit():
            groups[fields[0]] = VolumeGroup(fields[0], int(fields[1]), int(fields[2]))
    return groups


def volume_groups(timeout: float = VGS_TIMEOUT) -> tuple[dict[str, VolumeGroup], Optional[str]]:
    """Every VG's extent size and free space from one read-only ``vgs`` call (``--readonly``:
    no lock, no metadata update), and why not when it could not tell (not root, no LVM)."""
    import subprocess  # only when advice needs the VGs: a run at rest starts no process

    from .command import run_bounded

    argv = ["vgs", "--readonly", "--noheadings", "--nosuffix", "--units", "b",
            "--separator", "|", "-o", "vg_name,vg_extent_size,vg_free"]
    try:
        done = run_bounded(argv, timeout)
    except FileNotFoundError:
        return {}, "vgs not found (package lvm2)"
    except subprocess.TimeoutExpired:
        return {}, f"vgs did not answer within {timeout:g} s"
    except OSError as exc:
        return {}, f"cannot run vgs: {exc.strerror or exc}"
    groups = parse_vgs(done.stdout)
    if not groups and done.returncode != 0:
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        return {}, "vgs: " + ("; ".join(lines[:1]) or f"exit status {done.returncode}")
    return groups, None


def lvm_size(size: int) -> str:
    """A size as lvextend -L takes it (binary units whatever their case: G is GiB)."""
    for unit, factor in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"
