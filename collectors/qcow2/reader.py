"""The one bounded, read-only reader every structure goes through.

Opens with O_RDONLY (plus O_NOATIME where the kernel allows it, so analysing an image does not
even touch its access time), never locks, never writes. Every read is checked against the
length of the file or device and a per-read limit; a failure raises :class:`Qcow2Error` naming
the structure and the offset.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
from types import TracebackType

from ..common.errors import IO_ERROR, OUT_OF_BOUNDS, TRUNCATED, Qcow2Error
from . import layout as L

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional

# No single structure qemu accepts is larger than this (the 32 MiB L1 and 64 MiB snapshot
# table are the largest); refusing bigger reads bounds memory whatever the header claims.
MAX_SINGLE_READ = 64 * 1024 * 1024

# qemu's file-posix permission lock bytes (docs/qcow2-format.md §11): a process using
# the WRITE permission holds a shared lock on byte 100 + 1.
QEMU_LOCK_BYTE_WRITE = 101
F_OFD_GETLK = getattr(fcntl, "F_OFD_GETLK", 36)
NOT_FILE_OR_DEVICE = "not a regular file or block device"
# struct flock on Linux: short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid.
_FLOCK = struct.Struct("@hhqqi4x")


def open_readonly(path: str) -> int:
    """Open a regular file or block device read-only, never anything else.

    Opening can act before any read: a FIFO blocks until a writer comes, a watchdog device
    starts its countdown (the host reboots unless it is fed), a tape rewinds. Paths come from
    the command line and from image headers (backing and data file names, which whoever can
    write an image chooses), and the collectors may run as root (the packaged timer, the
    sudoers rule). So the path is first opened with O_PATH, which runs no driver code; only
    when fstat() says it is a regular file or a block device is that same inode opened for
    reading, through /proc/self/fd (a path renamed or swapped meanwhile cannot substitute
    another file). O_NOATIME where the kernel allows it (it needs ownership or CAP_FOWNER; a
    scan must not fail for lack of it). O_NOCTTY: targets may be device nodes.
    """
    path_fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        mode = os.fstat(path_fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            raise OSError(errno.EINVAL, NOT_FILE_OR_DEVICE, path)
        try:
            return _open_flags(f"/proc/self/fd/{path_fd}")
        except FileNotFoundError:
            raise OSError(errno.ENOENT, "cannot reopen through /proc/self/fd (is /proc "
                          "mounted?)", path) from None
    finally:
        os.close(path_fd)


def _open_flags(path: str) -> int:
    flags = os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)
    noatime = getattr(os, "O_NOATIME", 0)
    if noatime:
        try:
            return os.open(path, flags | noatime)
        except PermissionError:
            pass  # not the owner (and not root): fall back to a plain read-only open
    return os.open(path, flags)


def has_qcow2_magic(path: str) -> bool:
    """True when the file or device starts with the qcow2 magic. Raises OSError if unreadable."""
    fd = open_readonly(path)
    try:
        return os.pread(fd, len(L.QCOW_MAGIC), 0) == L.QCOW_MAGIC
    finally:
        os.close(fd)


class ImageFile:
    """A read-only handle on a regular file or block device with bounded positional reads."""

    def __init__(self, path: str, fd: Optional[int] = None) -> None:
        self.path = path
        if fd is not None:
            self.fd = fd
        else:
            try:
                self.fd = open_readonly(path)
            except OSError as exc:
                raise Qcow2Error(
                    exc.strerror or str(exc), structure="file", kind=IO_ERROR, filename=path
                ) from None
        try:
            st = os.fstat(self.fd)
            self.stat = st
            self.is_block_device = stat.S_ISBLK(st.st_mode)
            if self.is_block_device:
                self.length = os.lseek(self.fd, 0, os.SEEK_END)
            elif stat.S_ISREG(st.st_mode):
                self.length = st.st_size
            else:
                raise Qcow2Error(NOT_FILE_OR_DEVICE, structure="file", kind=IO_ERROR,
                                 filename=path)
        except BaseException:
            os.close(self.fd)
            raise

    def duplicate(self) -> ImageFile:
        """Another handle on the same open file (a duplicated descriptor: the file itself, even
        if renamed since), its length taken afresh: a file qemu is writing grows."""
        return ImageFile(self.path, os.dup(self.fd))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> ImageFile:
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def _check(self, offset: int, length: int, structure: str) -> None:
        if length < 0 or length > MAX_SINGLE_READ:
            raise Qcow2Error(
                f"size {length} exceeds the {MAX_SINGLE_READ} byte read limit",
                structure=structure, offset=offset, value=length, kind=OUT_OF_BOUNDS,
                filename=self.path,
            )
        if offset < 0:
            raise Qcow2Error("negative offset", structure=structure, offset=offset,
                             kind=OUT_OF_BOUNDS, filename=self.path)

    def _pread(self, offset: int, length: int, structure: str) -> bytes:
        try:
            return os.pread(self.fd, length, offset)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise Qcow2Error("invalid read position", structure=structure, offset=offset,
                                 kind=OUT_OF_BOUNDS, filename=self.path) from None
            raise Qcow2Error(f"read failed: {exc.strerror}", structure=structure,
                             offset=offset, kind=IO_ERROR, filename=self.path) from None

    def read(self, offset: int, length: int, structure: str) -> bytes:
        """Exactly `length` bytes at `offset`, or a TRUNCATED error naming the structure."""
        self._check(offset, length, structure)
        if offset + length > self.length:
            raise Qcow2Error(
                f"{length} bytes at 0x{offset:x} run past the end of the image "
                f"(length 0x{self.length:x})",
                structure=structure, offset=offset, kind=TRUNCATED, filename=self.path,
            )
        data = self._pread(offset, length, structure)
        if len(data) != length:
            raise Qcow2Error(
                f"short read: {len(data)} of {length} bytes", structure=structure,
                offset=offset, kind=TRUNCATED, filename=self.path,
            )
        return data

    def read_zero_padded(self, offset: int, length: int, structure: str) -> bytes:
        """Like qemu's bdrv_pread on a file: the part past EOF reads as zeros."""
        self._check(offset, length, structure)
        if offset >= self.length:
            return bytes(length)
        data = self._pread(offset, min(length, self.length - offset), structure)
        if len(data) < length:
            data += bytes(length - len(data))
        return data


class Window:
    """Sequential reads through one buffer, zeros past EOF (as qemu's bdrv_pread on a file):
    the 65536 snapshot entries a header may claim cost a few reads, not two each."""

    CHUNK = 256 * 1024

    def __init__(self, file: ImageFile, structure: str) -> None:
        self.file = file
        self.structure = structure
        self.start = 0
        self.data = b""

    def read(self, offset: int, length: int) -> bytes:
        data, at = self.view(offset, length)
        return data[at:at + length]

    def view(self, offset: int, length: int) -> tuple[bytes, int]:
        """The buffer holding `length` bytes at `offset`, and where they start in it (for
        struct.unpack_from without a copy)."""
        at = offset - self.start
        if at < 0 or at + length > len(self.data):
            self.start = offset
            self.data = self.file.read_zero_padded(offset, max(length, self.CHUNK),
                                                   self.structure)
            at = 0
        return self.data, at


def held_for_writing(file: ImageFile) -> bool:
    """True when another open file description holds qemu's write-permission lock byte.

    F_OFD_GETLK only asks: it takes no lock, so a running VM is not disturbed, and it works on
    a read-only descriptor. Images opened with locking=off cannot be detected this way.
    """
    probe = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, QEMU_LOCK_BYTE_WRITE, 1, 0)
    try:
        answer = fcntl.fcntl(file.fd, F_OFD_GETLK, probe)
    except OSError:
        return False  # filesystem without OFD locks: qemu cannot lock it either
    return bool(_FLOCK.unpack(answer)[0] != fcntl.F_UNLCK)
