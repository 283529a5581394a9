"""Image files are judged by their filesystem; one disk is one series whatever name reached it.

The filesystem case runs on a small tmpfs filled to a chosen percentage; its expected figures
are derived here from statvfs and compared with df. The identity case uses a loop device, a
symlink to it, a device node made with mknod and a stand-in sysfs for device-mapper.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path
from typing import Callable, Iterator

import pytest

from qcow2_monitor.collectors.common.units import plain_number
from qcow2_monitor.collectors.host import identity
from qcow2_monitor.collectors.report.collect import collect
from qcow2_monitor.collectors.report.metrics import (
    filesystems,
    identity_labels,
    image_metrics,
    info_labels,
)

from daemons import make_image, run
from tree import BIN

MiB = 1024**2
IMAGES = 6
FILL = 0.92  # the chosen percentage


@pytest.fixture()
def full_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs holding six thin 64 MiB images, filled to 92 % by a plain file."""
    mount = tmp_path / "fs"
    mount.mkdir()
    run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0755", "tmpfs", str(mount)])
    try:
        for n in range(IMAGES):
            make_image(mount / f"vm{n}.qcow2", "64M", write=[f"write -P {n + 1} 0 1M"])
        st = os.statvfs(mount)
        size = (st.f_blocks - st.f_bfree + st.f_bavail) * st.f_frsize
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        with open(mount / "filler", "wb") as filler:
            filler.write(b"\xff" * (int(size * FILL) - used))
        yield mount
    finally:
        run(["umount", str(mount)])


def test_usage_and_headroom_are_the_filesystems(full_tmpfs: Path) -> None:
    st = os.statvfs(full_tmpfs)
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    available = st.f_bavail * st.f_frsize
    df = subprocess.run(["df", "-B1", "--output=used,avail", str(full_tmpfs)],
                        capture_output=True, text=True, check=True).stdout.split()
    assert (int(df[2]), int(df[3])) == (used, available)  # the figures df shows
    assert round(used / (used + available), 2) == FILL
    collection = collect([str(full_tmpfs)])
    assert len(collection.records) == IMAGES
    for record in collection.records:
        assert record.usage is not None
        container = record.usage.container
        assert (container.kind, container.filesystem) == ("file", str(full_tmpfs))
        assert (container.size, container.headroom, container.used) == (
            used + available, available, used)
        assert record.usage.usage_ratio == used / (used + available)
    (fs,) = filesystems(collection)
    assert (fs.mountpoint, fs.size, fs.free, fs.images) == (
        str(full_tmpfs), used + available, available, IMAGES)
    assert fs.virtual_sizes == IMAGES * 64 * MiB
    assert fs.end_offsets == sum(r.usage.end_offset for r in collection.records
                                 if r.usage is not None)
    assert fs.overcommit_ratio == IMAGES * 64 * MiB / (used + available)

    # Every image is as full as its filesystem: -c 90 is CRITICAL (the file's own size would say
    # a few percent).
    proc = subprocess.run([str(BIN / "check_qcow2"), "-f", str(full_tmpfs), "-w", "80", "-c",
                           "90"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout
    assert proc.stdout.startswith(f"QCOW2 CRITICAL - {IMAGES} of {IMAGES} images: ")
    assert "usage 92" in proc.stdout.split(" | ")[0]

    # Overcommit: about 6.4 times the filesystem, thresholded on its own.
    proc = subprocess.run([str(BIN / "check_qcow2"), "-f", str(full_tmpfs), "-c", "99",
                           "--warning-overcommit", "2", "--critical-overcommit", "10"],
                          capture_output=True, text=True, timeout=60)
    ratio = fs.overcommit_ratio
    assert 2 < ratio < 10
    assert proc.returncode == 1, proc.stdout
    assert f"filesystem {full_tmpfs}: overcommit" in proc.stdout.splitlines()[0]
    assert f"'{full_tmpfs} overcommit_ratio'={plain_number(round(ratio, 8))};2;10;0" in \
        proc.stdout


def test_one_disk_one_series_whatever_name(tmp_path: Path,
                                           loop_device: Callable[..., str]) -> None:
    image = make_image(tmp_path / "blk.qcow2", "16M", write=["write 0 1M"])
    device = loop_device(image)
    link = tmp_path / "by-name"
    link.symlink_to(device)
    for spec in (device, str(link)):
        (record,) = collect([spec]).records
        assert identity_labels(record) == (("path", device),)  # the kernel's name
        assert dict(info_labels(record))["name"] == spec  # the name it was given
    # Device-mapper (LVM, dm-crypt): the kernel numbers its devices dm-N anew at every boot, so
    # the series is named /dev/mapper/NAME from sysfs. This kernel has no device-mapper: a copy
    # of sysfs stands in, with the loop device's entry given a dm/name.
    number = f"{os.major(os.stat(device).st_rdev)}:{os.minor(os.stat(device).st_rdev)}"
    sysfs = tmp_path / "sys-dev-block"
    (sysfs / number / "dm").mkdir(parents=True)
    (sysfs / number / "dm" / "name").write_text("vg0-vm1\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(identity, "SYS_DEV_BLOCK", str(sysfs))
        for spec in (device, str(link)):
            (record,) = collect([spec]).records
            assert record.error is None and record.usage is not None
            assert identity_labels(record) == (("path", "/dev/mapper/vg0-vm1"),)
    # A device node outside /dev (here: a copy made with mknod) maps to the kernel's name.
    node = tmp_path / "node"
    os.mknod(node, 0o600 | stat.S_IFBLK, os.stat(device).st_rdev)
    (record,) = collect([str(node)]).records
    assert identity_labels(record) == (("path", device),)


def test_a_layer_keeps_its_series_when_an_overlay_appears(tmp_path: Path) -> None:
    base = make_image(tmp_path / "base.qcow2", "16M", write=["write 0 1M"])
    alone = {m.name: m.labels for m in image_metrics(collect([str(base)]).records[0])}
    top = make_image(tmp_path / "top.qcow2", backing=base)
    records = collect([str(top)], chain=True).records
    assert [r.depth for r in records] == [0, 1]
    layered = {m.name: m.labels for m in image_metrics(records[1])}
    assert layered["image_end_offset_bytes"] == alone["image_end_offset_bytes"] == (
        ("path", str(base)),)
    assert dict(layered["image_info"])["depth"] == "1"  # depth lives on the info series
