"""collectors/host/qmp.py against a QMP server written in the test: what it asks (the
handshake and query commands only), what it makes of the answers, and how it fails (the socket
named, the whole exchange bounded in time)."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

from qcow2_monitor.collectors.common.errors import IO_ERROR, Qcow2Error
from qcow2_monitor.collectors.host.qmp import qmp_disks
from qcow2_monitor.collectors.report.model import LiveSource, PauseReason

IMAGE = "/var/lib/images/vm.qcow2"
NODES = [{"node-name": "fmt0", "drv": "qcow2", "file": IMAGE},
         {"node-name": "file0", "drv": "file", "file": IMAGE},
         {"node-name": "base1", "drv": "host_device", "file": "/dev/vg/base"}]
STATS = [{"node-name": "fmt0", "stats": {"wr_highest_offset": 7}},  # guest offsets: not ours
         {"node-name": "file0", "stats": {"wr_highest_offset": 327680}},
         {"node-name": "base1", "stats": {"wr_highest_offset": 65536}}]


class FakeQmp:
    """A QMP server on a unix socket: the greeting, then an answer per command from
    `answers` (an event before each, as qemu may send them); records what it was asked."""

    def __init__(self, path: Path, answers: dict[str, Any], greet: bool = True,
                 raw: Optional[bytes] = None) -> None:
        self.asked: list[dict[str, Any]] = []
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(1)
        self.thread = threading.Thread(target=self._serve, args=(answers, greet, raw),
                                       daemon=True)
        self.thread.start()

    def _serve(self, answers: dict[str, Any], greet: bool, raw: Optional[bytes]) -> None:
        conn, _ = self.server.accept()
        with conn, conn.makefile("rwb") as stream:
            if raw is not None:
                stream.write(raw)
                stream.flush()
            if not greet:
                time.sleep(30)
                return
            stream.write(b'{"QMP": {"version": {}, "capabilities": []}}\n')
            stream.flush()
            for line in stream:
                request = json.loads(line)
                self.asked.append(request)
                stream.write(b'{"event": "BLOCK_IO_ERROR", "data": {}}\n')
                stream.write(json.dumps({"return": answers.get(request["execute"], {})})
                             .encode() + b"\n")
                stream.flush()

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def qmp_path(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "qmp.sock"


def running(**extra: Any) -> dict[str, Any]:
    return {"query-blockstats": STATS, "query-named-block-nodes": NODES,
            "query-status": {"status": "running", "running": True}, **extra}


def test_storage_nodes_and_their_highest_offsets(qmp_path: Path) -> None:
    server = FakeQmp(qmp_path, running())
    pid, disks = qmp_disks(str(qmp_path), 5.0)
    server.close()
    assert pid == os.getpid()  # the peer of the socket: this process serves it
    assert [(d.path, d.end_offset, d.disk, d.source, d.pause) for d in disks] == [
        (IMAGE, 327680, "file0", LiveSource.QMP, None),
        ("/dev/vg/base", 65536, "base1", LiveSource.QMP, None)]
    assert {d.domain for d in disks} == {f"qemu {os.getpid()}"}
    # The handshake and queries only; query-block only of a paused qemu.
    assert [r["execute"] for r in server.asked] == [
        "qmp_capabilities", "query-blockstats", "query-named-block-nodes", "query-status"]
    assert server.asked[1].get("arguments") == {"query-nodes": True}


def test_a_qemu_paused_on_no_space(qmp_path: Path) -> None:
    block = [{"device": "drive0", "io-status": "nospace", "inserted": {"file": IMAGE}}]
    server = FakeQmp(qmp_path, running(**{
        "query-status": {"status": "io-error", "running": False}, "query-block": block}))
    _, disks = qmp_disks(str(qmp_path), 5.0)
    server.close()
    assert server.asked[-1]["execute"] == "query-block"
    assert all(r["execute"] == "qmp_capabilities" or r["execute"].startswith("query-")
               for r in server.asked)
    pauses = {d.path: d.pause for d in disks}
    assert pauses[IMAGE] is not None and pauses[IMAGE].reason == PauseReason.NOSPACE
    other = pauses["/dev/vg/base"]  # waits on the disk that failed
    assert other is not None and other.reason == PauseReason.OTHER_DISK
    assert other.error_disk == f"{IMAGE}: nospace"


def test_a_missing_socket_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "absent.sock"
    with pytest.raises(Qcow2Error) as raised:
        qmp_disks(str(path), 5.0)
    assert raised.value.filename == str(path) and raised.value.kind == IO_ERROR
    assert raised.value.structure == "QMP socket"
    assert "No such file or directory" in raised.value.message


@pytest.mark.parametrize(("raw", "greet", "said"), [
    (None, False, "no answer in time"),
    (b"this is not json\n", False, "not QMP: b'this is not json'"),
    (b'["a list"]\n', False, "not QMP"),
    (b'{"hello": 1}\n', False, "no QMP greeting"),
])
def test_a_socket_that_is_no_qmp_is_an_error_in_bounded_time(
        qmp_path: Path, raw: Optional[bytes], greet: bool, said: str) -> None:
    server = FakeQmp(qmp_path, {}, greet=greet, raw=raw)
    started = time.monotonic()
    with pytest.raises(Qcow2Error) as raised:
        qmp_disks(str(qmp_path), 0.5)
    elapsed = time.monotonic() - started
    server.close()
    assert said in raised.value.message and raised.value.filename == str(qmp_path)
    assert elapsed < 10  # the whole exchange is bounded by 0.5 s (20x margin for load)


def test_an_error_answer_names_the_command(qmp_path: Path) -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(qmp_path))
    server.listen(1)

    def serve() -> None:
        conn, _ = server.accept()
        with conn, conn.makefile("rwb") as stream:
            stream.write(b'{"QMP": {}}\n')
            stream.flush()
            stream.readline()
            stream.write(b'{"error": {"class": "GenericError", "desc": "refused"}}\n')
            stream.flush()
            stream.readline()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with pytest.raises(Qcow2Error, match="qmp_capabilities: refused"):
        qmp_disks(str(qmp_path), 5.0)
    server.close()
