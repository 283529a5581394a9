"""The state store: small files that keep each disk's samples between runs, shared by every
adapter (check_qcow2, qcow2-telegraf, qcow2-textfile, qcow2-analyze usage).

Where: ``--state-dir DIR``; else ``$MP_STATE_PATH/qcow2-monitor``, then
``$NAGIOS_PLUGIN_STATE_DIRECTORY/qcow2-monitor`` (the monitoring-plugins convention); else
``/var/lib/qcow2-monitor`` for root, or ``$XDG_STATE_HOME/qcow2-monitor``
(``~/.local/state/qcow2-monitor``) for other users.

One file per disk, named by a hash of the disk's identity (its canonical path, the ``path``
label of its series), never by the command line: every adapter and every run adds to the same
history. Safety, since the directory may sit among other users' files:

* the directory must belong to this user and be writable by nobody else (it is created 0700);
  otherwise it is not used, and the run says why;
* every file is opened relative to the directory's descriptor with ``O_NOFOLLOW``: a symlink
  planted in its place is never followed; a new version is written to a fresh temporary file
  (``O_CREAT | O_EXCL``) and renamed over the old one, so a reader sees the old file or the
  new one, whole;
* parallel runs (Icinga runs checks in parallel) serialise their updates with ``flock`` on the
  directory itself, for a bounded time: a sample is never lost to a concurrent rewrite, and a
  run that cannot get the lock in time reports without recording. No image is ever locked;
* files are bounded (a reader refuses more than MAX_FILE_BYTES) and pruned: a disk not seen
  for PRUNE_AGE loses its file.

A run appends its sample to the disk's file as one line (a small O_APPEND write); every
COMPACT_EVERY samples, or when the history restarts, the file is rewritten whole (to a
temporary file, renamed over the old one). Renaming every run would cost more than the rest of
the run together: ext4 flushes a file renamed over another (auto_da_alloc).

No fsync: a crash may lose the last samples or leave an empty file, which the next run reads
as unusable, says so and starts anew. A history is worth less than the time an fsync per disk
would cost every run.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Optional

STATE_SUBDIRECTORY = "qcow2-monitor"
SYSTEM_STATE_DIRECTORY = "/var/lib/qcow2-monitor"
MAX_FILE_BYTES = 256 * 1024
LOCK_TIMEOUT = 5.0  # seconds a run waits for parallel runs to finish their updates
PRUNE_AGE = 7 * 24 * 3600.0
PRUNE_INTERVAL = 3600.0  # the directory is scanned for stale files at most this often
PRUNE_MARK = ".pruned"  # its modification time says when it last was
TEMPORARY_AGE = 3600.0  # a temporary file older than this was left by a run that died
STATE_SUFFIX = ".state"
# Only the hourly pruning scan needs them. A name ending in .json is a state file of an earlier
# version (JSON, version 2), pruned as any other once its disk is not seen for PRUNE_AGE.
_STATE_NAME = r"^[0-9a-f]{40}\.(state|json)$"
_TEMPORARY_NAME = r"^\.[0-9a-f]{40}\.(state|json)\.[0-9]+\.[0-9a-f]+$"


class StateError(Exception):
    """The state directory cannot be used (the message says why)."""


class CorruptState(Exception):
    """A state file that cannot be read as one."""


def default_directory(environ: Optional[dict[str, str]] = None) -> str:
    """Where the state lives when --state-dir is not given."""
    env = os.environ if environ is None else environ
    for variable in ("MP_STATE_PATH", "NAGIOS_PLUGIN_STATE_DIRECTORY"):
        if env.get(variable):
            return os.path.join(env[variable], STATE_SUBDIRECTORY)
    if os.geteuid() == 0:
        return SYSTEM_STATE_DIRECTORY
    base = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                      "state")
    return os.path.join(base, STATE_SUBDIRECTORY)


def _interpreter_sha256() -> Callable[[bytes], Any]:
    """The SHA-256 constructor of the interpreter's own module (``_sha2`` from Python 3.12,
    ``_sha256`` before): hashlib loads OpenSSL first, a few milliseconds of every run."""
    for name in ("_sha2", "_sha256"):
        try:
            return __import__(name).sha256  # type: ignore[no-any-return]
        except ImportError:
            continue
    import hashlib

    return hashlib.sha256


# Found once: a module name that is not there is looked for in every directory of sys.path.
_SHA256 = _interpreter_sha256()


def _sha256_hex(data: bytes) -> str:
    return str(_SHA256(data).hexdigest())


def state_name(identity: str) -> str:
    """The file of one disk: a hash of its identity (no path text reaches the file system)."""
    return _sha256_hex(identity.encode("utf-8", "surrogateescape"))[:40] + STATE_SUFFIX


class DirectoryLock:
    """The lock parallel runs take on a state directory (``flock``), waited for at most
    `timeout` seconds; entering gives whether it is held."""

    def __init__(self, fd: int, timeout: float) -> None:
        self.fd = fd
        self.timeout = timeout
        self.held = False

    def __enter__(self) -> bool:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES) \
                        or time.monotonic() > deadline:
                    return False
                time.sleep(0.005)
            else:
                self.held = True
                return True

    def __exit__(self, *_exc_info: object) -> None:
        if self.held:
            self.held = False
            fcntl.flock(self.fd, fcntl.LOCK_UN)


class StateDirectory:
    """An open, checked state directory; every file operation is relative to its descriptor."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            if not os.path.lexists(path):
                parent = os.path.dirname(os.path.abspath(path))
                os.makedirs(parent, mode=0o755, exist_ok=True)
                try:
                    os.mkdir(path, 0o700)
                except FileExistsError:  # made meanwhile: os.open below checks what it is
                    pass
            self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise StateError(f"state directory {path}: {exc.strerror or exc}") from None
        st = os.fstat(self.fd)
        problem = None
        if st.st_uid != os.geteuid():
            problem = f"belongs to uid {st.st_uid}, not to this user ({os.geteuid()})"
        elif st.st_mode & 0o022:
            problem = f"is writable by others (mode {stat.S_IMODE(st.st_mode):04o})"
        if problem is not None:
            os.close(self.fd)
            raise StateError(f"state directory {path} {problem}: not used")

    def close(self) -> None:
        os.close(self.fd)

    def locked(self, timeout: float = LOCK_TIMEOUT) -> DirectoryLock:
        """``with store.locked() as held``: the directory's lock held for the block (True), or
        False when parallel runs kept it past `timeout`."""
        return DirectoryLock(self.fd, timeout)

    def read(self, name: str, *, for_append: bool = False) -> tuple[Optional[list[bytes]],
                                                                    Optional[int]]:
        """The lines of file `name` (without their newlines; None when there is no file) and, with
        `for_append`, its descriptor left open for append() (one open for both: the caller
        closes it). CorruptState when it cannot be a state file (not a regular file, too
        large). A last line without its newline (an append cut short) is left out."""
        flags = os.O_RDWR | os.O_APPEND if for_append else os.O_RDONLY
        try:
            fd = os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=self.fd)
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            raise CorruptState(exc.strerror or str(exc)) from None
        keep = False
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise CorruptState("not a regular file")
            if st.st_size > MAX_FILE_BYTES:
                raise CorruptState(f"{st.st_size} bytes, more than a state file holds")
            data = os.read(fd, MAX_FILE_BYTES + 1)
            lines = data.split(b"\n")[:-1]
            if not lines:
                raise CorruptState("not a state file (no line)")
            keep = for_append
            return lines, fd if keep else None
        finally:
            if not keep:
                os.close(fd)

    @staticmethod
    def append(fd: int, line: bytes) -> None:
        """Add `line` to the file open at `fd` (from read(for_append=True)): one small
        O_APPEND write, no rename (which ext4 follows with a flush of the file); raises
        OSError."""
        os.write(fd, line + b"\n")

    def write(self, name: str, lines: list[bytes]) -> None:
        """Replace file `name` with `lines`, atomically; raises OSError."""
        data = b"".join(line + b"\n" for line in lines)
        temporary = f".{name}.{os.getpid()}.{os.urandom(4).hex()}"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600, dir_fd=self.fd)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            os.rename(temporary, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except BaseException:
            try:
                os.unlink(temporary, dir_fd=self.fd)
            except OSError:  # the error that got here is the one to report
                pass
            raise

    def prune_due(self, now: float) -> bool:
        """Whether the last prune is PRUNE_INTERVAL ago: a run over hundreds of disks must not
        scan the whole directory every minute."""
        try:
            last = os.stat(PRUNE_MARK, dir_fd=self.fd, follow_symlinks=False).st_mtime
        except OSError:
            return True
        return not 0 <= now - last < PRUNE_INTERVAL

    def prune(self, keep: set[str], now: float) -> int:
        """Remove the files of disks not seen for PRUNE_AGE and temporary files left by runs
        that died (names not ours are left alone), and mark when. Returns how many were
        removed."""
        try:
            fd = os.open(PRUNE_MARK, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=self.fd)
            try:
                os.utime(fd, (now, now))
            finally:
                os.close(fd)
        except OSError:  # no mark: the next run scans again
            pass
        import re  # only here: no other part of a run needs it

        removed = 0
        for entry in os.scandir(self.fd):
            stale = PRUNE_AGE if re.match(_STATE_NAME, entry.name) else \
                TEMPORARY_AGE if re.match(_TEMPORARY_NAME, entry.name) else None
            if stale is None or entry.name in keep:
                continue
            try:
                if now - entry.stat(follow_symlinks=False).st_mtime > stale:
                    os.unlink(entry.name, dir_fd=self.fd)
                    removed += 1
            except OSError:  # gone meanwhile, or another user's: left alone
                pass
        return removed
