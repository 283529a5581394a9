"""collectors/host/libvirt_socket.py: libvirt's read-only socket spoken directly gives what
virsh gives, byte for byte, from a real libvirtd (running, paused and backing-chain disks);
everything it does not speak for is left to virsh; a hostile or silent socket is refused in
bounded time and bounded memory."""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Callable, Optional

import pytest

from qcow2_monitor.collectors.host import libvirt_socket as L
from qcow2_monitor.collectors.host.live import gather_live, parse_domstats

from daemons import make_image
from live_daemons import Libvirt, file_disk, running_libvirtd
from tree import BIN

DOMSTATS = ["domstats", "--state", "--block", "--backing", "--list-active"]


@pytest.fixture(scope="module")
def libvirt() -> Iterator[Libvirt]:
    with running_libvirtd() as daemon:
        yield daemon


def _steady(text: str) -> str:
    """domstats text with the values of the counters a running guest moves masked."""
    return re.sub(r"(block\.\d+\.(?:rd|wr|fl)\.(?:reqs|bytes|times))=\d+", r"\1=*", text)


def test_the_answer_is_virshs_byte_for_byte(libvirt: Libvirt, tmp_path: Path) -> None:
    base = make_image(tmp_path / "base.qcow2", "64M")
    top = make_image(tmp_path / "top.qcow2", backing=base)
    other = make_image(tmp_path / "other.qcow2", "32M")
    alone = make_image(tmp_path / "alone.qcow2", "16M")
    libvirt.create("socket-a", file_disk(top, "vda", 0) + file_disk(other, "vdb", 1))
    libvirt.create("socket-b", file_disk(alone, "vda", 0))
    try:
        libvirt.virsh("suspend", "socket-a")
        libvirt.qemu_io("socket-b", 0, "write 0 1M")
        ours = L.domstats_text(libvirt.ro_uri, 10.0)
        virsh = subprocess.run(["virsh", "-r", "-q", "-c", libvirt.ro_uri, *DOMSTATS],
                               capture_output=True, text=True, check=True).stdout
        # Byte for byte but the I/O counters: the running guest's firmware may read its disk
        # between the two calls (rd.reqs 0, then 1).
        assert _steady(ours) == _steady(virsh)
        disks = {(d.domain, d.disk, d.path) for d in parse_domstats(ours)}
        assert {("socket-a", "vda", str(top)), ("socket-a", "vda[3]", str(base)),
                ("socket-a", "vdb", str(other)), ("socket-b", "vda", str(alone))} <= disks
        assert "state.state=3" in ours  # the paused one, as libvirt numbers it
    finally:
        libvirt.destroy("socket-a")
        libvirt.destroy("socket-b")


def test_a_run_asking_libvirt_starts_no_process(libvirt: Libvirt, tmp_path: Path) -> None:
    image = make_image(tmp_path / "img.qcow2", "16M")
    proc = subprocess.run([sys.executable, "-X", "importtime", str(BIN / "check_qcow2"),
                           "-f", str(image), "--libvirt-uri", libvirt.ro_uri, "--no-state"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    modules = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines()
               if line.startswith("import time:")}
    assert "qcow2_monitor.collectors.host.libvirt_socket" in modules
    assert "subprocess" not in modules  # no virsh
    assert "threading" not in modules  # the live sources' thread is _thread's (a start-up cost)


@pytest.mark.parametrize("uri", [
    "qemu:///session", "qemu+ssh://host/system", "test:///default", "qemu://host/system",
    "qemu:///system?socket=/a&mode=direct", "qemu:///system?no_verify=1", "lxc:///system",
])
def test_uris_it_does_not_speak_for_are_left_to_virsh(uri: str) -> None:
    with pytest.raises(L.LeftToVirsh):
        L.socket_of(uri)


def test_the_socket_of_a_uri(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert L.socket_of("qemu+unix:///system?socket=/x/sock-ro") == "/x/sock-ro"
    legacy, modular = tmp_path / "libvirt-sock-ro", tmp_path / "virtqemud-sock-ro"
    monkeypatch.setattr(L, "SYSTEM_SOCKETS", (str(legacy), str(modular)))
    with pytest.raises(L.LeftToVirsh):  # no daemon: virsh says so in its words
        L.socket_of("qemu:///system")
    modular.touch()
    assert L.socket_of("qemu:///system") == str(modular)
    legacy.touch()
    with pytest.raises(L.LeftToVirsh):  # both: which one answers is virsh's choice
        L.socket_of("qemu:///system")


# --- a socket written in the test ----------------------------------------------------------

Answer = Callable[[int, int], bytes]  # (procedure, serial) -> the whole message sent back


def _message(procedure: int, serial: int, body: bytes = b"", status: int = 0,
             program: int = L.REMOTE_PROGRAM, kind: int = L.REPLY) -> bytes:
    header = struct.pack(">IIiiIi", program, 1, procedure, kind, serial, status)
    return struct.pack(">I", 4 + len(header) + len(body)) + header + body


def _serve(path: Path, answer: Answer) -> socket.socket:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def run() -> None:
        conn, _ = server.accept()
        with conn, contextlib.suppress(OSError):  # the client may hang up at any point
            while True:
                length = conn.recv(4)
                if len(length) < 4:
                    return
                data = conn.recv(struct.unpack(">I", length)[0] - 4)
                procedure, _, serial = struct.unpack(">iiI", data[8:20])
                reply = answer(procedure, serial)
                if not reply:
                    time.sleep(30)
                    return
                conn.sendall(reply)
                if len(reply) < 28:  # less than a message: then the socket closes
                    return

    threading.Thread(target=run, daemon=True).start()
    return server


def _auth_none(procedure: int, serial: int) -> Optional[bytes]:
    if procedure == L.PROC_AUTH_LIST:
        return _message(procedure, serial, struct.pack(">Ii", 1, L.AUTH_NONE))
    if procedure in (L.PROC_CONNECT_OPEN, L.PROC_CONNECT_CLOSE, L.PROC_AUTH_POLKIT):
        return _message(procedure, serial)
    return None


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack(">I", len(data)) + data + b"\0" * (-len(data) % 4)


def _stats(*params: bytes, count: Optional[int] = None) -> bytes:
    record = _string("vm") + bytes(16) + struct.pack(">i", 1)
    record += struct.pack(">I", len(params) if count is None else count) + b"".join(params)
    return struct.pack(">I", 1) + record


PARAMS = (_string("state.state") + struct.pack(">ii", 1, 1),
          _string("block.0.allocation") + struct.pack(">iQ", 4, 2**63 + 5),
          _string("block.0.name") + struct.pack(">i", 7) + _string("vda"),
          _string("x.flag") + struct.pack(">ii", 6, 0),
          _string("x.ratio") + struct.pack(">id", 5, 0.5),
          _string("x.delta") + struct.pack(">iq", 3, -2),
          _string("x.count") + struct.pack(">iI", 2, 2**32 - 1))


def test_every_parameter_type_as_virsh_writes_it(tmp_path: Path) -> None:
    def answer(procedure: int, serial: int) -> bytes:
        return _auth_none(procedure, serial) or _message(procedure, serial, _stats(*PARAMS))

    server = _serve(tmp_path / "sock", answer)
    text = L.domstats_text(f"qemu:///system?socket={tmp_path / 'sock'}", 10.0)
    server.close()
    assert text == ("Domain: 'vm'\n  state.state=1\n  block.0.allocation=9223372036854775813\n"
                    "  block.0.name=vda\n  x.flag=no\n  x.ratio=0.500000\n  x.delta=-2\n"
                    "  x.count=4294967295\n")


HOSTILE: dict[str, Answer] = {
    "sasl": lambda p, s: _message(p, s, struct.pack(">Ii", 1, 1)),
    "refused": lambda p, s: _auth_none(p, s) or _message(p, s, b"", status=1),
    "another program": lambda p, s: _message(p, s, struct.pack(">I", 0), program=7),
    "another serial": lambda p, s: _message(p, s + 1, struct.pack(">I", 0)),
    "a call, not a reply": lambda p, s: _message(p, s, struct.pack(">I", 0), kind=L.CALL),
    "huge length": lambda p, s: struct.pack(">I", 2**31) + bytes(24),
    "short length": lambda p, s: struct.pack(">I", 8) + bytes(4),
    "closed": lambda p, s: b"\0\0",
    "too many domains": lambda p, s: _auth_none(p, s) or _message(
        p, s, struct.pack(">I", 2**32 - 1)),
    "more params than bytes": lambda p, s: _auth_none(p, s) or _message(
        p, s, _stats(count=100000)),
    "string past the end": lambda p, s: _auth_none(p, s) or _message(
        p, s, _stats(struct.pack(">I", 2**30))),
    "unknown type": lambda p, s: _auth_none(p, s) or _message(
        p, s, _stats(_string("a") + struct.pack(">ii", 9, 0))),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_socket_is_left_to_virsh(tmp_path: Path, case: str) -> None:
    server = _serve(tmp_path / "sock", HOSTILE[case])
    with pytest.raises(L.LeftToVirsh):
        L.domstats_text(f"qemu:///system?socket={tmp_path / 'sock'}", 10.0)
    server.close()


def test_a_silent_socket_times_out_and_the_note_says_so(tmp_path: Path) -> None:
    server = _serve(tmp_path / "sock", lambda p, s: b"")
    uri = f"qemu:///system?socket={tmp_path / 'sock'}"
    started = time.monotonic()
    view = gather_live(uri, libvirt_timeout=0.5)
    assert time.monotonic() - started < 10  # bounded by 0.5 s (20x margin for load)
    server.close()
    assert view.libvirt_note == f"libvirt: {uri} did not answer within 0.5 s"


def test_no_daemon_gets_virshs_own_words(tmp_path: Path) -> None:
    uri = f"qemu:///system?socket={tmp_path / 'absent'}"
    view = gather_live(uri, libvirt_timeout=10.0)
    assert view.libvirt_note is not None and view.libvirt_note.startswith(f"libvirt: {uri}: ")
    assert "Failed to connect socket" in view.libvirt_note  # virsh's message
