"""Extension advice for images on block devices (oVirt/VDSM's watermark), on loop devices: below
and above the watermark, with the chunk and percent options; and the LVM wording (VG/LV from
the device-mapper name, lvextend, the VG's extent size and free space from a real `vgs`).

This kernel has no device-mapper: the LV is a loop device whose sysfs entry a copy of sysfs
gives a dm/name and dm/uuid as LVM writes them; the volume group is real (pvcreate/vgcreate on
another loop device, with LVM's configuration and metadata backups in a temporary directory,
LVM_SYSTEM_DIR), so `vgs` reports its real extent size and free space.
"""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from qcow2_monitor.collectors.host import identity
from qcow2_monitor.collectors.report.collect import collect
from qcow2_monitor.collectors.report.extend import ExtendPolicy
from qcow2_monitor.collectors.report.metrics import image_metrics
from qcow2_monitor.collectors.report.model import Extension
from qcow2_monitor.collectors.report.thin import Judging
from qcow2_monitor.nagios.check_qcow2 import main as check_main

from daemons import run

MiB = 1024 * 1024
GiB = 1024 * MiB


@pytest.fixture
def devices(tmp_path: Path) -> Iterator[list[str]]:
    """Loop devices made by the test (detached at the end): append their names."""
    attached: list[str] = []
    yield attached
    for device in attached:
        subprocess.run(["losetup", "-d", device], capture_output=True)


def thin_volume(tmp_path: Path, devices: list[str], size: int, name: str,
                written: str = "2M", virtual: str = "8G") -> str:
    backing = tmp_path / name
    backing.write_bytes(b"")
    os.truncate(backing, size)
    device = run(["losetup", "--find", "--show", str(backing)]).stdout.strip()
    devices.append(device)
    run(["qemu-img", "create", "-q", "-f", "qcow2", device, virtual])
    run(["qemu-io", "-f", "qcow2", "-c", f"write 0 {written}", device])
    return device


def advice(device: str, chunk: int = GiB, utilization: int = 50) -> Extension | None:
    judging = Judging(extend=ExtendPolicy(chunk, utilization))
    (record,) = collect([device], judging=judging).records
    assert record.usage is not None, record.error
    metrics = {m.name: m.value for m in image_metrics(record)}
    extension = record.usage.extension
    if extension is None:
        assert "extend_by_bytes" not in metrics and "extend" not in {
            r.rule for r in record.health.reasons}
    else:
        # The new size is no series of its own: container_size_bytes + extend_by_bytes.
        assert "extend_to_bytes" not in metrics
        assert (metrics["extend_by_bytes"], metrics["container_size_bytes"]
                + metrics["extend_by_bytes"]) == (extension.extend_by, extension.extend_to)
        assert [r.state for r in record.health.reasons if r.rule == "extend"] == [1]
    return extension


def test_watermark_chunk_and_percent_on_loop_devices(tmp_path: Path,
                                                     devices: list[str]) -> None:
    device = thin_volume(tmp_path, devices, 64 * MiB, "v")
    headroom = 64 * MiB - qemu_end(device)
    # The defaults (chunk 1 GiB, 50 %): less than 512 MiB left, extend by 1 GiB.
    default = advice(device)
    assert default is not None
    assert (default.watermark, default.extend_by, default.extend_to) == (
        512 * MiB, GiB, 64 * MiB + GiB)
    assert default.command is None and default.granularity == MiB
    # A chunk of 64 MiB at 50 %: the watermark (32 MiB) is below the headroom: nothing to do.
    assert headroom > 32 * MiB and advice(device, 64 * MiB) is None
    # At 0 % the whole chunk is the watermark: due.
    zero = advice(device, 64 * MiB, 0)
    assert zero is not None and zero.watermark == 64 * MiB > headroom
    # A chunk that is no whole MiB is rounded up to whole MiB (the granularity of a device
    # whose extent size is unknown).
    odd = advice(device, 64 * MiB + 1, 0)
    assert odd is not None and (odd.extend_by, odd.extend_to) == (65 * MiB, 129 * MiB)
    # The same through check_qcow2, with the options.
    out = io.StringIO()
    code = check_main(["--no-live", "--no-state", device, "--extend-chunk", "64M",
                       "--extend-utilization", "0"], out)
    assert code == 1, out.getvalue()
    assert "below the watermark 64 MiB: extend the volume by 64 MiB to 128 MiB" in \
        out.getvalue()
    out = io.StringIO()
    assert check_main(["--no-live", "--no-state", device, "--extend-chunk", "64M"], out) == 0
    # An image that can never outgrow its volume (16 MiB, fully allocated, on 64 MiB) needs no
    # extension, however far below the watermark its headroom is.
    small = thin_volume(tmp_path, devices, 64 * MiB, "small", virtual="16M")
    assert advice(small) is None


def qemu_end(device: str) -> int:
    import json

    return int(json.loads(run(["qemu-img", "check", "--output=json", device]).stdout)
               ["image-end-offset"])


@pytest.fixture
def volume_group(tmp_path: Path, devices: list[str],
                 monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """A real VG named vg-with-dash (4 MiB extents) on a 64 MiB loop device, LVM confined to
    it and to a temporary configuration directory; returns what vgs says of it."""
    pv = tmp_path / "pv"
    pv.write_bytes(b"")
    os.truncate(pv, 64 * MiB)
    device = run(["losetup", "--find", "--show", str(pv)]).stdout.strip()
    devices.append(device)
    conf = tmp_path / "lvm"
    conf.mkdir()
    (conf / "lvm.conf").write_text(
        f'devices {{ filter = [ "a|^{device}$|", "r|.*|" ] use_devicesfile = 0 }}\n'
        f'global {{ use_lvmlockd = 0 locking_dir = "{tmp_path}/lock" }}\n'
        f'backup {{ backup = 0 archive = 0 backup_dir = "{tmp_path}/backup" '
        f'archive_dir = "{tmp_path}/archive" }}\n')
    monkeypatch.setenv("LVM_SYSTEM_DIR", str(conf))
    monkeypatch.setenv("LVM_SUPPRESS_FD_WARNINGS", "1")
    run(["pvcreate", "-q", "-y", device])
    run(["vgcreate", "-q", "-s", "4m", "vg-with-dash", device])
    out = run(["vgs", "--noheadings", "--nosuffix", "--units", "b", "-o",
               "vg_extent_size,vg_free", "vg-with-dash"]).stdout.split()
    return {"extent": int(out[0]), "free": int(out[1])}


def as_lv(sysfs: Path, device: str, dm_name: str, uuid: str = "LVM-0123456789") -> None:
    rdev = os.stat(device).st_rdev
    entry = sysfs / f"{os.major(rdev)}:{os.minor(rdev)}" / "dm"
    entry.mkdir(parents=True)
    (entry / "name").write_text(dm_name + "\n")
    (entry / "uuid").write_text(uuid + "\n")


def test_lvm_wording_extent_size_and_vg_free(tmp_path: Path, devices: list[str],
                                             volume_group: dict[str, int],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    assert volume_group["extent"] == 4 * MiB
    first, second, crypt = (thin_volume(tmp_path, devices, 64 * MiB, name, written="40M")
                            for name in ("lv1", "lv2", "crypt"))
    sysfs = tmp_path / "sys-dev-block"
    as_lv(sysfs, first, "vg--with--dash-my--lv")
    as_lv(sysfs, second, "vg--with--dash-lv2")
    as_lv(sysfs, crypt, "luks-0a1b", uuid="CRYPT-LUKS2-0a1b")
    monkeypatch.setattr(identity, "SYS_DEV_BLOCK", str(sysfs))
    # A chunk of 26 MiB at 0 % (less than 26 MiB left is due): rounded up to whole extents,
    # 28 MiB each; the VG's free space (60 MiB) covers both volumes.
    judging = Judging(extend=ExtendPolicy(26 * MiB, 0))
    records = collect([first, second, crypt], judging=judging).records
    one, two, three = (r.usage.extension for r in records if r.usage is not None)
    assert one is not None and two is not None and three is not None
    assert one.command == "lvextend -L +28M vg-with-dash/my-lv"
    assert (one.extend_by, one.extend_to, one.granularity) == (28 * MiB, 92 * MiB, 4 * MiB)
    assert two.command == "lvextend -L +28M vg-with-dash/lv2"
    assert one.vg_free == volume_group["free"] >= 56 * MiB == one.vg_needed
    assert not one.vg_short
    assert three.command is None and three.volume is None  # dm-crypt: no LV
    info = {m.name: dict(m.labels) for m in image_metrics(records[0])}["image_info"]
    assert info["extend_command"] == "lvextend -L +28M vg-with-dash/my-lv"
    text = next(r.text for r in records[0].health.reasons if r.rule == "extend")
    assert text.endswith("below the watermark 26 MiB: extend the volume by 28 MiB to 92 MiB "
                         "(lvextend -L +28M vg-with-dash/my-lv)"), text
    # A chunk of 1 GiB each: more than the VG has; the advice says so, on every volume.
    records = collect([first, second], judging=Judging()).records
    texts = [next(r.text for r in rec.health.reasons if r.rule == "extend") for rec in records]
    free = volume_group["free"] // MiB
    assert all(f"VG vg-with-dash has only {free} MiB free for the 2 GiB its volumes need: "
               "extend the VG first (vgextend)" in text for text in texts), texts
    # vgs cannot tell (LVM not readable here): 1 MiB granularity, and the note says why.
    monkeypatch.setenv("PATH", str(tmp_path / "no-such-dir"))
    (record,) = collect([first], judging=judging).records
    assert record.usage is not None and record.usage.extension is not None
    assert record.usage.extension.command == "lvextend -L +26M vg-with-dash/my-lv"
    assert "extent size and free space of VG vg-with-dash unknown (vgs not found" in (
        record.usage.extension.note or "")
