"""The live sources a run asks (host/live.py has their clients): declared apart from the clients
so that a run that asks none imports neither threads, sockets nor subprocesses."""

from __future__ import annotations

from ..common.record import frozen_record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional

DEFAULT_LIBVIRT_URI = "qemu:///system"


@frozen_record
class LiveSources:
    """The live sources one run asks (host/live.py): libvirt at `libvirt_uri` (None: not
    asked) and the QMP sockets `qmp`. Declared here, with the model, so that a run that asks
    none never imports the clients."""

    libvirt_uri: Optional[str] = None
    qmp: tuple[str, ...] = ()

    @property
    def asked(self) -> bool:
        return self.libvirt_uri is not None or bool(self.qmp)


NO_LIVE_SOURCES = LiveSources()


def no_live_source_note(reason: Optional[str]) -> str:
    """Why no live source covers an image, and how to get one."""
    why = f" ({reason})" if reason else ""
    return (f"no live source covers it{why}: let libvirt answer (--libvirt-uri URI, read-only) "
            "or name the qemu's QMP socket with --qmp SOCKET")
