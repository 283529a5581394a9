"""Live figures of running VMs: the end offset qemu has really reached, from libvirt and QMP
(why the on-disk figure lags, and where the true one is: docs/qcow2-format.md §12).

On a running VM qemu keeps qcow2 metadata (L2 tables, refcount blocks) in write-back caches
until the guest flushes, while guest data already sits in new clusters past the end that the
on-disk refcounts describe. qemu tracks the highest byte written to each block node
(``wr_highest_offset``); libvirt reports it as a disk's ``allocation``. That is the figure this
module gathers, once per run, for every disk it can see.

Sources (both read-only):

* libvirt, read-only: one ``domstats --state --block --backing --list-active`` call covers
  every disk (backing layers included) of every active domain. It is asked on libvirt's
  read-only socket, which unprivileged users (nagios, telegraf) may use: directly where
  :mod:`collectors.host.libvirt_socket` speaks for the URI (the local system daemon), else
  through ``virsh -r``, which then also says what went wrong in its own words.
* QMP sockets named with ``--qmp`` (:mod:`collectors.host.qmp`, imported only then):
  ``qmp_capabilities`` (the handshake every QMP client must send), ``query-blockstats``,
  ``query-named-block-nodes``, ``query-status`` and, of a paused qemu, ``query-block``;
  nothing else.

Both also say whether the VM is paused, and why (:mod:`collectors.host.pause`): libvirt in the
same ``domstats`` call (``--state``), plus ``domblkerror`` for a domain paused by an I/O error.

A live disk is matched to an analysed image by identity, never by path text: device and inode
for a regular file, the device number for a block device, so ``/dev/vg/lv``,
``/dev/mapper/vg-lv`` and ``/dev/dm-3`` are one disk.
"""

from __future__ import annotations

import _thread
import os
import time

from ..common.errors import Qcow2Error
from ..common.record import field, mutable_record, replace
from ..report.model import LiveDisk, LiveSource, PauseReason
from .identity import DiskIdentity, identity_of, identity_of_path
from .pause import (
    DomainState,
    domain_name,
    domstats_lines,
    libvirt_pause,
    parse_disk_errors,
    parse_domain_states,
    stat_entry,
    worse,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Iterable, Optional

LIBVIRT_TIMEOUT = 5.0  # seconds for the one virsh call of a run
QMP_TIMEOUT = 2.0  # seconds for the whole exchange with one QMP socket


@mutable_record
class LiveView:
    """Everything the live sources said in one run."""

    disks: dict[DiskIdentity, LiveDisk] = field(default_factory=dict)
    # Disks that the sources named (libvirt's running domains first, then QMP), in order, and
    # the qemu processes they answered for: --running needs not inspect those itself.
    paths: list[str] = field(default_factory=list)
    libvirt_domains: set[str] = field(default_factory=set)
    qmp_pids: set[int] = field(default_factory=set)
    libvirt_note: Optional[str] = None  # why libvirt gave nothing, when it did not answer
    errors: list[Qcow2Error] = field(default_factory=list)  # --qmp sockets that failed

    def lookup(self, st: os.stat_result) -> Optional[LiveDisk]:
        key = identity_of(st)
        return self.disks.get(key) if key is not None else None

    def add(self, disk: LiveDisk) -> None:
        if disk.path not in self.paths:
            self.paths.append(disk.path)
        key = identity_of_path(disk.path)
        if key is None:
            return  # gone meanwhile, or not ours to stat: it cannot match an image either
        known = self.disks.get(key)
        if known is None:
            self.disks[key] = disk
            return
        # A disk two VMs use (a shared base): the highest figure, and the pause that matters.
        best = disk if disk.end_offset > known.end_offset else known
        self.disks[key] = replace(best, pause=worse(known.pause, disk.pause))



# --- libvirt ------------------------------------------------------------------------------


def _block_label(name: str, backing_index: Optional[str], top: bool) -> str:
    # virsh names a backing layer like the disk target with its index: vda[2].
    return name if top or backing_index is None else f"{name}[{backing_index}]"


def parse_domstats(text: str) -> list[LiveDisk]:
    """Disks with an ``allocation`` in ``virsh domstats --block --backing`` output."""
    disks: list[LiveDisk] = []
    domain: Optional[str] = None
    blocks: dict[str, dict[str, str]] = {}

    def flush() -> None:
        seen_names: set[str] = set()
        for index in sorted(blocks, key=int):
            values = blocks[index]
            name, path = values.get("name"), values.get("path")
            allocation = values.get("allocation")
            if domain is None or not name or not path or not allocation:
                continue
            if not allocation.isdigit():
                continue
            label = _block_label(name, values.get("backingIndex"), name not in seen_names)
            seen_names.add(name)
            disks.append(LiveDisk(path, int(allocation), domain, label, LiveSource.LIBVIRT))

    for line in domstats_lines(text):
        if line.startswith("Domain: "):
            flush()
            domain = domain_name(line)
            blocks = {}
            continue
        key, sep, value = stat_entry(line)
        parts = key.split(".", 2)
        if sep and len(parts) == 3 and parts[0] == "block" and parts[1].isdigit():
            blocks.setdefault(parts[1], {})[parts[2]] = value
    flush()
    return disks


def _virsh(uri: str, args: list[str], timeout: float, bound: Optional[float] = None
           ) -> tuple[Optional[str], str]:
    """(stdout, "") of one read-only virsh call, or (None, why it gave nothing). `bound`: the
    run's time bound that a timeout note states, when virsh got what was left of it."""
    import subprocess  # only when virsh runs: libvirt_socket answers most runs without it

    from .command import run_bounded

    argv = ["virsh", "-r", "-q", "-c", uri, *args]
    try:
        done = run_bounded(argv, timeout)
    except FileNotFoundError:
        return None, "libvirt: virsh not found (package libvirt-clients)"
    except subprocess.TimeoutExpired:
        return None, f"libvirt: {uri} did not answer within {bound or timeout:g} s"
    except OSError as exc:
        return None, f"libvirt: cannot run virsh: {exc.strerror or exc}"
    if done.returncode != 0:
        lines = [line.strip().removeprefix("error: ") for line in done.stderr.splitlines()
                 if line.strip()]
        reason = "; ".join(lines[:2]) if lines else f"virsh exited with {done.returncode}"
        return None, f"libvirt: {uri}: {reason}"
    return done.stdout, ""


def _domstats(uri: str, timeout: float) -> tuple[Optional[str], str]:
    """(the domstats text, "") or (None, why there is none): from libvirt's socket directly
    where that client speaks for `uri`, else from virsh (in the time left)."""
    from .libvirt_socket import LeftToVirsh, domstats_text

    started = time.monotonic()
    try:
        return domstats_text(uri, timeout), ""
    except TimeoutError:
        return None, f"libvirt: {uri} did not answer within {timeout:g} s"
    except LeftToVirsh:
        left = max(timeout - (time.monotonic() - started), 0.5)
        return _virsh(uri, ["domstats", "--state", "--block", "--backing", "--list-active"],
                      left, timeout)


def read_libvirt(view: LiveView, uri: str, timeout: float = LIBVIRT_TIMEOUT) -> None:
    """Fill `view` from one read-only domstats call (plus virsh's ``domblkerror`` for each
    domain paused by an I/O error, which only then says which disk failed); on failure set
    view.libvirt_note."""
    deadline = time.monotonic() + timeout
    text, note = _domstats(uri, timeout)
    if text is None:
        view.libvirt_note = note
        return
    states = parse_domain_states(text)
    errors: dict[str, Optional[dict[str, PauseReason]]] = {}
    for domain, state in states.items():
        if state.io_error:
            left = max(deadline - time.monotonic(), 0.5)
            answer, _ = _virsh(uri, ["domblkerror", domain], left)
            errors[domain] = parse_disk_errors(answer) if answer is not None else None
    running = DomainState(1, 0)
    for disk in parse_domstats(text):
        view.libvirt_domains.add(disk.domain)
        pause = libvirt_pause(disk.domain, disk.disk, states.get(disk.domain, running),
                              errors.get(disk.domain))
        view.add(replace(disk, pause=pause))


def gather_live(libvirt_uri: Optional[str], qmp_sockets: Iterable[str] = (), *,
                libvirt_timeout: float = LIBVIRT_TIMEOUT,
                qmp_timeout: float = QMP_TIMEOUT) -> LiveView:
    """One run's live view: libvirt (unless `libvirt_uri` is None), then each QMP socket."""
    view = LiveView()
    if libvirt_uri is not None:
        read_libvirt(view, libvirt_uri, libvirt_timeout)
    else:
        view.libvirt_note = "live figures off (--no-live)"
    if qmp_sockets:
        _read_qmp(view, qmp_sockets, qmp_timeout)
    return view


def _read_qmp(view: LiveView, qmp_sockets: Iterable[str], timeout: float) -> None:
    from .qmp import qmp_disks  # the QMP client (sockets) only when a --qmp socket is named

    for path in qmp_sockets:
        try:
            pid, disks = qmp_disks(path, timeout)
        except Qcow2Error as exc:
            view.errors.append(exc)
            continue
        if pid is not None:
            view.qmp_pids.add(pid)
        for disk in disks:
            view.add(disk)


class PendingLive:
    """gather_live() in a thread, so that the virsh round trip overlaps with target discovery:
    start it first, wait() for the view when the first image is about to be analysed.

    The thread is _thread's (what threading.Thread runs on), with a lock released when it is
    done: importing threading is a start-up cost (bench/bench_start.py). Like a daemon thread,
    it does not hold up the interpreter's exit."""

    def __init__(self, libvirt_uri: Optional[str], qmp_sockets: Iterable[str] = ()) -> None:
        self._view: Optional[LiveView] = None
        self._raised: Optional[BaseException] = None
        self._args = (libvirt_uri, list(qmp_sockets))
        self._running = _thread.allocate_lock()
        self._running.acquire()
        _thread.start_new_thread(self._run, ())

    def _run(self) -> None:
        try:
            self._view = gather_live(*self._args)
        except BaseException as exc:  # not handled here: wait() raises it in the caller
            self._raised = exc
        finally:
            self._running.release()

    def wait(self) -> LiveView:
        """The view, or what gather_live() raised, raised again in the waiting thread."""
        with self._running:  # released when the thread is done
            pass
        if self._raised is not None:
            raise self._raised
        assert self._view is not None
        return self._view
