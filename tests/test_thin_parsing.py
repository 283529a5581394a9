"""What libvirt and QMP say about a paused VM, LVM's device-mapper names, and the small rules
of thin provisioning, on their own: the texts are as libvirt, QMP and LVM write them (the
live tests, tests/test_enospc.py, get them from the real daemons)."""

from __future__ import annotations

from pathlib import Path

import pytest

from qcow2_monitor.collectors.common.record import replace
from qcow2_monitor.collectors.common.units import human_duration, parse_duration
from qcow2_monitor.collectors.host.lvm import lvm_size, parse_vgs, split_dm_name
from qcow2_monitor.collectors.host.pause import (
    DomainState,
    libvirt_pause,
    parse_disk_errors,
    parse_domain_states,
    qmp_device_errors,
    qmp_pause,
    qmp_vm_reason,
)
from qcow2_monitor.collectors.qcow2.refcount import zero_entries
from qcow2_monitor.collectors.report.growth import BUCKETS, DiskSample, growth_of, merge, slope
from qcow2_monitor.collectors.report.health import assess
from qcow2_monitor.collectors.report.model import Container, Pause, PauseReason, State
from qcow2_monitor.collectors.report.usage import analyze_image

from daemons import make_image

DOMSTATS = """\
Domain: 'enospc'
  state.state=3
  state.reason=5
  block.count=1
  block.0.name=vda
  block.0.path=/dev/loop0
  block.0.allocation=67174400
  block.0.physical=67108864

Domain: 'held by user'
  state.state=3
  state.reason=1

Domain: 'runs'
  state.state=1
  state.reason=1
"""


def test_domain_states_from_domstats() -> None:
    states = parse_domain_states(DOMSTATS)
    assert states == {"enospc": DomainState(3, 5), "held by user": DomainState(3, 1),
                      "runs": DomainState(1, 1)}
    assert states["enospc"].io_error and not states["held by user"].io_error
    assert states["held by user"].reason_name == "user" and not states["runs"].paused


def test_domain_states_of_names_with_line_separators() -> None:
    # virsh prints a name as it is: U+2028 in it does not end the line.
    states = parse_domain_states("Domain: 'vm\u2028x'\n  state.state=3\n  state.reason=5\n")
    assert states == {"vm\u2028x": DomainState(3, 5)}


# virDomainPausedReason as libvirt numbers it (include/libvirt/libvirt-domain.h,
# VIR_DOMAIN_PAUSED_*), written out by hand: the number `virsh domstats` prints as
# state.reason, and our word for it.
LIBVIRT_PAUSED_NUMBERS = [
    (0, "unknown"), (1, "user"), (2, "migration"), (3, "save"), (4, "dump"), (5, "ioerror"),
    (6, "watchdog"), (7, "from-snapshot"), (8, "shutting-down"), (9, "snapshot"),
    (10, "crashed"), (11, "starting-up"), (12, "postcopy"), (13, "postcopy-failed"),
    (14, "api-error"),
]


@pytest.mark.parametrize(("number", "word"), LIBVIRT_PAUSED_NUMBERS)
def test_libvirt_paused_reason_numbers(number: int, word: str) -> None:
    assert DomainState(3, number).reason_name == word


@pytest.mark.parametrize("number", [15, 99, 1 << 31])
def test_libvirt_paused_reason_out_of_range_is_unknown(number: int) -> None:
    """A reason a newer libvirt adds is still a paused VM, of a reason we cannot name."""
    paused = libvirt_pause("d", "vda", DomainState(3, number), None)
    assert paused is not None and paused.reason == "unknown"


# QMP's RunState values of a stopped VM (qapi/run-state.json), written out by hand, and our
# word for each; a state a newer qemu adds is unknown.
QMP_RUN_STATE_WORDS = [
    ("debug", "debug"), ("inmigrate", "migration"), ("internal-error", "internal-error"),
    ("io-error", "ioerror"), ("paused", "user"), ("postmigrate", "migration"),
    ("prelaunch", "starting-up"), ("finish-migrate", "migration"), ("restore-vm", "save"),
    ("save-vm", "save"), ("shutdown", "shutting-down"), ("watchdog", "watchdog"),
    ("guest-panicked", "panicked"), ("colo", "colo"),
    ("a-state-of-a-newer-qemu", "unknown"),
]


@pytest.mark.parametrize(("status", "word"), QMP_RUN_STATE_WORDS)
def test_qmp_run_state_words(status: str, word: str) -> None:
    reason = qmp_vm_reason({"status": status, "running": False})
    assert reason is PauseReason(word)  # a member of the enum, not a bare string


def test_qmp_running_and_guest_suspended_are_not_paused() -> None:
    """The two other RunState values: `running` (the only one query-status calls running) and
    `suspended`, a guest that put itself to sleep (S3): nobody paused it."""
    assert qmp_vm_reason({"status": "running", "running": True}) is None
    assert qmp_vm_reason({"status": "suspended", "running": False}) is None


def test_every_pause_reason_is_said_by_libvirt_or_qmp() -> None:
    """The enum holds the words the sources give us and no other: libvirt's numbers, QMP's
    run states and io-status (qapi/block.json BlockDeviceIoStatus: ok, failed, nospace), and
    other-disk, which is ours (the VM's error is on another disk)."""
    block = [{"io-status": status, "inserted": {"file": status}}
             for status in ("ok", "failed", "nospace")]
    assert qmp_device_errors(block) == {"failed": "ioerror", "nospace": "nospace"}
    said = {word for _, word in LIBVIRT_PAUSED_NUMBERS + QMP_RUN_STATE_WORDS}
    said |= {"nospace", "ioerror", "other-disk"}
    assert {reason.value for reason in PauseReason} == said


def test_health_rule_of_each_pause_reason(tmp_path: Path) -> None:
    """Only an I/O error is a problem of the disk: no space on it, another error of it, or of
    another disk of the VM; every other reason is a note (README, "Health: one policy for
    every adapter")."""
    usage = analyze_image(str(make_image(tmp_path / "p.qcow2", "16M")))
    rules = {}
    for reason in PauseReason:
        paused = replace(usage, pause=Pause("vm1", "vda", reason, resume="virsh resume vm1"))
        [judged] = assess(usage=paused, check=None, error=None).reasons
        rules[reason.value] = (judged.rule, judged.state)
    assert rules.pop("nospace") == ("paused-nospace", State.CRITICAL)
    assert rules.pop("ioerror") == rules.pop("other-disk") == ("paused-ioerror", State.CRITICAL)
    assert set(rules.values()) == {("paused", State.OK)}


def test_disk_errors_as_virsh_prints_them() -> None:
    assert parse_disk_errors("vda: no space\nsdb: unspecified error\n") == {
        "vda": "nospace", "sdb": "ioerror"}
    assert parse_disk_errors("No errors found\n") == {}


def test_libvirt_pause_per_disk() -> None:
    paused = DomainState(3, 5)
    errors = {"vda": PauseReason.NOSPACE}
    assert libvirt_pause("d", "vda", paused, errors).reason == "nospace"
    # Another disk, and a backing layer of the full one, are not the cause.
    other = libvirt_pause("d", "vdb", paused, errors)
    assert other.reason == "other-disk" and other.error_disk == "vda: nospace"
    assert libvirt_pause("d", "vda[1]", paused, errors).reason == "other-disk"
    # libvirt names no disk (domblkerror failed or cleared): an I/O error all the same.
    assert libvirt_pause("d", "vda", paused, None).reason == "ioerror"
    user = libvirt_pause("d", "vda", DomainState(3, 1), None)
    assert user.reason == "user" and user.resume == "virsh resume d"
    assert libvirt_pause("d", "vda", DomainState(1, 1), errors) is None


def test_qmp_pause_per_node() -> None:
    assert qmp_vm_reason({"status": "running", "running": True}) is None
    assert qmp_vm_reason({"status": "io-error", "running": False}) == "ioerror"
    assert qmp_vm_reason({"status": "paused", "running": False}) == "user"
    block = [{"device": "virtio0", "io-status": "nospace",
              "inserted": {"file": "/dev/loop3", "node-name": "d0"}},
             {"device": "ide1-cd0", "io-status": "ok", "inserted": {"file": "/x.iso"}},
             {"device": "floppy0"}]
    errors = qmp_device_errors(block)
    assert errors == {"/dev/loop3": "nospace"}
    io_error = PauseReason.IOERROR
    assert qmp_pause("qemu 1", "f0", "/dev/loop3", io_error, errors).reason == "nospace"
    assert qmp_pause("qemu 1", "f1", "/x.iso", io_error, errors).reason == "other-disk"
    assert qmp_pause("qemu 1", "f0", "/dev/loop3", None, errors) is None


@pytest.mark.parametrize(("name", "expected"), [
    ("vg-lv", ("vg", "lv")),
    ("vg--with--dash-lv", ("vg-with-dash", "lv")),
    ("vg-my--lv", ("vg", "my-lv")),
    ("a--b-c--d--e", ("a-b", "c-d-e")),
    ("vg-lv-real", None),  # a hidden layer of an LV (snapshot origin)
    ("vg-thin_tdata", ("vg", "thin_tdata")),
    ("mpatha", None),
    ("-lv", None),
])
def test_lvm_device_mapper_names(name: str, expected: tuple[str, str] | None) -> None:
    volume = split_dm_name(name)
    assert (None if volume is None else (volume.vg, volume.lv)) == expected


def test_lvm_units_and_vgs_output() -> None:
    assert [lvm_size(s) for s in (1 << 30, 3 << 29, 4 << 20, 5 << 10, 1000)] == [
        "1G", "1536M", "4M", "5K", "1000B"]
    text = "  vg-with-dash|4194304|62914560\n  vg0|33554432|0\n  broken|x|1\n"
    groups = parse_vgs(text)
    assert sorted(groups) == ["vg-with-dash", "vg0"]
    assert (groups["vg0"].extent_size, groups["vg0"].free) == (32 << 20, 0)


def test_durations() -> None:
    assert [parse_duration(t) for t in ("90", "90s", "30m", "4h", "2d", "1w", "1.5h")] == [
        90, 90, 1800, 14400, 172800, 604800, 5400]
    for bad in ("", "h", "4x", "-1h"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert [human_duration(s) for s in (5, 90, 3600, 12000, 90000)] == [
        "5s", "1m", "1h", "3h 20m", "1d 1h"]


def test_least_squares_slope() -> None:
    # y = 3 t + 7 exactly, and around it; epoch-sized times keep their precision.
    t0 = 1.7e9
    assert slope([(t0 + t, 3 * t + 7) for t in range(10)]) == pytest.approx(3)
    noisy = [(t0 + t, 3 * t + (1 if t % 2 else -1)) for t in range(10)]
    assert slope(noisy) == pytest.approx(3, rel=0.05)
    assert slope([(t0, 1.0)]) is None and slope([(t0, 1.0), (t0, 2.0)]) is None


@pytest.mark.parametrize("bits", [1, 2, 4, 8, 16, 32, 64])
def test_zero_refcounts_of_every_width(bits: int) -> None:
    per_block = 4096 * 8 // bits
    values = [(i * 7919) % 3 for i in range(per_block)]  # 0, 1 or 2 (fits 2 bits and up)
    if bits == 1:
        values = [v % 2 for v in values]
    raw = 0
    for i, v in enumerate(values):  # qemu's order: entry i at bit i * bits, big-endian words
        raw |= v << (i * bits) if bits < 8 else 0
    if bits < 8:
        block = raw.to_bytes(4096, "little")
    else:
        block = b"".join(v.to_bytes(bits // 8, "big") for v in values)
    for limit in (per_block, per_block - 1, 1, 0, per_block // 3):
        assert zero_entries(block, bits, limit) == values[:limit].count(0), limit
    if bits >= 16:
        # Refcounts of 256 and more (snapshots share clusters): every byte lane counts; and a
        # block with no zero refcount at all.
        big = [(v * 257) % 65536 for v in values]
        wide = b"".join(v.to_bytes(bits // 8, "big") for v in big)
        assert zero_entries(wide, bits, per_block) == big.count(0)
        none = b"".join((256 + v).to_bytes(bits // 8, "big") for v in values)
        assert zero_entries(none, bits, per_block) == 0


def test_state_file_sums_give_least_squares_over_the_window(tmp_path: Path) -> None:
    """200 runs a minute apart through the state file's format (appends, compactions every
    16 samples, buckets leaving the window): the growth equals least squares computed directly
    over the samples of the buckets still in the window."""
    image = make_image(tmp_path / "g.qcow2", "16M", write=["write 0 1M"])
    usage = analyze_image(str(image))
    size = 10**12
    window = 3600.0
    width = window / BUCKETS
    lines: list[bytes] | None = None
    seen: list[tuple[float, int]] = []
    t0 = 1.7e9
    for i in range(200):
        t = t0 + 60 * i + (i % 7)
        end = 10**9 + 5000 * i + (i % 3) * 100 + (i // 50) * 10**6
        container = Container("block", size, size - end, size, None, used=end)
        now = replace(usage, image_end_offset=end, container=container)
        history = merge(lines, DiskSample("/dev/x", ["block", 1], now, t), window)
        # A sample line as the format has it: the numbers as Python writes them, a comma apart.
        lines = history.lines if history.rewrite else [
            *history.lines, ",".join(map(repr, history.sample)).encode()]
        seen.append((t, end))
        growth = growth_of(history, now, window)
        kept = [(s, e) for s, e in seen if s - s % width + width > t - window]
        assert growth.samples == len(kept), i
        expected = slope([(s, float(e)) for s, e in kept])
        if growth.bytes_per_second is not None:
            assert expected is not None
            assert growth.bytes_per_second == pytest.approx(expected, rel=1e-9), i
            assert growth.time_to_full == pytest.approx((size - end) / expected, rel=1e-9)
    assert growth.bytes_per_second is not None and len(lines) < 2 + 16
