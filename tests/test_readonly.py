"""Read-only, always: an analysed image (and a running writer beside it) is untouched."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from analyze import main as cli
from collectors.usage import analyze_usage

REPO = Path(__file__).resolve().parent.parent


def make_image(path: Path, *extra: str) -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *extra, str(path), "64M"],
                   check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 2M",
                    "-c", "write -P 0x5b 40M 64k", str(path)], check=True,
                   capture_output=True)
    return path


def fingerprint(path: Path) -> tuple[str, int, int, int]:
    # Hash through O_NOATIME (the tests run as root) so the fingerprint itself leaves the
    # access time alone.
    fd = os.open(path, os.O_RDONLY | os.O_NOATIME)
    try:
        digest = hashlib.sha256(os.pread(fd, os.fstat(fd).st_size, 0)).hexdigest()
    finally:
        os.close(fd)
    st = os.stat(path)
    return digest, st.st_mtime_ns, st.st_atime_ns, st.st_ctime_ns


def all_commands(path: Path) -> list[list[str]]:
    commands = [["-f", str(path), "-v"], ["info", "--output", "json", str(path)],
                ["usage", "--output", "json", str(path)]]
    for extra in (["check", "--output", "json", str(path)],
                  ["dump", "--what", "l2", str(path)], ["measure", str(path)]):
        commands.append(extra)
    return commands


def test_analysis_changes_nothing_not_even_atime(tmp_path: Path) -> None:
    image = make_image(tmp_path / "img.qcow2")
    # An atime far in the past: relatime would refresh it on any ordinary read.
    old = time.time_ns() - 10 * 24 * 3600 * 10**9
    os.utime(image, ns=(old, os.stat(image).st_mtime_ns))
    before = fingerprint(image)
    for args in all_commands(image):
        proc = subprocess.run([sys.executable, "-m", "analyze", *args], cwd=REPO,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, (args, proc.stderr)
    assert fingerprint(image) == before


def test_never_opens_for_writing_nor_locks(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    image = make_image(tmp_path / "img.qcow2")
    opened: list[int] = []
    fcntl_cmds: list[int] = []
    real_open, real_fcntl = os.open, fcntl.fcntl

    def spy_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        opened.append(flags)
        return real_open(path, flags, *args, **kwargs)

    def spy_fcntl(fd: int, cmd: int, *args: Any) -> Any:
        fcntl_cmds.append(cmd)
        return real_fcntl(fd, cmd, *args)

    monkeypatch.setattr(os, "open", spy_open)
    monkeypatch.setattr(fcntl, "fcntl", spy_fcntl)
    monkeypatch.setattr(fcntl, "flock", lambda *a: pytest.fail("flock called"))
    monkeypatch.setattr(fcntl, "lockf", lambda *a: pytest.fail("lockf called"))
    for args in all_commands(image):
        assert cli.main(args) == 0, args
    assert opened, "no open recorded"
    write_modes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    assert all(flags & write_modes == 0 for flags in opened)
    # The only fcntl the core makes is the F_OFD_GETLK probe: it asks, never takes a lock.
    assert set(fcntl_cmds) <= {getattr(fcntl, "F_OFD_GETLK", 36)}


def test_running_writer_is_detected_and_undisturbed(tmp_path: Path) -> None:
    image = make_image(tmp_path / "busy.qcow2")
    writer = subprocess.Popen(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x11 4M 1M", "-c", "sleep 4000",
         "-c", "write -P 0x22 8M 1M", str(image)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        in_use = False
        while time.monotonic() < deadline and not in_use:
            usage = analyze_usage(str(image), chain=False).usage
            assert usage is not None
            in_use = usage.in_use
            time.sleep(0.1)
        assert in_use, "write lock of the running qemu-io not detected"
        assert usage is not None and any("running qemu" in note for note in usage.notes)
        # Analyse repeatedly while it runs: every command succeeds, nothing is refused.
        for args in all_commands(image):
            assert subprocess.run([sys.executable, "-m", "analyze", *args], cwd=REPO,
                                  capture_output=True, timeout=120).returncode in (0, 3), args
        # The check runs on an image in use (qemu-img check would refuse without -U) and says
        # that what it finds may be transient.
        check = subprocess.run([sys.executable, "-m", "analyze", "check", "--output",
                                "json", str(image)], cwd=REPO, capture_output=True, text=True,
                               timeout=120)
        assert any("held for writing" in note
                   for note in json.loads(check.stdout).get("notes", [])), check.stdout
        out, err = writer.communicate(timeout=60)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert writer.returncode == 0, err
    assert "wrote 1048576/1048576" in out
    # The writer's data landed and the image is consistent.
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "read -P 0x11 4M 1M",
                    "-c", "read -P 0x22 8M 1M", str(image)], check=True, capture_output=True)
    check = subprocess.run(["qemu-img", "check", str(image)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    usage = analyze_usage(str(image), chain=False).usage
    assert usage is not None and not usage.in_use
