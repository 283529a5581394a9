"""Backing chains: loops, pseudo-protocols, depth limit, missing layers (made with qemu-img),
and visit(), the one way every command walks a chain."""

from __future__ import annotations

import subprocess
from pathlib import Path

from qcow2_monitor.collectors.common.errors import Qcow2Error
from qcow2_monitor.collectors.qcow2.chain import not_read_error, visit
from qcow2_monitor.collectors.qcow2.image import Qcow2Image
from qcow2_monitor.collectors.report.model import ChainLayer, LayerStatus
from qcow2_monitor.collectors.report.usage import analyze_usage


def create(path: Path, backing: str | None = None, fmt: str = "qcow2") -> Path:
    cmd = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if backing is not None:
        cmd += ["-u", "-b", backing, "-F", fmt]
    subprocess.run([*cmd, str(path), "16M"], check=True)
    return path


def rebase_unsafe(path: Path, backing: str) -> None:
    subprocess.run(["qemu-img", "rebase", "-u", "-f", "qcow2", "-b", backing, "-F", "qcow2",
                    str(path)], check=True)


def test_loop_is_detected(tmp_path: Path) -> None:
    a = create(tmp_path / "a.qcow2")
    b = create(tmp_path / "b.qcow2", "a.qcow2")
    rebase_unsafe(a, "b.qcow2")  # a -> b -> a
    result = analyze_usage(str(b))
    assert result.error is None
    assert [(layer.depth, layer.status) for layer in result.chain] == [(1, "ok"), (2, "loop")]
    assert result.chain[1].name == "b.qcow2"


def test_protocols_are_reported_never_opened(tmp_path: Path) -> None:
    for name in ("nbd:127.0.0.1:1", 'json:{"driver": "file", "filename": "/etc/passwd"}'):
        top = create(tmp_path / "top.qcow2", name, fmt="raw")
        result = analyze_usage(str(top))
        assert [(layer.status, layer.name, layer.path) for layer in result.chain] == [
            ("protocol", name, None)]
        top.unlink()


def test_depth_limit(tmp_path: Path) -> None:
    create(tmp_path / "l0.qcow2")
    for i in range(1, 6):
        create(tmp_path / f"l{i}.qcow2", f"l{i - 1}.qcow2")
    result = analyze_usage(str(tmp_path / "l5.qcow2"), max_depth=3)
    assert [layer.status for layer in result.chain] == ["ok", "ok", "ok", "too-deep"]
    # Said by the image that names the layer (not the bare name, relative to nothing), with
    # the limit.
    error = result.chain[-1].error
    assert error is not None and error.filename == str(tmp_path / "l2.qcow2")
    assert error.message == "backing chain deeper than the limit of 3 at 'l1.qcow2' (depth 4)"
    full = analyze_usage(str(tmp_path / "l5.qcow2"))
    assert [layer.depth for layer in full.chain] == [1, 2, 3, 4, 5]
    assert all(layer.status == "ok" for layer in full.chain)


def test_missing_and_absolute_and_raw_layers(tmp_path: Path) -> None:
    sub = tmp_path / "sub"
    sub.mkdir()
    raw = tmp_path / "base.raw"
    raw.write_bytes(b"\0" * 4096)
    mid = create(sub / "mid.qcow2", str(raw), fmt="raw")  # absolute name, kept as is
    top = create(sub / "top.qcow2", "mid.qcow2")
    result = analyze_usage(str(top))
    # Declared raw: present and reported, not analysed (and not a broken chain).
    assert [(layer.status, layer.path) for layer in result.chain] == [
        ("ok", str(mid)), ("other-format", str(raw))]
    raw.unlink()
    result = analyze_usage(str(top))
    assert [layer.status for layer in result.chain] == ["ok", "missing"]


def test_layer_declared_qcow2_that_is_not_breaks_the_chain(tmp_path: Path) -> None:
    raw = tmp_path / "base.img"
    raw.write_bytes(b"\0" * 65536)
    # -u: qemu-img would refuse to create it otherwise, as qemu refuses to open it.
    top = tmp_path / "top.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", str(raw), "-F",
                    "qcow2", str(top), "16M"], check=True)
    for chain in (True, False):
        result = analyze_usage(str(top), chain=chain)
        assert [(layer.status, layer.usage is None) for layer in result.chain] == [
            ("not-qcow2", True)]
    assert subprocess.run(["qemu-img", "info", "--backing-chain", str(top)],
                          capture_output=True).returncode != 0


def test_visit_reads_each_layer_and_keeps_reader_errors_on_their_layer(tmp_path: Path) -> None:
    raw = tmp_path / "base.raw"
    raw.write_bytes(b"\0" * 4096)
    mid = create(tmp_path / "mid.qcow2", str(raw), fmt="raw")
    top = create(tmp_path / "top.qcow2", "mid.qcow2")

    def name(image: Qcow2Image, layer: ChainLayer) -> str:
        assert image.filename == layer.filename  # read while open, the walker's own image
        return f"{layer.depth}:{image.filename}"

    visited = list(visit(str(top), name, read_raw=lambda layer: f"raw:{layer.filename}"))
    assert [(v.layer.status, v.value) for v in visited] == [
        ("ok", f"0:{top}"), ("ok", f"1:{mid}"), ("other-format", f"raw:{raw}")]
    # Without a raw reader the raw layer is reported, not read.
    assert [v.value for v in visit(str(top), name)][2] is None

    def refuse_mid(image: Qcow2Image, layer: ChainLayer) -> str:
        if layer.depth == 1:
            raise Qcow2Error("planted", structure="test")
        return image.filename

    failed = list(visit(str(top), refuse_mid))
    assert [(v.layer.status, v.value) for v in failed] == [
        ("ok", str(top)), ("error", None), ("other-format", None)]  # the walk went on below
    error = failed[1].layer.error
    assert error is not None and error.filename == str(mid) and error.message == "planted"
    with Qcow2Image.open(str(top)) as image:  # an image already open: only its chain opened
        assert [v.value for v in visit(str(top), lambda opened, _: opened is image,
                                       opened=image)][:1] == [True]


def test_a_layer_not_read_is_said_alike_by_every_command() -> None:
    protocol = ChainLayer(1, "nbd:127.0.0.1:1", None, LayerStatus.PROTOCOL, None)
    vmdk = ChainLayer(1, "b.vmdk", "/i/b.vmdk", LayerStatus.OTHER_FORMAT, "vmdk")
    assert str(not_read_error(protocol)) == (
        "nbd:127.0.0.1:1: backing file: backing file name uses a protocol; not opened "
        "(read-only policy) (value 'nbd:127.0.0.1:1')")
    assert str(not_read_error(vmdk)) == (
        "/i/b.vmdk: backing file: backing format vmdk is not analysed (value 'b.vmdk')")
    assert not_read_error(vmdk).kind == "unsupported"
