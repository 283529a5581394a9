"""Reading an image a running qemu writes, step by step: a real qemu-io holds the image for
writing and, at one chosen moment of our read, writes, discards or moves a table and flushes.
Each test shows that one pass read at that moment is wrong (so the test can fail), then that
the command's figures equal `qemu-img -U`'s once qemu-io is idle and flushed.

The load test (tests/test_in_use_load.py) runs the same commands against a continuous writer;
here every interleaving is forced, so the outcome is exact.
"""

from __future__ import annotations

import io
import json
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from qcow2_monitor.collectors.check import checker, measure, settle
from qcow2_monitor.collectors.check.measure import measure_image
from qcow2_monitor.collectors.common.errors import Qcow2Error
from qcow2_monitor.collectors.common.jsonform import to_json
from qcow2_monitor.collectors.qcow2.image import Qcow2Image
from qcow2_monitor.collectors.qcow2.reader import ImageFile, held_for_writing
from qcow2_monitor.collectors.qcow2.refcount import image_end_offset_from_refcounts
from qcow2_monitor.collectors.report.health import OK, WARNING
from qcow2_monitor.collectors.report.model import Severity
from qcow2_monitor.collectors.report.usage import analyze_image
from qcow2_monitor.nagios.check_qcow2 import main as nagios_main

from daemons import make_image, require_binary, run
from damage import DamagedImage, set_refcount
from writers import MiB, QemuIo

Action = Callable[[], None]


@contextmanager
def on_first_read(monkeypatch: pytest.MonkeyPatch, structure: str, action: Action
                  ) -> Iterator[list[str]]:
    """Run `action` once, just before the first read of `structure` (our reader's name for
    it); yields the list it is recorded in once it ran."""
    done: list[str] = []
    real_padded = ImageFile.read_zero_padded
    real_read = ImageFile.read

    def hook(what: str) -> None:
        if what == structure and not done:
            done.append(what)
            action()

    def padded(self: ImageFile, offset: int, length: int, what: str) -> bytes:
        hook(what)
        return real_padded(self, offset, length, what)

    def read(self: ImageFile, offset: int, length: int, what: str) -> bytes:
        hook(what)
        return real_read(self, offset, length, what)

    with monkeypatch.context() as patch:
        patch.setattr(ImageFile, "read_zero_padded", padded)
        patch.setattr(ImageFile, "read", read)
        yield done


@pytest.fixture
def passes(monkeypatch: pytest.MonkeyPatch) -> list[settle.Pass]:
    """Every pass of the check, as it ran."""
    seen: list[settle.Pass] = []
    real = checker.check_pass

    def spy(image: Qcow2Image, limit: int, wanted: Any = None) -> settle.Pass:
        found = real(image, limit, wanted)
        seen.append(found)
        return found

    monkeypatch.setattr(checker, "check_pass", spy)
    return seen


def qemu_json(*args: str) -> dict[str, Any]:
    done = subprocess.run([require_binary("qemu-img"), *args, "--output=json"],
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.strip(), done.stderr
    return dict(json.loads(done.stdout))


def qemu_check_u(path: Path) -> dict[str, Any]:
    """`qemu-img check -U`: what qemu reads on disk now (qemu-io idle and flushed)."""
    return qemu_json("check", "-U", str(path))


def test_read_skew_is_settled(tmp_path: Path, passes: list[settle.Pass],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The refcount block read (and kept) before qemu-io writes 1 MiB, discards another MiB
    and flushes, the L2 table after: that pass finds refcount errors, COPIED mismatches and
    leaks that were never on disk. The next passes do not: a clean result."""
    image = make_image(tmp_path / "skew.qcow2", "1G", write=["write -P 3 0 4M"])
    with QemuIo(image) as io:
        io.run("flush")
        change = lambda: io.run("write -P 7 4M 1M", "discard 0 1M", "flush")  # noqa: E731
        with Qcow2Image.open(str(image)) as opened:
            assert held_for_writing(opened.file)
            with on_first_read(monkeypatch, "L2 table", change) as done:
                result = checker.check_opened(opened)
        assert done
        first = passes[0].result
        assert first.corruptions and first.leaks, first
        assert (result.corruptions, result.leaks, result.check_errors) == (0, 0, 0)
        assert result.unconfirmed == 0 and not result.findings
        assert result.passes == len(passes) == 2
        qemu = qemu_check_u(image)
        assert result.image_end_offset == qemu["image-end-offset"]
        assert result.allocated_clusters == qemu["allocated-clusters"]
        assert io.close() == 0


def _grow_l1_over_old(io: QemuIo) -> Action:
    """qemu-io grows the image (a new L1 table, the header rewritten, the old L1 freed) and
    writes 0xff bytes into the freed cluster: a reader of the old header reads them as L1."""
    return lambda: io.run("truncate 2G", "write -P 0xff 64k 64k", "flush")


def test_l1_moved_during_check(tmp_path: Path, passes: list[settle.Pass],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    image = make_image(tmp_path / "grow.qcow2", "1G", write=["write -P 3 0 64k"])
    with QemuIo(image) as io, Qcow2Image.open(str(image)) as opened:
        with on_first_read(monkeypatch, "L1 table", _grow_l1_over_old(io)) as done:
            result = checker.check_opened(opened)
        assert done
        assert passes[0].result.corruptions, "the stale L1 read as garbage"
        assert result.passes == 2 and (result.corruptions, result.leaks) == (0, 0)
        qemu = qemu_check_u(image)
        assert result.total_clusters == qemu["total-clusters"] == 2 * 1024 ** 3 // 65536
        assert result.allocated_clusters == qemu["allocated-clusters"] == 2
        assert io.close() == 0


def test_l1_moved_during_measure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = make_image(tmp_path / "measure.qcow2", "1G", write=["write -P 3 0 64k"])
    with QemuIo(image) as io, Qcow2Image.open(str(image)) as opened:
        with on_first_read(monkeypatch, "active L1 table", _grow_l1_over_old(io)) as done:
            measured = to_json(measure_image(opened))
        assert done
        expected = qemu_json("measure", "-U", "-O", "qcow2", str(image))
        assert measured == expected
        # Through the header parsed before the move, the same read is wrong: other figures,
        # or the old L1's place (reused) names L2 tables qemu would refuse as unaligned.
        try:
            stale: Any = to_json(measure._measure(opened))
        except Qcow2Error as exc:
            stale = str(exc)
        assert stale != expected
        assert io.close() == 0


def test_l1_moved_during_dirty_usage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lazy-refcounts image qemu is writing is dirty: usage walks its metadata for the end
    offset, and a move of the L1 table during the walk must not give a figure."""
    image = make_image(tmp_path / "lazy.qcow2", "1G", options=["lazy_refcounts=on"])
    with QemuIo(image) as io:
        io.run("write -P 3 0 64k", "flush")
        with Qcow2Image.open(str(image)) as opened:
            assert opened.header.dirty and held_for_writing(opened.file)
        with on_first_read(monkeypatch, "L1 table", _grow_l1_over_old(io)) as done:
            usage = analyze_image(str(image))
        assert done
        assert usage.image_end_offset_source == "check"
        assert usage.image_end_offset == qemu_check_u(image)["image-end-offset"]
        assert io.close() == 0


def test_refcount_table_moved_during_usage(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """512-byte clusters: a refcount table of one cluster covers 8 MiB of file. qemu-io writes
    12 MiB more: the table moves and grows, the header names the new one. Read through the
    header parsed before, the old table (freed, still holding what it held) gives an end
    offset from the first 8 MiB only."""
    image = make_image(tmp_path / "small.qcow2", "64M", options=["cluster_size=512"],
                       write=["write -P 3 0 4M"])
    with QemuIo(image) as io, Qcow2Image.open(str(image)) as before:
        table = before.header.refcount_table_offset

        def grow() -> None:
            io.run("write -P 4 8M 12M", "flush")
            with Qcow2Image.open(str(image)) as now:
                assert now.header.refcount_table_offset != table, "the table did not move"

        with on_first_read(monkeypatch, "refcount table", grow) as done:
            usage = analyze_image(str(image))
        assert done
        expected = qemu_check_u(image)["image-end-offset"]
        assert usage.image_end_offset_source == "refcounts"
        assert usage.image_end_offset == expected
        stale = image_end_offset_from_refcounts(before)
        assert stale <= 8 * MiB < expected
        assert io.close() == 0


def test_at_rest_one_pass(corpus_by_name: dict[str, Any], monkeypatch: pytest.MonkeyPatch
                          ) -> None:
    """An image no qemu holds is read once: the check costs what it did."""
    opened: list[str] = []
    real = Qcow2Image.reopened

    def reopened(self: Qcow2Image) -> Qcow2Image:
        opened.append(self.filename)
        return real(self)

    monkeypatch.setattr(Qcow2Image, "reopened", reopened)
    for img in corpus_by_name.values():
        try:
            result = checker.check_image(str(img.path))
        except Qcow2Error:
            continue
        assert result.passes == 1 and result.unconfirmed == 0
    assert not opened


def test_weights_add_up_to_the_figures(damaged: list[DamagedImage]) -> None:
    """Each listed finding says what it counts in qemu's figures: with every finding listed,
    they add up to corruptions, leaks and check errors exactly (what an image held for
    writing is settled by)."""
    severities = (Severity.CORRUPTION, Severity.LEAK, Severity.CHECK_ERROR)
    checked = 0
    for variant in damaged:
        try:
            with Qcow2Image.open(str(variant.path)) as image:
                found = checker.check_pass(image, settle.SETTLE_FINDINGS)
        except Qcow2Error:
            continue
        result = found.result
        listed = dict.fromkeys(severities, 0)
        for finding, weight in zip(result.findings, found.weights):
            listed[finding.severity] += weight
        assert len(found.weights) == len(result.findings)
        assert tuple(listed[severity] for severity in severities) == (
            result.corruptions, result.leaks, result.check_errors), variant.name
        checked += bool(result.findings)
    assert checked > 20


def test_past_eof_data_is_located(tmp_path: Path) -> None:
    """An L2 entry naming a cluster past EOF is counted and located (qemu's figures), also in
    the common case of a table of normal aligned entries."""
    image = make_image(tmp_path / "eof.qcow2", "64M", write=["write -P 1 0 1M"])
    length = image.stat().st_size
    run(["truncate", "-s", str(length - 8 * 65536), str(image)])
    qemu = qemu_json("check", str(image))
    result = checker.check_image(str(image))
    assert result.corruptions == qemu["corruptions"] > 0
    past = [f for f in result.findings if f.kind == "reference-past-eof"]
    assert len(past) == qemu["corruptions"]
    assert all(f.location.startswith("L2 table at 0x") for f in past)


def test_bounds() -> None:
    """What the README states: at most MAX_PASSES passes and 0.25 s of waiting per check."""
    waits = [settle.PAUSES[min(n, len(settle.PAUSES)) - 1] for n in range(1, settle.MAX_PASSES)]
    assert settle.MAX_PASSES == 5 and sum(waits) == pytest.approx(0.25)
    assert settle.CONFIRMING_PASSES + 1 <= settle.MAX_PASSES


def test_leak_in_use_is_unconfirmed(tmp_path: Path) -> None:
    """A leaked cluster on an image qemu holds for writing is what a write in flight leaves on
    disk until the next flush: reported, marked unconfirmed, outside the figures, a note by
    default (the state an operator may raise); once qemu has closed the image it is a leak,
    as qemu-img check says."""
    image = make_image(tmp_path / "leak.qcow2", "64M", write=["write -P 1 0 1M"])
    length = image.stat().st_size
    run(["truncate", "-s", str(length + 65536), str(image)])
    set_refcount(image, length // 65536, 1)
    with QemuIo(image) as qemu:
        result = checker.check_image(str(image))
        assert (result.leaks, result.corruptions, result.unconfirmed) == (0, 0, 1)
        (leak,) = result.findings
        assert leak.kind == "leak" and leak.unconfirmed
        assert result.passes == settle.MAX_PASSES  # read again while passes were left
        assert any("unconfirmed" in note and "next flush" in note for note in result.notes)
        out = io_text(lambda stream: nagios_main(["-f", str(image), "--check", "-v"], stream))
        assert out[0] == OK and "note" in out[1] and "unconfirmed" in out[1], out
        out = io_text(lambda stream: nagios_main(["-f", str(image), "--check",
                                                  "--unconfirmed-state", "warning"], stream))
        assert out[0] == WARNING, out
        assert qemu.close() == 0
    qemu = qemu_json("check", str(image))
    at_rest = checker.check_image(str(image))
    assert at_rest.leaks == qemu["leaks"] == 1 and at_rest.unconfirmed == 0
    assert at_rest.passes == 1


def io_text(call: Callable[[io.StringIO], int]) -> tuple[int, str]:
    stream = io.StringIO()
    return call(stream), stream.getvalue()
