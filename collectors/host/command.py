"""Running a read-only host client (virsh, vgs) with a time bound. Imported only by the runs
that ask one: a check of images at rest starts no process and needs none of this."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess


def run_bounded(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run `argv` for at most `timeout` seconds. On timeout its whole process group is killed:
    a child that kept our pipes open would otherwise make the wait hang after all."""
    env = dict(os.environ, LC_ALL="C")
    # Not subprocess.DEVNULL, which opens /dev/null read-write: nothing here opens for writing.
    stdin = os.open(os.devnull, os.O_RDONLY)
    try:
        proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env,
                                start_new_session=True)
    finally:
        os.close(stdin)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)
