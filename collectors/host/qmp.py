"""The live figures of a qemu outside libvirt, from its QMP socket (--qmp): query commands
only, the whole exchange bounded in time. Imported only when a QMP socket is named."""

from __future__ import annotations

import json
import os
import socket
import time

from ..common.errors import IO_ERROR, Qcow2Error
from ..common.record import replace
from ..report.model import LiveDisk, LiveSource
from .pause import qmp_device_errors, qmp_pause, qmp_vm_reason

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Iterable, Optional

# The protocol drivers whose node is the image's storage: their wr_highest_offset is the
# image's real end (the format node above counts guest offsets, not host offsets).
_QMP_PROTOCOL_DRIVERS = frozenset({"file", "host_device"})
_QMP_MAX_MESSAGE = 16 * 1024 * 1024  # a qemu with thousands of nodes still answers in far less


class QmpError(Exception):
    pass


class _QmpConnection:
    """A minimal synchronous QMP client: one command at a time, events skipped."""

    def __init__(self, path: str, timeout: float) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.buffer = b""
        # The whole exchange, not each read, is bounded: a socket that does not answer (or
        # trickles bytes) costs at most `timeout`.
        self.deadline = time.monotonic() + timeout
        self.sock.connect(path)

    def close(self) -> None:
        self.sock.close()

    def peer_pid(self) -> Optional[int]:
        try:
            creds = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        except OSError:
            return None
        pid = int.from_bytes(creds[:4], "little")
        return pid or None

    def _message(self) -> dict[str, Any]:
        while b"\n" not in self.buffer:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise QmpError("no answer in time")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise QmpError("connection closed")
            self.buffer += chunk
            if len(self.buffer) > _QMP_MAX_MESSAGE:
                raise QmpError("answer too long")
        line, _, self.buffer = self.buffer.partition(b"\n")
        try:
            message = json.loads(line)
        except ValueError:
            raise QmpError(f"not QMP: {line[:60]!r}") from None
        if not isinstance(message, dict):
            raise QmpError(f"not QMP: {line[:60]!r}")
        return message

    def greeting(self) -> None:
        if "QMP" not in self._message():
            raise QmpError("no QMP greeting")

    def execute(self, command: str, arguments: Optional[dict[str, Any]] = None) -> Any:
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        self.sock.settimeout(max(self.deadline - time.monotonic(), 0.001))
        self.sock.sendall(json.dumps(request).encode() + b"\n")
        while True:
            answer = self._message()
            if "event" in answer:
                continue
            if "error" in answer:
                error = answer["error"]
                desc = error.get("desc", error) if isinstance(error, dict) else error
                raise QmpError(f"{command}: {desc}")
            if "return" not in answer:
                raise QmpError(f"{command}: unexpected answer")
            return answer["return"]


def qmp_disks(path: str, timeout: float) -> tuple[Optional[int], list[LiveDisk]]:
    """The pid of the qemu behind QMP socket `path`, and every file or host_device node of it
    with its wr_highest_offset. Raises Qcow2Error naming the socket."""
    try:
        conn = _QmpConnection(path, timeout)
    except OSError as exc:
        raise _qmp_error(path, exc.strerror or str(exc)) from None
    try:
        conn.greeting()
        conn.execute("qmp_capabilities")
        stats = conn.execute("query-blockstats", {"query-nodes": True})
        nodes = conn.execute("query-named-block-nodes")
        vm_reason = qmp_vm_reason(conn.execute("query-status"))
        # Which device failed, asked only of a paused qemu.
        failed = qmp_device_errors(conn.execute("query-block")) if vm_reason else {}
        pid = conn.peer_pid()
    except (OSError, QmpError) as exc:
        text = "no answer in time" if isinstance(exc, socket.timeout) else str(exc)
        raise _qmp_error(path, text or type(exc).__name__) from None
    finally:
        conn.close()
    # Named as the nodes are (qemu's names may be relative to its working directory).
    device_errors = {(_qemu_path(name, pid) or name): why for name, why in failed.items()}
    disks = [replace(disk, pause=qmp_pause(disk.domain, disk.disk, disk.path, vm_reason,
                                           device_errors))
             for disk in _qmp_match(path, pid, stats, nodes)]
    return pid, disks


def _qmp_error(path: str, text: str) -> Qcow2Error:
    return Qcow2Error(text, structure="QMP socket", kind=IO_ERROR, filename=path)


def _qmp_match(socket_path: str, pid: Optional[int], stats: Any,
               nodes: Any) -> Iterable[LiveDisk]:
    if not isinstance(stats, list) or not isinstance(nodes, list):
        raise _qmp_error(socket_path, "unexpected answer to query-blockstats")
    files = {node.get("node-name"): node.get("file") for node in nodes
             if isinstance(node, dict) and node.get("drv") in _QMP_PROTOCOL_DRIVERS}
    domain = f"qemu {pid}" if pid else f"qemu at {socket_path}"
    for entry in stats:
        if not isinstance(entry, dict):
            continue
        node = entry.get("node-name")
        filename = files.get(node)
        offset = (entry.get("stats") or {}).get("wr_highest_offset")
        if isinstance(filename, str) and isinstance(offset, int) and isinstance(node, str):
            path = _qemu_path(filename, pid)
            if path is not None:
                yield LiveDisk(path, offset, domain, node, LiveSource.QMP)


def _qemu_path(filename: str, pid: Optional[int]) -> Optional[str]:
    """A node's filename as a path of ours. qemu resolved a relative name against the working
    directory it had when it opened the node, which is neither ours nor (after -daemonize,
    which changes to /) its current one: find the file among the qemu's open files instead.
    None when that is not unique or not ours to see: an unmatched node, never a wrong match."""
    if os.path.isabs(filename):
        return filename
    if pid is None:
        return None
    suffix = "/" + os.path.normpath(filename)
    fd_dir = f"/proc/{pid}/fd"
    try:
        links = {os.readlink(os.path.join(fd_dir, fd)) for fd in os.listdir(fd_dir)}
    except OSError:
        return None
    found = [link for link in links if link.endswith(suffix)]
    return found[0] if len(found) == 1 else None
