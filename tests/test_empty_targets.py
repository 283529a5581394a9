"""Nothing found is a finding (README "Targets", collectors/host/discovery.py `_selection`).

A directory that yields no qcow2 image -- empty, or holding other files only -- is a failed
target in every adapter, as a glob selecting nothing already was: one line on stderr naming it
and why, exit 1 in `qcow2-analyze usage`, UNKNOWN in check_qcow2, a scrape error for it in
qcow2-telegraf and qcow2-textfile, and the shipped alert Qcow2ImageUnknown fires on the
textfile's series (promtool test rules). Each command is run as an operator runs it: the
installed entry point, in a subprocess. The reasons expected below are written by hand from
what each directory was made to hold.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from daemons import make_image, require_binary, run
from readback import parse_line, textfile_samples
from tree import BIN, REPO

RULES = REPO / "node_exporter_textfile" / "qcow2.rules.yml"
KINDS = ("empty", "other-files")


def _command(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / name), *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def target(tmp_path: Path, request: pytest.FixtureRequest) -> tuple[str, str]:
    """(directory, the reason every adapter must give for it)."""
    directory = tmp_path / request.param
    (directory / "sub").mkdir(parents=True)  # a subdirectory is searched too, and holds nothing
    if request.param == "empty":
        return str(directory), "no file in this directory or below"
    # What a wrong directory holds: a raw and a vmdk image made by qemu-img, and a text file.
    run([require_binary("qemu-img"), "create", "-q", "-f", "raw", str(directory / "disk.raw"),
         "16M"])
    run([require_binary("qemu-img"), "create", "-q", "-f", "vmdk",
         str(directory / "sub" / "disk.vmdk"), "16M"])
    (directory / "README").write_text("the images moved to /srv/vms\n")
    return str(directory), "no qcow2 image among the 3 files in this directory or below"


pytestmark = pytest.mark.parametrize("target", KINDS, indirect=True)


def test_usage_exits_1_with_one_line_naming_the_directory(target: tuple[str, str]) -> None:
    directory, reason = target
    proc = _command("qcow2-analyze", "usage", directory)
    assert proc.returncode == 1, proc.stdout
    assert proc.stderr == f"qcow2-analyze: {directory}: target: {reason}\n"
    [row] = proc.stdout.splitlines()[1:]  # below the header: the target's row
    assert row.split() == [directory, *["-"] * 7, "error"]
    proc = _command("qcow2-analyze", "usage", "--output", "json", directory)
    assert proc.returncode == 1
    [entry] = json.loads(proc.stdout)
    assert (entry["filename"], entry["status"], entry["error"]["message"]) == (
        directory, "error", reason)


def test_check_qcow2_is_unknown_naming_the_directory(target: tuple[str, str]) -> None:
    directory, reason = target
    proc = _command("check_qcow2", "-f", directory)
    assert (proc.returncode, proc.stdout) == (3, f"QCOW2 UNKNOWN - {directory}: target: "
                                                 f"{reason}\n")


def test_telegraf_reports_a_scrape_error_for_it(target: tuple[str, str]) -> None:
    directory, reason = target
    proc = _command("qcow2-telegraf", directory)
    assert proc.returncode == 0, proc.stderr  # Telegraf's convention: a failed target is a point
    assert proc.stderr == f"E! [inputs.qcow2] {directory}: target: {reason}\n"
    [(tags, fields)] = [parse_line(line) for line in proc.stdout.splitlines()]
    assert tags == {"path": directory}
    assert (fields["scrape_error"], fields["health"], fields["status"]) == (1, 3, "error")
    assert fields["error"] == f"{directory}: target: {reason}"


def test_textfile_reports_a_scrape_error_for_it(target: tuple[str, str]) -> None:
    directory, reason = target
    proc = _command("qcow2-textfile", "--output", "-", directory)
    assert proc.returncode == 0, proc.stderr  # written, with the failed target in it
    assert proc.stderr == f"qcow2-textfile: {directory}: target: {reason}\n"
    samples = {(name, tuple(sorted(labels.items()))): value
               for name, labels, value in textfile_samples(proc.stdout)}
    assert samples[("qcow2_scrape_error", (("path", directory),))] == 1
    assert samples[("qcow2_health_reason", (("path", directory), ("rule", "unknown")))] == 3
    assert samples[("qcow2_images", ())] == 1
    assert f"# error: {directory}: target: {reason}\n" in proc.stdout


def test_other_targets_still_report(target: tuple[str, str], tmp_path: Path) -> None:
    """The empty directory fails alone: an image named beside it is analysed as usual."""
    directory, reason = target
    image = make_image(tmp_path / "vm.qcow2", "16M")
    proc = _command("qcow2-textfile", "--output", "-", directory, str(image))
    errors = {labels["path"]: value for name, labels, value in textfile_samples(proc.stdout)
              if name == "qcow2_scrape_error"}
    assert errors == {directory: 1, str(image): 0}
    proc = _command("check_qcow2", "-f", str(image), "-f", directory)
    assert proc.returncode == 3 and f"{directory}: target: {reason}" in proc.stdout


def test_shipped_alert_fires_on_the_textfile_of_it(target: tuple[str, str],
                                                  tmp_path: Path) -> None:
    """The real textfile's series, fed to promtool with the shipped rules: Qcow2ImageUnknown
    fires for the directory once its `for:` (15m) has passed. Before, the textfile of an empty
    directory held no per-target series, and nothing fired."""
    directory, _ = target
    text = _command("qcow2-textfile", "--output", "-", directory).stdout
    series = []
    for name, labels, value in textfile_samples(text):
        shown = ",".join(f"{key}={json.dumps(val)}"
                         for key, val in {"instance": "h1", "job": "node", **labels}.items())
        series.append({"series": f"{name}{{{shown}}}", "values": f"{value:g}x30"})
    alert = {"severity": "warning", "instance": "h1", "job": "node", "path": directory,
             "rule": "unknown"}
    annotations = {
        "summary": f"qcow2 image or target cannot be analysed: {directory}",
        "description": f"qcow2-textfile on h1 cannot look at {directory} (rule 'unknown'): an "
        "image it may not read or cannot analyse, or a directory or pattern that yields no qcow2 "
        "image; its reason is in the .prom file's '# error:' lines and the collector's log."}
    tests = {"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": series, "alert_rule_test": [
            {"eval_time": "10m", "alertname": "Qcow2ImageUnknown", "exp_alerts": []},
            {"eval_time": "20m", "alertname": "Qcow2ImageUnknown",
             "exp_alerts": [{"exp_labels": alert, "exp_annotations": annotations}]},
        ]}]}
    (tmp_path / "empty.test.yml").write_text(json.dumps(tests))  # JSON is YAML
    proc = subprocess.run([require_binary("promtool"), "test", "rules", "empty.test.yml"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
