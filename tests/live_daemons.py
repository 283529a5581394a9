"""A real libvirtd with TCG domains, and plain qemu with a QMP socket, for the live-usage tests.

libvirtd runs with its own configuration and sockets in a private directory (world-traversable,
so that `nobody` reaches the read-only socket as on a real host); only the qemu driver's
qemu.conf has to be the system one, written idempotently. qemu's output goes to files
(stdio_handler "file"), so virtlogd is not needed. Everything started here is stopped at the
end: domains destroyed, libvirtd and qemu killed, loop devices detached.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import daemons
from daemons import require_binary, run

START_TIMEOUT = 90.0  # the first start probes qemu's capabilities (~8 s here), later ones ~1 s
QEMU_CONF = Path("/etc/libvirt/qemu.conf")
# Root runs qemu without a security driver, namespaces or cgroups: there is no systemd here.
QEMU_CONF_SETTINGS = {
    "user": '"root"',
    "group": '"root"',
    "dynamic_ownership": "0",
    "security_driver": '"none"',
    "namespaces": "[ ]",
    "cgroup_controllers": "[ ]",
    "remember_owner": "0",
    "stdio_handler": '"file"',
}

daemons.PACKAGES.update({"libvirtd": "libvirt-daemon libvirt-daemon-driver-qemu",
                         "virsh": "libvirt-clients", "qemu-system-x86_64": "qemu-system-x86"})


def _configure_qemu_driver() -> None:
    present: dict[str, str] = {}
    if QEMU_CONF.exists():
        for line in QEMU_CONF.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep and not line.lstrip().startswith("#"):
                present[key.strip()] = value.strip()
    missing = {k: v for k, v in QEMU_CONF_SETTINGS.items() if present.get(k) != v}
    if missing:
        QEMU_CONF.parent.mkdir(parents=True, exist_ok=True)
        with QEMU_CONF.open("a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in missing.items())
    # The qemu driver looks these up by name even when it runs qemu as root.
    for group in ("libvirt-qemu", "kvm"):
        if subprocess.run(["getent", "group", group], capture_output=True).returncode:
            run(["groupadd", "-r", group])
    if subprocess.run(["getent", "passwd", "libvirt-qemu"], capture_output=True).returncode:
        run(["useradd", "-r", "-g", "libvirt-qemu", "libvirt-qemu"])
    Path("/var/log/libvirt/qemu").mkdir(parents=True, exist_ok=True)


@dataclass
class Libvirt:
    """A running private libvirtd."""

    directory: Path
    process: subprocess.Popen[bytes]
    domains: list[str] = field(default_factory=list)
    loops: list[str] = field(default_factory=list)

    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket={self.directory}/run/libvirt-sock"

    @property
    def ro_uri(self) -> str:
        return f"qemu+unix:///system?socket={self.directory}/run/libvirt-sock-ro"

    def virsh(self, *args: str) -> str:
        return run(["virsh", "-q", "-c", self.uri, *args]).stdout

    def hmp(self, domain: str, command: str) -> str:
        return self.virsh("qemu-monitor-command", domain, "--hmp", command)

    def qemu_io(self, domain: str, unit: int, command: str) -> None:
        """Write "as the guest": through the device's own backend and its write cache."""
        out = self.hmp(domain, f'qemu-io -d /machine/peripheral/scsi0-0-0-{unit} "{command}"')
        assert "error" not in out.lower(), out

    def create(self, name: str, disks_xml: str) -> None:
        xml = (f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>16</memory>"
               "<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os>"
               "<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>"
               "<controller type='scsi' model='virtio-scsi'/>"
               f"{disks_xml}</devices></domain>")
        path = self.directory / f"{name}.xml"
        path.write_text(xml)
        self.virsh("create", str(path))
        self.domains.append(name)

    def destroy(self, name: str) -> None:
        subprocess.run(["virsh", "-q", "-c", self.uri, "destroy", name], capture_output=True,
                       timeout=60)
        if name in self.domains:
            self.domains.remove(name)

    def allocation(self, domain: str, target: str) -> int:
        """libvirt's block.N.allocation of the disk `target` (its top layer)."""
        out = run(["virsh", "-r", "-c", self.ro_uri, "domstats", "--block", domain]).stdout
        values = dict(line.strip().split("=", 1) for line in out.splitlines() if "=" in line)
        index = next(k.split(".")[1] for k, v in values.items()
                     if k.endswith(".name") and v == target)
        return int(values[f"block.{index}.allocation"])

    def losetup(self, image: Path) -> str:
        device = run(["losetup", "--find", "--show", str(image)]).stdout.strip()
        self.loops.append(device)
        return device


def file_disk(path: Path, target: str, unit: int) -> str:
    return (f"<disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='none'/>"
            f"<source file='{path}'/><target dev='{target}' bus='scsi'/>"
            f"<address type='drive' controller='0' bus='0' target='0' unit='{unit}'/></disk>")


def block_disk(device: str, target: str, unit: int) -> str:
    return (f"<disk type='block' device='disk'><driver name='qemu' type='qcow2' cache='none'/>"
            f"<source dev='{device}'/><target dev='{target}' bus='scsi'/>"
            f"<address type='drive' controller='0' bus='0' target='0' unit='{unit}'/></disk>")


def start_libvirtd() -> Libvirt:
    for name in ("libvirtd", "virsh", "qemu-system-x86_64", "losetup"):
        require_binary(name)
    if os.geteuid() != 0:
        raise AssertionError("the live tests start libvirtd and need root")
    _configure_qemu_driver()
    directory = Path(tempfile.mkdtemp(prefix="qcow2-live-"))
    directory.chmod(0o755)  # nobody must reach the read-only socket and the images
    (directory / "run").mkdir(mode=0o755)
    conf = directory / "libvirtd.conf"
    conf.write_text(
        f'unix_sock_dir = "{directory}/run"\n'
        'unix_sock_ro_perms = "0777"\n'
        'unix_sock_rw_perms = "0700"\n'
        'auth_unix_ro = "none"\n'  # hosts grant it through polkit; there is no D-Bus here
        'auth_unix_rw = "none"\n'
    )
    log = (directory / "libvirtd.log").open("wb")
    process = subprocess.Popen(
        ["libvirtd", "-f", str(conf), "-p", str(directory / "libvirtd.pid")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    libvirt = Libvirt(directory, process)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        probe = subprocess.run(["virsh", "-c", libvirt.uri, "version"], capture_output=True,
                               text=True, timeout=60)
        if probe.returncode == 0 and "Running hypervisor" in probe.stdout:
            return libvirt
        if process.poll() is not None or time.monotonic() > deadline:
            said = (directory / "libvirtd.log").read_text(errors="replace")  # before cleanup
            stop_libvirtd(libvirt)
            raise AssertionError(f"libvirtd did not come up: {probe.stderr}\n{said[-3000:]}")
        time.sleep(0.2)


def stop_libvirtd(libvirt: Libvirt) -> None:
    for name in list(libvirt.domains):
        libvirt.destroy(name)
    if libvirt.process.poll() is None:
        libvirt.process.terminate()
        try:
            libvirt.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            libvirt.process.kill()
            libvirt.process.wait()
    for device in libvirt.loops:
        subprocess.run(["losetup", "-d", device], capture_output=True)
    shutil.rmtree(libvirt.directory, ignore_errors=True)


# --- plain qemu with QMP ----------------------------------------------------------------------


class Qmp:
    """The test's own QMP client, independent of collectors.live."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(str(path))
        self.file = self.sock.makefile("rb")
        json.loads(self.file.readline())  # greeting
        self.execute("qmp_capabilities")

    def execute(self, command: str, **arguments: Any) -> Any:
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        self.sock.sendall(json.dumps(request).encode() + b"\n")
        while True:
            answer = json.loads(self.file.readline())
            if "event" not in answer:
                assert "return" in answer, answer
                return answer["return"]

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@dataclass
class QemuQmp:
    """qemu-system-x86_64 -M none with one qcow2 image (nodes f0 file, d0 qcow2) and QMP."""

    image: Path
    socket: Path
    pid: int

    def hmp(self, command: str) -> str:
        qmp = Qmp(self.socket)
        try:
            return str(qmp.execute("human-monitor-command", **{"command-line": command}))
        finally:
            qmp.close()

    def wr_highest_offset(self, node: str = "f0") -> int:
        qmp = Qmp(self.socket)
        try:
            stats = qmp.execute("query-blockstats", **{"query-nodes": True})
        finally:
            qmp.close()
        return next(int(s["stats"]["wr_highest_offset"]) for s in stats
                    if s.get("node-name") == node)


def start_qemu_qmp(directory: Path, image: Path, *, relative: bool = False) -> QemuQmp:
    """With `relative`, qemu is started in the image's directory and names it relatively."""
    require_binary("qemu-system-x86_64")
    name = image.stem
    sock, pidfile = directory / f"{name}.sock", directory / f"{name}.pid"
    filename = image.name if relative else str(image)
    run(["qemu-system-x86_64", "-M", "none", "-nodefaults", "-display", "none", "-daemonize",
         "-pidfile", str(pidfile),
         "-blockdev", f"driver=file,node-name=f0,filename={filename}",
         "-blockdev", "driver=qcow2,node-name=d0,file=f0",
         "-qmp", f"unix:{sock},server=on,wait=off"], cwd=image.parent)
    return QemuQmp(image, sock, int(pidfile.read_text().strip()))


def stop_qemu(qemu: Optional[QemuQmp]) -> None:
    if qemu is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(qemu.pid, signal.SIGKILL)  # -daemonize: not our child, nothing to wait for
