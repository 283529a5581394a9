"""Growth and time to full from the state store, on images that really grow (qemu-io writes
between runs), with the real adapters: the figures agree with the bytes written and the time
elapsed; parallel runs lose no sample; a history restarts when the volume is extended, the
image replaced or compacted; a state file or directory that cannot be trusted is never used
and never fails a check."""

from __future__ import annotations

import fcntl
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from qcow2_monitor.collectors.common.record import replace
from qcow2_monitor.collectors.common.units import human_size
from qcow2_monitor.collectors.report.collect import collect
from qcow2_monitor.collectors.report.growth import DiskSample, GrowthTracker, merge
from qcow2_monitor.collectors.report.model import Container, Growth
from qcow2_monitor.collectors.report.state import StateDirectory, state_name
from qcow2_monitor.collectors.report.thin import Judging
from qcow2_monitor.collectors.report.usage import analyze_image
from qcow2_monitor.nagios.check_qcow2 import main as check_main

from daemons import make_image, run
from tree import source_site

MiB = 1024 * 1024
Volume = Callable[[int], tuple[str, Path]]


@pytest.fixture
def volume(tmp_path: Path) -> Iterator[Volume]:
    """Factory: a loop device of `size` bytes holding a fresh 4 GiB qcow2 (the thin volume),
    and its backing file (to grow it, as lvextend would)."""
    attached: list[str] = []

    def make(size: int) -> tuple[str, Path]:
        backing = tmp_path / f"volume{len(attached)}"
        backing.write_bytes(b"")
        os.truncate(backing, size)
        device = run(["losetup", "--find", "--show", str(backing)]).stdout.strip()
        attached.append(device)
        run(["qemu-img", "create", "-q", "-f", "qcow2", device, "4G"])
        return device, backing

    yield make
    for device in attached:
        subprocess.run(["losetup", "-d", device], capture_output=True)


def perfdata(output: str) -> dict[str, float]:
    """The figures of the one image in check_qcow2's output, by metric name."""
    return {name: float(value) for name, value in
            re.findall(r"'\S+ (\w+)'=([-0-9.]+)", output.split("|", 1)[1])}


def check(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    state = check_main(["--no-live", "--extend-state", "ok", *args], out)
    return state, out.getvalue()


def test_rate_and_time_to_full_follow_the_writes(tmp_path: Path, volume: Volume) -> None:
    device, _ = volume(256 * MiB)
    run(["qemu-io", "-f", "qcow2", "-c", "write 0 1M", device])  # the L2 table exists now
    state = tmp_path / "state"
    step, spacing, runs = 4 * MiB, 2.5, 6
    times: list[float] = []
    output = ""
    start = time.monotonic()
    for i in range(runs):
        if i:
            run(["qemu-io", "-f", "qcow2", "-c", f"write {i * step} {step}", device])
        times.append(time.time())
        code, output = check(device, "--state-dir", str(state), "--growth-window", "60s",
                             "--warning-time-to-full", "1d")
        time.sleep(max(start + (i + 1) * spacing - time.monotonic(), 0))
    figures = perfdata(output)
    # The samples as the runs recorded them (the header's last, then one appended line per
    # later run): the rate is their least-squares slope, derived here, whatever the load
    # did to the runs' spacing.
    header, _buckets, *appended = (state / state_name(device)).read_text().splitlines()
    assert len(appended) == runs - 1
    last = dict(word.split("=", 1) for word in header.split(" path=")[0].split()[2:])["last"]
    samples = [tuple(map(float, line.split(",")[:2])) for line in (last, *appended)]
    mean_t = sum(t for t, _ in samples) / runs
    mean_end = sum(end for _, end in samples) / runs
    rate = sum((t - mean_t) * (end - mean_end) for t, end in samples) / sum(
        (t - mean_t) ** 2 for t, _ in samples)
    assert rate == pytest.approx(step / ((times[-1] - times[0]) / (runs - 1)), rel=0.5)
    # Perfdata writes both to 3 decimals.
    assert figures["growth_bytes_per_second"] == pytest.approx(rate, abs=1e-3), output
    headroom = figures["headroom_bytes"]
    assert figures["time_to_full_seconds"] == pytest.approx(headroom / rate, abs=1e-3), output
    # Full within a day at this rate: the time-to-full threshold says so.
    assert code == 1 and "time-to-full: full in" in output, output


def test_parallel_runs_lose_no_sample(tmp_path: Path) -> None:
    images = [make_image(tmp_path / f"p{i}.qcow2", "16M", write=["write 0 1M"])
              for i in range(3)]
    state = tmp_path / "state"
    runs = 8
    argv = [sys.executable, "-m", "qcow2_monitor.nagios.check_qcow2", "--no-live",
            "--state-dir", str(state), *map(str, images)]
    procs = [subprocess.Popen(argv, cwd=source_site(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(runs)]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), outputs[0]
    assert not any("busy" in out for out, _ in outputs)
    directory = state
    names = sorted(name for name in os.listdir(directory) if name != ".pruned")
    assert names == sorted(state_name(str(image)) for image in images), names  # no temp left
    for image in images:
        # The file: the header (with the first run's total), its buckets, then one line per
        # later run's sample.
        header, buckets, *appended = (directory / state_name(str(image))).read_text() \
            .splitlines()
        words, _, path = header.partition(" path=")
        assert path == str(image)
        fields = dict(word.split("=") for word in words.split()[2:])
        assert words.startswith("qcow2-monitor-growth 3 ")
        st = os.stat(image)
        assert fields["identity"] == f"file,{st.st_dev},{st.st_ino}"
        # total = [start, samples, ...]: the sums of the one bucket, of the first run's sample
        assert fields["total"].split(",")[1] == "1"
        assert [bucket.split(",")[1] for bucket in buckets.split()] == ["1"]
        # Every later run's sample, once each (two runs may sample within one millisecond:
        # the times need not differ).
        assert len(appended) == runs - 1
        assert tracked(str(image), state).samples == runs + 1


def qemu_end(path: str) -> int:
    out = run(["qemu-img", "check", "--output=json", path]).stdout
    return int(json.loads(out)["image-end-offset"])


def tracked(path: str, state: Path) -> Growth:
    judging = Judging(growth=GrowthTracker(str(state), window=3600))
    (record,) = collect([path], judging=judging).records
    assert record.usage is not None and record.usage.growth is not None, record.error
    return record.usage.growth


def test_history_restarts_when_it_stops_describing_one_image(tmp_path: Path,
                                                            volume: Volume) -> None:
    device, backing = volume(64 * MiB)
    state = tmp_path / "state"
    assert tracked(device, state).samples == 1
    run(["qemu-io", "-f", "qcow2", "-c", "write 0 2M", device])
    assert tracked(device, state).samples == 2
    # Extended: the device is larger (truncate + losetup -c, what lvextend does to a device).
    os.truncate(backing, 128 * MiB)
    run(["losetup", "-c", device])
    growth = tracked(device, state)
    assert growth.samples == 1
    assert growth.note == ("growth history restarted: its container was extended from 64 MiB "
                           "to 128 MiB")
    assert tracked(device, state).samples == 2
    # Compacted: a new, emptier image on the same device; its end offset went down.
    before = qemu_end(device)
    run(["qemu-img", "create", "-q", "-f", "qcow2", device, "4G"])
    growth = tracked(device, state)
    assert growth.samples == 1 and growth.note == (
        f"growth history restarted: its end offset went down from {human_size(before)} to "
        f"{human_size(qemu_end(device))} (compacted)")
    # Replaced: a file image swapped for another under the same name (a new inode).
    image = make_image(tmp_path / "f.qcow2", "16M", write=["write 0 1M"])
    assert tracked(str(image), state).samples == 1
    assert tracked(str(image), state).samples == 2
    make_image(tmp_path / "new.qcow2", "16M", write=["write 0 2M"]).rename(image)
    growth = tracked(str(image), state)
    assert (growth.samples, growth.note) == (1, "growth history restarted: the image was "
                                                "replaced")


def test_a_state_file_holds_any_name_and_refuses_damage(tmp_path: Path) -> None:
    """The text format: a name with blanks, `path=`, a newline and bytes that are not UTF-8
    stays on its line; a damaged line starts the history anew, with a note that says what."""
    image = make_image(tmp_path / "a path=b\nc \udcff.qcow2", "16M", write=["write 0 1M"])
    state = tmp_path / "state"
    for samples in range(1, 4):
        growth = tracked(str(image), state)
        assert (growth.samples, growth.note) == (samples, None)
    name = state / state_name(str(image))
    header, buckets, *appended = name.read_bytes().split(b"\n")[:-1]
    assert header.endswith(b" path=" + str(image).replace("\n", "\\x0a")
                           .replace("\udcff", "\\xff").encode())
    assert len(appended) == 2 and all(line.count(b",") == 2 for line in appended)
    for damaged, what in (
            ([header, buckets, b"1,2"], "an appended sample is not a time and two sizes"),
            ([header, buckets, b"inf,2,3"], "an appended sample is not a time and two sizes"),
            ([header, buckets, b"1,2.5,3"], "an appended sample is not a time and two sizes"),
            ([header.replace(b"last=", b"last=x"), buckets],
             "the last sample is not a time and two sizes"),
            ([header.replace(b"growth 3", b"growth 4"), buckets], "not a state file of this"),
            ([header.replace(b" total=", b" totals="), buckets], "the total is not 10 numbers"),
            ([b'{"version":2}', b"[]"], "not a state file of this version")):
        name.write_bytes(b"".join(line + b"\n" for line in damaged))
        growth = tracked(str(image), state)
        assert growth.samples == 1 and f"unusable ({what}" in (growth.note or ""), growth.note


def test_a_container_above_2_to_the_53_keeps_its_history(tmp_path: Path) -> None:
    """The container size is an integer read back exactly: 8 PiB + 1 byte is not "extended
    from 8 PiB to 8 PiB" at every run."""
    image = make_image(tmp_path / "h.qcow2", "16M", write=["write 0 1M"])
    usage = analyze_image(str(image))
    size = 2**53 + 1
    lines = None
    for run_index in range(3):
        container = Container("block", size, size - usage.image_end_offset, size, None,
                              used=usage.image_end_offset)
        now = replace(usage, container=container)
        history = merge(lines, DiskSample("/dev/x", ["block", 1], now, 1.7e9 + run_index), 3600)
        assert history.note is None, history.note
        lines = history.lines if history.rewrite else [
            *history.lines, ",".join(map(repr, history.sample)).encode()]
    assert b" container_size=9007199254740993 " in lines[0]


def test_untrusted_state_is_never_used(tmp_path: Path) -> None:
    image = make_image(tmp_path / "i.qcow2", "16M", write=["write 0 1M"])
    state = tmp_path / "state"
    assert tracked(str(image), state).samples == 1
    name = state / state_name(str(image))
    # Garbage in the state file: a note, a fresh history, never a failed check.
    name.write_bytes(b"\x00garbage{")
    growth = tracked(str(image), state)
    assert growth.samples == 1 and "unusable (not a state file" in (
        growth.note or "")
    code, output = check(str(image), "--state-dir", str(state))
    assert code == 0, output
    # A symlink planted where the state file goes is never followed, nor written through.
    victim = tmp_path / "victim"
    victim.write_text("precious")
    name.unlink()
    name.symlink_to(victim)
    growth = tracked(str(image), state)
    assert growth.samples == 1 and "unusable" in (growth.note or "")
    assert victim.read_text() == "precious" and not name.is_symlink()
    # A directory others may write to is not used at all, and the run says why.
    state.chmod(0o777)
    before = {p.name: p.stat().st_mtime_ns for p in state.iterdir()}
    code, output = check(str(image), "--state-dir", str(state))
    assert code == 0 and f"state directory {state} is writable by others (mode 0777): not " \
        "used" in output, output
    assert {p.name: p.stat().st_mtime_ns for p in state.iterdir()} == before


def test_execd_keeps_its_samples_in_memory(tmp_path: Path) -> None:
    image = make_image(tmp_path / "m.qcow2", "64M", write=["write 0 1M"])
    state = tmp_path / "state"
    state.mkdir(mode=0o777)
    state.chmod(0o777)  # not usable: the samples live in the daemon's memory only
    proc = subprocess.Popen(
        [sys.executable, "-m", "qcow2_monitor.telegraf.qcow2_telegraf", "--execd", "--no-live",
         "--state-dir", str(state), "--growth-window", "12s", str(image)],
        cwd=source_site(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    lines = []
    for i in range(3):
        if i:
            run(["qemu-io", "-f", "qcow2", "-c", f"write {i * 4}M 4M", str(image)])
        proc.stdin.write("\n")
        proc.stdin.flush()
        lines.append(proc.stdout.readline())
        time.sleep(1.2)
    _, err = proc.communicate(input="", timeout=60)  # stdin closes: the daemon ends
    assert "growth_bytes_per_second" not in lines[0]
    assert re.search(r"growth_bytes_per_second=[0-9.e+]+[,\s]", lines[2]), lines[2]
    assert "samples kept in memory" in err and os.listdir(state) == []


def test_files_of_disks_not_seen_for_a_week_are_pruned(tmp_path: Path) -> None:
    image = make_image(tmp_path / "i.qcow2", "16M", write=["write 0 1M"])
    state = tmp_path / "state"
    tracked(str(image), state)
    week = 7 * 24 * 3600
    gone = state / state_name("/gone/disk")
    gone.write_text("{}")
    dead = state / f".{state_name('/gone/disk')}.123.abcd1234"  # left by a run that died
    dead.write_text("{")
    foreign = state / "README"
    foreign.write_text("not ours")
    # An earlier version's file (JSON, named .json): a disk's history that is not read again.
    earlier = state / (state_name(str(image)).removesuffix(".state") + ".json")
    earlier.write_text('{"version":2}\n')
    old = time.time() - week - 60
    for path in (gone, dead, foreign, earlier):
        os.utime(path, (old, old))
    tracked(str(image), state)  # pruned within the hour already: nothing removed
    assert gone.exists() and dead.exists() and earlier.exists()
    os.utime(state / ".pruned", (old, old))
    tracked(str(image), state)
    assert not gone.exists() and not dead.exists() and not earlier.exists()
    assert foreign.exists()
    assert (state / state_name(str(image))).exists()


def test_state_names_are_the_sha256_of_the_identity() -> None:
    """The interpreter's own SHA-256 (no OpenSSL loaded) names files as hashlib's does: one
    name per disk whichever Python runs."""
    import hashlib
    import subprocess
    import sys

    for identity in ("/var/lib/libvirt/images/vm.qcow2", "dev:253:4", "/x/\udcff"):
        digest = hashlib.sha256(identity.encode("utf-8", "surrogateescape")).hexdigest()
        assert state_name(identity) == digest[:40] + ".state"
    code = ("import sys; from qcow2_monitor.collectors.report.state import state_name; "
            "state_name('x'); print('_hashlib' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd="/")
    assert done.stdout.strip() == "False"


def test_the_hash_is_found_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every disk of every run names its file: the constructor is looked up once, not searched
    for on the whole path each time (a module name that is not there, _sha2 before Python
    3.12, is looked for in every directory of sys.path)."""
    import builtins

    state_name("first")
    asked: list[object] = []
    real_import = builtins.__import__

    def recording_import(*args: Any, **kwargs: Any) -> Any:
        asked.append(args[0])
        return real_import(*args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", recording_import)
    assert state_name("later").endswith(".state")
    monkeypatch.undo()
    assert asked == []


def test_a_run_that_cannot_get_the_lock_records_nothing_and_says_so(tmp_path: Path) -> None:
    """Parallel runs take turns on the directory's flock; one that waited its bound reports
    without recording, and the lock is free again once a run leaves it."""
    image = tmp_path / "img.qcow2"
    make_image(image, "16M")
    state = tmp_path / "state"
    assert tracked(str(image), state).samples == 1
    store = StateDirectory(str(state))
    other = os.open(state, os.O_RDONLY | os.O_DIRECTORY)  # a parallel run's hold
    try:
        fcntl.flock(other, fcntl.LOCK_EX)
        with store.locked(timeout=0.05) as held:
            assert held is False
        judging = Judging(growth=GrowthTracker(str(state), window=3600))
        collection = collect([str(image)], judging=judging)
        assert any("busy (parallel runs): this run's samples not recorded" in note
                   for note in collection.notes), collection.notes
        fcntl.flock(other, fcntl.LOCK_UN)
        with store.locked(timeout=0.05) as held:
            assert held is True
            with StateDirectory(str(state)).locked(timeout=0.05) as second:
                assert second is False  # held by the first until its block ends
        with store.locked(timeout=0.05) as held:
            assert held is True
    finally:
        os.close(other)
        store.close()
    assert tracked(str(image), state).samples == 2  # the busy run's sample was not recorded
