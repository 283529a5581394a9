"""Target selection: files, devices, globs, directories, de-duplication, running qemu images."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import psutil
import pytest

from qcow2_monitor.collectors.common.errors import IO_ERROR
from qcow2_monitor.collectors.host.discovery import (
    QCOW2_MAGIC,
    Target,
    expand_targets,
    scan_running,
)

from conftest import LoopAttach
from daemons import holding_open, make_image, require_binary


def running_images() -> list[str]:
    return scan_running().paths


def _paths(targets: list[Target]) -> list[str | None]:
    return [t.path for t in targets]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """images/{a.qcow2, sub/b.qcow2, sub/deeper/c.img (qcow2 by magic), notes.txt, raw.img}"""
    root = tmp_path / "images"
    (root / "sub" / "deeper").mkdir(parents=True)
    make_image(root / "a.qcow2", "16M")
    make_image(root / "sub" / "b.qcow2", "16M")
    make_image(root / "sub" / "deeper" / "c.img", "16M")
    (root / "notes.txt").write_text("QFI but not the magic\n")
    (root / "raw.img").write_bytes(b"\0" * 4096)
    (root / "short").write_bytes(QCOW2_MAGIC[:2])
    return root


def test_regular_file_is_taken_as_given_without_magic_check(tmp_path: Path) -> None:
    raw = tmp_path / "raw.img"
    raw.write_bytes(b"\0" * 512)
    # The core decides "not qcow2" with the offset; discovery passes named files through.
    assert expand_targets([str(raw)]) == [Target(str(raw), str(raw))]


def test_relative_paths_become_absolute(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tree)
    assert expand_targets(["a.qcow2"]) == [Target("a.qcow2", str(tree / "a.qcow2"))]


def test_directory_is_searched_recursively_by_magic(tree: Path) -> None:
    targets = expand_targets([str(tree)])
    assert _paths(targets) == [
        str(tree / "a.qcow2"),
        str(tree / "sub" / "b.qcow2"),
        str(tree / "sub" / "deeper" / "c.img"),
    ]
    assert all(t.spec == str(tree) and t.error is None for t in targets)


def test_directory_scan_never_opens_a_fifo(tree: Path) -> None:
    os.mkfifo(tree / "pipe")
    result: list[list[Target]] = []
    worker = threading.Thread(target=lambda: result.append(expand_targets([str(tree)])))
    worker.daemon = True
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "directory scan blocked opening a FIFO"
    assert len(result[0]) == 3


def test_directory_scan_follows_file_symlinks_and_dedupes(tree: Path) -> None:
    (tree / "link.qcow2").symlink_to(tree / "sub" / "b.qcow2")
    (tree / "dangling.qcow2").symlink_to(tree / "gone")
    assert _paths(expand_targets([str(tree)])) == [
        str(tree / "a.qcow2"),
        str(tree / "link.qcow2"),  # sorted first; b.qcow2 is the same file and is dropped
        str(tree / "sub" / "deeper" / "c.img"),
    ]


def test_empty_directory_is_a_failed_target(tmp_path: Path) -> None:
    """Nothing found is a finding: an empty directory is reported like a pattern matching
    nothing, so that no adapter shows an empty run as all well (README "Targets")."""
    (tmp_path / "empty" / "sub").mkdir(parents=True)  # subdirectories hold no file either
    spec = str(tmp_path / "empty")
    [target] = expand_targets([spec])
    assert target.spec == spec and target.path is None
    assert target.error is not None and target.error.kind == IO_ERROR
    assert str(target.error) == f"{spec}: target: no file in this directory or below"


def test_directory_without_qcow2_image_is_a_failed_target(tree: Path) -> None:
    for image in ("a.qcow2", "sub/b.qcow2", "sub/deeper/c.img"):
        (tree / image).unlink()
    os.mkfifo(tree / "pipe")  # a file too, never opened
    [target] = expand_targets([str(tree)])
    assert target.path is None and target.error is not None
    assert str(target.error) == (f"{tree}: target: no qcow2 image among the 4 files in this "
                                 "directory or below")  # notes.txt, pipe, raw.img, short


def test_one_empty_target_fails_alone(tree: Path, tmp_path: Path) -> None:
    """The rule is per target: the images of the other targets are still taken, and an empty
    directory a pattern matches is the pattern's business (it selected images)."""
    (tmp_path / "empty").mkdir()
    targets = expand_targets([str(tmp_path / "empty"), str(tree / "a.qcow2"),
                              str(tmp_path / "[ei]*")])
    # The pattern matches empty/ (nothing in it) and images/ (a.qcow2, already taken, is
    # dropped as a duplicate): no failed target for it.
    assert _paths(targets) == [None, str(tree / "a.qcow2"), str(tree / "sub" / "b.qcow2"),
                               str(tree / "sub" / "deeper" / "c.img")]
    assert targets[0].spec == str(tmp_path / "empty")


def test_glob(tree: Path) -> None:
    targets = expand_targets([str(tree / "*.qcow2"), str(tree / "sub" / "*")])
    assert _paths(targets) == [
        str(tree / "a.qcow2"),
        str(tree / "sub" / "b.qcow2"),
        str(tree / "sub" / "deeper" / "c.img"),  # the directory match is searched
    ]


def test_glob_takes_only_qcow2_images_among_its_matches(tree: Path) -> None:
    """Like a directory scan: raw.img, notes.txt and short are matched but are no images."""
    targets = expand_targets([str(tree / "*")])
    assert _paths(targets) == [
        str(tree / "a.qcow2"),
        str(tree / "sub" / "b.qcow2"),
        str(tree / "sub" / "deeper" / "c.img"),
    ]
    assert all(t.error is None for t in targets)
    # Named one by one, a file that is no qcow2 stays a target: the core says why it fails.
    assert expand_targets([str(tree / "raw.img")]) == [
        Target(str(tree / "raw.img"), str(tree / "raw.img"))]


def test_glob_selecting_no_image_is_a_failed_target(tree: Path) -> None:
    spec = str(tree / "*.txt")
    [target] = expand_targets([spec])
    assert target.path is None and target.error is not None
    assert "no qcow2 image among the 1 path matching this pattern" in str(target.error)


def test_glob_matching_nothing_is_a_failed_target(tree: Path) -> None:
    spec = str(tree / "*.vmdk")
    targets = expand_targets([spec, str(tree / "a.qcow2")])
    assert targets[0].path is None and targets[0].spec == spec
    assert targets[0].error is not None and targets[0].error.kind == IO_ERROR
    assert "no file matches" in str(targets[0].error)
    assert targets[1].path == str(tree / "a.qcow2")


def test_literal_name_with_glob_characters_wins(tmp_path: Path) -> None:
    odd = make_image(tmp_path / "disk[1]*.qcow2", "16M")
    make_image(tmp_path / "disk1x.qcow2", "16M")  # what the pattern would match
    assert _paths(expand_targets([str(odd)])) == [str(odd)]


def test_missing_and_special_files_fail(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    targets = expand_targets([str(tmp_path / "missing.qcow2"), str(tmp_path / "fifo")])
    assert _paths(targets) == [None, None]
    assert "No such file" in str(targets[0].error)
    assert "not a regular file" in str(targets[1].error)


def test_dedupe_keeps_first_by_realpath(tree: Path) -> None:
    link = tree.parent / "alias.qcow2"
    link.symlink_to(tree / "a.qcow2")
    targets = expand_targets([str(link), str(tree), str(tree / "a.qcow2"), str(link)])
    assert _paths(targets) == [
        str(link),
        str(tree / "sub" / "b.qcow2"),
        str(tree / "sub" / "deeper" / "c.img"),
    ]


def test_directory_scan_does_not_update_atime(tree: Path) -> None:
    """O_NOATIME: relatime would update an atime older than the mtime on a plain read."""
    image = tree / "a.qcow2"
    stat = image.stat()
    old_atime = stat.st_mtime_ns - 3600 * 10**9
    os.utime(image, ns=(old_atime, stat.st_mtime_ns))
    expand_targets([str(tree)])
    assert image.stat().st_atime_ns == old_atime
    # Control: a plain read does update it here, so the assertion above can fail.
    with image.open("rb") as handle:
        handle.read(4)
    assert image.stat().st_atime_ns != old_atime


@contextlib.contextmanager
def _loop_device(backing: Path) -> Iterator[str]:
    losetup = require_binary("losetup")
    proc = subprocess.run(
        [losetup, "--find", "--show", str(backing)], capture_output=True, text=True, timeout=30
    )
    if proc.returncode != 0:
        pytest.fail(f"losetup failed (the tests need root and loop devices): {proc.stderr}")
    device = proc.stdout.strip()
    try:
        yield device
    finally:
        subprocess.run([losetup, "--detach", device], capture_output=True, timeout=30)


def test_block_device_target_and_running_block_image(tmp_path: Path) -> None:
    image = make_image(tmp_path / "blk.qcow2", "16M")
    # Pad to whole sectors so the loop device covers the whole image.
    with image.open("r+b") as handle:
        handle.truncate((image.stat().st_size + 511) // 512 * 512)
    with _loop_device(image) as device:
        assert expand_targets([device]) == [Target(device, device)]
        assert device not in running_images()
        with holding_open(Path(device)):
            assert device in running_images()


def test_running_images_include_backing_layers(tmp_path: Path) -> None:
    base = make_image(tmp_path / "base image.qcow2", "16M")
    top = make_image(tmp_path / "top.qcow2", backing=base)
    other = make_image(tmp_path / "idle.qcow2", "16M")
    assert str(top) not in running_images()
    log = tmp_path / "qemu-io.log"
    with holding_open(top, log=log) as proc:
        found = running_images()
        assert str(top) in found and str(base) in found
        assert str(other) not in found
        assert found == sorted(found)
        # qemu-io also holds its log, a regular file that is no image: filtered by magic.
        held = [f.path for f in psutil.Process(proc.pid).open_files()]
        assert str(log) in held
        assert str(log) not in found
    assert str(top) not in running_images()


def test_running_images_ignore_processes_merely_mentioning_qemu(tmp_path: Path) -> None:
    image = make_image(tmp_path / "qemu-named.qcow2", "16M")
    # A non-qemu process holding a qcow2 image open, with "qemu" in its arguments only.
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; f = open(sys.argv[1], 'rb'); print(flush=True); time.sleep(30)",
         str(image)],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        holder.stdout.readline()  # the image is open once this line arrives
        assert str(image) not in running_images()
    finally:
        holder.kill()
        holder.wait(timeout=10)


# --- a volume group's directory: symlinks to block devices ------------------------------------


def _padded_image(path: Path) -> Path:
    """A qcow2 image in a sparse 1 GiB file, as in a 1 GiB logical volume: a loop device
    covers all of it, with headroom above the default watermark (512 MiB)."""
    image = make_image(path, "16M")
    with image.open("r+b") as handle:
        handle.truncate(1 << 30)
    return image


def _unused_block_major() -> int:
    """A block major number no driver has registered: opening such a node fails (ENXIO)."""
    text = Path("/proc/devices").read_text()
    used = {int(line.split()[0]) for line in text.split("Block devices:")[1].splitlines()
            if line.strip()}
    return next(major for major in range(60, 64) if major not in used)  # local/experimental


@pytest.fixture
def volume_group(tmp_path: Path, loop_device: LoopAttach) -> tuple[Path, dict[str, str]]:
    """vg0/ laid out like /dev/VG/: symlinks to block devices (loop devices here), two of them
    qcow2, one raw, one qcow2 device reached by two links and by a device node of its own."""
    root = tmp_path / "dev"
    vg = root / "vg0"
    vg.mkdir(parents=True)
    raw = tmp_path / "raw.img"
    raw.write_bytes(b"\0" * (1 << 20))
    devices = {
        "lv-a": loop_device(_padded_image(tmp_path / "a.qcow2")),
        "lv-b": loop_device(_padded_image(tmp_path / "b.qcow2")),
        "lv-raw": loop_device(raw),
    }
    for name, device in devices.items():
        (vg / name).symlink_to(device)
    (vg / "lv-b-alias").symlink_to(devices["lv-b"])  # the same disk under a second name
    rdev = os.stat(devices["lv-a"]).st_rdev
    os.mknod(root / "node-a", 0o600 | stat.S_IFBLK, rdev)  # and a node of its own
    return vg, devices


def test_directory_of_symlinks_to_block_devices_takes_the_qcow2_ones(
        volume_group: tuple[Path, dict[str, str]]) -> None:
    vg, _ = volume_group
    targets = expand_targets([str(vg)])
    # Sorted, each disk once: lv-b-alias is lv-b; lv-raw has no qcow2 magic.
    assert targets == [Target(str(vg), str(vg / "lv-a")), Target(str(vg), str(vg / "lv-b"))]
    # The same disk through a device node elsewhere is still one disk.
    both = expand_targets([str(vg), str(vg.parent)])
    assert _paths(both) == [str(vg / "lv-a"), str(vg / "lv-b")]


def test_glob_over_block_devices_takes_only_qcow2_ones(
        volume_group: tuple[Path, dict[str, str]]) -> None:
    vg, devices = volume_group
    assert _paths(expand_targets([str(vg / "lv-*")])) == [str(vg / "lv-a"), str(vg / "lv-b")]
    # The devices themselves, as '/dev/loop*' names them: idle and raw ones are no errors.
    targets = expand_targets(["/dev/loop*"])
    found = {t.path for t in targets}
    assert {devices["lv-a"], devices["lv-b"]} <= found and devices["lv-raw"] not in found
    assert [t.spec for t in targets if t.error] == []
    # A device named explicitly is taken as given, qcow2 or not (the core reports not-qcow2).
    assert expand_targets([str(vg / "lv-raw")]) == [
        Target(str(vg / "lv-raw"), str(vg / "lv-raw"))]


def test_block_device_that_cannot_be_opened_is_reported(
        volume_group: tuple[Path, dict[str, str]]) -> None:
    vg, _ = volume_group
    os.mknod(vg / "lv-gone", 0o600 | stat.S_IFBLK, os.makedev(_unused_block_major(), 0))
    targets = expand_targets([str(vg)])
    assert _paths(targets) == [str(vg / "lv-a"), str(vg / "lv-b"), None]
    assert targets[2].error is not None and targets[2].error.kind == IO_ERROR
    assert targets[2].error.filename == str(vg / "lv-gone")
    assert "No such device or address" in str(targets[2].error)
    [by_glob] = [t for t in expand_targets([str(vg / "lv-g*")])]
    assert by_glob.error is not None and by_glob.error.filename == str(vg / "lv-gone")


def test_commands_find_the_images_of_a_volume_group(
        volume_group: tuple[Path, dict[str, str]]) -> None:
    """The operator's first run: qcow2-analyze usage and check_qcow2 on /dev/VG/."""
    vg, _ = volume_group
    usage = subprocess.run(
        [sys.executable, "-m", "qcow2_monitor.analyze", "usage", "--no-live", "--output",
         "json", str(vg)], capture_output=True, text=True, timeout=120)
    assert usage.returncode == 0, usage.stderr[-2000:]
    assert [row["filename"] for row in json.loads(usage.stdout)] == [
        str(vg / "lv-a"), str(vg / "lv-b")]
    nagios = subprocess.run(
        [sys.executable, "-m", "qcow2_monitor.nagios.check_qcow2", "--no-live", "-f", str(vg)],
        capture_output=True, text=True, timeout=120)
    assert nagios.returncode == 0, nagios.stdout[-2000:]
    assert nagios.stdout.startswith("QCOW2 OK - 2 images"), nagios.stdout[-2000:]
