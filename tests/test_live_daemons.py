"""The private libvirtd of the live tests (tests/live_daemons.py) is safe on a KVM host: it
runs beside a system libvirtd, needs no user or group of the host and writes nothing under
/etc; when it cannot start, the error says why.

The host's own state is never changed here either: the "host" of the coexistence and
fresh-host tests is an outer mount namespace, whose /run/libvirt, /var/lib/libvirt, ... (and
/etc/passwd, /etc/group) are temporary copies.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

import live_daemons
from daemons import require_binary
from live_daemons import PRIVATE_DIRECTORIES, QEMU_GROUPS, QEMU_USER, start_libvirtd

HERE = Path(__file__).resolve().parent

# Run in the outer namespace: the private libvirtd starts, runs a domain, answers, stops.
_CHILD = """
import json, sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from daemons import make_image
from live_daemons import file_disk, start_libvirtd, stop_libvirtd
libvirt = start_libvirtd()
try:
    image = make_image(libvirt.directory / "d.qcow2", "64M")
    libvirt.create("vmx", file_disk(image, "sda", 0))
    libvirt.qemu_io("vmx", 0, "write -P 1 0 1M")
    answer = {"allocation": libvirt.allocation("vmx", "sda"),
              "private": str(libvirt.directory)}
finally:
    stop_libvirtd(libvirt)
print(json.dumps(answer))
"""


@pytest.fixture
def host_view() -> Iterator[Path]:
    """A directory world-traversable (as start_libvirtd's own is) for an outer namespace's
    copies of the host directories."""
    directory = Path(tempfile.mkdtemp(prefix="qcow2-host-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _in_outer_namespace(view: Path, before: list[str], after: str = ""
                        ) -> dict[str, object]:
    """Run the `before` commands (sh), the child above, then `after` in a private mount
    namespace of its own; returns the child's answer."""
    require_binary("unshare")
    child = f"{shlex.quote(sys.executable)} -c {shlex.quote(_CHILD)} {shlex.quote(str(HERE))}"
    script = " && ".join([*before, child]) + after
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=300, cwd=view)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-3000:]}"
    return dict(json.loads(proc.stdout.splitlines()[-1]))


def test_coexists_with_a_system_libvirtd(host_view: Path) -> None:
    """A libvirtd at the default paths (the host's system one, in the outer namespace's
    view of them) keeps running, and keeps its state, while the private one starts, runs a
    domain and stops. (Without the private namespace, the second libvirtd failed on the
    first one's /run/libvirt/network/driver.pid.)"""
    binds = [f"mount --bind {source} {target}" for source, target in
             live_daemons._account_mounts(host_view)]  # as a host with libvirt has them
    for name, target in PRIVATE_DIRECTORIES.items():
        if name != "etc":  # the system one reads the host's configuration as it is
            (host_view / name).mkdir()
            binds.append(f"mount --bind {host_view / name} {target}")
    answers = "virsh -c qemu:///system version | grep -q 'Running hypervisor'"
    pids = f"find {host_view}/run -name '*.pid' | sort | xargs md5sum"
    before = [
        *binds,
        f"libvirtd -d -p {host_view}/system.pid > {host_view}/system.log 2>&1",
        f"for i in $(seq 300); do {answers} && break; sleep 0.3; done",
        answers,
        f"{pids} > {host_view}/pids.before",
        f"test -s {host_view}/pids.before",
    ]
    # The system one still answers, with its runtime files as they were; then it is stopped.
    after = (f"; status=$?; {answers} && {pids} | cmp - {host_view}/pids.before "
             f"|| status=99; kill $(cat {host_view}/system.pid); exit $status")
    answer = _in_outer_namespace(host_view, before, after)
    assert int(str(answer["allocation"])) >= 1024 * 1024  # the domain ran and wrote
    # Nothing of the private one landed in the system one's directories.
    assert not list((host_view / "run").rglob("vmx*"))
    assert not list((host_view / "log").rglob("vmx*"))


def test_needs_no_user_or_group_of_the_host(host_view: Path) -> None:
    """On a host without libvirt-daemon-system there is no libvirt-qemu user nor kvm group:
    the private libvirtd gets them in its own namespace, the host's files stay as they are."""
    for database in ("passwd", "group"):
        names = (QEMU_USER,) if database == "passwd" else QEMU_GROUPS
        lines = Path(f"/etc/{database}").read_text().splitlines(keepends=True)
        kept = [line for line in lines if line.split(":")[0] not in names]
        (host_view / database).write_text("".join(kept))
        (host_view / database).chmod(0o644)
    before = (f"mount --bind {host_view}/passwd /etc/passwd && "
              f"mount --bind {host_view}/group /etc/group && "
              f"! getent passwd {QEMU_USER} && ! getent group kvm")
    passwd, group = Path("/etc/passwd").read_bytes(), Path("/etc/group").read_bytes()
    answer = _in_outer_namespace(host_view, [before])
    assert int(str(answer["allocation"])) >= 1024 * 1024
    assert (Path("/etc/passwd").read_bytes(), Path("/etc/group").read_bytes()) == (passwd, group)


def test_a_failed_start_says_why_and_keeps_the_log(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(live_daemons.QEMU_CONF_SETTINGS, "user", '"no-such-user-q2m"')
    with pytest.raises(AssertionError) as failure:
        start_libvirtd()
    message = str(failure.value)
    assert "libvirtd did not come up" in message
    assert "Failed to parse user 'no-such-user-q2m'" in message  # from its log
    assert len(message) < 10_000
    kept = Path(message.split("its files are kept in ", 1)[1].split(")", 1)[0])
    try:
        assert "no-such-user-q2m" in (kept / "libvirtd.log").read_text()
    finally:
        shutil.rmtree(kept)
