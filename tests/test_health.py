"""One health policy, three adapters: real images made by qemu-img/qemu-io (and byte-patched
copies) run through check_qcow2, qcow2-textfile + the shipped alert rules (promtool test rules)
and qcow2-telegraf, and all three must say the same thing about every image.

The expected state of each case is derived by hand from the rules of collectors/report/health.py and
written beside the case; qemu-img check confirms that each damaged copy is damaged the way the
case says.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

from qcow2_monitor.collectors.common.errors import INVALID, IO_ERROR, Qcow2Error
from qcow2_monitor.collectors.report.health import CRITICAL, OK, SEVERITY, UNKNOWN, WARNING, assess
from qcow2_monitor.collectors.report.model import ChainLayer, LayerStatus

from daemons import make_image, require_binary, run
from damage import (
    INCOMPAT_CORRUPT,
    INCOMPAT_DIRTY,
    L2E_OFFSET_MASK,
    OFF_INCOMPATIBLE,
    active_l2_entries,
    patch_u64,
    read_header,
    read_u64,
    set_refcount,
)
from readback import parse_line, textfile_samples
from tree import BIN, SYSTEM_PYTHON, source_site


@dataclass(frozen=True)
class Case:
    image: Path
    state: int  # by hand, from the rules (with --check)
    rule: Optional[str]  # the rule that decides it (None: healthy)
    # Without --check, when it differs: corruptions and leaks are only found by the check.
    plain: Optional[tuple[int, Optional[str]]] = None

    def expected(self, mode: str) -> tuple[int, Optional[str]]:
        if mode == "default" and self.plain is not None:
            return self.plain
        return self.state, self.rule


MODES = {"check": ["--check"], "default": []}


def _lazy_dirty(path: Path) -> Path:
    """Lazy refcounts, a write, SIGKILL: the dirty bit stays set, refcounts were never written."""
    make_image(path, "16M", options=["lazy_refcounts=on"])
    subprocess.run([require_binary("qemu-io"), "-f", "qcow2", "-c", "write -P 5 0 1M", "-c",
                    "sigraise 9", str(path)], capture_output=True, timeout=60)
    assert read_u64(path, OFF_INCOMPATIBLE) & INCOMPAT_DIRTY
    return path


def _qemu_check_exit(path: Path) -> int:
    return subprocess.run([require_binary("qemu-img"), "check", str(path)],
                          capture_output=True, timeout=60).returncode


def build_cases(d: Path) -> dict[str, Case]:
    cases: dict[str, Case] = {}
    cases["clean"] = Case(make_image(d / "clean.qcow2", "16M", write=["write 0 1M"]), OK, None)

    corrupt = make_image(d / "corrupt.qcow2", "16M")
    patch_u64(corrupt, OFF_INCOMPATIBLE, read_u64(corrupt, OFF_INCOMPATIBLE) | INCOMPAT_CORRUPT)
    cases["corrupt"] = Case(corrupt, CRITICAL, "corrupt")

    # A referenced data cluster with refcount 0: qemu-img check exits 2 (corruptions).
    corruptions = make_image(d / "corruptions.qcow2", "16M", write=["write 0 1M"])
    data = next(iter(active_l2_entries(corruptions))).entry & L2E_OFFSET_MASK
    set_refcount(corruptions, data // 65536, 0)
    assert _qemu_check_exit(corruptions) == 2
    cases["corruptions"] = Case(corruptions, CRITICAL, "corruptions", plain=(OK, None))

    # The header cluster counted twice, referenced once: a leak only (qemu-img check exit 3).
    leaks = make_image(d / "leaks.qcow2", "16M", write=["write 0 1M"])
    set_refcount(leaks, 0, 2)
    assert _qemu_check_exit(leaks) == 3
    cases["leaks"] = Case(leaks, WARNING, "leaks", plain=(OK, None))

    # Refcount table entry not cluster aligned: the metadata is there but damaged.
    damaged = make_image(d / "damaged.qcow2", "16M")
    table = read_header(damaged)["refcount_table_offset"]
    patch_u64(damaged, table, read_u64(damaged, table) + 512)
    assert _qemu_check_exit(damaged) == 1
    cases["damaged"] = Case(damaged, CRITICAL, "damaged")

    # Backing layers: missing, looping, declared qcow2 but raw, unreadable (a directory).
    gone = make_image(d / "gone.qcow2", "16M")
    cases["backing-missing"] = Case(make_image(d / "orphan.qcow2", backing=gone), CRITICAL,
                                    "backing")
    gone.unlink()
    a = make_image(d / "loop-a.qcow2", "16M")
    b = make_image(d / "loop-b.qcow2", backing=a)
    run([require_binary("qemu-img"), "rebase", "-u", "-F", "qcow2", "-b", str(b), str(a)])
    cases["backing-loop"] = Case(b, CRITICAL, "backing")
    raw = d / "raw-base.img"
    raw.write_bytes(b"\0" * 65536)
    over_raw = d / "over-raw.qcow2"
    run([require_binary("qemu-img"), "create", "-q", "-f", "qcow2", "-u", "-b", str(raw), "-F",
         "qcow2", str(over_raw), "16M"])
    cases["backing-not-qcow2"] = Case(over_raw, CRITICAL, "backing")
    (d / "dir-base.qcow2").mkdir()
    over_dir = d / "over-dir.qcow2"
    run([require_binary("qemu-img"), "create", "-q", "-f", "qcow2", "-u", "-b",
         str(d / "dir-base.qcow2"), "-F", "qcow2", str(over_dir), "16M"])
    cases["backing-unreadable"] = Case(over_dir, CRITICAL, "backing")

    # Dirty, not in use: WARNING; its check corruptions are lazy-refcount debt, not CRITICAL.
    idle = _lazy_dirty(d / "lazy-idle.qcow2")
    assert _qemu_check_exit(idle) == 2
    cases["dirty-idle"] = Case(idle, WARNING, "dirty")

    notq = d / "notes.qcow2"
    notq.write_text("not an image\n" * 100)
    cases["not-qcow2"] = Case(notq, UNKNOWN, "unknown")
    return cases


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Every adapter over the same images, while a qemu-io holds the in-use case open."""
    d = tmp_path_factory.mktemp("health")
    cases = build_cases(d)
    busy = d / "lazy-busy.qcow2"
    make_image(busy, "16M", options=["lazy_refcounts=on"])
    # qemu-io's sleep is in milliseconds: 10 minutes, for both modes' runs on a loaded machine
    # (a clean exit would clear the dirty bit); killed as soon as the runs are done.
    holder = subprocess.Popen(
        [require_binary("qemu-io"), "-f", "qcow2", "-c", "write -P 3 0 1M", "-c",
         "sleep 600000", str(busy)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        run(["sh", "-c", f"for i in $(seq 100); do "
             f"[ $(od -An -j{OFF_INCOMPATIBLE + 7} -N1 -tu1 '{busy}') -ne 0 ] && exit 0; "
             "sleep 0.1; done; exit 1"])
        # Dirty while in use with lazy refcounts: OK, with a note.
        cases["dirty-in-use"] = Case(busy, OK, "dirty-in-use")
        outputs = {mode: _run_adapters(cases, extra) for mode, extra in MODES.items()}
        assert holder.poll() is None, "the in-use case was not held for all runs"
    finally:
        holder.kill()
        holder.wait(10)
    yield {"cases": cases, "dir": d, **outputs}


def _run_adapters(cases: dict[str, Case], extra: list[str]) -> dict[str, Any]:
    """check_qcow2 per image, one qcow2-textfile and one qcow2-telegraf run over all."""
    images = [str(case.image) for case in cases.values()]
    plugin = {name: subprocess.run([str(BIN / "check_qcow2"), "-f", str(case.image), *extra,
                                    "-v"], capture_output=True, text=True, timeout=120)
              for name, case in cases.items()}
    textfile = subprocess.run([str(BIN / "qcow2-textfile"), "-o", "-", *extra, *images],
                              capture_output=True, text=True, timeout=120)
    telegraf = subprocess.run([str(BIN / "qcow2-telegraf"), *extra, *images],
                              capture_output=True, text=True, timeout=120)
    assert textfile.returncode == 0, textfile.stderr
    assert telegraf.returncode == 0, telegraf.stderr
    return {"plugin": plugin, "textfile": textfile.stdout, "telegraf": telegraf.stdout}


Expected = dict[str, tuple[Path, int, Optional[str]]]  # case -> (image, state, rule)


def _expected(runs: dict[str, Any], mode: str) -> Expected:
    return {name: (case.image, *case.expected(mode)) for name, case in runs["cases"].items()}


def _assert_agree(out: dict[str, Any], expected: Expected) -> None:
    """check_qcow2's exit state, qcow2_health + qcow2_health_reason and Telegraf's health field
    all equal the expected state of each image, and the deciding rule is among the reasons."""
    samples = textfile_samples(out["textfile"])
    prom_health = {labels["path"]: int(value) for name, labels, value in samples
                   if name == "qcow2_health"}
    prom_rules = {(labels["path"], labels["rule"]): int(value) for name, labels, value in samples
                  if name == "qcow2_health_reason"}
    lines = [parse_line(line) for line in out["telegraf"].splitlines()
             if line.startswith("qcow2,")]
    influx_health = {tags["path"]: fields["health"] for tags, fields in lines}
    for name, (image, state, rule) in expected.items():
        assert out["plugin"][name].returncode == state, (name, out["plugin"][name].stdout)
        path = str(image.resolve())
        assert prom_health[path] == influx_health[path] == state, name
        if rule is not None:
            assert (path, rule) in prom_rules, (name, prom_rules)
        reasons = {r: value for (p, r), value in prom_rules.items() if p == path}
        worst = max(reasons.values(), key=SEVERITY.__getitem__, default=OK)
        assert worst == state, (name, reasons)


@pytest.mark.parametrize("mode", MODES)
def test_check_qcow2_states(runs: dict[str, Any], mode: str) -> None:
    for name, case in runs["cases"].items():
        proc = runs[mode]["plugin"][name]
        assert proc.returncode == case.expected(mode)[0], (name, proc.stdout)
    # The texts operators read.
    out = {name: proc.stdout for name, proc in runs[mode]["plugin"].items()}
    gone = runs["dir"] / "gone.qcow2"  # make_image writes the absolute name
    assert f"backing file '{gone}' (depth 1) not found" in out["backing-missing"]
    assert "loops back into the chain" in out["backing-loop"]
    assert "is not qcow2" in out["backing-not-qcow2"]
    assert "unreadable" in out["backing-unreadable"]
    assert "not cluster aligned" in out["damaged"]
    first = out["dirty-idle"].split(" | ")[0]
    if mode == "check":
        # The check's corruptions on it are named as lazy-refcount debt, and nothing else.
        assert re.fullmatch(r"QCOW2 WARNING - \S+: dirty, not in use: repaired by qemu on "
                            r"next open; [1-9]\d* corruptions, \d+ leaked clusters are the "
                            r"expected lazy-refcount debt", first)
    else:
        assert re.fullmatch(r"QCOW2 WARNING - \S+: dirty, not in use: repaired by qemu on "
                            r"next open", first)
    assert "note: dirty while in use with lazy refcounts" in out["dirty-in-use"]


@pytest.mark.parametrize("mode", MODES)
def test_textfile_and_telegraf_agree_with_check_qcow2(runs: dict[str, Any], mode: str) -> None:
    _assert_agree(runs[mode], _expected(runs, mode))


def test_rule_states_changed_on_each_adapters_command_line(runs: dict[str, Any]) -> None:
    """--RULE-state on each adapter's command line changes the state the same way in all
    three (and so the alert that follows: the rules key on each reason's state alone)."""
    cases = runs["cases"]
    for options, changed in (
        (["--check", "--leaks-state", "critical", "--dirty-state", "ok"],
         {"leaks": (CRITICAL, "leaks"), "dirty-idle": (OK, "dirty"), "clean": (OK, None)}),
        (["--corrupt-state", "warning", "--backing-state", "unknown", "--unknown-state",
          "warning"],
         {"corrupt": (WARNING, "corrupt"), "backing-missing": (UNKNOWN, "backing"),
          "not-qcow2": (WARNING, "unknown")}),
    ):
        chosen = {name: cases[name] for name in changed}
        out = _run_adapters(chosen, options)
        expected = {name: (cases[name].image, *state) for name, state in changed.items()}
        _assert_agree(out, expected)


def test_permission_denied_is_unknown_everywhere(tmp_path: Path) -> None:
    """An image the monitoring user may not read (how Nagios, Icinga and Telegraf run):
    UNKNOWN in check_qcow2, qcow2_health 3 with rule "unknown", Telegraf health=3i."""
    shared = Path(tempfile.mkdtemp(prefix="qcow2-perm-"))  # tmp_path is root's alone
    try:
        shared.chmod(0o755)
        image = make_image(shared / "secret.qcow2", "16M")
        image.chmod(0o600)  # root's: nobody may not open it
        path = str(image.resolve())

        def as_nobody(module: str, *args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["runuser", "-u", "nobody", "--", "env", f"PYTHONPATH={source_site()}",
                 SYSTEM_PYTHON, "-m", f"qcow2_monitor.{module}", *args], cwd=source_site(),
                capture_output=True,
                text=True, timeout=120)

        for extra in MODES.values():
            plugin = as_nobody("nagios.check_qcow2", "-f", path, *extra)
            assert plugin.returncode == UNKNOWN, plugin.stdout + plugin.stderr
            assert plugin.stdout.startswith(f"QCOW2 UNKNOWN - {path}: ")
            assert "ermission denied" in plugin.stdout, plugin.stdout
            textfile = as_nobody("node_exporter_textfile.qcow2_textfile", "-o", "-", *extra,
                                 path)
            assert textfile.returncode == 0, textfile.stderr
            samples = textfile_samples(textfile.stdout)
            assert ("qcow2_health", {"path": path}, float(UNKNOWN)) in samples
            assert ("qcow2_health_reason", {"path": path, "rule": "unknown"},
                    float(UNKNOWN)) in samples
            assert ("qcow2_scrape_error", {"path": path}, 1.0) in samples
            telegraf = as_nobody("telegraf.qcow2_telegraf", *extra, path)
            assert telegraf.returncode == 0, telegraf.stderr
            [(tags, fields)] = [parse_line(line) for line in telegraf.stdout.splitlines()]
            assert tags == {"path": path}
            assert (fields["health"], fields["scrape_error"]) == (UNKNOWN, 1)
            assert fields["health_reasons"].startswith("unknown: ")
        # The control: root reads the same image, and it is healthy.
        root = subprocess.run([str(BIN / "check_qcow2"), "-f", path], capture_output=True,
                              text=True, timeout=120)
        assert root.returncode == OK, root.stdout
    finally:
        shutil.rmtree(shared)


def test_usage_command_fails_on_a_broken_chain(runs: dict[str, Any]) -> None:
    """qcow2-analyze usage exits 1 and names the missing layer, with or without --no-chain."""
    orphan = runs["cases"]["backing-missing"].image
    for extra in ([], ["--no-chain"]):
        proc = subprocess.run([str(BIN / "qcow2-analyze"), "usage", *extra, str(orphan)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1, (extra, proc.stdout, proc.stderr)
        assert "gone.qcow2' not found" in proc.stderr
        # The usage table shows the missing layer's row with its status.
        assert any("gone.qcow2" in line and line.rstrip().endswith("missing")
                   for line in proc.stdout.splitlines())
    clean = runs["cases"]["clean"].image
    proc = subprocess.run([str(BIN / "qcow2-analyze"), "usage", "--no-chain", str(clean)],
                          capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stderr) == (0, "")


def test_loop_layer_itself_and_the_top_above_it() -> None:
    """A layer record that loops is CRITICAL by itself, and so is every image above it."""
    loop = ChainLayer(2, "a.qcow2", "/i/a.qcow2", LayerStatus.LOOP, "qcow2")
    assert assess(usage=None, check=None, error=None, layer=loop).state == CRITICAL
    above = assess(usage=None, check=None, error=None, broken_below=loop)
    assert [(r.rule, r.state) for r in above.reasons] == [("backing", CRITICAL)]
    # Each rule can be changed: the backing rule mapped to warning.
    policy = {**{r: s for r, s in _defaults().items()}, "backing": WARNING}
    assert assess(usage=None, check=None, error=None, broken_below=loop,
                  policy=policy).state == WARNING
    # A layer that cannot be read is judged by why: damaged metadata, or we could not look.
    for kind, rule, state in ((INVALID, "damaged", CRITICAL), (IO_ERROR, "unknown", UNKNOWN)):
        error = Qcow2Error("bad", structure="refcount table", kind=kind, filename="/i/b")
        layer = ChainLayer(1, "b", "/i/b", LayerStatus.ERROR, "qcow2", error=error)
        health = assess(usage=None, check=None, error=error, layer=layer)
        assert [(r.rule, r.state) for r in health.reasons] == [(rule, state)]
        assert assess(usage=None, check=None, error=None, broken_below=layer).state == CRITICAL


def _defaults() -> dict[str, int]:
    from qcow2_monitor.collectors.report.health import default_policy

    return default_policy()
