"""Live end offsets from a real libvirtd (TCG domain) and a real qemu's QMP socket, in every
output, and the faults: virsh missing, libvirt down or slow, a domain that stops, a socket that
is not qemu's, an unprivileged user who may not inspect a qemu.

Writes go "through the guest": qemu-io on the device's own backend, whose write cache keeps the
qcow2 metadata in qemu until a flush, exactly as with a real guest. So before a flush the
on-disk figure lags (and equals what `qemu-img check -U` says), and the live figure is
libvirt's allocation; after the flush the on-disk figure catches up.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from qcow2_monitor.collectors.host import live
from qcow2_monitor.collectors.host.live import QMP_TIMEOUT, LiveView, PendingLive, parse_domstats
from qcow2_monitor.collectors.host.sources import LiveSources

from daemons import make_image, run
from live_daemons import (
    Libvirt,
    QemuQmp,
    block_disk,
    file_disk,
    running_libvirtd,
    start_qemu_qmp,
    stop_qemu,
)
from tree import SYSTEM_PYTHON, source_site

MiB = 1024 * 1024


def tool(module: str, *args: str, env: dict[str, str] | None = None,
         user: str | None = None) -> subprocess.CompletedProcess[str]:
    module = f"qcow2_monitor.{module}"  # the installed namespace
    argv = [sys.executable, "-m", module, *args]
    if user is not None:
        # The venv's interpreter may live where other users cannot reach it (pyenv under
        # /root): they run Debian's python3 with Debian's packages of the dependencies
        # (installed by scripts/test.sh).
        argv = ["runuser", "-u", user, "--", "env", f"PYTHONPATH={source_site()}", SYSTEM_PYTHON,
                "-m", module, *args]
    return subprocess.run(argv, cwd=source_site(), capture_output=True, text=True, timeout=120,
                          env=env, check=False)


def usage_json(*args: str, **kwargs: Any) -> list[dict[str, Any]]:
    proc = tool("analyze", "usage", "--output", "json", *args, **kwargs)
    assert proc.returncode == 0, proc.stderr
    return list(json.loads(proc.stdout))


def qemu_img_check_end(path: Path | str) -> int:
    out = run(["qemu-img", "check", "-U", "--output=json", str(path)]).stdout
    return int(json.loads(out)["image-end-offset"])


@pytest.fixture(scope="module")
def libvirt() -> Iterator[Libvirt]:
    with running_libvirtd() as daemon:
        yield daemon


@pytest.fixture(scope="module")
def vm(libvirt: Libvirt) -> dict[str, str]:
    """Domain vm1: sda a qcow2 file, sdb a qcow2 on a loop block device, sdc an overlay on a
    qcow2 base (two layers)."""
    d = libvirt.directory
    make_image(d / "file.qcow2", "1G")
    make_image(d / "blockimg.qcow2", "1G")
    os.truncate(d / "blockimg.qcow2", 64 * MiB)  # the "volume": a device has a fixed size
    device = libvirt.losetup(d / "blockimg.qcow2")
    make_image(d / "base.qcow2", "1G", write=["write -P 3 0 2M"])
    make_image(d / "overlay.qcow2", backing=d / "base.qcow2")
    for name in ("file.qcow2", "base.qcow2", "overlay.qcow2"):
        (d / name).chmod(0o644)
    libvirt.create("vm1", file_disk(d / "file.qcow2", "sda", 0)
                   + block_disk(device, "sdb", 1)
                   + file_disk(d / "overlay.qcow2", "sdc", 2))
    return {"file": str(d / "file.qcow2"), "block": device,
            "overlay": str(d / "overlay.qcow2"), "base": str(d / "base.qcow2")}


def test_parse_domstats_names_backing_layers() -> None:
    text = ("Domain: 'a b'\n  block.count=2\n  block.0.name=vda\n  block.0.path=/i/top\n"
            "  block.0.backingIndex=1\n  block.0.allocation=5\n  block.1.name=vda\n"
            "  block.1.path=/i/base\n  block.1.backingIndex=2\n  block.1.allocation=0\n"
            "  block.2.name=hdc\n\nDomain: 'off'\n  block.count=0\n")
    disks = parse_domstats(text)
    assert [(d.domain, d.disk, d.path, d.end_offset) for d in disks] == [
        ("a b", "vda", "/i/top", 5), ("a b", "vda[2]", "/i/base", 0)]


def test_parse_domstats_keeps_paths_as_virsh_prints_them() -> None:
    # A file name may hold U+2028 or U+0085 (not line ends for virsh) and end in a space:
    # cut there, the path names no disk, and the disk loses its live figure and its pause.
    path = "/i/vm \u2028\x85x.qcow2 "
    text = f"Domain: 'v'\n  block.count=1\n  block.0.name=vda\n  block.0.path={path}\n" \
        "  block.0.allocation=7\n"
    assert [(d.domain, d.path, d.end_offset) for d in parse_domstats(text)] == [("v", path, 7)]


def test_libvirt_guest_name_from_qemu_command_line() -> None:
    from qcow2_monitor.collectors.host.discovery import _libvirt_guest

    argv = ["/usr/bin/qemu-system-x86_64", "-name", "guest=a,,b,debug-threads=on", "-S"]
    assert _libvirt_guest(argv) == "a,b"  # qemu doubles a literal comma
    assert _libvirt_guest(["qemu-system-x86_64", "-name", "plain"]) is None
    assert _libvirt_guest(None) is None


def test_file_disk_live_ahead_until_flush_then_on_disk_catches_up(
        libvirt: Libvirt, vm: dict[str, str]) -> None:
    libvirt.qemu_io("vm1", 0, "write -P 1 0 20M")
    libvirt.qemu_io("vm1", 0, "write -P 2 512M 10M")
    allocation = libvirt.allocation("vm1", "sda")
    [image] = usage_json("--libvirt-uri", libvirt.ro_uri, vm["file"])
    assert image["live_end_offset"] == allocation
    assert image["end_offset"] == allocation and image["end_offset_source"] == "live"
    assert (image["domain"], image["disk"]) == ("vm1", "sda")
    # The on-disk figure lags exactly as qemu-img check's does.
    assert image["image_end_offset"] == qemu_img_check_end(vm["file"]) < allocation
    assert any("ahead of the on-disk figure" in note for note in image["notes"])
    # --no-live: the on-disk figure alone, and the note says how to get the live one.
    [off] = usage_json("--no-live", vm["file"])
    assert off["live_end_offset"] is None and off["end_offset"] == off["image_end_offset"]
    assert off["in_use"] and any("--libvirt-uri" in note for note in off["notes"])

    libvirt.qemu_io("vm1", 0, "flush")
    [flushed] = usage_json("--libvirt-uri", libvirt.ro_uri, vm["file"])
    assert flushed["image_end_offset"] == flushed["live_end_offset"] == allocation
    assert flushed["end_offset_source"] == "refcounts"


def test_block_device_matched_by_device_number_not_path(
        libvirt: Libvirt, vm: dict[str, str], tmp_path: Path) -> None:
    libvirt.qemu_io("vm1", 1, "write -P 1 0 8M")
    allocation = libvirt.allocation("vm1", "sdb")
    # Another name for the same device, as /dev/mapper/vg-lv is for /dev/dm-3.
    alias = tmp_path / "alias"
    os.mknod(alias, stat.S_IFBLK | 0o600, os.stat(vm["block"]).st_rdev)
    [image] = usage_json("--libvirt-uri", libvirt.ro_uri, str(alias))
    assert image["container_type"] == "block"
    assert image["live_end_offset"] == allocation > image["image_end_offset"]
    assert image["disk"] == "sdb"
    assert image["headroom"] == image["container_size"] - allocation
    # A block device is its own container: its usage counts from the live end offset.
    assert image["usage_ratio"] == allocation / image["container_size"]


def test_two_layer_chain(libvirt: Libvirt, vm: dict[str, str]) -> None:
    libvirt.qemu_io("vm1", 2, "write -P 4 4M 6M")
    allocation = libvirt.allocation("vm1", "sdc")
    [top] = usage_json("--libvirt-uri", libvirt.ro_uri, vm["overlay"])
    assert top["live_end_offset"] == allocation > top["image_end_offset"]
    [base] = top["backing_chain"]
    stats = run(["virsh", "-r", "-c", libvirt.ro_uri, "domstats", "--block", "--backing",
                 "vm1"]).stdout
    by_path = {d.path: d for d in parse_domstats(stats)}
    assert base["live_end_offset"] == by_path[vm["base"]].end_offset
    assert base["domain"] == "vm1" and base["disk"].startswith("sdc[")
    assert base["end_offset"] == base["image_end_offset"] == qemu_img_check_end(vm["base"])


def test_every_adapter_shows_the_live_figure(
        libvirt: Libvirt, vm: dict[str, str], tmp_path: Path) -> None:
    libvirt.qemu_io("vm1", 0, "write -P 5 700M 3M")
    allocation = libvirt.allocation("vm1", "sda")
    uri = ("--libvirt-uri", libvirt.ro_uri)

    out = tmp_path / "qcow2.prom"
    assert tool("node_exporter_textfile.qcow2_textfile", "--output", str(out), *uri,
                vm["file"]).returncode == 0
    prom = out.read_text()
    assert f'qcow2_live_end_offset_bytes{{path="{vm["file"]}"}} {allocation}' in prom
    assert f'qcow2_end_offset_bytes{{path="{vm["file"]}"}} {allocation}' in prom
    info = next(line for line in prom.splitlines() if line.startswith("qcow2_image_info{"))
    assert 'domain="vm1"' in info and 'disk="sda"' in info
    assert 'end_offset_source="live"' in info

    lines = tool("telegraf.qcow2_telegraf", *uri, vm["file"]).stdout
    assert f"live_end_offset_bytes={allocation}i" in lines
    assert f"end_offset_bytes={allocation}i" in lines
    # Descriptive, so fields: a VM restart must not start a new series.
    assert ',domain="vm1",' in lines and ',disk="sda",' in lines
    assert lines.startswith(f"qcow2,path={vm['file']} ")

    nagios = tool("nagios.check_qcow2", "-f", vm["file"], *uri)
    assert nagios.returncode == 0, nagios.stdout
    assert f" end_offset_bytes'={allocation}B;" in nagios.stdout
    assert f" live_end_offset_bytes'={allocation}B;" in nagios.stdout


# --- QMP ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qemu(libvirt: Libvirt) -> Iterator[QemuQmp]:
    image = make_image(libvirt.directory / "qmp.qcow2", "1G")
    image.chmod(0o644)
    started = start_qemu_qmp(libvirt.directory, image)
    try:
        yield started
    finally:
        stop_qemu(started)


def test_qmp_gives_wr_highest_offset(qemu: QemuQmp) -> None:
    qemu.hmp('qemu-io d0 "write -P 7 0 12M"')
    highest = qemu.wr_highest_offset()
    [image] = usage_json("--no-live", "--qmp", str(qemu.socket), str(qemu.image))
    assert image["live_end_offset"] == highest > image["image_end_offset"]
    assert (image["domain"], image["disk"]) == (f"qemu {qemu.pid}", "f0")
    assert image["end_offset_source"] == "live"


def test_qmp_relative_node_name_matches_the_image_qemu_opened(
        libvirt: Libvirt, tmp_path: Path) -> None:
    """A node named relatively is the file qemu opened, not the same name in our directory
    (nor in qemu's working directory, which -daemonize changed to /)."""
    (tmp_path / "vm").mkdir()
    (tmp_path / "other").mkdir()
    opened = make_image(tmp_path / "vm" / "x.qcow2", "256M")
    namesake = make_image(tmp_path / "other" / "x.qcow2", "256M")
    started = start_qemu_qmp(tmp_path, opened, relative=True)
    try:
        started.hmp('qemu-io d0 "write -P 7 0 6M"')
        highest = started.wr_highest_offset()
        proc = subprocess.run(
            [sys.executable, "-m", "qcow2_monitor.analyze", "usage", "--output", "json",
             "--no-live", "--qmp",
             str(started.socket), "x.qcow2", str(opened)],
            cwd=namesake.parent, capture_output=True, text=True, timeout=60)
    finally:
        stop_qemu(started)
    assert proc.returncode == 0, proc.stderr
    ours, theirs = json.loads(proc.stdout)
    assert ours["filename"] == str(namesake) and ours["live_end_offset"] is None
    assert theirs["live_end_offset"] == highest and theirs["disk"] == "f0"


class _Server:
    """A unix socket that is not qemu's: it greets with junk, or says nothing at all."""

    def __init__(self, path: Path, greeting: bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(4)
        self.greeting = greeting
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            if self.greeting:
                conn.sendall(self.greeting)

    def close(self) -> None:
        for conn in self.conns:
            conn.close()
        self.sock.close()


@pytest.mark.parametrize("greeting", [b"220 smtp ready\r\n", b""])
def test_socket_that_is_not_qmp_is_a_target_error(tmp_path: Path, greeting: bytes) -> None:
    image = make_image(tmp_path / "i.qcow2", "16M")
    server = _Server(tmp_path / "s.sock", greeting)
    try:
        started = time.monotonic()
        proc = tool("analyze", "usage", "--output", "json", "--no-live", "--qmp",
                    str(tmp_path / "s.sock"), str(image))
        elapsed = time.monotonic() - started
    finally:
        server.close()
    assert proc.returncode == 1
    results = json.loads(proc.stdout)
    assert results[0]["end_offset"] == results[0]["image_end_offset"]  # still reported
    assert results[1]["filename"] == str(tmp_path / "s.sock")
    assert results[1]["error"]["structure"] == "QMP socket"
    # Given up after the timeout (one deadline for the whole exchange), never waiting on the
    # silent socket: the run takes QMP_TIMEOUT plus the start (3.2 s here with the load at
    # 12); the bound is over 5x that, and far below a hang (the run is killed at 120 s).
    assert QMP_TIMEOUT == 2.0 and elapsed < 30, elapsed


def test_failed_qmp_socket_is_not_counted_as_an_image(tmp_path: Path) -> None:
    """A --qmp socket that does not answer is reported (UNKNOWN, a scrape error), but it is a
    source of live figures, not an image: not counted in check_qcow2's "N of M images" nor
    in qcow2_images."""
    images = [str(make_image(tmp_path / f"i{k}.qcow2", "16M")) for k in range(2)]
    server = _Server(tmp_path / "s.sock", b"")
    try:
        nagios = tool("nagios.check_qcow2", "--no-live", "--qmp", str(tmp_path / "s.sock"),
                      *[a for image in images for a in ("-f", image)])
        textfile = tool("node_exporter_textfile.qcow2_textfile", "-o", "-", "--no-live",
                        "--qmp", str(tmp_path / "s.sock"), *images)
    finally:
        server.close()
    first = nagios.stdout.splitlines()[0]
    assert nagios.returncode == 3, nagios.stdout
    assert str(tmp_path / "s.sock") in first and "of 3 images" not in first, first
    assert "\nqcow2_images 2\n" in textfile.stdout, textfile.stdout


# --- faults of libvirt ----------------------------------------------------------------------


def test_virsh_missing_libvirt_down_or_slow(tmp_path: Path, vm: dict[str, str]) -> None:
    image = make_image(tmp_path / "i.qcow2", "16M")
    env = dict(os.environ, PATH=str(tmp_path / "empty"))
    proc = tool("analyze", "usage", "--libvirt-uri", "qemu:///system", str(image),
                env=env)
    assert proc.returncode == 0 and "virsh not found" in proc.stderr
    assert str(image) in proc.stdout

    proc = tool("analyze", "usage", "--libvirt-uri",
                f"qemu+unix:///system?socket={tmp_path}/no-such-sock", str(image))
    assert proc.returncode == 0 and "failed to connect" in proc.stderr

    # A virsh that hangs (and leaves a child holding its pipes): cut off at the timeout.
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "virsh").write_text("#!/bin/sh\nsleep 600 &\nsleep 600\n")
    (fake / "virsh").chmod(0o755)
    env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}")
    started = time.monotonic()
    proc = tool("nagios.check_qcow2", "-f", vm["file"],
                env=env)
    elapsed = time.monotonic() - started
    # Cut off at the 5 s libvirt timeout (6.3 s in all here with the load at 12), not after
    # virsh's 600 s: the bound is over 5x the first.
    assert elapsed < 40, elapsed
    assert proc.returncode == 0, proc.stdout  # the on-disk figure still reports
    assert "live from" not in proc.stdout
    assert "note: 1 image is held for writing" in proc.stdout
    assert "did not answer within 5 s" in proc.stdout

    # Telegraf and the textfile say so on stderr (here: libvirt down), and still report.
    down = ("--libvirt-uri", f"qemu+unix:///system?socket={tmp_path}/no-such-sock")
    proc = tool("telegraf.qcow2_telegraf", *down, vm["file"])
    assert "end_offset_bytes=" in proc.stdout
    assert "W! [inputs.qcow2] 1 image is held for writing" in proc.stderr
    proc = tool("node_exporter_textfile.qcow2_textfile", "--output", "-", *down, vm["file"])
    assert proc.returncode == 0 and "qcow2_end_offset_bytes{" in proc.stdout
    assert "failed to connect" in proc.stderr


def test_domain_that_stops_during_the_run(libvirt: Libvirt, vm: dict[str, str],
                                          tmp_path: Path) -> None:
    image = make_image(libvirt.directory / "vm2.qcow2", "256M")
    libvirt.create("vm2", file_disk(image, "sda", 0))
    libvirt.qemu_io("vm2", 0, "write -P 1 0 4M")
    allocation = libvirt.allocation("vm2", "sda")
    # vm2 stops between libvirt's answer and the analysis of its image: virsh (a wrapper here)
    # answers, then destroys vm2 before the run goes on.
    fake = tmp_path / "bin"
    fake.mkdir()
    real = subprocess.run(["sh", "-c", "command -v virsh"], capture_output=True,
                          text=True).stdout.strip()
    (fake / "virsh").write_text(
        f"#!/bin/sh\nout=$({real} \"$@\"); rc=$?\n"
        f"{real} -q -c '{libvirt.uri}' destroy vm2 >/dev/null 2>&1\n"
        "printf '%s\\n' \"$out\"\nexit $rc\n")
    (fake / "virsh").chmod(0o755)
    env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}")
    # A URI parameter the socket client leaves to virsh (mode=, which virsh takes), so that
    # the wrapper answers: the analysis after libvirt's answer is the same whoever gave it.
    stopping, running = usage_json("--libvirt-uri", libvirt.ro_uri + "&mode=legacy",
                                   str(image), vm["file"], env=env)
    libvirt.domains.remove("vm2")
    assert "vm2" not in libvirt.virsh("list", "--name").split()
    # The figure qemu had reached is still reported, with the on-disk one beside it; the qemu
    # is gone, so the image is no longer held.
    assert stopping["live_end_offset"] == allocation and stopping["domain"] == "vm2"
    assert stopping["image_end_offset"] == qemu_img_check_end(image)
    assert not stopping["in_use"] and stopping["status"] == "ok"
    assert running["live_end_offset"] == libvirt.allocation("vm1", "sda")
    [after] = usage_json("--libvirt-uri", libvirt.ro_uri, str(image))
    assert after["live_end_offset"] is None and not after["in_use"]


# --- unprivileged ---------------------------------------------------------------------------


def test_unprivileged_running_sees_domains_and_refuses_ok_for_hidden_qemu(
        libvirt: Libvirt, vm: dict[str, str], qemu: QemuQmp, tmp_path: Path) -> None:
    uri = ("--libvirt-uri", libvirt.ro_uri)
    # The read-write socket is refused to nobody: only the read-only one is used.
    refused = subprocess.run(["runuser", "-u", "nobody", "--", "virsh", "-c", libvirt.uri,
                              "list"], capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0
    proc = tool("nagios.check_qcow2", "--running", *uri, user="nobody")
    # libvirt named vm1's disks; the QMP qemu (root, outside libvirt) cannot be inspected.
    assert proc.returncode == 3, proc.stdout
    assert vm["file"] in proc.stdout and "not inspectable" in proc.stdout
    assert f"{qemu.pid}" in proc.stdout
    # vm1's own qemu (root too) is not counted: libvirt answered for it.
    vm1_pid = str(libvirt.qemu_pid("vm1"))
    hidden = proc.stdout.split("not inspectable by this user (pid ", 1)[1].split(")")[0]
    assert vm1_pid not in hidden.split(", ")

    # With its QMP socket open to nobody, that qemu is covered too: its image is reported with
    # the live figure, and it no longer counts as uninspectable.
    qemu.socket.chmod(0o777)
    proc = tool("nagios.check_qcow2", "--running", *uri, "--qmp", str(qemu.socket), "-v",
                user="nobody")
    assert f"live from qemu {qemu.pid} f0" in proc.stdout, proc.stdout
    if "not inspectable by this user" in proc.stdout:  # other users' qemu may run meanwhile
        hidden = proc.stdout.split("not inspectable by this user (pid ", 1)[1].split(")")[0]
        assert str(qemu.pid) not in hidden.split(", ")

    out = libvirt.directory / "textfile"  # reachable by nobody, unlike tmp_path
    out.mkdir()
    out.chmod(0o777)
    proc = tool("node_exporter_textfile.qcow2_textfile", "--output", str(out / "q.prom"),
                "--running", *uri, user="nobody")
    assert proc.returncode == 0, proc.stderr
    prom = (out / "q.prom").read_text()
    assert 'qcow2_scrape_error{path="(running qemu processes)"} 1' in prom
    # Not an image: qcow2_images counts the image records only.
    images = {line.split("{path=", 1)[1].split("}")[0] for line in prom.splitlines()
              if line.startswith("qcow2_health{")}
    assert f"qcow2_images {len(images) - 1}" in prom.splitlines()
    assert f'qcow2_live_end_offset_bytes{{path="{vm["file"]}"}}' in prom

    lines = tool("telegraf.qcow2_telegraf", "--running", *uri, user="nobody").stdout
    assert "qcow2,path=(running\\ qemu\\ processes) " in lines and "scrape_error=1i" in lines


def test_running_as_root_takes_libvirt_disks_first(
        libvirt: Libvirt, vm: dict[str, str], qemu: QemuQmp) -> None:
    from qcow2_monitor.collectors.report.collect import RUNNING_TARGET, collect

    collection = collect([], running=True, live_sources=LiveSources(libvirt.ro_uri))
    paths = [record.path for record in collection.records]
    # domstats order: sda, sdb, sdc and sdc's backing layer; then qemu outside libvirt.
    assert paths[:4] == [vm["file"], vm["block"], vm["overlay"], vm["base"]]
    assert str(qemu.image) in paths[4:]
    assert RUNNING_TARGET not in [record.target for record in collection.records]
    # The QMP qemu's image is being written and no live source was named for it.
    assert "held for writing" in collection.notes[0] and "--qmp" in collection.notes[0]
    by_path = {record.path: record.usage for record in collection.records}
    top = by_path[vm["file"]]
    assert top is not None and top.domain == "vm1"
    assert top.live_end_offset == libvirt.allocation("vm1", "sda")

    down = collect([vm["file"]], live_sources=LiveSources(
        f"qemu+unix:///system?socket={libvirt.directory}/x"))
    assert "failed to connect" in down.notes[0] and "1 image is held" in down.notes[0]
    usage = down.records[0].usage
    assert usage is not None and usage.live_end_offset is None
    assert any("no live source covers it" in note for note in usage.notes)


def test_pending_live_gives_the_view_or_raises_in_the_waiting_thread(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The live sources are asked in a thread: wait() blocks until it is done, then gives its
    view (to every later wait() too) or raises what it raised, in the caller."""
    view = LiveView()
    release = threading.Event()

    def gather(uri: Any, sockets: Any) -> LiveView:
        assert (uri, sockets) == ("qemu:///system", ["/run/q.sock"])
        release.wait(60)
        return view

    monkeypatch.setattr(live, "gather_live", gather)
    pending = PendingLive("qemu:///system", ["/run/q.sock"])
    threading.Timer(0.05, release.set).start()
    assert pending.wait() is view
    assert pending.wait() is view

    def fail(uri: Any, sockets: Any) -> LiveView:
        raise RuntimeError("boom")

    monkeypatch.setattr(live, "gather_live", fail)
    with pytest.raises(RuntimeError, match="boom"):
        PendingLive(None).wait()
