"""collectors/host/container.py: where an image lives and how far it can grow there, against
df, stat and blockdev on a private tmpfs and a loop device."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Callable, Iterator

import pytest

from qcow2_monitor.collectors.host.container import container_of, mount_point
from qcow2_monitor.collectors.qcow2.reader import ImageFile
from qcow2_monitor.collectors.report.model import ContainerKind

from corpus import run
from daemons import make_image

MiB = 1024 * 1024


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A private 16 MiB tmpfs: its figures change only with what the test writes."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)])
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def command_output(*argv: str) -> str:
    return run(list(argv)).stdout.strip()


def written_image(path: Path, written: int) -> Path:
    return make_image(path, "64M", write=[f"write -P 0x11 0 {written}"])


def test_mount_point_of_a_nested_file_and_of_a_link(tmpfs: Path, tmp_path: Path) -> None:
    deep = tmpfs / "a" / "b"
    deep.mkdir(parents=True)
    image = deep / "disk.qcow2"
    image.write_bytes(b"")
    assert mount_point(str(image)) == str(tmpfs) == command_output("stat", "-c", "%m",
                                                                    str(image))
    # A link outside the mount to the image inside it: the image's filesystem counts.
    link = tmp_path / "link.qcow2"
    link.symlink_to(image)
    assert mount_point(str(link)) == str(tmpfs)
    # A file of the filesystem that holds tmp_path itself.
    outside = tmp_path / "outside"
    outside.write_bytes(b"")
    assert mount_point(str(outside)) == command_output("stat", "-c", "%m", str(outside))
    assert mount_point("/") == "/"


def test_file_container_is_its_filesystem(tmpfs: Path, qemu_tools: object) -> None:
    image = written_image(tmpfs / "disk.qcow2", 3 * MiB)
    df = command_output("df", "-B1", "--output=size,used,avail,target", str(image))
    size, used, avail, target = df.splitlines()[-1].split()
    blocks, block_unit, length = command_output("stat", "-c", "%b %B %s", str(image)).split()
    with ImageFile(str(image)) as file:
        container = container_of(file, 1234567)  # the end offset plays no part for a file
    assert container.kind == ContainerKind.FILE
    # tmpfs reserves nothing for root: df's Size is Used + Available, 16 MiB.
    assert container.size == int(used) + int(avail) == int(size) == 16 * MiB
    assert (container.used, container.headroom) == (int(used), int(avail))
    assert container.length == int(length)
    assert container.allocated_bytes == int(blocks) * int(block_unit)
    assert container.allocated_bytes >= 3 * MiB  # the data qemu-io wrote is allocated
    assert container.filesystem == target == str(tmpfs)
    assert container.usage_ratio == int(used) / (16 * MiB)


@pytest.mark.parametrize("end_mib", [1, 5, 64])
def test_block_device_is_its_own_container(tmp_path: Path, end_mib: int,
                                           loop_device: Callable[..., str],
                                           qemu_tools: object) -> None:
    source = tmp_path / "src.qcow2"
    written_image(source, MiB)
    raw = tmp_path / "volume"
    raw.write_bytes(source.read_bytes())
    with open(raw, "r+b") as f:
        f.truncate(8 * MiB)  # an 8 MiB volume holding the image
    device = loop_device(raw, read_only=True)
    size = int(command_output("blockdev", "--getsize64", device))
    assert size == 8 * MiB
    end = end_mib * MiB
    with ImageFile(device) as file:
        container = container_of(file, end)
    assert container.kind == ContainerKind.BLOCK
    assert (container.size, container.length) == (size, size)
    # Past the device's end there is no room left, and no more than the device is used.
    assert container.headroom == max(size - end, 0)
    assert container.used == min(end, size)
    assert container.allocated_bytes is None and container.filesystem is None
