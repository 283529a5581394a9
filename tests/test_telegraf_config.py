"""The shipped Telegraf snippets: valid TOML, only options Telegraf documents, and commands that
run the real qcow2-telegraf.

Telegraf refuses a configuration with a key its plugin does not know ("configuration specified
the fields [...], but they weren't used"), so a typo or an option of another version would stop
the agent. The allowed keys are written here from Telegraf's own documentation:
plugins/inputs/exec/README.md and plugins/inputs/execd/README.md (sample.conf), and the
parameters docs/CONFIGURATION.md allows on any input plugin ("Input Plugins", "Metric
Filtering").
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tree import BIN, REPO

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the CI runs 3.11
    import tomli as tomllib

SNIPPETS = sorted((REPO / "telegraf").glob("*.conf"))
SCRIPT = BIN / "qcow2-telegraf"
SUDO = "/usr/bin/sudo"

# docs/CONFIGURATION.md, "Input Plugins": parameters that can be used with any input plugin.
ANY_INPUT = {
    "alias", "interval", "precision", "collection_jitter", "collection_offset",
    "name_override", "name_prefix", "name_suffix", "tags", "log_level",
    # "Metric Filtering": selectors and modifiers.
    "namepass", "namepass_separator", "namedrop", "namedrop_separator", "tagpass", "tagdrop",
    "metricpass", "fieldinclude", "fieldexclude", "taginclude", "tagexclude",
}
# plugins/inputs/exec/README.md sample.conf.
EXEC = {"commands", "environment", "timeout", "name_suffix", "ignore_error", "data_format"}
# plugins/inputs/execd/README.md sample.conf.
EXECD = {"command", "environment", "signal", "restart_delay", "data_format"}

_DURATION = re.compile(r"^(\d+)(ms|s|m|h)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}


def seconds(text: str) -> float:
    match = _DURATION.match(text)
    assert match, f"not a Telegraf duration: {text!r}"
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def plugins(path: Path) -> list[tuple[str, dict[str, Any]]]:
    config = tomllib.loads(path.read_text(encoding="utf-8"))
    assert set(config) == {"inputs"}, path
    return [(name, table) for name, tables in config["inputs"].items() for table in tables]


def test_three_snippets_are_shipped() -> None:
    assert [p.name for p in SNIPPETS] == [
        "qcow2-exec-legacy.conf", "qcow2-exec.conf", "qcow2-execd.conf"]


@pytest.mark.parametrize("path", SNIPPETS, ids=lambda p: p.name)
def test_keys_are_documented_options(path: Path) -> None:
    for name, table in plugins(path):
        allowed = {"exec": EXEC, "execd": EXECD}[name] | ANY_INPUT
        assert set(table) <= allowed, (path.name, set(table) - allowed)
        # exec's default data_format is "json": without this every line would be refused.
        assert table["data_format"] == "influx"
        # 500 images, one batch well within the interval; exec's timeout below it.
        assert seconds(table["interval"]) >= 30
        if name == "exec":
            assert seconds(table["timeout"]) < seconds(table["interval"])


def _argv(path: Path) -> list[list[str]]:
    (name, table), = plugins(path)
    if name == "execd":
        assert table["signal"] == "STDIN"
        return [table["command"]]
    return [shlex.split(c) if isinstance(c, str) else c for c in table["commands"]]


def test_exec_forms_per_version() -> None:
    legacy = plugins(REPO / "telegraf" / "qcow2-exec-legacy.conf")[0][1]["commands"]
    argv = plugins(REPO / "telegraf" / "qcow2-exec.conf")[0][1]["commands"]
    # <= 1.38 accepts only strings; >= 1.39 the argv arrays. Both run the same command.
    assert all(isinstance(command, str) for command in legacy)
    assert all(isinstance(command, list) for command in argv)
    assert [shlex.split(command) for command in legacy] == argv
    execd = plugins(REPO / "telegraf" / "qcow2-execd.conf")[0][1]["command"]
    assert isinstance(execd, list) and "--execd" in execd
    # Every shipped snippet scans the same targets (execd only adds --execd), and so does the
    # textfile's cron line: the same disks and filesystem sums whichever agent collects.
    assert [arg for arg in execd if arg != "--execd"] == argv[0]
    cron = (REPO / "node_exporter_textfile" / "qcow2-textfile.cron").read_text()
    job = shlex.split(cron.strip().splitlines()[-1])
    assert "--chain" in job and job[-1] == argv[0][-1] == "/var/lib/libvirt/images"


@pytest.mark.parametrize("path", SNIPPETS, ids=lambda p: p.name)
def test_commands_run_the_real_collector(path: Path, tmp_path: Path) -> None:
    """Each command, as `qcow2-analyze config` renders the snippet (the installed script's
    real path), with a real image as target, prints points."""
    image = tmp_path / "t.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True)
    rendered = tmp_path / path.name
    rendered.write_bytes(subprocess.run([str(SCRIPT.parent / "qcow2-analyze"), "config",
                                         path.name], capture_output=True, check=True).stdout)
    for argv in _argv(rendered):
        # Through sudo, as /etc/sudoers.d/qcow2-monitor allows the telegraf user (the tests
        # run as root; tests/test_debian_package.py runs it as telegraf).
        assert argv[:3] == [SUDO, "-n", str(SCRIPT)]
        options = [arg for arg in argv[3:] if arg.startswith("--")]
        proc = subprocess.run([*argv[:3], *options, str(image)], input=b"\n",
                              capture_output=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(b"qcow2,"), proc.stdout
