"""A real Icinga 2 runs check_qcow2 through the shipped CheckCommand (included verbatim).

The daemon runs in a temp dir as the current user; results are read from
its state file after SIGTERM: exit status, output and the perfdata as Icinga parsed it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import pytest

from qcow2_monitor.nagios.check_qcow2 import build_parser

from daemons import make_image, own_filesystem
from damage import INCOMPAT_CORRUPT, OFF_INCOMPATIBLE, patch_u64, read_u64, set_refcount
from nagios_daemons import (
    ICINGA_CONF,
    icinga_config,
    icinga_validate,
    plugin_dir,
    run_icinga_checks,
)

MiB = 1024**2


@pytest.fixture(scope="module")
def icinga_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One daemon run for all services (about 3 s), shared by the assertions below."""
    tmp = tmp_path_factory.mktemp("icinga")
    images = tmp / "images"
    with own_filesystem(images):  # usage thresholds must not depend on the build disk
        return _run_services(tmp, images)


def _run_services(tmp: Path, images: Path) -> dict[str, Any]:
    plain = make_image(images / "plain.qcow2", "64M", write=["write -P 1 0 2M"])
    awkward = make_image(images / "b c|d=e'f$.qcow2", "32M", write=["write -P 2 0 1M"])
    corrupt = make_image(images / "corrupt.qcow2", "32M", write=["write -P 3 0 1M"])
    patch_u64(corrupt, OFF_INCOMPATIBLE, read_u64(corrupt, OFF_INCOMPATIBLE) | INCOMPAT_CORRUPT)
    leaky = make_image(images / "leaky.qcow2", "32M", write=["write -P 4 0 1M"])
    size = leaky.stat().st_size
    with open(leaky, "r+b") as handle:
        handle.truncate(size + 65536)
    set_refcount(leaky, size // 65536, 1)
    text = images / "notes.txt"
    text.write_text("not an image\n")
    gone = make_image(tmp / "gone.qcow2", "32M")
    orphan = make_image(images / "orphan.qcow2", backing=gone)
    gone.unlink()
    services: dict[str, dict[str, Any]] = {
        "backing": {"qcow2_file": [str(orphan)]},
        "backing-as-warning": {"qcow2_file": [str(orphan)], "qcow2_backing_state": "warning"},
        "ok": {"qcow2_file": [str(plain)]},
        "warning": {"qcow2_file": [str(plain)], "qcow2_warning": "0.0000001",
                    "qcow2_critical": "99"},
        "critical": {"qcow2_file": [str(corrupt)]},
        "unknown": {"qcow2_file": [str(text)]},
        "bad-argument": {"qcow2_file": [str(plain)], "qcow2_warning": "abc"},
        "two-files": {"qcow2_file": [str(plain), str(awkward)],
                      "qcow2_warning_headroom": "1P"},
        "check": {"qcow2_file": [str(leaky)], "qcow2_check": True},
        "every-option": {
            "qcow2_file": [str(images / "p*.qcow2")], "qcow2_running": False,
            "qcow2_chain": True, "qcow2_max_depth": 4, "qcow2_check": False,
            "qcow2_warning": "~:80", "qcow2_critical": "~:90", "qcow2_warning_headroom": "2K",
            "qcow2_critical_headroom": "1K", "qcow2_corrupt_state": "critical",
            "qcow2_corruptions_state": "critical", "qcow2_damaged_state": "critical",
            "qcow2_backing_state": "critical", "qcow2_unknown_state": "unknown",
            "qcow2_leaks_state": "warning", "qcow2_dirty_state": "warning",
            "qcow2_dirty_in_use_state": "ok", "qcow2_unconfirmed_state": "warning",
            "qcow2_warning_overcommit": "1000",
            "qcow2_critical_overcommit": "2000", "qcow2_timeout": 20, "qcow2_verbose": True,
        },
    }
    results = run_icinga_checks(tmp, services)
    return {"results": results, "images": images, "plain": plain, "awkward": awkward,
            "corrupt": corrupt, "leaky": leaky, "text": text, "orphan": orphan, "gone": gone}


def result(icinga_results: dict[str, Any], name: str) -> dict[str, Any]:
    results = icinga_results["results"]
    assert name in results, f"no check result for {name}: {sorted(results)}"
    found: dict[str, Any] = results[name]
    return found


def test_ok(icinga_results: dict[str, Any]) -> None:
    res = result(icinga_results, "ok")
    plain = icinga_results["plain"]
    assert (res["exit_status"], res["state"]) == (0, 0)
    assert re.fullmatch(rf"QCOW2 OK - {re.escape(str(plain))}: usage [0-9.]+%, headroom "
                        r"[0-9.]+ [KMGT]iB ", res["output"])
    # The CheckCommand's default thresholds reach the plugin and its perfdata.
    labels = [re.match(r"'([^']*)'=", item)[1] for item in res["performance_data"]]  # type: ignore[index]
    assert labels == [f"{plain} usage_percent", f"{plain} end_offset_bytes",
                      f"{plain} image_end_offset_bytes",
                      f"{plain} container_size_bytes", f"{plain} headroom_bytes"]
    assert re.fullmatch(r"'[^']*'=[0-9.]+%;80;90;0;100", res["performance_data"][0])


def test_warning(icinga_results: dict[str, Any]) -> None:
    res = result(icinga_results, "warning")
    assert res["exit_status"] == 1
    assert res["output"].startswith(f"QCOW2 WARNING - {icinga_results['plain']}: usage ")
    assert res["output"].endswith("% > 0.0000001% ")
    assert res["performance_data"][0].endswith("%;0.0000001;99;0;100")


def test_critical(icinga_results: dict[str, Any]) -> None:
    res = result(icinga_results, "critical")
    assert res["exit_status"] == 2
    assert res["output"] == f"QCOW2 CRITICAL - {icinga_results['corrupt']}: corrupt bit set "
    assert len(res["performance_data"]) == 5


def test_missing_backing_file_is_critical_without_chain(icinga_results: dict[str, Any]) -> None:
    """The health policy through Icinga: the VM of orphan.qcow2 cannot start."""
    res = result(icinga_results, "backing")
    assert res["exit_status"] == 2, res["output"]
    assert res["output"].startswith(
        f"QCOW2 CRITICAL - {icinga_results['orphan']}: backing file "
        f"'{icinga_results['gone']}' (depth 1) not found")
    res = result(icinga_results, "backing-as-warning")
    assert res["exit_status"] == 1, res["output"]


def test_unknown(icinga_results: dict[str, Any]) -> None:
    res = result(icinga_results, "unknown")
    assert (res["exit_status"], res["performance_data"]) == (3, [])
    assert res["output"] == (f"QCOW2 UNKNOWN - {icinga_results['text']}: header at offset 0x0: "
                             "not a qcow2 image (bad magic)")


def test_bad_argument_is_unknown_not_critical(icinga_results: dict[str, Any]) -> None:
    res = result(icinga_results, "bad-argument")
    assert res["exit_status"] == 3
    assert res["output"].startswith("QCOW2 UNKNOWN - bad arguments: argument -w/--warning: "
                                    "invalid range 'abc'")


def test_two_files_repeat_key_and_awkward_name(icinga_results: dict[str, Any]) -> None:
    res = result(icinga_results, "two-files")
    plain, awkward = icinga_results["plain"], icinga_results["awkward"]
    command = res["command"]
    assert command[command.index("-f") : command.index("-f") + 4] == [
        "-f", str(plain), "-f", str(awkward)]
    assert res["exit_status"] == 1
    first, *long_output = res["output"].splitlines()
    shown = str(awkward).replace("|", "_")
    assert first.startswith(f"QCOW2 WARNING - 2 of 2 images: {plain}: headroom ")
    assert f"; {shown}: headroom " in first
    assert [line.split(": ")[0:2] for line in long_output] == [
        ["WARNING", str(plain)], ["WARNING", shown]]
    # Icinga split the perfdata into the 8 items: the "|", "=", "'" in the name broke nothing.
    label = shown.replace("=", "_").replace("'", "_")
    assert len(res["performance_data"]) == 10
    assert res["performance_data"][5].startswith(f"'{label} usage_percent'=")
    assert res["performance_data"][9].startswith(f"'{label} headroom_bytes'=")
    assert ";1125899906842624:;;0;" in res["performance_data"][9]


def test_check_figures(icinga_results: dict[str, Any]) -> None:
    res = result(icinga_results, "check")
    leaky = icinga_results["leaky"]
    assert "--check" in res["command"]
    assert (res["exit_status"], res["output"]) == (
        1, f"QCOW2 WARNING - {leaky}: 1 leaked cluster ")
    perf = dict(item.split("=", 1) for item in res["performance_data"])
    assert perf[f"'{leaky} leaks'"] == "1;;;0"
    assert perf[f"'{leaky} corruptions'"] == "0;;;0"


def test_every_option_reaches_the_plugin(icinga_results: dict[str, Any]) -> None:
    res = result(icinga_results, "every-option")
    assert res["exit_status"] == 0, res["output"]
    command = res["command"]
    for option, value in (
        ("-f", str(icinga_results["images"] / "p*.qcow2")), ("--max-depth", "4"),
        ("-w", "~:80"), ("-c", "~:90"), ("--warning-headroom", "2K"),
        ("--critical-headroom", "1K"), ("--corrupt-state", "critical"), ("-t", "20"),
        ("--leaks-state", "warning"), ("--dirty-in-use-state", "ok"),
        ("--unconfirmed-state", "warning"),
        ("--damaged-state", "critical"), ("--backing-state", "critical"),
        ("--unknown-state", "unknown"), ("--warning-overcommit", "1000"),
        ("--critical-overcommit", "2000"),
    ):
        assert command[command.index(option) + 1] == value
    assert "--chain" in command and "-v" in command
    assert "--running" not in command and "--check" not in command
    # -v: the long output carries the image's details; the glob was expanded by the plugin.
    assert res["output"].splitlines()[1].startswith(f"OK: {icinga_results['plain']}: usage ")
    assert "qcow2 v3" in res["output"]


def test_real_block_device_golden(tmp_path: Path, loop_device: Callable[..., str]) -> None:
    """Through Icinga, on a container of exact size: output and perfdata byte for byte."""
    image = make_image(tmp_path / "blk.qcow2", "32M", write=["write -P 6 0 5M"])
    with open(image, "r+b") as handle:
        handle.truncate(16 * MiB)
    device = loop_device(image)
    base = tmp_path / "icinga"
    base.mkdir()
    # No state: through sudo the plugin keeps root's (/var/lib/qcow2-monitor, sudo resets
    # $MP_STATE_PATH), where earlier runs on this loop device may have left a growth history
    # (a growth figure would join the perfdata).
    results = run_icinga_checks(base, {"block": {
        "qcow2_file": [device], "qcow2_warning": "30", "qcow2_critical": "50",
        "qcow2_warning_headroom": "12M", "qcow2_no_state": True}})
    res = results["block"]
    assert res["exit_status"] == 1
    # The image (32 MiB) can outgrow its 16 MiB volume, below the default extension watermark.
    assert res["output"] == (
        f"QCOW2 WARNING - {device}: headroom 10.7 MiB below the watermark 512 MiB: extend the "
        f"volume by 1 GiB to 1.02 GiB, usage 33.2% > 30%, headroom 10.7 MiB < 12 MiB ")
    # Icinga keeps the quotes because every label has a space (it drops them otherwise).
    assert res["performance_data"] == [
        f"'{device} usage_percent'=33.203125%;30;50;0;100",
        f"'{device} end_offset_bytes'=5570560B;;;0;16777216",
        f"'{device} image_end_offset_bytes'=5570560B;;;0;16777216",
        f"'{device} container_size_bytes'=16777216B;;;0",
        f"'{device} headroom_bytes'=11206656B;12582912:;;0;16777216",
    ]


def test_shipped_command_validates_and_documents_every_option(tmp_path: Path) -> None:
    """icinga2 daemon -C accepts the file; every plugin option is mapped, described, named."""
    config = icinga_config(tmp_path, {"validate": {"qcow2_file": ["/nonexistent"]}})
    checked = icinga_validate(config, tmp_path, plugin_dir(tmp_path))
    assert checked.returncode == 0, checked.stdout + checked.stderr

    text = ICINGA_CONF.read_text()
    blocks = dict(re.findall(r'"(-[-\w]+)" = \{(.*?)\n\t\t\}', text, re.S))
    for option, body in blocks.items():
        assert "description = " in body, option
        macro = re.search(r'(?:value|set_if) = "\$(qcow2_\w+)\$"', body)
        assert macro is not None, option
    short_names = {"-f": "file", "-w": "warning", "-c": "critical", "-t": "timeout",
                   "-v": "verbose"}
    parser_options = {
        action.option_strings[-1] if len(action.option_strings) > 1 else action.option_strings[0]
        for action in build_parser().argparse()._actions
        if action.option_strings and action.dest not in ("help", "version")
    }
    mapped = {short_names.get(option, option.lstrip("-").replace("-", "_"))
              for option in blocks}
    expected = {option.lstrip("-").replace("-", "_") for option in parser_options}
    assert mapped == expected
    for option, body in blocks.items():
        name = short_names.get(option, option.lstrip("-").replace("-", "_"))
        assert f"$qcow2_{name}$" in body, option
    assert 'repeat_key = true' in blocks["-f"]
    assert 'set_if = "$qcow2_check$"' in blocks["--check"]
    # "qcow2" through sudo (the sudoers drop-in), "qcow2-direct" as Icinga's user; one
    # argument template for both.
    commands = re.findall(r'object CheckCommand "([^"]+)" \{\n\timport "qcow2-arguments"\n'
                          r'\tcommand = \[ (.*) \]\n\}', text)
    assert commands == [("qcow2", '"/usr/bin/sudo", "-n", PluginDir + "/check_qcow2"'),
                        ("qcow2-direct", 'PluginDir + "/check_qcow2"')]
