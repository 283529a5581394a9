"""Command lines and human output of every command: options and targets in any order,
--version and --help everywhere, `info` exactly as `qemu-img info` prints it, the usage table,
and the one size/percent formatter (against qemu-img's own sizes)."""

from __future__ import annotations

import argparse
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from qcow2_monitor.collectors.common.units import counted, human_size, percent_number, ratio_percent

from corpus import CorpusImage
from daemons import make_image
from damage import patch_bytes, patch_u64, read_header, read_u64
from tree import BIN, REPO, sources

COMMANDS = {
    "qcow2-analyze": ["-m", "qcow2_monitor.analyze"],
    "check_qcow2": ["-m", "qcow2_monitor.nagios.check_qcow2"],
    "qcow2-telegraf": ["-m", "qcow2_monitor.telegraf.qcow2_telegraf"],
    "qcow2-textfile": ["-m", "qcow2_monitor.node_exporter_textfile.qcow2_textfile"],
}
ANALYZE_COMMANDS = ["info", "header", "usage", "check", "dump", "measure"]


def run(command: str, *args: str, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *COMMANDS[command], *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def qemu_img(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def create(path: Path, size: str = "64M", *options: str) -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *options, str(path), size],
                   check=True)
    return path


# -- options and targets in any order --------------------------------------------------------
def test_targets_after_options_in_every_command(tmp_path: Path) -> None:
    a = str(create(tmp_path / "a.qcow2"))
    b = str(create(tmp_path / "b.qcow2"))
    nagios = run("check_qcow2", a, "-w", "80", b)
    assert nagios.returncode == 0, nagios.stdout
    assert a in nagios.stdout and b in nagios.stdout
    # Several globs, each followed by options, as a Nagios command line builds them.
    globbed = run("check_qcow2", str(tmp_path / "a*.qcow2"), "-c", "90",
                  str(tmp_path / "b*.qcow2"), "-w", "80")
    assert globbed.returncode == 0 and a in globbed.stdout and b in globbed.stdout

    textfile = run("qcow2-textfile", "--output", "-", a, "--chain", b)
    assert textfile.returncode == 0, textfile.stderr
    assert f'path="{a}"' in textfile.stdout and f'path="{b}"' in textfile.stdout

    telegraf = run("qcow2-telegraf", a, "--chain", b)
    assert telegraf.returncode == 0, telegraf.stderr
    # One point per image (measurement qcow2), beside the filesystem point (qcow2_filesystem).
    assert len([line for line in telegraf.stdout.splitlines()
                if line.startswith("qcow2,")]) == 2

    usage = run("qcow2-analyze", "usage", a, "--no-chain", b, "--output", "json")
    assert usage.returncode == 0, usage.stderr
    assert usage.stdout.count('"filename"') == 2
    for command in ("info", "header", "check", "measure"):
        proc = run("qcow2-analyze", command, a, "--output", "json")
        assert proc.returncode == 0, (command, proc.stderr)
        assert proc.stdout.lstrip().startswith("{"), command
    dump = run("qcow2-analyze", "dump", a, "--what", "l1", "--output", "json")
    assert dump.returncode == 0, dump.stderr


# -- --version, --help, the no-command error ------------------------------------------------
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_version_on_every_command(command: str) -> None:
    proc = run(command, "--version")
    # The Nagios plugin guidelines want UNKNOWN (3) after --version; the others exit 0.
    assert proc.returncode == (3 if command == "check_qcow2" else 0), proc.stderr
    assert re.fullmatch(rf"{command} \S+\n", proc.stdout), proc.stdout


@pytest.mark.parametrize("command", [*ANALYZE_COMMANDS, "config"])
def test_version_after_every_subcommand(command: str) -> None:
    proc = run("qcow2-analyze", command, "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == run("qcow2-analyze", "--version").stdout


def test_legacy_mode_takes_one_file_and_its_own_options(tmp_path: Path) -> None:
    a = str(create(tmp_path / "a.qcow2"))
    b = str(create(tmp_path / "b.qcow2"))
    both = run("qcow2-analyze", "-f", a, "-f", b)
    assert both.returncode == 64 and both.stdout == ""
    assert "one file" in both.stderr and a in both.stderr and b in both.stderr
    for argv in (["--output", "json"], ["--output=json"]):
        proc = run("qcow2-analyze", "-f", a, *argv)
        assert proc.returncode == 64 and proc.stdout == ""
        assert "-o json|raw" in proc.stderr and "invalid choice" not in proc.stderr
    extra = run("qcow2-analyze", "-f", a, b)
    assert extra.returncode == 64 and "one FILE" in extra.stderr
    mixed = run("qcow2-analyze", "-f", a, "info", b)
    assert mixed.returncode == 64 and "not with a command" in mixed.stderr
    # A command without its FILE after -f: the mode is what is wrong, not info's FILE.
    for command in (["info"], ["dump", "--what", "l1"]):
        mixed = run("qcow2-analyze", "-f", a, *command)
        assert mixed.returncode == 64 and mixed.stderr == (
            f"qcow2-analyze: -f FILE is a mode of its own; not with a command ({command[0]} "
            "takes its FILE itself)\n"), mixed.stderr
    assert json.loads(run("qcow2-analyze", "-f", a, "-o", "json").stdout)["qcow_version"] == 3


def _parsers() -> dict[str, argparse.ArgumentParser]:
    from qcow2_monitor.analyze.main import build_parser as analyze_parser
    from qcow2_monitor.nagios.check_qcow2 import build_parser as nagios_parser
    from qcow2_monitor.node_exporter_textfile.qcow2_textfile import _parser as textfile_parser
    from qcow2_monitor.telegraf.qcow2_telegraf import _parser as telegraf_parser

    analyze = analyze_parser()
    parsers: dict[str, argparse.ArgumentParser] = {
        "check_qcow2": nagios_parser().argparse(), "qcow2-telegraf": telegraf_parser().argparse(),
        "qcow2-textfile": textfile_parser().argparse(), "qcow2-analyze": analyze.argparse()}
    parsers.update((f"qcow2-analyze {name}", sub.argparse())
                   for name, sub in analyze.commands.items())
    return parsers


PARSERS = _parsers()


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_help_has_every_option_an_example_and_the_exit_codes(name: str) -> None:
    assert set(PARSERS) >= {f"qcow2-analyze {sub}" for sub in ANALYZE_COMMANDS}
    command, *sub = name.split()
    proc = run(command, *sub, "--help")
    assert proc.returncode == (3 if command == "check_qcow2" else 0)
    text = proc.stdout
    assert "exit codes:" in text and "example" in text.lower(), text
    for action in PARSERS[name]._actions:
        if isinstance(action, argparse._SubParsersAction):
            assert all(choice in text for choice in action.choices)
            continue
        assert action.help and action.help != argparse.SUPPRESS, (name, action.dest)
        shown = action.option_strings[-1] if action.option_strings else action.metavar
        assert shown and str(shown) in text, (name, action.dest)


def test_no_command_lists_every_command() -> None:
    proc = run("qcow2-analyze")
    assert proc.returncode == 64 and proc.stdout == ""
    for command in ANALYZE_COMMANDS:
        assert command in proc.stderr


# -- info as qemu-img info prints it ---------------------------------------------------------
def _patch_first_snapshot(path: Path, *, date_sec: int, vm_clock_nsec: int,
                          vm_state_size: int) -> None:
    """Give the first snapshot a date, a guest clock and a VM state size (qemu-img snapshot -c
    leaves the last two 0): snapshot table entry fields as the qcow2 spec lays them out."""
    header = read_header(path)
    table = header["snapshots_offset"]
    # l1_table_offset u64, l1_size u32, id_str_size u16, name_size u16, date_sec u32,
    # date_nsec u32, vm_clock_nsec u64, vm_state_size u32, extra_data_size u32, then extra
    # data: vm_state_size_large u64 (used instead of the 32-bit one when present).
    patch_bytes(path, table + 16, struct.pack(">IIQI", date_sec, 5, vm_clock_nsec,
                                              vm_state_size))
    patch_u64(path, table + 40, vm_state_size)


def _info_lines_equal(path: Path, tz: str, *extra: str) -> None:
    env = {"TZ": tz}
    qemu = qemu_img("info", *extra, str(path), env=env)
    ours = run("qcow2-analyze", "info", *extra, str(path), env=env)
    assert qemu.returncode == 0, qemu.stderr
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout.splitlines() == qemu.stdout.splitlines()


def test_info_snapshot_table_equals_qemu_img(tmp_path: Path) -> None:
    base = create(tmp_path / "base.qcow2")
    top = create(tmp_path / "top.qcow2", "64M", "-b", "base.qcow2", "-F", "qcow2")
    for name in ("first", "a snapshot name longer than sixteen", "café-été"):
        subprocess.run(["qemu-img", "snapshot", "-c", name, str(top)], check=True)
    # 1 h 2 min 3.456 s of guest time, 123456789 bytes of VM state, a fixed date.
    _patch_first_snapshot(top, date_sec=1_796_045_533, vm_clock_nsec=3_723_456_789_000,
                          vm_state_size=123_456_789)
    for tz in ("UTC", "Asia/Kolkata", "America/St_Johns"):
        _info_lines_equal(top, tz)
    _info_lines_equal(top, "Europe/Berlin", "--backing-chain")
    ours = run("qcow2-analyze", "info", str(top), env={"TZ": "UTC"}).stdout
    assert "2026-11-30 13:32:13" in ours and "01:02:03.456" in ours and "118 MiB" in ours
    assert base.exists()


def test_info_equals_qemu_img_on_luks_dirty_and_bitmaps(
        tmp_path: Path, corpus_by_name: dict[str, CorpusImage]) -> None:
    # LUKS images of the corpus (made with qemu-img create -o encrypt.format=luks): no line
    # needs the key, so every line is compared.
    for name in ("luks", "luks-cs-4096"):
        _info_lines_equal(corpus_by_name[name].path, "UTC")
    dirty = create(tmp_path / "dirty.qcow2")
    patch_bytes(dirty, 79, b"\x01")  # incompatible feature bit 0: dirty
    _info_lines_equal(dirty, "UTC")
    bitmaps = create(tmp_path / "bitmaps.qcow2")
    for name in ("b0", "b1"):
        subprocess.run(["qemu-img", "bitmap", "--add", "-g", "128K", str(bitmaps), name],
                       check=True)
    subprocess.run(["qemu-img", "bitmap", "--disable", str(bitmaps), "b1"], check=True)
    _info_lines_equal(bitmaps, "UTC")


def test_info_equals_qemu_img_on_the_corpus(corpus: list[CorpusImage]) -> None:
    compared = 0
    for image in corpus:
        qemu = qemu_img("info", *image.info_args)
        if qemu.returncode != 0:
            continue
        ours = run("qcow2-analyze", "info", str(image.path))
        assert ours.stdout.splitlines() == qemu.stdout.splitlines(), image.name
        compared += 1
    assert compared >= 10


# -- usage table -----------------------------------------------------------------------------
def test_usage_is_an_aligned_table(tmp_path: Path) -> None:
    base = create(tmp_path / "base.qcow2")
    top = create(tmp_path / "top.qcow2", "64M", "-b", "base.qcow2", "-F", "qcow2")
    proc = run("qcow2-analyze", "usage", str(top), str(tmp_path / "missing.qcow2"))
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:2] == ["IMAGE", "END"]
    assert len(lines) == 4
    # The figures' columns end at the same place on every line.
    used_end = lines[0].index("USED") + len("USED")
    for line in lines[1:]:
        assert line[used_end - 1] != " ", line
    assert lines[2].lstrip().startswith("└ base.qcow2")
    assert lines[3].startswith(str(tmp_path / "missing.qcow2")) and lines[3].endswith("error")
    # The error is said once, on stderr, with the path once.
    assert proc.stderr.count("missing.qcow2") == 1 and "missing.qcow2" not in \
        proc.stdout.replace(lines[3], "")
    assert "No such file" not in proc.stdout
    assert base.exists()


def test_usage_lists_each_image_once(tmp_path: Path) -> None:
    """usage runs the adapters' collect(): a base shared by two overlays, or also named as a
    target, is listed once, where it was first met; a target already listed as a layer is not
    listed again (its figures stay the layer's)."""
    base = create(tmp_path / "base.qcow2")
    one = create(tmp_path / "one.qcow2", "64M", "-b", "base.qcow2", "-F", "qcow2")
    two = create(tmp_path / "two.qcow2", "64M", "-b", "base.qcow2", "-F", "qcow2")

    def listed(*targets: Path) -> list[tuple[str, list[str]]]:
        proc = run("qcow2-analyze", "usage", "--no-live", "--output", "json",
                   *map(str, targets))
        assert proc.returncode == 0, proc.stderr
        return [(entry["filename"], [layer["filename"] for layer in entry["backing_chain"]])
                for entry in json.loads(proc.stdout)]

    assert listed(one, two, base) == [(str(one), [str(base)]), (str(two), [])]
    assert listed(base, one) == [(str(base), []), (str(one), [])]
    table = run("qcow2-analyze", "usage", "--no-live", str(tmp_path)).stdout.splitlines()
    assert [line.split()[0] for line in table[1:]] == [str(base), str(one), str(two)]


# -- one formatter ---------------------------------------------------------------------------
def test_human_size_is_qemus(tmp_path: Path) -> None:
    # qemu-img info prints the virtual size through size_to_str(): compare on sizes around
    # every unit switch (qemu switches at 1000 of a unit, not 1024).
    for size in (512, 1000 * 512, 1023 * 1024, 1024 * 1024, 999 * 1024 * 1024 + 512,
                 1000 * 1024 * 1024, 1536 * 1024 * 1024, 10 * 1024**3 + 512, 1000 * 1024**4):
        path = create(tmp_path / "s.qcow2", str(size))
        line = qemu_img("info", str(path)).stdout.splitlines()[2]
        assert line == f"virtual size: {human_size(size)} ({size} bytes)"
        path.unlink()


def test_percent_and_plural_rules() -> None:
    assert percent_number(80.0) == "80"
    assert percent_number(80.126) == "80.13"
    assert percent_number(0.000641) == "0.00064"  # two significant digits below 1 %
    assert ratio_percent(0.5) == "50%"
    assert counted(1, "corruption") == "1 corruption"
    assert counted(2, "corruption") == "2 corruptions"
    assert counted(1, "leaked cluster") == "1 leaked cluster"


def test_no_plural_placeholders_in_the_sources() -> None:
    """Plurals come from counted() (collectors/common/units.py): no "(s)" in any message of the
    core or the command line, and findings count their nouns with it too."""
    from qcow2_monitor.collectors.check.findings import finding

    for path in sources("analyze", "cli", "collectors"):
        assert "(s)" not in path.read_text(), path
    one, three = (finding("refcount-overflow", "cluster 1", host_offset=0x10000, excess=n,
                          found=15, refcount_bits=4).message for n in (1, 3))
    assert "1 reference beyond" in one and "3 references beyond" in three


# -- JSON errors and layer statuses ----------------------------------------------------------
ERROR_KEYS = {"kind", "structure", "offset", "value", "message", "filename"}


def _orphan(tmp_path: Path) -> Path:
    """An image whose backing file does not exist."""
    return create(tmp_path / "orphan.qcow2", "16M", "-u", "-b", "gone.qcow2", "-F", "qcow2")


def test_missing_backing_layer_fails_info_and_check(tmp_path: Path) -> None:
    orphan = _orphan(tmp_path)
    gone = str(tmp_path / "gone.qcow2")
    qemu = qemu_img("info", "--backing-chain", str(orphan))
    assert qemu.returncode == 1 and "gone.qcow2" in qemu.stderr  # what we compare with
    for argv in (["info", "--backing-chain"], ["check", "--chain"]):
        human = run("qcow2-analyze", *argv, str(orphan))
        assert human.returncode == 1, argv
        assert human.stderr.count("\n") == 1 and human.stderr.count(gone) == 1, human.stderr
        assert "not found" not in human.stdout
        data = json.loads(run("qcow2-analyze", *argv, "--output", "json", str(orphan)).stdout)
        assert [entry.get("status", "ok") for entry in data] == ["ok", "missing"]
        assert data[0]["filename"] == str(orphan)
        assert data[1]["filename"] == gone and data[1]["depth"] == 1
        assert set(data[1]["error"]) == ERROR_KEYS
        assert data[1]["error"]["kind"] == "io-error" and data[1]["error"]["filename"] == gone
    # Without the chain options the top image alone is reported, as by qemu-img info.
    assert run("qcow2-analyze", "info", str(orphan)).returncode == 0
    assert qemu_img("info", str(orphan)).returncode == 0


def test_raw_base_layer_shown_as_qemu_img_shows_it(tmp_path: Path) -> None:
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(tmp_path / "raw.img"), "10M"],
                   check=True)
    top = create(tmp_path / "top.qcow2", "10M", "-b", "raw.img", "-F", "raw")
    _info_lines_equal(top, "UTC", "--backing-chain")
    ours = json.loads(run("qcow2-analyze", "info", "--backing-chain", "--output", "json",
                          str(top)).stdout)
    assert ours == json.loads(qemu_img("info", "--backing-chain", "--output=json",
                                       str(top)).stdout)


def test_errors_have_one_json_shape(tmp_path: Path) -> None:
    orphan = _orphan(tmp_path)
    not_qcow2 = tmp_path / "text.qcow2"
    not_qcow2.write_text("not an image\n" * 100)
    usage = json.loads(run("qcow2-analyze", "usage", "--output", "json", str(orphan),
                           str(not_qcow2)).stdout)
    # The top image says its chain is broken (qemu cannot open it), the layer why.
    assert [entry["status"] for entry in usage] == ["backing-missing", "error"]
    assert usage[0]["backing_chain"][0]["status"] == "missing"
    assert set(usage[0]["backing_chain"][0]["error"]) == ERROR_KEYS
    assert set(usage[1]["error"]) == ERROR_KEYS and usage[1]["error"]["kind"] == "not-qcow2"
    assert usage[1]["error"]["filename"] == str(not_qcow2)
    check = json.loads(run("qcow2-analyze", "check", "--chain", "--output", "json",
                           str(not_qcow2)).stdout)
    assert check == [{"filename": str(not_qcow2), "depth": 0, "status": "error",
                      "error": usage[1]["error"]}]


def test_every_command_prints_the_one_error_document(tmp_path: Path) -> None:
    """A target that fails: with --output json, the same error document on stdout in every
    command (a list entry with its depth in chain modes), the line once on stderr."""
    short = tmp_path / "s80.qcow2"
    short.write_bytes(create(tmp_path / "full.qcow2").read_bytes()[:80])
    usage = run("qcow2-analyze", "usage", "--output", "json", str(short))
    assert usage.returncode == 1
    [expected] = json.loads(usage.stdout)
    assert expected["status"] == "error" and set(expected["error"]) == ERROR_KEYS
    assert expected["filename"] == expected["error"]["filename"] == str(short)
    for argv in (["info"], ["header"], ["check"], ["measure"], ["dump", "--what", "l1"],
                 ["info", "--backing-chain"], ["check", "--chain"]):
        proc = run("qcow2-analyze", *argv, "--output", "json", str(short))
        assert proc.returncode == 1, argv
        assert proc.stderr.count("\n") == 1 and str(short) in proc.stderr, (argv, proc.stderr)
        document = json.loads(proc.stdout)
        if argv[-1] in ("--backing-chain", "--chain"):
            [document] = document
            assert document.pop("depth") == 0
        assert document == expected, argv
        human = run("qcow2-analyze", *argv, str(short))
        assert human.returncode == 1 and human.stdout.count(str(short)) <= 1
        assert human.stderr == proc.stderr


def test_an_error_states_its_value_once(tmp_path: Path) -> None:
    from qcow2_monitor.collectors.common.errors import Qcow2Error

    image = create(tmp_path / "r.qcow2")
    table = read_header(image)["refcount_table_offset"]
    block = int.from_bytes(image.read_bytes()[table:table + 8], "big")
    patch_bytes(image, table, (block + 0x200).to_bytes(8, "big"))
    proc = run("qcow2-analyze", "usage", str(image))
    assert proc.returncode == 1
    # The line the README shows, with this image's figures.
    assert proc.stderr == (f"qcow2-analyze: {image}: refcount table at offset 0x{table:x}: "
                           f"refcount block offset 0x{block + 0x200:x} not cluster aligned "
                           "(refcount table index 0)\n")
    readme = (REPO / "README.md").read_text()
    assert re.sub(r"\s+", " ", proc.stderr.replace(str(image), "img.qcow2").strip()) in \
        re.sub(r"\s+", " ", readme.replace("`", " ")), "README example differs"
    said = Qcow2Error("l1_size 7 is too large", structure="header", value=7)
    assert str(said) == "header: l1_size 7 is too large"
    unsaid = Qcow2Error("table at 0x70000 is odd", structure="header", value=7)
    assert str(unsaid) == "header: table at 0x70000 is odd (value 0x7)"
    assert str(Qcow2Error("bad name", structure="x", value="ab")) == "x: bad name (value 'ab')"


@pytest.mark.parametrize("argv", [["check", "--max-findings", "-1"],
                                  ["check", "--max-findings=-1"], ["dump", "--what", "l1",
                                                                   "--limit", "-5"]])
def test_negative_counts_are_refused(tmp_path: Path, argv: list[str]) -> None:
    image = create(tmp_path / "a.qcow2")
    proc = run("qcow2-analyze", *argv, str(image))
    assert proc.returncode == 64 and "invalid count" in proc.stderr and proc.stdout == ""


# -- past EOF reads as zeros, as qemu's file driver reads it ---------------------------------
def _truncated(src: Path, dst: Path, length: int) -> Path:
    dst.write_bytes(src.read_bytes()[:length])
    return dst


def test_files_shorter_than_their_metadata_read_as_qemu_reads_them(tmp_path: Path) -> None:
    v2 = create(tmp_path / "v2.qcow2", "16M", "-o", "compat=0.10")
    # No backing file: a backing name cut off reads as NULs, the names-with-NUL rules' case.
    v3 = create(tmp_path / "v3.qcow2", "16M")
    subprocess.run(["qemu-img", "snapshot", "-c", "s1", str(v3)], check=True)
    snapshots_offset = read_header(v3)["snapshots_offset"]
    agreed_ok = damage_found = 0
    cuts = [48, 72, 104, 200, 4096]
    # The v3 image also cut inside its snapshot table (the table then runs past EOF).
    for src, lengths in ((v2, cuts), (v3, [*cuts, snapshots_offset + 8, snapshots_offset + 40])):
        for length in lengths:
            image = _truncated(src, tmp_path / f"cut-{src.stem}-{length}.qcow2", length)
            qemu = qemu_img("info", "-f", "qcow2", str(image), env={"TZ": "UTC"})
            ours = run("qcow2-analyze", "info", str(image), env={"TZ": "UTC"})
            assert ours.returncode == qemu.returncode, (image.name, qemu.stderr, ours.stderr)
            assert "Traceback" not in ours.stderr
            if qemu.returncode:
                assert ours.stderr.count("\n") == 1 and str(image) in ours.stderr
                continue
            agreed_ok += 1
            assert ours.stdout.splitlines() == qemu.stdout.splitlines(), image.name
            for argv in (["header"], ["-f"]):
                proc = run("qcow2-analyze", *argv, str(image))
                assert proc.returncode == 0, (argv, image.name, proc.stderr)
            qemu_check = qemu_img("check", "-f", "qcow2", str(image))
            ours_check = run("qcow2-analyze", "check", str(image))
            assert ours_check.returncode == qemu_check.returncode, image.name
            damage_found += ours_check.returncode != 0
    assert agreed_ok >= 6
    assert damage_found >= 3  # what info reads as zeros, check reports as damage


# -- findings located precisely --------------------------------------------------------------
def test_one_flipped_l2_byte_is_located_at_its_entry(tmp_path: Path) -> None:
    image = create(tmp_path / "flip.qcow2", "64M")
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0xaa 0 1M", str(image)],
                   check=True, capture_output=True)
    header = read_header(image)
    cluster_size = 1 << header["cluster_bits"]
    l2_table = read_u64(image, header["l1_table_offset"]) & 0x00FFFFFFFFFFFE00
    # Entry 3 maps guest offset 3 * cluster_size; point it at entry 4's cluster: that cluster
    # is referenced twice (a corruption), and entry 3's own cluster by nothing (a leak).
    entry3 = read_u64(image, l2_table + 3 * 8)
    entry4 = read_u64(image, l2_table + 4 * 8)
    patch_bytes(image, l2_table + 3 * 8, entry4.to_bytes(8, "big"))
    assert bin(entry3 ^ entry4).count("1") >= 1
    old_cluster = (entry3 & 0x00FFFFFFFFFFFE00) // cluster_size
    new_cluster = (entry4 & 0x00FFFFFFFFFFFE00) // cluster_size
    refblock = read_u64(image, header["refcount_table_offset"]) & ~0x1FF
    entries_per_block = cluster_size * 8 // (1 << header["refcount_order"])

    proc = run("qcow2-analyze", "check", "--output", "json", str(image))
    assert proc.returncode == qemu_img("check", str(image)).returncode == 2
    findings = {f["kind"]: f for f in json.loads(proc.stdout)["findings"]}
    assert findings["refcount-too-low"]["location"] == (
        f"L2 table at 0x{l2_table:x} entry 3 (L1[0], guest offset 0x{3 * cluster_size:x}); "
        f"L2 table at 0x{l2_table:x} entry 4 (L1[0], guest offset 0x{4 * cluster_size:x})")
    assert findings["refcount-too-low"]["cluster-index"] == new_cluster
    assert findings["leak"]["location"] == (
        f"refcount block at 0x{refblock:x} entry {old_cluster % entries_per_block} "
        f"(cluster {old_cluster} at 0x{old_cluster * cluster_size:x})")
    # The same, structured.
    assert findings["refcount-too-low"]["places"] == [
        {"table": "l2", "table-offset": l2_table, "entry": j, "l1-index": 0,
         "guest-offset": j * cluster_size} for j in (3, 4)]
    assert findings["leak"]["places"] == [
        {"table": "refcount-block", "table-offset": refblock,
         "entry": old_cluster % entries_per_block,
         "refcount-table-offset": header["refcount_table_offset"]}]


def _qemu_refcount_errors(image: Path) -> dict[int, tuple[int, int]]:
    """qemu-img check's "ERROR cluster N refcount=R reference=K" lines: N -> (R, K)."""
    proc = qemu_img("check", str(image))
    return {int(m[1]): (int(m[2]), int(m[3])) for m in re.finditer(
        r"ERROR cluster (\d+) refcount=(\d+) reference=(\d+)", proc.stdout + proc.stderr)}


def test_every_entry_referencing_a_cluster_is_located(tmp_path: Path) -> None:
    """One L2 entry made unaligned (+0x200): qemu counts a cluster from that offset, so the
    next cluster gets one reference more than its refcount. Every referencing entry is
    named, as many as qemu's reference count, each read back from the file."""
    image = create(tmp_path / "snap.qcow2", "64M")
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0xaa 0 256k", str(image)],
                   check=True, capture_output=True)
    subprocess.run(["qemu-img", "snapshot", "-c", "s1", str(image)], check=True)
    # A write after the snapshot copies the active L2 table: active and snapshot then
    # reference the unchanged data clusters from two tables.
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0xbb 0 4k", str(image)],
                   check=True, capture_output=True)
    header = read_header(image)
    cluster_size = 1 << header["cluster_bits"]
    l2_entries = cluster_size // 8
    l2_table = read_u64(image, header["l1_table_offset"]) & 0x00FFFFFFFFFFFE00
    entry1 = read_u64(image, l2_table + 8)
    patch_bytes(image, l2_table + 8, (entry1 + 0x200).to_bytes(8, "big"))
    qemu = _qemu_refcount_errors(image)
    assert qemu, "qemu-img check found no refcount error"
    proc = run("qcow2-analyze", "check", "--output", "json", str(image))
    assert proc.returncode == 2
    ours = {f["cluster-index"]: f for f in json.loads(proc.stdout)["findings"]
            if f["kind"] == "refcount-too-low"}
    assert set(ours) == set(qemu)
    snapshots = set()
    for cluster, (refcount, references) in qemu.items():
        finding = ours[cluster]
        assert (finding["found"], finding["expected"]) == (refcount, references)
        places = finding["places"]
        assert len(places) == references == len(finding["location"].split("; "))
        for place in places:
            assert place["table"] == "l2"
            host = read_u64(image, place["table-offset"] + 8 * place["entry"]) \
                & 0x00FFFFFFFFFFFE00
            assert cluster in (host // cluster_size, (host + cluster_size - 1) // cluster_size)
            assert place["guest-offset"] == (place["l1-index"] * l2_entries
                                             + place["entry"]) * cluster_size
            snapshots.add(place.get("snapshot"))
    assert snapshots == {None, "1"}  # the active table's entries and the snapshot's


def test_refcount_table_findings_give_the_tables_offset(tmp_path: Path) -> None:
    image = create(tmp_path / "r.qcow2")
    table = read_header(image)["refcount_table_offset"]
    block = read_u64(image, table)
    patch_bytes(image, table, (block + 0x200).to_bytes(8, "big"))
    proc = run("qcow2-analyze", "check", "--output", "json", str(image))
    assert proc.returncode == qemu_img("check", str(image)).returncode
    findings = {f["kind"]: f for f in json.loads(proc.stdout)["findings"]}
    assert findings["unaligned-refcount-block"]["places"] == [
        {"table": "refcount-table", "table-offset": table, "entry": 0,
         "refcount-table-offset": table}]


def test_snapshot_entries_are_named_in_locations(tmp_path: Path) -> None:
    image = create(tmp_path / "snap.qcow2", "64M")
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0xaa 0 256k", str(image)],
                   check=True, capture_output=True)
    subprocess.run(["qemu-img", "snapshot", "-c", "s1", str(image)], check=True)
    header = read_header(image)
    cluster_size = 1 << header["cluster_bits"]
    l2_table = read_u64(image, header["l1_table_offset"]) & 0x00FFFFFFFFFFFE00
    # Active and snapshot share the L2 table and its data (refcount 2). Unhook the active L1
    # entry: each of those clusters is then referenced once, by snapshot 1 only (leaks).
    patch_bytes(image, header["l1_table_offset"], bytes(8))
    proc = run("qcow2-analyze", "check", "--output", "json", str(image))
    assert proc.returncode == qemu_img("check", str(image)).returncode == 3
    findings = json.loads(proc.stdout)["findings"]
    locations = {f["location"] for f in findings}
    assert "snapshot 1: L1[0] (L2 table)" in locations
    [l1_entry] = [f for f in findings if f["location"] == "snapshot 1: L1[0] (L2 table)"]
    [snapshot] = json.loads(qemu_img("info", "--output=json", str(image)).stdout)["snapshots"]
    assert l1_entry["places"] == [{"table": "l1", "table-offset": _snapshot_l1(image),
                                   "entry": 0, "l1-index": 0, "guest-offset": 0,
                                   "snapshot": snapshot["id"]}]
    for j in range(256 * 1024 // cluster_size):
        assert (f"snapshot 1: L2 table at 0x{l2_table:x} entry {j} "
                f"(L1[0], guest offset 0x{j * cluster_size:x})") in locations


def _snapshot_l1(image: Path) -> int:
    """The first snapshot table entry's l1_table_offset (its first field)."""
    return read_u64(image, read_header(image)["snapshots_offset"])


def test_one_finding_line_never_repeats_its_kind() -> None:
    from qcow2_monitor.cli.text import finding_text
    from qcow2_monitor.collectors.report.model import Finding

    leak = Finding("leak", "leak", "Leaked cluster 10 refcount=1 reference=0", "cluster 10")
    assert finding_text(leak) == "leak at cluster 10: Leaked cluster 10 refcount=1 reference=0"
    low = Finding("refcount-too-low", "corruption", "ERROR cluster 9", "L2 table at 0x0 entry 1")
    assert finding_text(low).startswith("corruption (refcount-too-low) at L2 table")


@pytest.mark.parametrize("argv", [["info"], ["header"], ["check"], ["measure"],
                                  ["dump", "--what", "l1"], ["usage"], ["-f"],
                                  ["info", "--backing-chain"], ["check", "--chain"]])
def test_an_error_is_said_once_on_stderr_naming_the_file_once(tmp_path: Path,
                                                              argv: list[str]) -> None:
    image = tmp_path / "short.qcow2"
    image.write_bytes(create(tmp_path / "full.qcow2").read_bytes()[:48])
    for target in (image, tmp_path / "missing.qcow2"):
        proc = run("qcow2-analyze", *argv, str(target))
        assert proc.returncode == 1
        assert proc.stderr.count("\n") == 1 and proc.stderr.count(str(target)) == 1, proc.stderr
        assert "Traceback" not in proc.stderr
        # stdout carries no error text (a table row or chain heading may name the file).
        assert "No such file" not in proc.stdout and "header_length" not in proc.stdout


def test_readme_names_every_usage_column_and_what_used_is() -> None:
    """The README's list of `usage` columns is the table's (FROM was missing), and says that
    USED is the container's use, the same on every image of a filesystem."""
    from qcow2_monitor.analyze.usage import USAGE_COLUMNS

    readme = " ".join((REPO / "README.md").read_text().split())
    assert f"({', '.join(USAGE_COLUMNS)})" in readme
    assert "USED is the container's use, not the image's" in readme
    assert "the same on every image of that filesystem" in readme
    # And so does `usage --help`.
    text = " ".join(run("qcow2-analyze", "usage", "--help").stdout.split())
    assert "USED is the container's use" in text and "the same for every image on it" in text
    assert "FROM says which" in text


def test_no_chain_help_says_layers_are_still_opened(tmp_path: Path) -> None:
    text = " ".join(run("qcow2-analyze", "usage", "--help").stdout.split())
    assert "do not analyse backing layers" not in text
    assert "every layer is still opened" in text
    # And so it is: a missing base still shows and exits 1 with --no-chain.
    orphan = create(tmp_path / "orphan.qcow2", "16M", "-u", "-b", "gone.qcow2", "-F", "qcow2")
    proc = run("qcow2-analyze", "usage", "--no-live", "--no-chain", str(orphan))
    assert proc.returncode == 1 and "missing" in proc.stdout, proc.stdout


def test_readme_install_says_what_the_agents_need() -> None:
    """python3-venv (Debian's python3 has no venv without it) and an interpreter the agent's
    user may execute (a venv made by an interpreter under /root is not)."""
    readme = (REPO / "README.md").read_text()
    install = readme.split("### Installing on a KVM host", 1)[1].split("\n## ", 1)[0]
    assert "apt-get install python3-venv" in install
    assert "/usr/bin/python3 -m venv /opt/qcow2-monitor" in install
    assert "runuser -u nagios -- /opt/qcow2-monitor/bin/check_qcow2 --version" in install
    assert "must be able to execute the venv's interpreter" in " ".join(install.split())


def test_a_libvirt_named_on_the_command_line_that_fails_is_said_by_every_adapter(
        tmp_path: Path) -> None:
    """--libvirt-uri given by name and not answering: qcow2-analyze usage said why, the three
    adapters said nothing (a mistyped URI silently lost every live figure). Each says it where
    its notes go; the default URI's failure stays unsaid (hosts without libvirt)."""
    image = make_image(tmp_path / "n.qcow2", "16M")
    uri = f"qemu+unix:///system?socket={tmp_path}/no-such-socket"
    why = f"libvirt: {uri}: failed to connect to the hypervisor"
    runs = {"check_qcow2": [], "qcow2-telegraf": [], "qcow2-textfile": ["--output", "-"]}
    for command, extra in runs.items():
        proc = subprocess.run([BIN / command, "--no-state", "--libvirt-uri", uri, *extra,
                               str(image)], capture_output=True, text=True, timeout=60)
        said = proc.stdout if command == "check_qcow2" else proc.stderr
        assert why in said, (command, proc.stdout, proc.stderr)
        assert proc.returncode == 0, (command, proc.stderr)


@pytest.mark.parametrize("argv", [["qcow2-analyze", "usage"], ["qcow2-telegraf"],
                                  ["qcow2-textfile", "--output", "-"]])
def test_an_empty_target_is_a_bad_command_line(tmp_path: Path, argv: list[str]) -> None:
    """An empty name (an unset variable in an agent's configuration) was the working
    directory, scanned recursively: from / a run read every file's first bytes."""
    (tmp_path / "a.qcow2").write_bytes(b"QFI\xfb" + bytes(100))  # found if the cwd is scanned
    proc = subprocess.run([BIN / argv[0], *argv[1:], "--no-live", ""], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 64 and proc.stdout == "", proc.stdout
    assert "argument TARGET: an empty name is no target (an unset variable?)" in proc.stderr
