"""A real libvirtd with TCG domains, and plain qemu with a QMP socket, for the live-usage tests.

The libvirtd is private and touches nothing of the host's libvirt, so that the suite runs on a
KVM host beside its system libvirtd: it runs in a mount namespace of its own where a temporary
directory is bind-mounted over /etc/libvirt (its own qemu.conf: qemu as root, no security
driver, namespaces or cgroups, as there is no systemd here), /run/libvirt, /var/lib/libvirt,
/var/log/libvirt and /var/cache/libvirt; its sockets live in that directory, reachable from
outside (the read-only one by everyone, so that `nobody` reaches it as on a real host). The
qemu driver looks up the user and groups `libvirt-qemu` and `kvm` by name even when it runs
qemu as root: where the host has none (no libvirt-daemon-system), they exist only inside the
namespace, in copies of /etc/passwd and /etc/group mounted there. No file under /etc is
written and no user created. qemu's output goes to files (stdio_handler "file"), so virtlogd
is not needed. Everything started here is stopped at the end: domains destroyed, libvirtd
and qemu killed, loop devices detached. When libvirtd does not come up, the error quotes its
log and the directory is kept.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import daemons
from daemons import require_binary, run

START_TIMEOUT = 90.0  # the first start probes qemu's capabilities (~8 s here), later ones ~1 s
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
# The host directories the private libvirtd gets its own copy of, by the name of that copy.
PRIVATE_DIRECTORIES = {"etc": "/etc/libvirt", "run": "/run/libvirt", "lib": "/var/lib/libvirt",
                       "log": "/var/log/libvirt", "cache": "/var/cache/libvirt"}
# Looked up by name by the qemu driver (user, then groups); made up inside the namespace only.
QEMU_USER, QEMU_GROUPS = "libvirt-qemu", ("libvirt-qemu", "kvm")
LOG_LINES = 30  # of libvirtd's log quoted when it does not come up

daemons.PACKAGES.update({"libvirtd": "libvirt-daemon libvirt-daemon-driver-qemu",
                         "virsh": "libvirt-clients", "qemu-system-x86_64": "qemu-system-x86",
                         "unshare": "util-linux"})


def _entry(database: str, name: str) -> Optional[list[str]]:
    """The host's passwd or group entry of `name`, split at ':' (None: there is none)."""
    proc = subprocess.run(["getent", database, name], capture_output=True, text=True)
    return proc.stdout.strip().split(":") if proc.returncode == 0 else None


def _free_ids(database: str) -> Iterator[int]:
    """Ids the host's passwd or group file does not use."""
    fields = (line.split(":") for line in Path(f"/etc/{database}").read_text().splitlines())
    used = {int(f[2]) for f in fields if len(f) > 2 and f[2].isdigit()}
    return (n for n in range(64000, 65000) if n not in used)


def _account_mounts(directory: Path) -> list[tuple[Path, str]]:
    """(copy, target) bind mounts of /etc/passwd and /etc/group adding the qemu driver's
    user and groups, for those the host lacks; none when it has them all."""
    mounts: list[tuple[Path, str]] = []
    gids, added = {}, []
    free_gids = _free_ids("group")
    for name in QEMU_GROUPS:
        entry = _entry("group", name)
        gids[name] = int(entry[2]) if entry else next(free_gids)
        if entry is None:
            added.append(f"{name}:x:{gids[name]}:\n")
    if added:
        copy = directory / "group"
        copy.write_text(Path("/etc/group").read_text() + "".join(added))
        mounts.append((copy, "/etc/group"))
    if _entry("passwd", QEMU_USER) is None:
        copy = directory / "passwd"
        copy.write_text(Path("/etc/passwd").read_text()
                        + f"{QEMU_USER}:x:{next(_free_ids('passwd'))}:{gids[QEMU_GROUPS[0]]}::"
                        "/nonexistent:/usr/sbin/nologin\n")
        mounts.append((copy, "/etc/passwd"))
    for copy, _ in mounts:
        copy.chmod(0o644)
    return mounts


def _namespace_script(directory: Path, conf: Path) -> str:
    """sh commands run in the new mount namespace: the bind mounts, then libvirtd itself
    (exec: the process started is libvirtd, stopped by its pid)."""
    mounts = [(directory / name, target) for name, target in PRIVATE_DIRECTORIES.items()]
    mounts += _account_mounts(directory)
    lines = [f"mount --bind {shlex.quote(str(source))} {shlex.quote(target)}"
             for source, target in mounts]
    lines.append(f"exec libvirtd -f {shlex.quote(str(conf))} "
                 f"-p {shlex.quote(str(directory / 'libvirtd.pid'))}")
    return " && ".join(lines)


def _private_tree(directory: Path) -> Path:
    """The private copies of the libvirt directories, their configuration; returns
    libvirtd.conf."""
    for name, target in PRIVATE_DIRECTORIES.items():
        (directory / name).mkdir(mode=0o755)
        if not os.path.isdir(target):
            if target.startswith("/etc/"):
                raise AssertionError(f"{target} is missing: reinstall "
                                     f"{daemons.PACKAGES['libvirtd']} (the mount point)")
            os.makedirs(target, mode=0o755)  # an empty mount point under /run or /var
    (directory / "log" / "qemu").mkdir()  # the domains' log files
    (directory / "sock").mkdir(mode=0o755)
    (directory / "etc" / "qemu.conf").write_text(
        "".join(f"{key} = {value}\n" for key, value in QEMU_CONF_SETTINGS.items()))
    conf = directory / "etc" / "libvirtd.conf"
    conf.write_text(
        f'unix_sock_dir = "{directory}/sock"\n'
        'unix_sock_ro_perms = "0777"\n'
        'unix_sock_rw_perms = "0700"\n'
        'auth_unix_ro = "none"\n'  # hosts grant it through polkit; there is no D-Bus here
        'auth_unix_rw = "none"\n'
    )
    return conf


@dataclass
class Libvirt:
    """A running private libvirtd."""

    directory: Path
    process: subprocess.Popen[bytes]
    domains: list[str] = field(default_factory=list)
    loops: list[str] = field(default_factory=list)

    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket={self.directory}/sock/libvirt-sock"

    @property
    def ro_uri(self) -> str:
        return f"qemu+unix:///system?socket={self.directory}/sock/libvirt-sock-ro"

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

    def qemu_pid(self, domain: str) -> int:
        """The pid of a running domain's qemu, from the private /run/libvirt."""
        return int((self.directory / "run" / "qemu" / f"{domain}.pid").read_text().strip())

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
    for name in ("libvirtd", "virsh", "qemu-system-x86_64", "losetup", "unshare"):
        require_binary(name)
    if os.geteuid() != 0:
        raise AssertionError("the live tests start libvirtd and need root")
    directory = Path(tempfile.mkdtemp(prefix="qcow2-live-"))
    directory.chmod(0o755)  # nobody must reach the read-only socket and the images
    conf = _private_tree(directory)
    log_path = directory / "libvirtd.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             _namespace_script(directory, conf)],
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
            # Read the log before anything else, and keep it: it says why.
            tail = log_path.read_text(errors="replace").splitlines()[-LOG_LINES:]
            stop_libvirtd(libvirt, keep=True)
            raise AssertionError(
                f"libvirtd did not come up (exit status {process.returncode}; its files are "
                f"kept in {directory}): {probe.stderr.strip()}\n" + "\n".join(tail))
        time.sleep(0.2)


def stop_libvirtd(libvirt: Libvirt, keep: bool = False) -> None:
    """Stop everything libvirt started; the namespace and its mounts go with its last
    process. `keep` leaves the directory (and the log) for a failure to be read."""
    running: list[str] = []
    if libvirt.process.poll() is None:  # every domain still running, recorded or not: a test
        # that failed half-way must not leave a qemu behind on the host
        listed = subprocess.run(["virsh", "-q", "-c", libvirt.uri, "list", "--name"],
                                capture_output=True, text=True, timeout=60)
        running = listed.stdout.split()
    for name in dict.fromkeys([*libvirt.domains, *running]):
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
    if not keep:
        shutil.rmtree(libvirt.directory, ignore_errors=True)


@contextlib.contextmanager
def running_libvirtd() -> Iterator[Libvirt]:
    """A private libvirtd for the length of a `with` (a test module's fixture), then stopped."""
    daemon = start_libvirtd()
    try:
        yield daemon
    finally:
        stop_libvirtd(daemon)


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
