"""An isolated root to install the Debian package into, with the real apt-get, dpkg and agents,
the host untouched.

A private mount namespace (`unshare --mount --propagation private`) in which /etc, /usr and
/var are overlayfs mounts: the host's directories are the lower layers, and the upper layers
live on a tmpfs mounted inside the namespace. Everything apt-get, dpkg, the maintainer scripts,
useradd, py3compile, deb-systemd-helper and sudo write lands in those upper layers, users
created there exist only there (its /etc/passwd), and the test reads the upper layers to see
what an installation left behind. sudo's records go to a tmpfs on /run/sudo, private too.
The mounts are private to the namespace: no other process
of the host (other engineers' tests included) sees them, and none has to be unmounted: when
the namespace's last process exits, the kernel drops its mounts and the tmpfs with them.

The namespace is held by one `sleep` process; commands enter it with
`nsenter --mount --target PID`. Directories outside /etc, /usr and /var (the tests' temporary
directories under /tmp) are shared with the host, so daemons started inside write results the
test reads directly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import pytest

OVERLAID = ("etc", "usr", "var")
START_TIMEOUT = 30.0
_HOLDER = """\
set -e
layers=$1
mount -t tmpfs -o mode=0700,size=4g qcow2-monitor-root "$layers"
for dir in {dirs}; do
    mkdir "$layers/$dir.upper" "$layers/$dir.work"
    mount -t overlay qcow2-monitor-$dir \\
        -o "lowerdir=/$dir,upperdir=$layers/$dir.upper,workdir=$layers/$dir.work" "/$dir"
done
# sudo keeps its timestamp records in /run/sudo (not overlaid: sockets there would not
# connect through overlayfs); give the namespace its own. The mount point is the directory
# sudo's own tmpfiles.d creates at boot.
mkdir -p /run/sudo
mount -t tmpfs -o mode=0711,size=1m qcow2-monitor-sudo /run/sudo
echo ready
# Held until the test ends it, or until the test process dies (parent-death signal).
exec setpriv --pdeathsig KILL -- sleep infinity
""".format(dirs=" ".join(OVERLAID))


def _require(tool: str, package: str) -> str:
    path = shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if path is None:
        pytest.fail(f"{tool} not found: apt-get install -y {package}")
    return path


class IsolatedRoot:
    """The namespace: run commands in it, as root or as a user that may exist only there."""

    def __init__(self, holder: subprocess.Popen[bytes], layers: Path) -> None:
        self.holder = holder
        self.layers = layers  # the tmpfs, as the namespace sees it

    def enter(self, user: Optional[str] = None, cwd: Optional[Path] = None) -> list[str]:
        """The argv prefix that runs a command inside the namespace, as root or as `user` (and
        its group), in `cwd` (entering a mount namespace otherwise starts at its /). nsenter
        and setpriv exec the command (no process in between), so a daemon started this way
        gets signals directly."""
        wd = [f"--wd={cwd}"] if cwd else []
        enter = ["nsenter", "--mount", f"--target={self.holder.pid}", *wd, "--"]
        if user is None:
            return enter
        return [*enter, "setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--"]

    def run(self, command: Sequence[str], user: Optional[str] = None, check: bool = True,
            cwd: Optional[Path] = None, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run inside; a failure (with check) shows the command's output, shortened."""
        kwargs.setdefault("timeout", 600)
        proc = subprocess.run([*self.enter(user, cwd), *command], capture_output=True,
                              text=True, check=False, **kwargs)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(command)} exited {proc.returncode}:\n"
                                 f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    def read(self, path: str) -> str:
        """A file as the namespace sees it (an installed file, not the host's)."""
        return self.run(["cat", path]).stdout

    def ensure_user(self, name: str) -> None:
        """A system user and group `name`, created in the namespace's /etc only if missing."""
        if self.run(["getent", "passwd", name], check=False).returncode != 0:
            self.run(["useradd", "--system", "--user-group", "--no-create-home",
                      "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name])

    def changes(self) -> dict[str, str]:
        """What was written under /etc, /usr and /var since the namespace started: path ->
        "TYPE SIZE MTIME" as find(1) prints them (a deleted host file is a whiteout, type c;
        a directory is listed once anything below it changed)."""
        found: dict[str, str] = {}
        for top in OVERLAID:
            upper = f"{self.layers}/{top}.upper"
            listing = self.run(["find", upper, "-mindepth", "1",
                                "-printf", "%P\\t%y %s %T@\\0"]).stdout
            for entry in filter(None, listing.split("\0")):
                relative, stamp = entry.split("\t", 1)
                found[f"/{top}/{relative}"] = stamp
        return found


@contextmanager
def isolated_root() -> Iterator[IsolatedRoot]:
    """An IsolatedRoot for the block's duration. Daemons started inside must be stopped by the
    block (they keep the namespace, not the host, alive)."""
    for tool, package in (("unshare", "util-linux"), ("nsenter", "util-linux"),
                          ("setpriv", "util-linux")):
        _require(tool, package)
    if os.geteuid() != 0:
        pytest.fail("the isolated root needs root (mount namespaces, overlayfs)")
    layers = Path(tempfile.mkdtemp(prefix="qcow2-deb-root-"))
    holder = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", _HOLDER, "sh",
         str(layers)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        ready = holder.stdout.readline()  # bounded: the script either prints or exits
        if ready.strip() != b"ready":
            holder.kill()
            _, err = holder.communicate(timeout=START_TIMEOUT)
            raise AssertionError(f"isolated root did not start: {err.decode(errors='replace')}")
        root = IsolatedRoot(holder, layers)
        yield root
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait(timeout=30)
        # The tmpfs was mounted in the namespace only: on the host this is an empty directory.
        os.rmdir(layers)
