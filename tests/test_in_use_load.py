"""The load test of issue 17: every command and adapter, with --check, runs 50 times on images
that running qemus (qemu-io, write-back cache) are writing, and says nothing false.

Four images, each held for writing by its own qemu-io for the whole run, written in bursts of
random 4 KiB - 1 MiB extents with discards, each burst ending with a flush (tests/writers.py):
- `fresh`: 8 GiB, with two internal snapshots and compressed clusters taken before; the writer
  also writes compressed clusters and grows the image by 1 GiB now and then (qemu moves its L1
  table each time);
- `small`: 1 KiB clusters, so that qemu outgrows and moves its refcount table several times;
- `planted`: real problems planted before its writer starts, in a region it never touches
  (the cluster refcounts there live in a refcount block it never loads, and the free space it
  allocates from lies below them): a refcount raised to 2 (a leak and a COPIED mismatch), a
  refcount zeroed (a refcount error and a COPIED mismatch) and a reserved bit in an L2 entry;
- `lazy`: lazy refcounts, dirty while written: usage takes its end offset from the walk.

Expected figures come from qemu-img: `planted` at rest before its writer starts, and every
image after the writers stop. In between, the clean images must be OK with no corruption,
leak or check error on every run, and `planted` must be reported every time with qemu's
at-rest figures, its findings at the same places and the same state.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

from qcow2_monitor.analyze.main import main as analyze_main
from qcow2_monitor.collectors.check import settle
from qcow2_monitor.collectors.check.checker import check_image
from qcow2_monitor.collectors.check.findings import LAZY_DEBT_KINDS
from qcow2_monitor.collectors.qcow2.image import Qcow2Image
from qcow2_monitor.collectors.qcow2.reader import held_for_writing
from qcow2_monitor.nagios.check_qcow2 import main as nagios_main
from qcow2_monitor.node_exporter_textfile.qcow2_textfile import main as textfile_main
from qcow2_monitor.telegraf.qcow2_telegraf import main as telegraf_main

from corpus import CHECK_FIGURES
from daemons import make_image, require_binary, run
from damage import L2E_OFFSET_MASK, active_l2_entries, read_header, set_refcount
from readback import parse_line, textfile_samples
from tree import BIN
from writers import GiB, KiB, Load, MiB, QemuIo, RandomWriter

RUNS = 50  # of each command and adapter, in process
SUBPROCESS_RUNS = 1  # of each, as the installed console script
CLEAN = ("fresh", "small", "lazy")
NAMES = (*CLEAN, "planted")
OK, CRITICAL = 0, 2
STATE_BY_WORD = {"OK": 0, "WARNING": 1, "CRITICAL": 2, "UNKNOWN": 3}


def qemu_check(path: Path, *extra: str) -> dict[str, Any]:
    done = subprocess.run([require_binary("qemu-img"), "check", *extra, "--output=json",
                           str(path)], capture_output=True, text=True, timeout=300)
    assert done.stdout.strip(), done.stderr
    return dict(json.loads(done.stdout))


def qemu_io(path: Path, *commands: str) -> None:
    args = [require_binary("qemu-io"), "-f", "qcow2"]
    for command in commands:
        args += ["-c", command]
    run([*args, str(path)])


# -- the images ---------------------------------------------------------------------------------
def build_fresh(path: Path) -> Load:
    make_image(path, "8G")
    qemu_io(path, "write -P 1 0 64M", "write -c -P 2 1G 64k", f"write -c -P 3 {GiB + 64 * KiB} 64k")
    run([require_binary("qemu-img"), "snapshot", "-c", "one", str(path)])
    qemu_io(path, "write -P 4 32M 64M", "write -P 5 5G 16M")
    run([require_binary("qemu-img"), "snapshot", "-c", "two", str(path)])
    return Load(0, 8 * GiB, seed=1, compressed=0.05, grow_every=40, size=8 * GiB, pause=0.1)


def build_small(path: Path) -> Load:
    """512-byte clusters: the refcount table (one cluster) covers 8 MiB of file at first."""
    make_image(path, "64M", options=["cluster_size=512"], write=["write -P 1 0 4M"])
    return Load(0, 32 * MiB, seed=2, cluster_size=512, pause=0.1)


def build_lazy(path: Path) -> Load:
    make_image(path, "2G", options=["lazy_refcounts=on"], write=["write -P 1 0 16M"])
    return Load(0, 2 * GiB, seed=3, pause=0.25)


PLANTED_REGION = 1792 * MiB  # guest range the writer never touches


def build_planted(path: Path) -> Load:
    """Every L2 table and cluster preallocated, then the first 1.5 GiB discarded: the writer
    (guest 0 - 1 GiB) allocates from those free clusters, always below the planted region's
    (qemu takes the lowest free cluster). qemu loads the refcount block holding the planted
    refcounts after they were planted and writes back only the entries it changes."""
    make_image(path, "2G", options=["preallocation=metadata"])
    qemu_io(path, "discard 0 1G", "discard 1G 512M", f"write -P 9 {PLANTED_REGION} 16M")
    bits = read_header(path)["cluster_bits"]
    entries = [e for e in active_l2_entries(path)
               if (e.l1_index * (1 << (bits - 3)) + e.l2_index) << bits >= PLANTED_REGION
               and e.entry & L2E_OFFSET_MASK][:3]
    leaked, zeroed, reserved = entries
    set_refcount(path, (leaked.entry & L2E_OFFSET_MASK) >> bits, 2)
    set_refcount(path, (zeroed.entry & L2E_OFFSET_MASK) >> bits, 0)
    with open(path, "r+b") as image:
        image.seek(reserved.file_offset)
        image.write((reserved.entry | 0x2).to_bytes(8, "big"))  # bit 1: reserved
    return Load(0, GiB, seed=4, pause=0.15)


BUILDERS: dict[str, Callable[[Path], Load]] = {
    "fresh": build_fresh, "small": build_small, "lazy": build_lazy, "planted": build_planted}


# -- one run of every entry point ---------------------------------------------------------------
def _captured(call: Callable[[], int]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = call()
    assert "Traceback" not in err.getvalue(), err.getvalue()[-2000:]
    return code, out.getvalue()


def analyze(*argv: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = analyze_main(list(argv), stdout=out, stderr=err)
    assert "Traceback" not in err.getvalue(), err.getvalue()[-2000:]
    return code, out.getvalue()


def nagios(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return nagios_main(list(argv), out), out.getvalue()


def telegraf(*argv: str) -> tuple[int, str]:
    return _captured(lambda: telegraf_main(list(argv)))


def textfile(*argv: str) -> tuple[int, str]:
    return _captured(lambda: textfile_main(list(argv)))


@dataclass
class Seen:
    """What one entry point said about one image in one run."""

    entry: str  # the command or adapter
    image: str
    state: int  # the health state (for `check`: 0 clean, 2 corruptions, from its exit code)
    figures: dict[str, int]  # qemu-img check's keys that the entry point reports
    places: frozenset[tuple[str, str]] = frozenset()  # (kind, location) of confirmed findings
    unconfirmed: int = 0
    unconfirmed_kinds: frozenset[str] = frozenset()


def _check_json(image: str, text: str, code: int) -> Seen:
    data = json.loads(text)
    confirmed = [f for f in data["findings"] if not f.get("unconfirmed")]
    return Seen("qcow2-analyze check", image, {0: OK, 2: CRITICAL}.get(code, code),
                {key: data.get(key, 0) for key in CHECK_FIGURES},
                frozenset((f["kind"], f["location"]) for f in confirmed),
                data.get("unconfirmed", 0),
                frozenset(f["kind"] for f in data["findings"] if f.get("unconfirmed")))


def _textfile_seen(paths: dict[str, Path], text: str) -> list[Seen]:
    samples = {(name, labels.get("path")): value for name, labels, value in textfile_samples(text)
               if "rule" not in labels}
    seen = []
    for name, path in paths.items():
        def value(metric: str, key: str = str(path)) -> int:
            return int(samples[("qcow2_" + metric, key)])
        seen.append(Seen("qcow2-textfile", name, value("health"),
                         {key: value(key.replace("-", "_"))
                          for key in ("check-errors", "corruptions", "leaks")},
                         unconfirmed=value("unconfirmed")))
    return seen


def _telegraf_seen(paths: dict[str, Path], text: str) -> list[Seen]:
    points = [parse_line(line) for line in text.splitlines() if line.startswith("qcow2,")]
    by_path = {tags["path"]: fields for tags, fields in points}
    seen = []
    for name, path in paths.items():
        fields = by_path[str(path)]
        seen.append(Seen("qcow2-telegraf", name, fields["health"],
                         {key: fields[key.replace("-", "_")]
                          for key in ("check-errors", "corruptions", "leaks")},
                         unconfirmed=fields["unconfirmed"]))
    return seen


def _nagios_seen(paths: dict[str, Path], code: int, text: str) -> list[Seen]:
    perf = {label: float(value.split(";")[0].rstrip("B%"))
            for label, value in re.findall(r"'([^']*)'=(\S+)", text.split("|", 1)[1])}
    seen = []
    for name, path in paths.items():
        # The exit code is the worst image's state; each image's own is on its long line.
        line = next(line for line in text.splitlines()[1:] if f": {path}: " in line)
        state = STATE_BY_WORD[line.split(":", 1)[0]]
        seen.append(Seen("check_qcow2", name, state,
                         {key: int(perf[f"{path} {key.replace('-', '_')}"])
                          for key in ("check-errors", "corruptions", "leaks")},
                         unconfirmed=int(perf[f"{path} unconfirmed"])))
    assert code == max(s.state for s in seen), text
    return seen


def one_run(paths: dict[str, Path]) -> list[Seen]:
    """Every command and adapter once, in process, on every image."""
    seen: list[Seen] = []
    files = [str(p) for p in paths.values()]
    for name, path in paths.items():
        code, text = analyze("check", "--output", "json", str(path))
        seen.append(_check_json(name, text, code))
    code, text = analyze("usage", "--output", "json", "--no-live", *files)
    assert code == 0, text
    for entry in json.loads(text):
        assert entry["status"] == "ok" and entry["in_use"], entry
        assert entry["image_end_offset"] <= Path(entry["filename"]).stat().st_size + 2 * MiB
    for name in CLEAN:
        code, text = analyze("measure", "--output", "json", str(paths[name]))
        measured = json.loads(text)
        assert code == 0 and 0 < measured["required"] <= measured["fully-allocated"], text
    code, text = nagios("-w", "98", "-c", "99", "--check", "--no-live",
                        *[arg for f in files for arg in ("-f", f)])
    seen += _nagios_seen(paths, code, text)
    code, text = telegraf("--check", "--no-live", *files)
    assert code == 0, text
    seen += _telegraf_seen(paths, text)
    code, text = textfile("--check", "--no-live", "--output", "-", *files)
    assert code == 0, text
    seen += _textfile_seen(paths, text)
    return seen


# -- the whole run ------------------------------------------------------------------------------
@dataclass
class LoadRun:
    paths: dict[str, Path]
    at_rest: dict[str, Any]  # qemu-img check of `planted` before its writer started
    places_at_rest: frozenset[tuple[str, str]]  # our findings on it then
    seen: list[Seen] = field(default_factory=list)
    held: list[bool] = field(default_factory=list)
    checks: list[tuple[int, float]] = field(default_factory=list)  # (passes, seconds waited)
    first_pass_findings: int = 0  # checks whose first pass found something
    written: dict[str, int] = field(default_factory=dict)  # bytes each writer wrote
    bursts: dict[str, int] = field(default_factory=dict)
    after: dict[str, dict[str, Any]] = field(default_factory=dict)  # qemu-img check, stopped
    ours_after: dict[str, Any] = field(default_factory=dict)
    subprocess_seen: list[tuple[str, int, str]] = field(default_factory=list)
    seconds: float = 0.0


@contextlib.contextmanager
def watching_checks(load: LoadRun) -> Iterator[None]:
    """Record every settled check: its passes, the time it waited, what its first pass saw."""
    real_settled, real_sleep = settle.settled_check, settle.time.sleep
    waited = [0.0]

    def sleep(seconds: float) -> None:
        waited[0] += seconds
        real_sleep(seconds)

    def settled(image: Qcow2Image, max_findings: int, run_pass: settle.RunPass
                ) -> Any:
        def first_aware(img: Qcow2Image, limit: int, wanted: Any) -> settle.Pass:
            found = run_pass(img, limit, wanted)
            if wanted is None and found.result.findings_total and img.filename != str(
                    load.paths["planted"]) and not found.lazy_debt:
                load.first_pass_findings += 1
            return found

        waited[0] = 0.0
        result = real_settled(image, max_findings, first_aware)
        load.checks.append((result.passes, waited[0]))
        return result

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(settle.time, "sleep", sleep)
        patch.setattr("qcow2_monitor.collectors.check.checker.settled_check", settled)
        yield


def _subprocess_runs(load: LoadRun) -> None:
    files = [str(p) for p in load.paths.values()]
    for _ in range(SUBPROCESS_RUNS):
        for argv in ([BIN / "check_qcow2", "-w", "98", "-c", "99", "--check", "--no-live",
                      *[a for f in files for a in ("-f", f)]],
                     [BIN / "qcow2-telegraf", "--check", "--no-live", *files],
                     [BIN / "qcow2-textfile", "--check", "--no-live", "--output", "-", *files],
                     [BIN / "qcow2-analyze", "check", "--output", "json",
                      str(load.paths["fresh"])]):
            done = subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                                  timeout=120)
            load.subprocess_seen.append((Path(argv[0]).name, done.returncode, done.stdout))


@pytest.fixture(scope="module")
def load_run(tmp_path_factory: pytest.TempPathFactory) -> LoadRun:
    d = tmp_path_factory.mktemp("load")
    paths = {name: d / f"{name}.qcow2" for name in NAMES}
    loads = {name: BUILDERS[name](path) for name, path in paths.items()}
    at_rest = qemu_check(paths["planted"])
    rest = check_image(str(paths["planted"]), max_findings=1000)
    load = LoadRun(paths, at_rest, frozenset((f.kind, f.location) for f in rest.findings))
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        ios = {name: stack.enter_context(QemuIo(path)) for name, path in paths.items()}
        writers = {name: RandomWriter(ios[name], loads[name]) for name in NAMES}
        try:
            with watching_checks(load):
                for _ in range(RUNS):
                    for path in paths.values():
                        with Qcow2Image.open(str(path)) as image:
                            load.held.append(held_for_writing(image.file))
                    load.seen += one_run(paths)
            _subprocess_runs(load)
        finally:
            for name, writer in writers.items():
                writer.stop()
                load.written[name], load.bursts[name] = writer.bytes, writer.bursts
            for qemu in ios.values():
                assert qemu.close() == 0
    load.seconds = time.monotonic() - started
    load.after = {name: qemu_check(path) for name, path in paths.items()}
    code, text = analyze("check", "--output", "json", str(paths["planted"]))
    assert code == CRITICAL, text
    load.ours_after = json.loads(text)
    return load


# -- what it must show --------------------------------------------------------------------------
def test_writers_held_the_lock_and_wrote(load_run: LoadRun) -> None:
    """Every image was held for writing at every run; the writers wrote all along (more
    bursts than runs), over several GiB of guest space (`fresh`: 8 GiB and growing)."""
    assert load_run.held and all(load_run.held)
    assert sum(load_run.written.values()) > GiB, load_run.written
    assert all(bursts > RUNS for bursts in load_run.bursts.values()), load_run.bursts


def test_no_false_state_or_finding(load_run: LoadRun) -> None:
    runs = Counter(seen.entry for seen in load_run.seen if seen.image == "fresh")
    assert set(runs.values()) == {RUNS} and len(runs) == 4, runs
    for seen in load_run.seen:
        if seen.image not in CLEAN:
            continue
        if seen.image == "lazy" and seen.entry == "qcow2-analyze check":
            # qemu-img check's figures and exit code: the refcounts a dirty lazy-refcounts
            # image owes are counted as qemu counts them; nothing else may show.
            assert {kind for kind, _ in seen.places} <= LAZY_DEBT_KINDS, seen
            continue
        assert seen.state == OK, seen
        if seen.image != "lazy":  # a dirty lazy-refcounts image: its debt, as at rest
            assert seen.figures["corruptions"] == seen.figures["leaks"] == 0, seen
        assert seen.figures["check-errors"] == 0, seen
    # Only a leak can stay unsettled on a valid image (a write in flight until the next flush);
    # the state stays OK (above): the rule `unconfirmed` is a note.
    for seen in load_run.seen:
        assert seen.unconfirmed_kinds <= {"leak"}, seen
    for name, code, out in load_run.subprocess_seen:
        assert code == (0 if name in ("qcow2-telegraf", "qcow2-textfile", "qcow2-analyze")
                        else CRITICAL), (name, out[:500])
        assert "internal error" not in out


def test_planted_problems_reported_every_time(load_run: LoadRun) -> None:
    expected = load_run.at_rest
    assert expected["corruptions"] == 4 and expected["leaks"] == 1, expected
    kinds = Counter(kind for kind, _ in load_run.places_at_rest)
    assert kinds == {"copied-flag": 2, "refcount-too-low": 1, "leak": 1, "l2-reserved-bits": 1}
    planted = [seen for seen in load_run.seen if seen.image == "planted"]
    assert len(planted) == 4 * RUNS
    for seen in planted:
        assert seen.state == CRITICAL, seen
        for key in ("corruptions", "leaks", "check-errors"):
            assert seen.figures[key] == expected.get(key, 0), seen
        if seen.entry == "qcow2-analyze check":
            assert seen.places == load_run.places_at_rest, seen


def test_stopped_images_agree_with_qemu(load_run: LoadRun) -> None:
    for name in CLEAN:
        after = load_run.after[name]
        assert after["check-errors"] == 0 and "corruptions" not in after, (name, after)
        assert "leaks" not in after, (name, after)
        ours = check_image(str(load_run.paths[name]))
        assert (ours.corruptions, ours.leaks, ours.check_errors) == (0, 0, 0)
        assert ours.image_end_offset == after["image-end-offset"]
        assert ours.allocated_clusters == after["allocated-clusters"]
    after = load_run.after["planted"]
    for key in CHECK_FIGURES:
        assert load_run.ours_after.get(key) == after.get(key), key
    assert (after["corruptions"], after["leaks"]) == (4, 1)


def test_checks_stay_within_the_stated_bound(load_run: LoadRun) -> None:
    """README: at most 4 passes more than a check at rest and 0.25 s of waiting, per image."""
    assert len(load_run.checks) >= 4 * len(NAMES) * RUNS
    assert max(passes for passes, _ in load_run.checks) <= settle.MAX_PASSES
    assert max(waited for _, waited in load_run.checks) <= 0.25 + 1e-9
    # The planted image: confirmed in exactly three passes each time.
    assert Counter(passes for passes, _ in load_run.checks)[3] >= 4 * RUNS



def test_the_writers_made_single_passes_wrong(load_run: LoadRun) -> None:
    """The load is real: first passes of clean images found what was never on disk at one
    moment (each check settled it), so a check that reads once would have failed above."""
    assert load_run.first_pass_findings >= 10, load_run.first_pass_findings
    assert Counter(passes for passes, _ in load_run.checks)[1] >= RUNS  # quiet moments too
