"""Every entry point alike: `main(argv=None, stdout=None, stderr=None) -> int`, the documented
exit code for a bad option, --help and --version (check_qcow2: UNKNOWN, 3, for all three, as the
monitoring-plugins guidelines want; the others 64, 0, 0), and for an error nobody expected one
line, never a traceback -- through the installed console scripts and in process."""

from __future__ import annotations

import inspect
import io
import subprocess
from collections.abc import Callable

import pytest

from qcow2_monitor.analyze import main as analyze
from qcow2_monitor.nagios import check_qcow2
from qcow2_monitor.node_exporter_textfile import qcow2_textfile
from qcow2_monitor.telegraf import qcow2_telegraf

from tree import BIN

MAINS: dict[str, Callable[..., int]] = {
    "qcow2-analyze": analyze.main, "check_qcow2": check_qcow2.main,
    "qcow2-telegraf": qcow2_telegraf.main, "qcow2-textfile": qcow2_textfile.main,
}
# (bad option, --help, --version) exit codes, as each --help and the README document them.
CODES = {"qcow2-analyze": (64, 0, 0), "check_qcow2": (3, 3, 3),
         "qcow2-telegraf": (64, 0, 0), "qcow2-textfile": (64, 0, 0)}
# A command line that gets past the parser in each (the internal error comes after).
RUNS = {"qcow2-analyze": ["info", "x.qcow2"], "check_qcow2": ["-f", "x.qcow2"],
        "qcow2-telegraf": ["x.qcow2"], "qcow2-textfile": ["--output", "-", "x.qcow2"]}


def run(command: str, *argv: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([BIN / command, *argv], capture_output=True, text=True, timeout=120,
                          check=False)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return proc


def test_every_entry_point_has_one_signature() -> None:
    for name, main in MAINS.items():
        signature = inspect.signature(main)
        assert list(signature.parameters) == ["argv", "stdout", "stderr"], name
        assert all(p.default is None for p in signature.parameters.values()), name
        assert signature.return_annotation in (int, "int"), name


@pytest.mark.parametrize("command", sorted(MAINS))
def test_bad_option_help_and_version(command: str) -> None:
    bad, helped, versioned = CODES[command]
    proc = run(command, *RUNS[command], "--no-such-option")
    assert proc.returncode == bad
    if command == "check_qcow2":  # everything on stdout: monitoring systems show only that
        assert proc.stdout.startswith("QCOW2 UNKNOWN - bad arguments: unrecognized arguments: "
                                      "--no-such-option\n") and proc.stderr == ""
    else:
        # The collectors print their usage first, as argparse does; qcow2-analyze one line.
        error = "error: " if command != "qcow2-analyze" else ""
        assert proc.stdout == "" and ("\n" + proc.stderr).endswith(
            f"\n{command}: {error}unrecognized arguments: --no-such-option\n")
        assert command != "qcow2-analyze" or proc.stderr.count("\n") == 1
    proc = run(command, "--help")
    assert proc.returncode == helped and proc.stdout.startswith(f"usage: {command} ")
    assert "exit codes:" in proc.stdout and proc.stderr == ""
    proc = run(command, "--version")
    assert proc.returncode == versioned and proc.stdout.startswith(f"{command} ")
    assert proc.stdout.count("\n") == 1 and proc.stderr == ""


def _boom(*args: object, **kwargs: object) -> int:
    raise RuntimeError("planted\nsecond line")


# What each says of an error nobody expected: exit code, the stream, the one line. A
# qcow2-analyze error names the FILE once the command line is read.
INTERNAL = {
    "qcow2-analyze": (1, "err", "qcow2-analyze: {file}analysis: internal error: RuntimeError: "
                      "planted\\x0asecond line\n"),
    "check_qcow2": (3, "out", "QCOW2 UNKNOWN - internal error: RuntimeError: planted\n"),
    "qcow2-telegraf": (1, "err", "E! [inputs.qcow2] internal error: RuntimeError: planted\n"),
    "qcow2-textfile": (1, "err", "qcow2-textfile: error: internal error: RuntimeError: "
                       "planted\n"),
}
# Where the error is planted: in the work, and before the command line is read (the parser).
PLANTED = {
    "qcow2-analyze": ("analyze.main.run_info", "analyze.main.build_parser"),
    "check_qcow2": ("nagios.check_qcow2._collect", "nagios.check_qcow2.build_parser"),
    "qcow2-telegraf": ("telegraf.qcow2_telegraf.collect_selected",
                       "telegraf.qcow2_telegraf._parser"),
    "qcow2-textfile": ("node_exporter_textfile.qcow2_textfile.collect_selected",
                       "node_exporter_textfile.qcow2_textfile._parser"),
}


@pytest.mark.parametrize(("command", "parsed"), [
    (command, parsed) for command in sorted(MAINS) for parsed in (True, False)])
def test_an_unexpected_error_is_one_line_and_the_documented_code(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: str,
        parsed: bool) -> None:
    monkeypatch.setattr(f"qcow2_monitor.{PLANTED[command][0 if parsed else 1]}", _boom)
    code, stream, line = INTERNAL[command]
    out, err = io.StringIO(), io.StringIO()
    assert MAINS[command](RUNS[command], stdout=out, stderr=err) == code
    said, silent = (out, err) if stream == "out" else (err, out)
    assert said.getvalue() == line.format(file="x.qcow2: " if parsed else "")
    assert silent.getvalue() == ""
    assert capsys.readouterr() == ("", "")  # nothing went to the process's streams


def test_interrupted_is_130_without_a_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(qcow2_telegraf, "collect_selected", interrupted)
    out, err = io.StringIO(), io.StringIO()
    assert qcow2_telegraf.main(["x.qcow2"], out, err) == 130
    assert (out.getvalue(), err.getvalue()) == ("", "")
