"""qcow2-telegraf: line protocol rules, golden output, exec/execd modes, a real influxd 1.6."""

from __future__ import annotations

import math
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import pytest
from test_metrics import sample_collection

from qcow2_monitor.collectors.host.live import LiveView
from qcow2_monitor.collectors.report import collect as collect_module
from qcow2_monitor.collectors.report.model import LiveDisk, LiveSource
from qcow2_monitor.collectors.report.usage import analyze_usage
from qcow2_monitor.telegraf import lineprotocol as lp
from qcow2_monitor.telegraf.qcow2_telegraf import main, render

from daemons import holding_open, influxd, make_image, require_binary, run
from damage import patch_u64, read_header, read_u64
from readback import parse_line
from tree import REPO

GOLDEN = Path(__file__).parent / "golden" / "qcow2.lp"
SCRIPT = [sys.executable, "-m", "qcow2_monitor.telegraf.qcow2_telegraf"]

# Names that exercise every escaping rule: space, comma, equals, quotes, backslashes (also
# before an escaped character), non-ASCII, a leading '='.
AWKWARD_NAMES = [
    "plain.qcow2",
    "with space.qcow2",
    "comma,and=equals.qcow2",
    'double"quote\'single.qcow2',
    "back\\slash.qcow2",
    "back\\,slash comma.qcow2",
    "ünïcødé ✓ 磁盘.qcow2",
    "=leading.qcow2",
]


# --- the one place for escaping ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("plain", "plain"),
        ("a b", "a\\ b"),
        ("a,b", "a\\,b"),
        ("a=b", "a\\=b"),
        ('q"uote', 'q"uote'),  # quotes need no escape outside string fields
        ("a\\b", "a\\b"),  # a backslash before an ordinary character stays single
        ("a\\,b", "a\\\\,b"),  # backslash, then the escaped comma
        ("end\\", "end%5C"),  # would escape the separator after it
        # Control characters by the printable rule of every output (common/text.py).
        ("tab\tnl\ncr\r", "tab\\x09nl\\x0acr\\x0d"),
        ("ü ✓", "ü\\ ✓"),
    ],
)
def test_escape_tag_value(raw: str, escaped: str) -> None:
    assert lp.escape_tag_value(raw) == escaped


def test_escape_measurement_keeps_equals() -> None:
    assert lp.escape_measurement("a b,c=d") == "a\\ b\\,c=d"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (True, "true"),
        (False, "false"),
        (0, "0i"),
        (-5, "-5i"),
        (2**63 - 1, "9223372036854775807i"),
        (0.5, "0.5"),
        (1.0, "1.0"),  # a float stays a float even when integral
        (1e-05, "1e-05"),
        ('say "hi" \\ there\n', '"say \\"hi\\" \\\\ there\\\\x0a"'),
    ],
)
def test_format_field_value(value: lp.FieldValue, text: str) -> None:
    assert lp.format_field_value(value) == text


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, math.inf, -math.inf, math.nan])
def test_unrepresentable_values_are_refused(value: lp.FieldValue) -> None:
    assert not lp.representable(value)
    with pytest.raises(ValueError):
        lp.format_field_value(value)


def test_format_line_sorts_tags_drops_empty_ones_and_needs_a_field() -> None:
    line = lp.format_line("qcow2", [("path", "/a b"), ("depth", "0"), ("empty", "")],
                          [("x", 1), ("r", 0.25)])
    assert line == "qcow2,depth=0,path=/a\\ b x=1i,r=0.25"
    assert lp.format_line("m", [], [("v", True)], timestamp_ns=17) == "m v=true 17"
    with pytest.raises(ValueError):
        lp.format_line("qcow2", [("path", "/a")], [])


def test_golden_batch() -> None:
    text, problems = render(sample_collection())
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(text, encoding="utf-8")
    assert text == GOLDEN.read_text(encoding="utf-8")
    assert problems == ["/srv/*.qcow2: target: no file matches this pattern"]


# --- the command ------------------------------------------------------------------------------


def _run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(SCRIPT + args, cwd=REPO, capture_output=True, timeout=120, **kwargs)


def test_exec_mode_reports_failures_as_points_and_exits_zero(tmp_path: Path) -> None:
    good = make_image(tmp_path / "good.qcow2", "16M")
    junk = tmp_path / "junk.qcow2"
    junk.write_bytes(b"not an image" * 100)
    proc = _run([str(good), str(junk), str(tmp_path / "none*.qcow2")])
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.decode().splitlines()
    # One point per image, then one per filesystem holding images.
    assert len(lines) == 4
    assert lines[3].startswith("qcow2_filesystem,mountpoint=")
    assert lines[0].startswith("qcow2,") and "scrape_error=0i" in lines[0]
    assert "scrape_error=1i" in lines[1] and 'error="' in lines[1]
    assert "not a qcow2 image" in lines[1]
    assert "scrape_error=1i" in lines[2] and "no file matches" in lines[2]
    errors = proc.stderr.decode().splitlines()
    assert len(errors) == 2
    assert all(line.startswith("E! [inputs.qcow2] ") for line in errors)


def test_usage_errors() -> None:
    assert main([]) == 64
    assert main(["--no-such-option", "x"]) == 64
    assert main(["--max-depth", "-1", "x"]) == 64
    assert _run(["--help"]).returncode == 0


def _read_lines(proc: subprocess.Popen[bytes], count: int, timeout: float = 30) -> list[str]:
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while len(lines) < count:
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([proc.stdout], [], [], max(remaining, 0))
        if not ready:
            raise AssertionError(f"got {len(lines)} of {count} lines within {timeout}s: {lines}")
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"stdout closed after {lines}")
        lines.append(line.decode())
    return lines


def test_execd_mode_one_batch_per_newline_until_eof(tmp_path: Path) -> None:
    image = make_image(tmp_path / "e.qcow2", "16M")
    missing = tmp_path / "missing.qcow2"
    proc = subprocess.Popen(
        [*SCRIPT, "--execd", str(image), str(missing)],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        bufsize=0,  # unbuffered reads: select() must see every line that has not been read
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        # Nothing before the first signal: Telegraf asks with a newline.
        assert select.select([proc.stdout], [], [], 0.5)[0] == []
        for _ in range(3):
            proc.stdin.write(b"\n")
            proc.stdin.flush()
            batch = _read_lines(proc, 3)  # two images and their filesystem
            assert "scrape_error=0i" in batch[0] and "scrape_error=1i" in batch[1]
            assert batch[2].startswith("qcow2_filesystem,")
        # The image grows between two intervals: the next batch shows it (no caching).
        run([require_binary("qemu-io"), "-f", "qcow2", "-c", "write 0 4M", str(image)])
        proc.stdin.write(b"\n")
        proc.stdin.flush()
        grown = _read_lines(proc, 3)[0]
        assert grown != batch[0]
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
        assert proc.stderr is not None
        assert proc.stderr.read().decode().count("E! [inputs.qcow2]") == 4
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


# --- a real InfluxDB 1.6 -----------------------------------------------------------------------


def _images(directory: Path) -> list[Path]:
    directory.mkdir()
    base = make_image(directory / "base,layer=1 ü.qcow2", "32M", write=["write -P 7 0 1M"])
    images = [make_image(directory / name, "48M", write=["write 0 2M"])
              for name in AWKWARD_NAMES]
    images.append(make_image(directory / "overlay \\ \"x\".qcow2", backing=base,
                             write=["write 1M 512k"]))
    # Internal snapshot, dirty bit (lazy refcounts, qemu-io aborts without closing).
    run([require_binary("qemu-img"), "snapshot", "-c", "s1", str(images[0])])
    dirty = make_image(directory / "dirty.qcow2", "16M", options=["lazy_refcounts=on"])
    subprocess.run([require_binary("qemu-io"), "-f", "qcow2", "-c", "write 0 64k", "-c", "abort",
                    str(dirty)], capture_output=True, timeout=60)
    images += [dirty, base]
    return images


def test_influxd_accepts_every_line_and_values_round_trip(tmp_path: Path) -> None:
    require_binary("influxd")
    images = _images(tmp_path / "img")
    junk = tmp_path / "img" / "junk, = \"x\".qcow2"
    junk.write_bytes(b"\0" * 1024)
    with influxd(tmp_path / "influx") as db:
        # Several shapes of batch into one measurement: a field that changed type between
        # them would be rejected by influxd with "field type conflict".
        batches = [
            [str(tmp_path / "img"), "--chain", "--check"],
            [str(junk), str(tmp_path / "nothing*")],
            [str(images[0])],
        ]
        total = 0
        for args in batches:
            proc = _run(args)
            assert proc.returncode == 0, proc.stderr
            # No timestamps in the batch: influxd stamps them; ns precision keeps the same
            # image of two batches as two points instead of one overwriting the other.
            status, body = db.write(proc.stdout, precision="ns")
            assert status == 204, (body, proc.stdout.decode())
            total += sum(line.startswith(b"qcow2,") for line in proc.stdout.splitlines())
        rows = db.rows("SELECT * FROM qcow2")
        assert len(rows) == total
        filesystems = db.rows("SELECT * FROM qcow2_filesystem")
        assert filesystems and all(row["filesystem_size_bytes"] > 0 for row in filesystems)

        field_types = {row["fieldKey"]: row["fieldType"]
                       for row in db.rows("SHOW FIELD KEYS FROM qcow2")}
        assert field_types["usage_ratio"] == "float"
        assert field_types["image_end_offset_bytes"] == "integer"
        assert field_types["leaks"] == "integer", field_types
        assert field_types["scrape_error"] == "integer"
        # Flags are integers 0/1 as documented (InfluxQL cannot aggregate booleans).
        for flag in ("in_use", "depth", "health"):
            assert field_types[flag] == "integer", (flag, field_types)
        for text in ("error", "status", "name", "end_offset_source", "health_reasons"):
            assert field_types[text] == "string", (text, field_types)
        # The dirty bit is no field of its own: the health rule says it, once.
        assert "dirty" not in field_types and "refcounts_trusted" not in field_types

        # Every image came back under its exact path, with the core's values.
        by_path: dict[str, dict[str, Any]] = {}
        for row in rows:
            by_path.setdefault(row["path"], row)  # first batch: the directory scan
        for image in images:
            row = by_path[str(image)]
            usage = analyze_usage(str(image), chain=False).usage
            assert usage is not None
            assert row["image_end_offset_bytes"] == usage.image_end_offset
            assert row["virtual_size_bytes"] == usage.virtual_size
            assert row["fully_allocated_size_bytes"] == usage.fully_allocated_size
            assert row["snapshots"] == usage.snapshots
            assert ("dirty" in rules_of(row)) == usage.dirty  # none is in use
            assert row["filename"] == image.name
            assert row["scrape_error"] == 0
            assert row["leaks"] is not None  # --check ran
            # A file's container is its filesystem, which others write meanwhile: its size is
            # stable, its usage only close.
            assert row["container_size_bytes"] == usage.container.size
            assert math.isclose(row["usage_ratio"], usage.usage_ratio, abs_tol=0.02)
        assert "dirty" in rules_of(by_path[str(images[-2])])
        assert by_path[str(images[-2])]["health"] == 1  # dirty, not in use: WARNING
        assert by_path[str(images[0])]["snapshots"] == 1
        assert by_path[str(junk)]["scrape_error"] == 1
        assert "not a qcow2 image" in by_path[str(junk)]["error"]
        assert by_path[str(tmp_path / "nothing*")]["scrape_error"] == 1


def rules_of(row: dict[str, Any]) -> set[str]:
    """The health rules named in a row's health_reasons field ("rule: text; rule: text")."""
    return {reason.split(": ", 1)[0] for reason in (row["health_reasons"] or "").split("; ")
            if reason}


def test_running_images_with_their_backing_layers(tmp_path: Path) -> None:
    base = make_image(tmp_path / "run base.qcow2", "16M")
    top = make_image(tmp_path / "run top.qcow2", backing=base)
    with holding_open(top):
        proc = _run(["--running", "--chain"])
    assert proc.returncode == 0, proc.stderr
    # Other qemu processes on this machine may add lines: look for ours only.
    lines = proc.stdout.decode().splitlines()

    def line_of(image: Path) -> str:
        tag = f"qcow2,path={lp.escape_tag_value(str(image))} "  # path is the only tag
        found = [line for line in lines if line.startswith(tag)]
        assert len(found) == 1, (tag, lines)
        return found[0]

    assert "in_use=1i" in line_of(top)  # qemu-io holds the write lock of the top image
    assert "in_use=0i" in line_of(base)  # backing files are opened read-only
    assert "scrape_error=0i" in line_of(top) and "scrape_error=0i" in line_of(base)


# --- one disk, one series ----------------------------------------------------------------------


class _Pending:
    """What collect() waits on for live figures: here a fixed view (a fake live source)."""

    def __init__(self, view: LiveView) -> None:
        self.view = view

    def wait(self) -> LiveView:
        return self.view


def _batch_of(path: Path, monkeypatch: pytest.MonkeyPatch,
              live: Optional[LiveDisk] = None) -> str:
    if live is not None:
        view = LiveView()
        view.add(live)
        monkeypatch.setattr(collect_module, "start_live", lambda *args: _Pending(view))
    else:
        monkeypatch.setattr(collect_module, "start_live", lambda *args: None)
    text, _ = render(collect_module.collect([str(path)]))
    return text


def test_a_disk_keeps_its_one_series_through_its_life(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tag set of a disk's points is the same whether it is healthy, amended, rebased, seen
    by a live source or not, or damaged; InfluxDB keeps one series for it."""
    base1 = make_image(tmp_path / "base1.qcow2", "16M")
    base2 = make_image(tmp_path / "base2.qcow2", "16M")
    disk = make_image(tmp_path / "disk.qcow2", backing=base1, write=["write 0 1M"])
    qemu_img = require_binary("qemu-img")
    stages: dict[str, str] = {"healthy": _batch_of(disk, monkeypatch)}
    run([qemu_img, "amend", "-o", "lazy_refcounts=on", str(disk)])
    stages["amended"] = _batch_of(disk, monkeypatch)
    run([qemu_img, "rebase", "-u", "-F", "qcow2", "-b", str(base2), str(disk)])
    stages["rebased"] = _batch_of(disk, monkeypatch)
    for n, (domain, node) in enumerate([("qemu 22306", "#block017"), ("vm1", "vda")]):
        stages[f"live {domain}"] = _batch_of(disk, monkeypatch, LiveDisk(
            str(disk), 1 << 30, domain, node, LiveSource.QMP if n == 0 else LiveSource.LIBVIRT))
    stages["live gone"] = _batch_of(disk, monkeypatch)
    # Damage: a refcount table entry not cluster aligned makes the image unreadable.
    table = read_header(disk)["refcount_table_offset"]
    patch_u64(disk, table, read_u64(disk, table) + 512)
    stages["damaged"] = _batch_of(disk, monkeypatch)

    points = {stage: [parse_line(line) for line in text.splitlines()
                      if line.startswith("qcow2,")] for stage, text in stages.items()}
    assert all(len(found) == 1 for found in points.values()), points
    tags = {stage: found[0][0] for stage, found in points.items()}
    assert all(t == {"path": str(disk)} for t in tags.values()), tags
    fields = {stage: found[0][1] for stage, found in points.items()}
    # What changed is still reported, as fields.
    assert fields["healthy"]["lazy_refcounts"] == "false"
    assert fields["amended"]["lazy_refcounts"] == "true"
    assert fields["amended"]["backing_file"] == str(base1)
    assert fields["rebased"]["backing_file"] == str(base2)
    assert fields["live qemu 22306"]["domain"] == "qemu 22306"
    assert fields["live qemu 22306"]["disk"] == "#block017"
    assert fields["live qemu 22306"]["end_offset_source"] == "live"
    assert "domain" not in fields["live gone"]
    assert fields["damaged"]["scrape_error"] == 1 and fields["damaged"]["health"] == 2
    # The filesystem point keeps its one tag too.
    fs_tags = {frozenset(parse_line(line)[0]) for text in stages.values()
               for line in text.splitlines() if line.startswith("qcow2_filesystem,")}
    assert fs_tags == {frozenset({"mountpoint"})}

    require_binary("influxd")
    with influxd(tmp_path / "influx") as db:
        for stage, text in stages.items():
            status, body = db.write(text.encode(), precision="ns")
            assert status == 204, (stage, body, text)
        series = [row["key"] for row in db.rows("SHOW SERIES FROM qcow2")]
        assert series == [f"qcow2,path={lp.escape_tag_value(str(disk))}"]
        assert len(db.rows("SELECT health FROM qcow2")) == len(stages)
        assert len(db.rows("SHOW SERIES FROM qcow2_filesystem")) == 1
