"""A real guest fills its thin volume and qemu pauses it on ENOSPC (tests/enospc.py): every
adapter reports paused-nospace CRITICAL for that disk, with the advice; once the volume is
grown and the VM resumed, the next run is clear. In a private libvirtd (libvirt's read-only
socket: domstats --state, domblkerror) and in plain qemu (--qmp: query-status, query-block).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import enospc
import pytest
from enospc import VOLUME_SIZE, Guest, MiB, domain_xml, grow, qmp, start_qemu_guest, thin_volume

from qcow2_monitor.analyze.main import main as analyze_main
from qcow2_monitor.nagios.check_qcow2 import main as check_main

from live_daemons import Libvirt, running_libvirtd
from tree import source_site

GROWN = 2048 * MiB  # room for the guest to run on while the tests look


@pytest.fixture(scope="module")
def libvirt() -> Iterator[Libvirt]:
    with running_libvirtd() as daemon:
        yield daemon


def adapter(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", f"qcow2_monitor.{module}", *args],
                          cwd=source_site(), capture_output=True, text=True, timeout=120)


def check(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    return check_main(["--no-state", *args], out), out.getvalue()


def usage(*args: str) -> dict[str, object]:
    out, err = io.StringIO(), io.StringIO()
    assert analyze_main(["usage", "--output", "json", "--no-state", *args], out, err) == 0, \
        err.getvalue()
    (image,) = json.loads(out.getvalue())
    return dict(image)


def test_libvirt_guest_paused_on_enospc_in_every_adapter(libvirt: Libvirt) -> None:
    directory = libvirt.directory
    backing, device = thin_volume(directory, "pv", libvirt.losetup)
    xml = directory / "enospc.xml"
    xml.write_text(domain_xml("enospc", device))
    libvirt.virsh("create", str(xml))
    libvirt.domains.append("enospc")
    enospc.wait_until("the guest is paused",
                      lambda: "paused" in libvirt.virsh("domstate", "enospc"))
    assert libvirt.virsh("domstate", "enospc", "--reason").strip() == "paused (I/O error)"
    uri = ("--libvirt-uri", libvirt.ro_uri)
    advice = (f"VM enospc paused: no space on vda ({device}, end offset ")
    resume = ("of 64 MiB): extend the volume by 1 GiB to 1.06 GiB, then resume the VM "
              "(virsh resume enospc)")
    # check_qcow2: CRITICAL, the rule's text first.
    code, output = check(*uri, device)
    assert code == 2, output
    first = output.splitlines()[0]
    assert first.startswith(f"QCOW2 CRITICAL - {device}: {advice}") and resume in first, first
    # qcow2-analyze usage: the keys.
    image = usage(*uri, device)
    assert (image["paused"], image["pause_reason"], image["domain"], image["disk"]) == (
        True, "nospace", "enospc", "vda")
    assert image["extend_to_bytes"] == VOLUME_SIZE + 1024 * MiB
    # qcow2-textfile and qcow2-telegraf: the rule critical (the one series saying paused), the
    # reason; no paused series beside it (issue 22: each fact once).
    prom = adapter("node_exporter_textfile.qcow2_textfile", "--output", "-", "--no-state",
                   *uri, device)
    assert prom.returncode == 0, prom.stderr
    assert f'qcow2_health_reason{{path="{device}",rule="paused-nospace"}} 2' in prom.stdout
    assert "qcow2_paused" not in prom.stdout
    assert 'pause_reason="nospace"' in prom.stdout
    line = adapter("telegraf.qcow2_telegraf", "--no-state", *uri, device)
    assert line.returncode == 0, line.stderr
    assert "paused=" not in line.stdout and 'pause_reason="nospace"' in line.stdout
    assert "health=2i" in line.stdout and "paused-nospace: VM enospc paused" in line.stdout
    # The operator's way out: grow the volume, resume; the next run is clear.
    grow(backing, device, GROWN)
    libvirt.virsh("resume", "enospc")
    code, output = check(*uri, device)
    assert code == 0 and "paused" not in output, output
    assert usage(*uri, device)["paused"] is False
    # Paused by its user: a note, not a problem.
    libvirt.virsh("suspend", "enospc")
    code, output = check(*uri, "-v", device)
    assert code == 0 and "note: VM enospc paused (user): no problem of the disk" in output, \
        output
    libvirt.destroy("enospc")


@pytest.fixture
def guest(tmp_path: Path) -> Iterator[tuple[Guest, Path, str]]:
    devices: list[str] = []

    def attach(path: Path) -> str:
        device = subprocess.run(["losetup", "--find", "--show", str(path)], check=True,
                                capture_output=True, text=True).stdout.strip()
        devices.append(device)
        return device

    backing, device = thin_volume(tmp_path, "qmp", attach)
    started = start_qemu_guest(tmp_path, device)
    try:
        yield started, backing, device
    finally:
        started.stop()
        enospc.wait_until("qemu is gone", lambda: not Path(f"/proc/{started.pid}").exists(),
                          timeout=30)
        for name in devices:
            subprocess.run(["losetup", "-d", name], capture_output=True)


def test_qmp_guest_paused_on_enospc(guest: tuple[Guest, Path, str]) -> None:
    qemu, backing, device = guest
    enospc.wait_until("the guest is paused", lambda: qemu.status() == "io-error")
    block = qmp(qemu.socket, "query-block")
    assert [d["io-status"] for d in block if d.get("inserted")] == ["nospace"]
    source = ("--no-live", "--qmp", str(qemu.socket))
    code, output = check(*source, device)
    assert code == 2, output
    assert f"VM qemu {qemu.pid} paused: no space on " in output
    assert "then resume the VM (the QMP command cont)" in output
    image = usage(*source, device)
    assert (image["paused"], image["pause_reason"]) == (True, "nospace")
    grow(backing, device, GROWN)
    qmp(qemu.socket, "cont")
    code, output = check(*source, device)
    assert code == 0 and "paused" not in output, output
