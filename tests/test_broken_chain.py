"""One broken-chain story (issue 19, item 6): the top image of a chain whose layer is missing,
loops, is unreadable or is not the qcow2 it is declared to be says so in every front end, with
the same status word (usage's JSON, its table and note, image_info's status label, Telegraf's
status field), `qcow2-analyze check` exits 1 as `qemu-img check` does on the same image, and
check_qcow2 --chain names the fact once. Images made by qemu-img; the unreadable base is read
as `nobody`."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

from readback import parse_line, textfile_samples
from tree import SYSTEM_PYTHON, source_site

NOBODY = ["runuser", "-u", "nobody", "--"]


@dataclass(frozen=True)
class Case:
    top: Path
    layer: str  # the broken layer's status
    top_status: str  # the top image's
    fact: str  # the backing rule's text, as the health policy words it
    user: list[str]  # command prefix of the runs (the unreadable base: as nobody)
    qemu_reason: Optional[str]  # what qemu-img check says after "Could not open backing file"


def _qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True, timeout=60)


def _create(path: Path, backing: Optional[str] = None) -> Path:
    options = ["-u", "-b", backing, "-F", "qcow2"] if backing is not None else []
    _qemu_img("create", "-q", "-f", "qcow2", *options, str(path), "16M")
    return path


def _case(directory: Path, kind: str) -> Case:
    directory.mkdir()
    directory.chmod(0o755)
    top = directory / "top.qcow2"
    if kind == "missing":
        _create(directory / "base.qcow2")
        _create(top, "base.qcow2")
        (directory / "base.qcow2").unlink()
        return Case(top, "missing", "backing-missing",
                    "backing file 'base.qcow2' (depth 1) not found", [],
                    "No such file or directory")
    if kind == "loop":
        a = _create(directory / "a.qcow2")
        _create(top, "a.qcow2")
        _qemu_img("rebase", "-u", "-f", "qcow2", "-b", "top.qcow2", "-F", "qcow2", str(a))
        # qemu-img check of a loop (qemu 7.2) does not return: not run here.
        return Case(top, "loop", "backing-loop",
                    "backing file 'top.qcow2' (depth 2) loops back into the chain", [], None)
    if kind == "not-qcow2":
        (directory / "base.raw").write_bytes(bytes(1 << 20))
        _create(top, "base.raw")  # declared qcow2 (-F qcow2), but it is raw
        return Case(top, "not-qcow2", "backing-not-qcow2",
                    "backing file 'base.raw' (depth 1) is not qcow2", [],
                    "Image is not in qcow2 format")
    base = _create(directory / "base.qcow2")
    base.chmod(0o600)  # root's: nobody may not read it, but may read the top image
    _create(top, "base.qcow2")
    top.chmod(0o644)
    return Case(top, "error", "backing-error",
                "backing file 'base.qcow2' (depth 1) unreadable: Permission denied", NOBODY,
                "Permission denied")


@pytest.fixture(params=["missing", "loop", "not-qcow2", "unreadable"])
def case(request: pytest.FixtureRequest) -> Iterator[Case]:
    shared = Path(tempfile.mkdtemp(prefix="qcow2-chain-"))  # tmp_path is root's alone
    try:
        shared.chmod(0o755)
        yield _case(shared / "images", request.param)
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def _run(case: Case, module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*case.user, "env", f"PYTHONPATH={source_site()}", SYSTEM_PYTHON, "-m",
         f"qcow2_monitor.{module}", *args], cwd=source_site(), capture_output=True, text=True,
        timeout=120)


def test_check_exits_as_qemu_img_check(case: Case) -> None:
    if case.qemu_reason is not None:
        qemu = subprocess.run([*case.user, "qemu-img", "check", str(case.top)],
                              capture_output=True, text=True, timeout=60)
        assert qemu.returncode == 1, qemu.stderr
        assert "Could not open backing file" in qemu.stderr and case.qemu_reason in qemu.stderr
    ours = _run(case, "analyze", "check", str(case.top))
    assert ours.returncode == 1, ours.stdout + ours.stderr
    [line] = ours.stderr.splitlines()
    assert line.startswith(f"qcow2-analyze: {case.top}: backing chain: ")
    assert "qemu-img check exits 1 (\"Could not open backing file\")" in line
    assert ours.stdout.startswith("No errors were found on the image.\n")  # its own metadata
    data = json.loads(_run(case, "analyze", "check", "--output", "json", str(case.top)).stdout)
    assert data["check-errors"] == 0 and data["backing-chain-error"]["status"] == case.layer


def test_usage_says_it_on_the_top_image(case: Case) -> None:
    run = _run(case, "analyze", "usage", "--output", "json", str(case.top))
    assert run.returncode == 1, run.stderr
    [entry] = json.loads(run.stdout)
    assert entry["status"] == case.top_status
    assert entry["backing_chain"][-1]["status"] == case.layer
    human = _run(case, "analyze", "usage", str(case.top))
    assert human.returncode == 1
    rows = human.stdout.splitlines()
    assert rows[1].startswith(str(case.top)) and rows[1].endswith(case.top_status), rows
    assert f"note: {case.top}: {case.fact}: qemu cannot open the image" in rows, rows
    assert sum(row.startswith("note: ") for row in rows) == 1, rows  # not on a layer between


def test_every_adapter_says_the_same_words(case: Case) -> None:
    top = str(case.top)
    textfile = _run(case, "node_exporter_textfile.qcow2_textfile", "-o", "-", "--chain", top)
    statuses = {labels["path"]: labels["status"] for name, labels, _ in
                textfile_samples(textfile.stdout) if name == "qcow2_image_info"}
    assert statuses[top] == case.top_status
    # A loop layer names a file reported already (one series per disk): the layer between
    # says the loop as the top does.
    below = case.top_status if case.layer == "loop" else case.layer
    assert sorted(statuses.values()) == sorted([case.top_status, below]), statuses
    alone = _run(case, "node_exporter_textfile.qcow2_textfile", "-o", "-", top)
    assert ("qcow2_health_reason", {"path": top, "rule": "backing"}, 2.0) \
        in textfile_samples(alone.stdout)
    assert [labels["status"] for name, labels, _ in textfile_samples(alone.stdout)
            if name == "qcow2_image_info"] == [case.top_status]
    telegraf = _run(case, "telegraf.qcow2_telegraf", "--chain", top)
    fields = {tags["path"]: found for tags, found in
              (parse_line(line) for line in telegraf.stdout.splitlines())
              if "path" in tags}
    assert {path: found["status"] for path, found in fields.items()} == statuses
    assert fields[top]["health_reasons"] == f"backing: {case.fact}"


def test_check_qcow2_chain_names_the_fact_once(case: Case) -> None:
    plugin = _run(case, "nagios.check_qcow2", "--chain", "-f", str(case.top))
    assert plugin.returncode == 2, plugin.stdout
    first, *long_output = plugin.stdout.splitlines()
    summary = first.split(" | ")[0]
    assert summary.count(case.fact) == 1 and summary.count("(depth") == 1, summary
    assert sum(case.fact in line for line in long_output) == 1, long_output
    assert long_output[0].startswith(f"CRITICAL: {case.top}: ")
    assert long_output[0].endswith(case.fact)
