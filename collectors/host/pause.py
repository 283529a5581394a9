"""Why a running VM is paused, per disk, as libvirt and QMP say it (read-only).

When a guest writes past the end of its volume, qemu's default write error policy
(``werror=enospc``) stops the VM: libvirt then reports the domain paused with reason "I/O
error" and the disk's error "no space"; QMP reports ``query-status`` ``io-error`` and the
device's ``io-status`` ``nospace`` in ``query-block``. A VM paused by its user, a migration or
a snapshot is paused too, but nothing is wrong with its disks.

Each disk of a paused VM gets one reason (the ``PAUSE_*`` names below):

* ``nospace``: writing this disk failed for lack of space (the thin-provisioning outage);
* ``ioerror``: writing this disk failed otherwise (or libvirt names no disk for the error);
* ``other-disk``: the VM is paused by an I/O error of another of its disks or layers;
* otherwise the VM's own reason, in libvirt's words (``user``, ``migration``, ``snapshot``,
  ...; QMP's run states are mapped to the same words).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from ..report.model import (
    PAUSE_IOERROR,
    PAUSE_NOSPACE,
    PAUSE_OTHER_DISK,
    PAUSE_UNKNOWN,
    PAUSE_USER,
    Pause,
)

# libvirt's virDomainState: only PAUSED (3) is a paused VM.
LIBVIRT_STATE_PAUSED = 3
# virDomainPausedReason, in libvirt's order (include/libvirt/libvirt-domain.h).
LIBVIRT_PAUSED_REASONS = ("unknown", "user", "migration", "save", "dump", "ioerror",
                          "watchdog", "from-snapshot", "shutting-down", "snapshot",
                          "starting-up", "postcopy", "postcopy-failed", "api-error")
LIBVIRT_PAUSED_IOERROR = 5
# virsh domblkerror's words for virDomainDiskErrorCode (tools/virsh-domain-monitor.c).
LIBVIRT_DISK_ERRORS = {"no space": PAUSE_NOSPACE, "unspecified error": PAUSE_IOERROR}

# QMP's RunState values of a stopped VM (qapi/run-state.json), in libvirt's words; running
# states (running, suspended by the guest itself) are absent: not paused.
QMP_RUN_STATES = {"paused": PAUSE_USER, "io-error": PAUSE_IOERROR, "watchdog": "watchdog",
                  "inmigrate": "migration", "postmigrate": "migration",
                  "finish-migrate": "migration", "save-vm": "save", "restore-vm": "save",
                  "prelaunch": "starting-up", "shutdown": "shutting-down",
                  "guest-panicked": "panicked", "internal-error": "internal-error",
                  "debug": "debug", "colo": "colo"}
# query-block io-status of a device (qapi/block.json BlockDeviceIoStatus).
QMP_IO_STATUS = {"nospace": PAUSE_NOSPACE, "failed": PAUSE_IOERROR}


# --- libvirt ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DomainState:
    state: int
    reason: int

    @property
    def paused(self) -> bool:
        return self.state == LIBVIRT_STATE_PAUSED

    @property
    def reason_name(self) -> str:
        if 0 <= self.reason < len(LIBVIRT_PAUSED_REASONS):
            return LIBVIRT_PAUSED_REASONS[self.reason]
        return PAUSE_UNKNOWN

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

    for line in text.splitlines():
        if line.startswith("Domain: "):
            flush()
            domain, values = domain_name(line), {}
            continue
        key, sep, value = line.strip().partition("=")
        if sep and key.startswith("state.") and key.count(".") == 1:
            values[key[len("state."):]] = value
    flush()
    return states


def domain_name(line: str) -> str:
    """The name on a ``Domain: 'NAME'`` line of virsh domstats."""
    quoted = line[len("Domain: "):].strip()
    return quoted[1:-1] if len(quoted) >= 2 and quoted[0] == quoted[-1] == "'" else quoted


def parse_disk_errors(text: str) -> dict[str, str]:
    """``virsh domblkerror DOMAIN`` output (``vda: no space``, or ``No errors found``): the
    PAUSE_* reason of each disk target with an error."""
    errors: dict[str, str] = {}
    for line in text.splitlines():
        target, sep, error = line.strip().partition(": ")
        if sep and target and " " not in target:
            errors[target] = LIBVIRT_DISK_ERRORS.get(error.strip().lower(), PAUSE_IOERROR)
    return errors


def libvirt_pause(domain: str, label: str, state: DomainState,
                  disk_errors: Optional[dict[str, str]]) -> Optional[Pause]:
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


def _io_error_pause(domain: str, disk: str, own: Optional[str], errors: dict[str, str],
                   resume: str) -> Pause:
    """The pause of `disk` of a VM paused on an I/O error: its own error's reason; else, when
    other disks failed (`errors`: disk or file name -> reason), that it waits on those; else
    the plain I/O error."""
    if own is not None:
        return Pause(domain, disk, own, resume=resume)
    if errors:
        failing = ", ".join(f"{name}: {reason}" for name, reason in sorted(errors.items()))
        return Pause(domain, disk, PAUSE_OTHER_DISK, error_disk=failing, resume=resume)
    return Pause(domain, disk, PAUSE_IOERROR, resume=resume)


# --- QMP --------------------------------------------------------------------------------------


def qmp_vm_reason(status: Any) -> Optional[str]:
    """The VM's pause reason from ``query-status``, None while it runs."""
    if not isinstance(status, dict) or status.get("running") is not False:
        return None
    return QMP_RUN_STATES.get(str(status.get("status")), PAUSE_UNKNOWN)


def qmp_device_errors(block: Any) -> dict[str, str]:
    """From ``query-block``: the image file name of each device whose io-status is an error,
    with its PAUSE_* reason."""
    errors: dict[str, str] = {}
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


def qmp_pause(domain: str, node: str, filename: str, vm_reason: Optional[str],
              device_errors: dict[str, str]) -> Optional[Pause]:
    """The pause of the node `node` (image `filename`) of a qemu paused for `vm_reason`."""
    if vm_reason is None:
        return None
    resume = "the QMP command cont"
    if vm_reason != PAUSE_IOERROR:
        return Pause(domain, node, vm_reason, resume=resume)
    return _io_error_pause(domain, node, device_errors.get(filename), device_errors, resume)


SEVERITY = {PAUSE_NOSPACE: 3, PAUSE_IOERROR: 2, PAUSE_OTHER_DISK: 1}


def worse(a: Optional[Pause], b: Optional[Pause]) -> Optional[Pause]:
    """The pause that matters more for a disk two VMs use (a shared base): I/O errors first."""
    if a is None or b is None:
        return a or b
    return b if SEVERITY.get(b.reason, 0) > SEVERITY.get(a.reason, 0) else a
