"""libvirt's read-only socket, spoken directly for the one call a run makes -- the answer of
``virsh -r domstats --state --block --backing --list-active`` without starting virsh (a
process that costs more CPU than the rest of a one-image check, on every check).

Only what is certain is spoken here; anything else is left to virsh (:func:`domstats_text`
says so with :class:`LeftToVirsh`), so that what virsh would say -- its error messages
included -- is what the run says:

* a local URI of the qemu driver's system daemon (``qemu:///system``, ``qemu+unix:///system``)
  with at most a ``socket=`` parameter; without it, the read-only socket of the one daemon
  that runs (the monolithic ``libvirtd`` or the modular ``virtqemud``: with both or neither,
  virsh's own choice is left to it);
* authentication none, or polkit (the daemon asks polkit itself; nothing is sent);
* every answer checked against the protocol before it is used, every count bounded before
  anything is read or allocated from it.

The protocol (libvirt's src/remote/remote_protocol.x and src/rpc/virnetprotocol.x): each
message is a 4-byte length (itself included), a 24-byte header (program, version, procedure,
type, serial, status) and an XDR body; the calls are made in the order virsh makes them:
the authentication types, polkit when asked, open read-only, get all domain stats, close.
The answer is written as virsh writes it (``Domain: 'NAME'`` then ``  field=value``), for the
one parser of both (:func:`collectors.host.live.parse_domstats`).
"""

from __future__ import annotations

import _socket
import os
import struct
import time

REMOTE_PROGRAM = 0x20008086
REMOTE_PROTOCOL_VERSION = 1
CALL, REPLY = 0, 1
STATUS_OK, STATUS_ERROR = 0, 1
PROC_CONNECT_OPEN = 1
PROC_CONNECT_CLOSE = 2
PROC_AUTH_LIST = 66
PROC_AUTH_POLKIT = 70
PROC_CONNECT_GET_ALL_DOMAIN_STATS = 344
AUTH_NONE, AUTH_POLKIT = 0, 2
VIR_CONNECT_RO = 1
VIR_DOMAIN_STATS_STATE = 1
VIR_DOMAIN_STATS_BLOCK = 32
VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE = 1
VIR_CONNECT_GET_ALL_DOMAINS_STATS_BACKING = 1 << 30
# libvirt's own limits (remote_protocol.x, virnetprotocol.x).
MESSAGE_MAX = 32 * 1024 * 1024
STRING_MAX = 4 * 1024 * 1024
DOMAIN_LIST_MAX = 16384
STATS_PARAMS_MAX = 262144
AUTH_TYPE_LIST_MAX = 20
UUID_LENGTH = 16

SYSTEM_SOCKETS = ("/run/libvirt/libvirt-sock-ro", "/run/libvirt/virtqemud-sock-ro")
_HEADER = struct.Struct(">IIiiIi")
# virTypedParameterType, and how virsh writes each (vshGetTypedParamValue).
_INT, _UINT, _LLONG, _ULLONG, _DOUBLE, _BOOLEAN, _STRING = range(1, 8)


class LeftToVirsh(Exception):
    """This client does not speak for that URI, daemon or answer: virsh does."""


class _Reader:
    """An XDR body, read with every length checked against what is left of it."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def take(self, size: int) -> bytes:
        if size < 0 or self.offset + size > len(self.data):
            raise LeftToVirsh("answer shorter than it says")
        chunk = self.data[self.offset:self.offset + size]
        self.offset += size
        return chunk

    def u32(self) -> int:
        value: int = struct.unpack(">I", self.take(4))[0]
        return value

    def i32(self) -> int:
        value: int = struct.unpack(">i", self.take(4))[0]
        return value

    def count(self, limit: int, smallest: int) -> int:
        """A list's length: at most `limit`, and no more items than the bytes left could hold
        at `smallest` bytes each."""
        n = self.u32()
        if n > limit or n * smallest > len(self.data) - self.offset:
            raise LeftToVirsh(f"list of {n} items out of bounds")
        return n

    def string(self) -> str:
        size = self.u32()
        if size > STRING_MAX:
            raise LeftToVirsh("string out of bounds")
        text = self.take(size).decode("utf-8", "surrogateescape")
        self.take(-size % 4)
        return text

    def value(self) -> str:
        """A typed parameter's value, as virsh writes it."""
        kind = self.i32()
        if kind in (_INT, _BOOLEAN):
            number = self.i32()
            return ("yes" if number else "no") if kind == _BOOLEAN else str(number)
        if kind == _UINT:
            return str(self.u32())
        if kind in (_LLONG, _ULLONG):
            return str(struct.unpack(">q" if kind == _LLONG else ">Q", self.take(8))[0])
        if kind == _DOUBLE:
            return f"{struct.unpack('>d', self.take(8))[0]:f}"
        if kind == _STRING:
            return self.string()
        raise LeftToVirsh(f"typed parameter of unknown type {kind}")


def _xdr_string(text: str) -> bytes:
    data = text.encode()
    return struct.pack(">I", len(data)) + data + b"\0" * (-len(data) % 4)


def socket_of(uri: str) -> str:
    """The read-only socket to ask for `uri`; LeftToVirsh for a URI this client does not
    speak for."""
    scheme, sep, rest = uri.partition("://")
    path, _, query = rest.partition("?")
    if not sep or scheme not in ("qemu", "qemu+unix") or path != "/system":
        raise LeftToVirsh(f"URI {uri}")
    params = [item.partition("=") for item in query.split("&") if item]
    if any(name != "socket" for name, _, _ in params) or len(params) > 1:
        raise LeftToVirsh(f"URI parameters of {uri}")
    if params:
        return params[0][2]
    running = [path for path in SYSTEM_SOCKETS if os.path.exists(path)]
    if len(running) != 1:
        raise LeftToVirsh("which daemon answers is virsh's choice")
    return running[0]


class _Connection:
    def __init__(self, path: str, deadline: float) -> None:
        self.deadline = deadline
        self.serial = 0
        # The C socket that socket.socket wraps: its module adds selectors and array (for
        # sendfile), a third of this client's start-up, and nothing this client uses.
        self.sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            self._bound()
            self.sock.connect(path)
        except OSError:
            self.sock.close()
            raise

    def _bound(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        self.sock.settimeout(left)

    def _receive(self, size: int) -> bytes:
        chunks: list[bytes] = []
        while size:
            self._bound()
            chunk = self.sock.recv(min(size, 1 << 20))
            if not chunk:
                raise LeftToVirsh("connection closed")
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)

    def call(self, procedure: int, body: bytes = b"") -> _Reader:
        """The body of the answer to one call; LeftToVirsh on an error answer."""
        self.serial += 1
        header = _HEADER.pack(REMOTE_PROGRAM, REMOTE_PROTOCOL_VERSION, procedure, CALL,
                              self.serial, STATUS_OK)
        self._bound()
        self.sock.sendall(struct.pack(">I", 4 + len(header) + len(body)) + header + body)
        length = struct.unpack(">I", self._receive(4))[0]
        if not 4 + _HEADER.size <= length <= MESSAGE_MAX:
            raise LeftToVirsh(f"message of {length} bytes")
        program, version, answered, kind, serial, status = _HEADER.unpack(
            self._receive(_HEADER.size))
        body = self._receive(length - 4 - _HEADER.size)
        if (program, version, answered, kind, serial) != (
                REMOTE_PROGRAM, REMOTE_PROTOCOL_VERSION, procedure, REPLY, self.serial):
            raise LeftToVirsh("unexpected message")
        if status != STATUS_OK:
            raise LeftToVirsh(f"procedure {procedure} refused")
        return _Reader(body)

    def close(self) -> None:
        self.sock.close()


def _render(answer: _Reader) -> str:
    """remote_connect_get_all_domain_stats_ret as virsh writes it."""
    domains: list[str] = []
    # A record is at least a name, a uuid, an id and a count: 4 + 16 + 4 + 4 bytes.
    for _ in range(answer.count(DOMAIN_LIST_MAX, 28)):
        name = answer.string()
        answer.take(UUID_LENGTH + 4)  # uuid, id
        lines = [f"Domain: '{name}'\n"]
        # A parameter is at least a field name, a type and an int: 12 bytes.
        for _ in range(answer.count(STATS_PARAMS_MAX, 12)):
            field = answer.string()
            lines.append(f"  {field}={answer.value()}\n")
        domains.append("".join(lines))
    return "\n".join(domains)  # a blank line between domains


def domstats_text(uri: str, timeout: float) -> str:
    """What ``virsh -r -c URI domstats --state --block --backing --list-active`` prints.
    Raises LeftToVirsh where virsh should answer instead (a socket error included), TimeoutError
    when the daemon did not answer within `timeout` seconds."""
    path = socket_of(uri)
    try:
        return _ask(path, time.monotonic() + timeout)
    except (TimeoutError, _socket.timeout):  # one class from Python 3.10 on
        raise TimeoutError from None
    except OSError as exc:
        raise LeftToVirsh(str(exc)) from None


def _ask(path: str, deadline: float) -> str:
    """The calls virsh makes, in its order, on the socket at `path`."""
    connection = _Connection(path, deadline)
    try:
        auth = connection.call(PROC_AUTH_LIST)
        methods = [auth.i32() for _ in range(auth.count(AUTH_TYPE_LIST_MAX, 4))]
        if methods and methods != [AUTH_NONE]:
            if methods != [AUTH_POLKIT]:
                raise LeftToVirsh(f"authentication {methods}")
            connection.call(PROC_AUTH_POLKIT)
        connection.call(PROC_CONNECT_OPEN,
                        struct.pack(">I", 1) + _xdr_string("qemu:///system") +
                        struct.pack(">I", VIR_CONNECT_RO))
        stats = connection.call(PROC_CONNECT_GET_ALL_DOMAIN_STATS, struct.pack(
            ">III", 0, VIR_DOMAIN_STATS_STATE | VIR_DOMAIN_STATS_BLOCK,
            VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE | VIR_CONNECT_GET_ALL_DOMAINS_STATS_BACKING))
        text = _render(stats)
        connection.call(PROC_CONNECT_CLOSE)
        return text
    finally:
        connection.close()
