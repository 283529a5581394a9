"""Why a running VM is paused, per disk, as libvirt and QMP say it (read-only).

When a guest writes past the end of its volume, qemu's default write error policy
(``werror=enospc``) stops the VM: libvirt then reports the domain paused with reason "I/O
error" and the disk's error "no space"; QMP reports ``query-status`` ``io-error`` and the
device's ``io-status`` ``nospace`` in ``query-block``. A VM paused by its user, a migration or
a snapshot is paused too, but nothing is wrong with its disks.

Each disk of a paused VM gets one reason (a ``PauseReason`` of the result model):

* ``nospace``: writing this disk failed for lack of space (the thin-provisioning outage);
* ``ioerror``: writing this disk failed otherwise (or libvirt names no disk for the error);
* ``other-disk``: the VM is paused by an I/O error of another of its disks or layers;
* otherwise the VM's own reason, in libvirt's words (``user``, ``migration``, ``snapshot``,
  ...; QMP's run states are mapped to the same words, those libvirt has none for keep QMP's:
  ``panicked``, ``internal-error``, ``debug``, ``colo``).
"""

from __future__ import annotations

from ..common.record import frozen_record
from ..report.model import Pause, PauseReason

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Optional

# libvirt's virDomainState: only PAUSED (3) is a paused VM.
LIBVIRT_STATE_PAUSED = 3
# virDomainPausedReason, in libvirt's order (include/libvirt/libvirt-domain.h): the index is
# libvirt's number.
LIBVIRT_PAUSED_REASONS = (
    PauseReason.UNKNOWN, PauseReason.USER, PauseReason.MIGRATION, PauseReason.SAVE,
    PauseReason.DUMP, PauseReason.IOERROR, PauseReason.WATCHDOG, PauseReason.FROM_SNAPSHOT,
    PauseReason.SHUTTING_DOWN, PauseReason.SNAPSHOT, PauseReason.CRASHED,
    PauseReason.STARTING_UP, PauseReason.POSTCOPY, PauseReason.POSTCOPY_FAILED,
    PauseReason.API_ERROR)
LIBVIRT_PAUSED_IOERROR = 5
# virsh domblkerror's words for virDomainDiskErrorCode (tools/virsh-domain-monitor.c).
LIBVIRT_DISK_ERRORS = {"no space": PauseReason.NOSPACE, "unspecified error": PauseReason.IOERROR}

# QMP's RunState values of a stopped VM (qapi/run-state.json), in libvirt's words; running
# states (running, suspended by the guest itself) are absent: not paused.
QMP_RUN_STATES = {
    "paused": PauseReason.USER, "io-error": PauseReason.IOERROR,
    "watchdog": PauseReason.WATCHDOG, "inmigrate": PauseReason.MIGRATION,
    "postmigrate": PauseReason.MIGRATION, "finish-migrate": PauseReason.MIGRATION,
    "save-vm": PauseReason.SAVE, "restore-vm": PauseReason.SAVE,
    "prelaunch": PauseReason.STARTING_UP, "shutdown": PauseReason.SHUTTING_DOWN,
    "guest-panicked": PauseReason.PANICKED, "internal-error": PauseReason.INTERNAL_ERROR,
    "debug": PauseReason.DEBUG, "colo": PauseReason.COLO}
# The guest put itself to sleep (S3): query-status says `running: false` here too
# (runstate_is_running() is RUN_STATE_RUNNING only), yet nobody paused the VM (libvirt says
# pmsuspended, not paused).
QMP_GUEST_SUSPENDED = "suspended"
# query-block io-status of a device (qapi/block.json BlockDeviceIoStatus).
QMP_IO_STATUS = {"nospace": PauseReason.NOSPACE, "failed": PauseReason.IOERROR}


# --- libvirt ----------------------------------------------------------------------------------


@frozen_record
class DomainState:
    state: int
    reason: int

    @property
    def paused(self) -> bool:
        return self.state == LIBVIRT_STATE_PAUSED

    @property
    def reason_name(self) -> PauseReason:
        if 0 <= self.reason < len(LIBVIRT_PAUSED_REASONS):
            return LIBVIRT_PAUSED_REASONS[self.reason]
        return PauseReason.UNKNOWN  # a reason newer than our list: paused all the same

    @property
    def io_error(self) -> bool:
        return self.paused and self.reason == LIBVIRT_PAUSED_IOERROR


def parse_domain_states(text: str) -> dict[str, DomainState]:
    """``state.state`` and ``state.reason`` of every domain in ``virsh domstats --state``
    output (a domain without them is left out)."""
    states: dict[str, DomainState] = {}
    domain: Optional[str] = None
    values: dict[str, str] = {}

    def flush() -> None:
        state, reason = values.get("state"), values.get("reason", "0")
        if domain is not None and state is not None and state.isdigit() and reason.isdigit():
            states[domain] = DomainState(int(state), int(reason))

    for line in domstats_lines(text):
        if line.startswith("Domain: "):
            flush()
            domain, values = domain_name(line), {}
            continue
        key, sep, value = stat_entry(line)
        if sep and key.startswith("state.") and key.count(".") == 1:
            values[key[len("state."):]] = value
    flush()
    return states


def domstats_lines(text: str) -> list[str]:
    """The lines of ``virsh domstats`` output. They end at "\\n" only: virsh prints a disk's
    path and a domain's name as they are, and str.splitlines() would also end a line inside one
    at U+2028, U+2029 or U+0085, losing the disk's live figure and pause."""
    return text.split("\n")


def stat_entry(line: str) -> tuple[str, str, str]:
    """(key, "=", value) of a ``  key=value`` line of ``virsh domstats``: the value as virsh
    printed it, trailing spaces included (a file name may end in one)."""
    return line.lstrip().partition("=")


def domain_name(line: str) -> str:
    """The name on a ``Domain: 'NAME'`` line of virsh domstats."""
    quoted = line[len("Domain: "):].strip()
    return quoted[1:-1] if len(quoted) >= 2 and quoted[0] == quoted[-1] == "'" else quoted


def parse_disk_errors(text: str) -> dict[str, PauseReason]:
    """``virsh domblkerror DOMAIN`` output (``vda: no space``, or ``No errors found``): the
    reason of each disk target with an error."""
    errors: dict[str, PauseReason] = {}
    for line in text.splitlines():
        target, sep, error = line.strip().partition(": ")
        if sep and target and " " not in target:
            errors[target] = LIBVIRT_DISK_ERRORS.get(error.strip().lower(), PauseReason.IOERROR)
    return errors


def libvirt_pause(domain: str, label: str, state: DomainState,
                  disk_errors: Optional[dict[str, PauseReason]]) -> Optional[Pause]:
    """The pause of disk `label` (``vda``, or ``vda[2]`` for a backing layer) of `domain`.
    `disk_errors` is domblkerror's answer (None when it could not be asked)."""
    if not state.paused:
        return None
    resume = f"virsh resume {domain}"
    if not state.io_error:
        return Pause(domain, label, state.reason_name, resume=resume)
    target, _, layer = label.partition("[")
    errors = disk_errors or {}
    own = errors.get(target) if not layer else None  # only the top layer is written
    return _io_error_pause(domain, label, own, errors, resume)


def _io_error_pause(domain: str, disk: str, own: Optional[PauseReason],
                    errors: dict[str, PauseReason], resume: str) -> Pause:
    """The pause of `disk` of a VM paused on an I/O error: its own error's reason; else, when
    other disks failed (`errors`: disk or file name -> reason), that it waits on those; else
    the plain I/O error."""
    if own is not None:
        return Pause(domain, disk, own, resume=resume)
    if errors:
        failing = ", ".join(f"{name}: {reason}" for name, reason in sorted(errors.items()))
        return Pause(domain, disk, PauseReason.OTHER_DISK, error_disk=failing, resume=resume)
    return Pause(domain, disk, PauseReason.IOERROR, resume=resume)


# --- QMP --------------------------------------------------------------------------------------


def qmp_vm_reason(status: Any) -> Optional[PauseReason]:
    """The VM's pause reason from ``query-status``, None while it runs."""
    if not isinstance(status, dict) or status.get("running") is not False:
        return None
    if status.get("status") == QMP_GUEST_SUSPENDED:
        return None
    return QMP_RUN_STATES.get(str(status.get("status")), PauseReason.UNKNOWN)


def qmp_device_errors(block: Any) -> dict[str, PauseReason]:
    """From ``query-block``: the image file name of each device whose io-status is an error,
    with its reason."""
    errors: dict[str, PauseReason] = {}
    for device in block if isinstance(block, list) else []:
        if not isinstance(device, dict):
            continue
        reason = QMP_IO_STATUS.get(str(device.get("io-status")))
        inserted = device.get("inserted")
        if reason is None or not isinstance(inserted, dict):
            continue
        filename = inserted.get("file")
        if isinstance(filename, str):
            errors[filename] = reason
    return errors


def qmp_pause(domain: str, node: str, filename: str, vm_reason: Optional[PauseReason],
              device_errors: dict[str, PauseReason]) -> Optional[Pause]:
    """The pause of the node `node` (image `filename`) of a qemu paused for `vm_reason`."""
    if vm_reason is None:
        return None
    resume = "the QMP command cont"
    if vm_reason != PauseReason.IOERROR:
        return Pause(domain, node, vm_reason, resume=resume)
    return _io_error_pause(domain, node, device_errors.get(filename), device_errors, resume)


SEVERITY = {PauseReason.NOSPACE: 3, PauseReason.IOERROR: 2, PauseReason.OTHER_DISK: 1}


def worse(a: Optional[Pause], b: Optional[Pause]) -> Optional[Pause]:
    """The pause that matters more for a disk two VMs use (a shared base): I/O errors first."""
    if a is None or b is None:
        return a or b
    return b if SEVERITY.get(b.reason, 0) > SEVERITY.get(a.reason, 0) else a
