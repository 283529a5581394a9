"""One file name, one spelling in every output: a name with an undecodable byte, a newline and
a `|` reads the same (by collectors/common/text.py's rule) in the JSON and the human text of
qcow2-analyze, in check_qcow2's output, in line protocol and in the Prometheus text format, and
in every error line; each format's own syntax is escaped on top by its adapter only."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tree import BIN

RAW_NAME = b"bad\xff\nna|me.qcow2"  # not UTF-8, a newline, Nagios' perfdata separator
SHOWN_NAME = "bad\\xff\\x0ana|me.qcow2"  # the one spelling of every output
RAW_BROKEN = b"not\xfe\tq|cow2"  # a file that is no qcow2 image, for the error lines
SHOWN_BROKEN = "not\\xfe\\x09q|cow2"


def run(command: str, *argv: bytes | str) -> tuple[int, str, str]:
    """A console script; its stdout and stderr, which must be valid UTF-8."""
    proc = subprocess.run([BIN / command, *argv], capture_output=True, timeout=120,
                          check=False)
    out, err = proc.stdout.decode("utf-8"), proc.stderr.decode("utf-8")
    assert "Traceback" not in out + err, err
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def names(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, str, bytes, str]:
    """(image, its shown name, broken file, its shown name), as bytes paths and expected text."""
    directory = tmp_path_factory.mktemp("names")
    image = os.fsencode(directory) + b"/" + RAW_NAME
    subprocess.run([b"qemu-img", b"create", b"-q", b"-f", b"qcow2", image, b"16M"], check=True)
    broken = os.fsencode(directory) + b"/" + RAW_BROKEN
    with open(broken, "wb") as file:
        file.write(b"\0" * 4096)
    return image, f"{directory}/{SHOWN_NAME}", broken, f"{directory}/{SHOWN_BROKEN}"


def test_qcow2_analyze_json_and_text(names: tuple[bytes, str, bytes, str]) -> None:
    image, shown, broken, shown_broken = names
    code, out, _ = run("qcow2-analyze", "usage", "--output", "json", image)
    assert code == 0 and json.loads(out)[0]["filename"] == shown
    code, out, _ = run("qcow2-analyze", "usage", image)
    assert code == 0 and out.splitlines()[1].startswith(shown + " ")  # one row, one line
    for command in ("info", "header", "check"):
        code, out, _ = run("qcow2-analyze", command, "--output", "json", image)
        assert code == 0 and json.loads(out)["filename"] == shown, command
    code, out, _ = run("qcow2-analyze", "dump", "--what", "l1", "--output", "json", image)
    assert code == 0 and json.loads(out)["filename"] == shown
    for argv in (["info"], ["header"], ["dump", "--what", "l1"]):
        code, out, _ = run("qcow2-analyze", *argv, image)
        assert code == 0 and out.splitlines()[0] == f"image: {shown}", argv
    code, out, _ = run("qcow2-analyze", "check", "--chain", image)
    assert code == 0 and out.splitlines()[0] == f"== {shown}"
    # The error line on stderr and the error document on stdout.
    code, out, err = run("qcow2-analyze", "info", "--output", "json", broken)
    assert code == 1 and err.startswith(f"qcow2-analyze: {shown_broken}: header")
    assert err.count("\n") == 1
    document = json.loads(out)
    assert document["filename"] == document["error"]["filename"] == shown_broken


def test_check_qcow2(names: tuple[bytes, str, bytes, str]) -> None:
    image, shown, broken, shown_broken = names
    nagios = shown.replace("|", "_")  # `|` would start the perfdata
    code, out, _ = run("check_qcow2", "-f", image, "-w", "90")
    assert code == 0 and out.count("\n") == 1  # the newline does not split the output
    first, perf = out.split(" | ")
    assert first.startswith(f"QCOW2 OK - {nagios}: usage ")
    assert f"'{nagios} end_offset_bytes'=262144B" in perf
    code, out, _ = run("check_qcow2", "-f", broken)
    assert code == 3
    assert out == f"QCOW2 UNKNOWN - {shown_broken.replace('|', '_')}: header at offset 0x0: " \
        "not a qcow2 image (bad magic)\n"


def test_qcow2_telegraf(names: tuple[bytes, str, bytes, str]) -> None:
    image, shown, broken, shown_broken = names
    code, out, err = run("qcow2-telegraf", image, broken)
    assert code == 0
    points = [line for line in out.splitlines() if line.startswith("qcow2,")]
    # A backslash before a letter is written as is in a tag; in a string field it is doubled.
    assert points[0].startswith(f"qcow2,path={shown} ")
    assert f'name="{shown.replace(chr(92), chr(92) * 2)}"' in points[0]
    assert points[1].startswith(f"qcow2,path={shown_broken} ")
    assert err == f"E! [inputs.qcow2] {shown_broken}: header at offset 0x0: not a qcow2 image " \
        "(bad magic)\n"


def test_qcow2_textfile(names: tuple[bytes, str, bytes, str]) -> None:
    image, shown, broken, shown_broken = names
    code, out, err = run("qcow2-textfile", "--output", "-", image, broken)
    assert code == 0
    paths = {sample.labels["path"] for family in text_string_to_metric_families(out)
             for sample in family.samples if family.name == "qcow2_scrape_error"}
    assert paths == {shown, shown_broken}
    error = f"{shown_broken}: header at offset 0x0: not a qcow2 image (bad magic)"
    assert f"# error: {error}\n" in out
    assert err == f"qcow2-textfile: {error}\n"


def test_a_broken_layer_is_named_by_the_rule_too(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The backing file name an image holds, when its layer is missing, loops or is no qcow2,
    is written by the same rule as every other name (it was Python's repr: '\\udcff', '\\n')."""
    directory = tmp_path_factory.mktemp("layers")
    top = os.fsencode(directory) + b"/top.qcow2"
    subprocess.run([b"qemu-img", b"create", b"-q", b"-f", b"qcow2", b"-u", b"-F", b"qcow2",
                    b"-b", RAW_NAME, top, b"16M"], check=True)
    reason = f"backing file '{SHOWN_NAME}' (depth 1) not found"
    code, out, _ = run("check_qcow2", "--no-live", top)
    assert code == 2 and f" - {os.fsdecode(top)}: {reason.replace('|', '_')} | " in out
    code, out, _ = run("qcow2-telegraf", "--no-live", top)
    assert code == 0 and f'backing: {reason}'.replace("\\", "\\\\") in out
    code, _, err = run("qcow2-analyze", "check", top)
    assert code == 1 and f"backing file '{SHOWN_NAME}' not found (depth 1)" in err
    # A layer that loops back: the same rule.
    loop = os.fsencode(directory) + b"/" + RAW_NAME
    subprocess.run([b"qemu-img", b"create", b"-q", b"-f", b"qcow2", b"-u", b"-F", b"qcow2",
                    b"-b", b"top.qcow2", loop, b"16M"], check=True)
    code, out, _ = run("check_qcow2", "--no-live", top)
    assert code == 2 and "backing file 'top.qcow2' (depth 2) loops back" in out
    code, out, err = run("qcow2-analyze", "usage", "--no-live", loop)
    assert code == 1 and f"backing file '{SHOWN_NAME}' loops back into the chain\n" in err
    # The note names the image as the table does: one line each (it was the raw bytes).
    assert f"\nnote: {directory}/{SHOWN_NAME}: backing file '{SHOWN_NAME}' (depth 2) loops " \
        "back into the chain: qemu cannot open the image\n" in out
