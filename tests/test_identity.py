"""collectors/host/identity.py: one disk, one identity -- by name (the canonical path of every
series) and by stat (what matches a live figure to an image), whatever name reached it."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from qcow2_monitor.collectors.host import identity
from qcow2_monitor.collectors.host.identity import canonical_path, identity_of, identity_of_path

from daemons import make_image


def test_identity_is_inode_for_files_and_device_number_for_devices(tmp_path: Path) -> None:
    image = tmp_path / "a.qcow2"
    image.write_bytes(b"x")
    (tmp_path / "hard").hardlink_to(image)
    (tmp_path / "soft").symlink_to(image)
    other = tmp_path / "b.qcow2"
    other.write_bytes(b"x")
    assert identity_of_path(str(image)) == identity_of_path(str(tmp_path / "hard"))
    assert identity_of_path(str(image)) == identity_of_path(str(tmp_path / "soft"))
    assert identity_of_path(str(image)) != identity_of_path(str(other))
    st = os.stat(image)
    assert identity_of(st) == ("file", st.st_dev, st.st_ino)
    assert identity_of_path("/dev/null") is None and stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert identity_of_path(str(tmp_path)) is None
    assert identity_of_path(str(tmp_path / "missing")) is None


def test_a_device_node_anywhere_is_the_device(tmp_path: Path,
                                              loop_device: Callable[..., str]) -> None:
    device = loop_device(make_image(tmp_path / "blk.qcow2", "16M"))
    node = tmp_path / "node"
    os.mknod(node, 0o600 | stat.S_IFBLK, os.stat(device).st_rdev)
    link = tmp_path / "by-name"
    link.symlink_to(device)
    assert identity_of_path(str(node)) == identity_of_path(device) == identity_of_path(str(link))
    assert identity_of_path(device) == ("block", os.stat(device).st_rdev)
    # By name: the kernel's name, read from sysfs by device number, for every alias.
    assert canonical_path(str(node)) == canonical_path(str(link)) == device


def test_canonical_path_of_files_is_the_real_path(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    image = tmp_path / "dir" / "a.qcow2"
    image.write_bytes(b"x")
    (tmp_path / "soft").symlink_to(image)
    assert canonical_path(str(tmp_path / "soft")) == str(image)
    assert canonical_path(str(tmp_path / "dir" / ".." / "dir" / "a.qcow2")) == str(image)
    # A name that does not exist (yet) keeps its resolved spelling: never an exception.
    assert canonical_path(str(tmp_path / "missing")) == str(tmp_path / "missing")


def test_canonical_path_of_device_mapper_and_without_sysfs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Device-mapper devices are /dev/mapper/NAME (dm-N numbers change at every boot); a node
    whose device sysfs does not list (a container without sysfs) keeps its own path. This
    kernel has no device-mapper: a copy of sysfs stands in, for a node made with mknod."""
    number = os.makedev(253, 7)
    node = tmp_path / "dm-node"
    os.mknod(node, 0o600 | stat.S_IFBLK, number)
    sysfs = tmp_path / "sys-dev-block"
    sysfs.mkdir()
    monkeypatch.setattr(identity, "SYS_DEV_BLOCK", str(sysfs))
    assert canonical_path(str(node)) == str(node)  # not in sysfs: the node itself
    (sysfs / "253:7" / "dm").mkdir(parents=True)
    (sysfs / "253:7" / "dm" / "name").write_text("vg0-vm1\n")
    assert canonical_path(str(node)) == "/dev/mapper/vg0-vm1"
