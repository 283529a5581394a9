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

from qcow2_monitor.analyze import main as cli
from qcow2_monitor.collectors.report.usage import analyze_usage

from tree import REPO


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
    """Every qcow2-analyze command and output on `path`, every chain variant included."""
    commands = [["-f", str(path), "-v"], ["-f", str(path), "-o", "raw", "-H"]]
    for output in ("human", "json"):
        commands += [["info", "--output", output, str(path)],
                     ["info", "--output", output, "--backing-chain", str(path)],
                     ["header", "--output", output, str(path)],
                     ["usage", "--output", output, str(path)],
                     ["usage", "--output", output, "--no-chain", str(path)],
                     ["check", "--output", output, str(path)],
                     ["check", "--output", output, "--chain", str(path)],
                     ["measure", "--output", output, str(path)]]
        commands += [["dump", "--what", what, "--output", output, str(path)]
                     for what in ("l1", "l2", "refcount", "snapshots", "bitmaps")]
    return commands


def one_of_each(path: Path) -> list[list[str]]:
    """One run of every command, quick enough to run beside a writer."""
    return [["-f", str(path), "-v"], ["info", "--output", "json", str(path)],
            ["usage", "--output", "json", str(path)], ["check", "--output", "json", str(path)],
            ["dump", "--what", "l2", str(path)], ["measure", str(path)]]


def adapter_commands(path: Path) -> list[list[str]]:
    """Every adapter, with and without --chain and --check."""
    commands = []
    for extra in ([], ["--chain"], ["--check"], ["--chain", "--check"]):
        commands += [["qcow2_monitor.nagios.check_qcow2", "-f", str(path), *extra],
                     ["qcow2_monitor.telegraf.qcow2_telegraf", *extra, str(path)],
                     ["qcow2_monitor.node_exporter_textfile.qcow2_textfile", "--output", "-",
                      *extra, str(path)]]
    return commands


def make_chain(tmp_path: Path) -> list[Path]:
    """base <- mid <- top, each with data of its own, the backing names relative."""
    base = make_image(tmp_path / "base.qcow2")
    chain = [base]
    for name in ("mid.qcow2", "top.qcow2"):
        layer = tmp_path / name
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", chain[-1].name,
                        "-F", "qcow2", str(layer)], check=True)
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x6c 8M 64k", str(layer)],
                       check=True, capture_output=True)
        chain.append(layer)
    return chain


def age_access_times(paths: list[Path]) -> None:
    # An atime far in the past: relatime would refresh it on any ordinary read.
    old = time.time_ns() - 10 * 24 * 3600 * 10**9
    for path in paths:
        os.utime(path, ns=(old, os.stat(path).st_mtime_ns))


def test_analysis_changes_nothing_not_even_atime(tmp_path: Path) -> None:
    chain = make_chain(tmp_path)
    age_access_times(chain)
    before = [fingerprint(layer) for layer in chain]
    for args in all_commands(chain[-1]):
        proc = subprocess.run([sys.executable, "-m", "qcow2_monitor.analyze", *args], cwd=REPO,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, (args, proc.stderr)
        assert [fingerprint(layer) for layer in chain] == before, args


def test_adapters_change_nothing_not_even_atime(tmp_path: Path) -> None:
    chain = make_chain(tmp_path)
    age_access_times(chain)
    before = [fingerprint(layer) for layer in chain]
    for args in adapter_commands(chain[-1]):
        proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
        assert [fingerprint(layer) for layer in chain] == before, args


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
    # qemu-io reads its commands from stdin: it holds the image open for writing from the first
    # write until told to go on, however long the analyses below take on a loaded machine.
    writer = subprocess.Popen(["qemu-io", "-f", "qcow2", str(image)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert writer.stdin is not None
    writer.stdin.write("write -P 0x11 4M 1M\n")
    writer.stdin.flush()
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
        for args in one_of_each(image):
            assert subprocess.run([sys.executable, "-m", "qcow2_monitor.analyze", *args], cwd=REPO,
                                  capture_output=True, timeout=120).returncode in (0, 3), args
        # The check runs on an image in use (qemu-img check would refuse without -U) and says
        # how it read it (the image was held for writing: read until what it found held still).
        check = subprocess.run([sys.executable, "-m", "qcow2_monitor.analyze", "check", "--output",
                                "json", str(image)], cwd=REPO, capture_output=True, text=True,
                               timeout=120)
        assert any("held for writing" in note
                   for note in json.loads(check.stdout).get("notes", [])), check.stdout
        out, err = writer.communicate("write -P 0x22 8M 1M\nquit\n", timeout=60)
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


def test_never_opens_what_is_not_a_file_or_block_device(tmp_path: Path) -> None:
    """Special files are refused before they are opened: opening a FIFO blocks until a writer
    comes, and other special files act on open (a watchdog device arms its countdown). Their
    names can come from an image header, which whoever writes the image chooses, and the
    collectors may run as root (the packaged timer, the sudoers rule)."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    top = tmp_path / "top.qcow2"
    # -u: qemu-img itself would block opening the FIFO to read its size.
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", str(fifo),
                    "-F", "qcow2", str(top), "64M"], check=True)
    runs = {
        "backing": ["usage", "--output", "json", str(top)],
        "target": ["header", str(fifo)],
        "check": ["check", "--chain", str(top)],
    }
    for what, args in runs.items():
        try:
            proc = subprocess.run([sys.executable, "-m", "qcow2_monitor.analyze", *args],
                                  cwd=REPO, capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{what}: blocked opening the FIFO {fifo}") from None
        assert proc.returncode == 1, (what, proc.stderr[-2000:])
        assert "not a regular file or block device" in proc.stdout + proc.stderr, (
            what, proc.stdout[-2000:], proc.stderr[-2000:])
