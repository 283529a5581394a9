"""Installing the package: one namespace in site-packages, and the shipped configuration found
where it was installed, rendered with the installed commands' real path."""

from __future__ import annotations

import fcntl
import os
import shlex
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from qcow2_monitor.analyze.config import SHIPPED

from tree import BIN, FOLDERS, NOT_IN_A_CLEAN_TREE, REPO, installed_name, sources

SHIPPED_CRON_TARGETS = ("/var/lib/prometheus/node-exporter/qcow2.prom", "/var/lib/libvirt/images")
CRON_LOCK = "/run/lock/qcow2-textfile.lock"


def config(*args: str, bin_dir: Path = BIN, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run([str(bin_dir / "qcow2-analyze"), "config", *args],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def listed_paths(text: str) -> dict[str, Path]:
    """name -> path from `qcow2-analyze config` (a line per file, its description below)."""
    rows = [line.split() for line in text.splitlines() if not line.startswith(" ")]
    return {name: Path(path) for name, path in rows}


def exec_start(unit: str) -> list[str]:
    joined = unit.replace("\\\n", " ")
    (line,) = [line for line in joined.splitlines() if line.startswith("ExecStart=")]
    return shlex.split(line.removeprefix("ExecStart="))


def test_config_lists_every_shipped_file_where_it_lies() -> None:
    paths = listed_paths(config())
    assert set(paths) == set(SHIPPED)
    for name, path in paths.items():
        assert path.is_file() and path.name == name


def test_rendered_unit_runs_the_installed_command() -> None:
    argv = exec_start(config("qcow2-textfile.service"))
    assert argv[0] == str(BIN / "qcow2-textfile") and Path(argv[0]).is_file()
    assert "@BINDIR@" in (REPO / "node_exporter_textfile" / "qcow2-textfile.service").read_text()


def test_rendering_names_each_command_and_keeps_the_comments_that_explain_it() -> None:
    """Every `@BINDIR@/command` becomes the installed command; a comment about the
    placeholder itself still names it (it once read "replaces /opt/x/bin with the
    directory"); the plugin symlink examples name the installed plugin, not /opt."""
    for name in SHIPPED:
        shipped = (REPO / SHIPPED[name][0] / name).read_text()
        rendered = config(name)
        assert "@BINDIR@/" not in rendered, name
        assert rendered.count(f"{BIN}/") == shipped.count("@BINDIR@/"), name
        for line in shipped.splitlines():
            if "@BINDIR@" in line and "@BINDIR@/" not in line:
                assert line in rendered.splitlines(), (name, line)
    for name in ("qcow2.conf", "qcow2-icinga2.conf"):
        rendered = config(name)
        assert f"ln -s {BIN}/check_qcow2 /usr/lib/nagios/plugins/check_qcow2" in rendered
        assert "/opt/" not in rendered
    assert "replaces @BINDIR@ with the directory" in config("qcow2-textfile.cron")


def test_rendered_cron_line_runs_and_never_overlaps(tmp_path: Path) -> None:
    (line,) = [line for line in config("qcow2-textfile.cron").splitlines()
               if line and not line.startswith(("#", "SHELL=", "PATH="))]
    fields = line.split(None, 6)
    assert fields[5] == "root"
    command = fields[6]
    assert command.startswith(f"flock -n {CRON_LOCK} {BIN / 'qcow2-textfile'} ")
    images = tmp_path / "images"
    images.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(images / "a.qcow2"), "16M"],
                   check=True)
    out, lock = tmp_path / "qcow2.prom", tmp_path / "lock"
    local = command.replace(CRON_LOCK, str(lock))
    for shipped, ours in zip(SHIPPED_CRON_TARGETS, (out, images)):
        assert shipped in local
        local = local.replace(shipped, str(ours))
    run = subprocess.run(["sh", "-c", local], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert f'qcow2_virtual_size_bytes{{path="{images / "a.qcow2"}"}} 16777216' in out.read_text()
    # While an earlier run holds the lock, the next one does nothing.
    out.unlink()
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        skipped = subprocess.run(["sh", "-c", local], capture_output=True, timeout=120)
    assert skipped.returncode == 1 and not out.exists()


def test_rule_parameters_change_their_places_only(tmp_path: Path) -> None:
    """`config qcow2.rules.yml --set`: the shipped file with its defaults; each parameter
    changes exactly its literals (listed here by hand), and promtool accepts the result."""
    shipped = (REPO / "node_exporter_textfile" / "qcow2.rules.yml").read_text()
    assert config("qcow2.rules.yml") == shipped
    changed = config("qcow2.rules.yml", "--set", "trend_window=12h", "--set",
                     "stale_after=1h30m", "--set", "for=7m", "--set", "Qcow2ImageWarning.for=1h")
    before, after = shipped.splitlines(), changed.splitlines()
    description = ('"At the rate of the last {} the container of {{{{ $labels.path }}}} on '
                   '{{{{ $labels.instance }}}} runs out of space within 24 hours."')
    assert len(before) == len(after)
    differ = Counter((a.strip(), b.strip()) for a, b in zip(before, after) if a != b)
    assert differ == {
        ("predict_linear(qcow2_headroom_bytes[6h], 24 * 3600) < 0",
         "predict_linear(qcow2_headroom_bytes[12h], 24 * 3600) < 0"): 1,
        ("expr: time() - qcow2_last_success_timestamp_seconds > 600",
         "expr: time() - qcow2_last_success_timestamp_seconds > 5400"): 1,
        ("for: 5m", "for: 7m"): 3, ("for: 1h", "for: 7m"): 1, ("for: 15m", "for: 7m"): 2,
        ("for: 10m", "for: 7m"): 1, ("for: 15m", "for: 1h"): 1,
        (f"description: {description.format('6h')}",
         f"description: {description.format('12h')}"): 1,
    }
    warning = after.index("      - alert: Qcow2ImageWarning")
    assert after[warning + 2] == "        for: 1h"
    rules = tmp_path / "qcow2.rules.yml"
    rules.write_text(changed)
    subprocess.run(["promtool", "check", "rules", str(rules)], check=True, capture_output=True,
                   timeout=60)


@pytest.mark.parametrize("args", [
    ("qcow2.rules.yml", "--set", "window=1h"),  # no such parameter
    ("qcow2.rules.yml", "--set", "for=soon"),  # not a duration
    ("qcow2.rules.yml", "--set", "for=0s"),
    ("qcow2.rules.yml", "--set", "stale_after"),
    ("qcow2.rules.yml", "--set", "Qcow2Nothing.for=1m"),  # no such alert
    ("qcow2.conf", "--set", "for=1m"),  # not the rules
])
def test_bad_rule_parameters_are_a_bad_command_line(args: tuple[str, ...]) -> None:
    proc = subprocess.run([str(BIN / "qcow2-analyze"), "config", *args], capture_output=True,
                          text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (64, ""), proc.stderr
    assert proc.stderr.startswith("qcow2-analyze config: ") and proc.stderr.count("\n") == 1


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built wheel, installed into an empty target directory."""
    work = tmp_path_factory.mktemp("wheel")
    # From a copy of the tree as a clone has it: a build/ left by an earlier build would
    # otherwise be packed as it is.
    source = work / "source"
    shutil.copytree(REPO, source, symlinks=True,
                    ignore=shutil.ignore_patterns(*NOT_IN_A_CLEAN_TREE))
    subprocess.run([str(BIN / "pip"), "wheel", "-q", "--no-deps", "--disable-pip-version-check",
                    "-w", str(work / "dist"), str(source)], check=True, timeout=600)
    (wheel,) = (work / "dist").glob("*.whl")
    site = work / "site"
    subprocess.run([str(BIN / "pip"), "install", "-q", "--no-deps", "--no-compile",
                    "--disable-pip-version-check", "--target", str(site), str(wheel)],
                   check=True, timeout=600)
    return site


def test_wheel_installs_one_namespace(installed: Path) -> None:
    top = sorted(entry.name for entry in installed.iterdir())
    assert [name for name in top if not name.endswith(".dist-info")] == ["bin", "qcow2_monitor"]
    packages = sorted(p.name for p in (installed / "qcow2_monitor").iterdir() if p.is_dir())
    assert packages == sorted(FOLDERS)
    # Every module of the tree is installed, under its one name.
    modules = {str(p.relative_to(installed).with_suffix("")).replace("/", ".")
               for p in (installed / "qcow2_monitor").rglob("*.py")}
    assert modules == {
        installed_name(p) + (".__init__" if p.name == "__init__.py" else "")
        for p in sources()} | {"qcow2_monitor.__init__"}
    assert sorted(p.name for p in (installed / "bin").iterdir()) == [
        "check_qcow2", "qcow2-analyze", "qcow2-telegraf", "qcow2-textfile"]


def test_installed_package_finds_its_configuration(installed: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(installed)}
    paths = listed_paths(config(bin_dir=installed / "bin", env=env))
    assert set(paths) == set(SHIPPED)
    for path in paths.values():
        assert path.is_file() and installed / "qcow2_monitor" in path.parents
    argv = exec_start(config("qcow2-textfile.service", bin_dir=installed / "bin", env=env))
    assert argv[0] == str(installed / "bin" / "qcow2-textfile")
    proc = subprocess.run([argv[0], "--version"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("qcow2-textfile ")


def test_rendered_sudoers_drop_in_is_valid(tmp_path: Path) -> None:
    """What a venv install puts into /etc/sudoers.d (`visudo -cf` is the check sudo's manual
    asks for); it names the installed qcow2-telegraf. The rules themselves are exercised as the
    agents' users in tests/test_debian_package.py."""
    drop_in = tmp_path / "qcow2-monitor"
    drop_in.write_text(config("qcow2-monitor.sudoers"))
    checked = subprocess.run(["visudo", "-cf", str(drop_in)], capture_output=True, text=True,
                             timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    rules = [line.split() for line in drop_in.read_text().splitlines()
             if line.startswith("Cmnd_Alias")]
    assert [rule[3] for rule in rules] == ["/usr/lib/nagios/plugins/check_qcow2",
                                           str(BIN / "qcow2-telegraf")]
