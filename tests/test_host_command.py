"""collectors/host/command.py: a host client run with a time bound, its stdin read-only, its
messages in the C locale, and nothing of it left running once the bound is reached."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from qcow2_monitor.collectors.host.command import run_bounded


def test_output_status_and_environment() -> None:
    done = run_bounded(["sh", "-c", 'echo "out $LC_ALL"; echo err >&2; exit 3'], 10.0)
    assert (done.returncode, done.stdout, done.stderr) == (3, "out C\n", "err\n")


def test_stdin_is_dev_null_opened_read_only() -> None:
    done = run_bounded(["sh", "-c", "readlink /proc/self/fd/0; cat; echo x >&0 || echo refused"],
                       10.0)
    assert done.stdout.splitlines() == ["/dev/null", "refused"]


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"  # killed, not yet reaped
    except FileNotFoundError:
        return True


def test_the_bound_kills_the_whole_process_group(tmp_path: Path) -> None:
    """A client that left a child holding our pipes would make the wait hang: on timeout the
    whole group is killed, the child too."""
    pidfile = tmp_path / "child.pid"
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        run_bounded(["sh", "-c", f"sleep 60 & echo $! > {pidfile}; sleep 60"], 0.5)
    assert time.monotonic() - started < 10  # bounded by 0.5 s (20x margin for load)
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(child)


def test_a_missing_client_raises_as_popen_does() -> None:
    with pytest.raises(FileNotFoundError):
        run_bounded(["qcow2-monitor-no-such-client"], 1.0)
    assert os.path.exists("/dev/null")
