"""A real guest that fills its thin volume until qemu pauses it on ENOSPC.

The guest is a 512-byte boot sector (assembled here with nasm) that writes 32 KiB at a time at
increasing sectors through BIOS INT 13h; SeaBIOS drives the virtio disk. Its disk is a qcow2
written directly on a small loop device, as on a thin LVM volume: when qemu needs a cluster
past the device's end, the write fails with ENOSPC and qemu's default write error policy
(werror=enospc) stops the VM. Under TCG a 64 MiB device fills within about 10 s.

The same guest runs in a libvirt domain (libvirt reports it paused, reason I/O error, disk
error "no space") or in plain qemu with a QMP socket (query-status io-error, query-block
io-status nospace).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import daemons
from daemons import require_binary, run

MiB = 1024 * 1024
VOLUME_SIZE = 64 * MiB  # small, so that the guest fills it within seconds
VIRTUAL_SIZE = "4G"
PAUSE_TIMEOUT = 120.0  # ~10 s here; generous for a busy machine

daemons.PACKAGES.update({"nasm": "nasm"})

BOOT_SECTOR = """\
bits 16
org 0x7c00
  cli
  xor ax, ax
  mov ds, ax
  mov ss, ax
  mov sp, 0x7c00
  sti
  mov [drive], dl
again:
  mov si, dap
  mov ah, 0x43          ; extended write
  mov al, 0
  mov dl, [drive]
  int 0x13
  add dword [dap+8], 64 ; next 64 sectors
  adc dword [dap+12], 0
  jmp again
drive: db 0
align 4
dap:
  db 0x10, 0
  dw 64                 ; sectors per call
  dw 0x0000, 0x1000     ; buffer 1000:0000
  dq 2048               ; first LBA
times 510-($-$$) db 0
dw 0xaa55
"""


def boot_sector(directory: Path) -> Path:
    """The writer guest, assembled."""
    require_binary("nasm")
    source, binary = directory / "boot.asm", directory / "boot.bin"
    source.write_text(BOOT_SECTOR)
    run(["nasm", "-f", "bin", str(source), "-o", str(binary)])
    assert binary.stat().st_size == 512
    return binary


def thin_volume(directory: Path, name: str, attach: Callable[[Path], str]) -> tuple[Path, str]:
    """A VOLUME_SIZE backing file, its loop device (from `attach`) holding a qcow2 of
    VIRTUAL_SIZE whose first sector is the writer guest."""
    backing = directory / f"{name}.pv"
    backing.write_bytes(b"")
    os.truncate(backing, VOLUME_SIZE)
    device = attach(backing)
    run(["qemu-img", "create", "-q", "-f", "qcow2", device, VIRTUAL_SIZE])
    binary = boot_sector(directory)
    run(["qemu-io", "-f", "qcow2", "-c", f"write -s {binary} 0 512", device])
    return backing, device


def grow(backing: Path, device: str, size: int) -> None:
    """What an operator's lvextend does to the volume: a larger device."""
    os.truncate(backing, size)
    run(["losetup", "-c", device])


def domain_xml(name: str, device: str) -> str:
    return (f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory>"
            "<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type>"
            "<boot dev='hd'/></os><devices><emulator>/usr/bin/qemu-system-x86_64</emulator>"
            "<disk type='block' device='disk'><driver name='qemu' type='qcow2' cache='none'/>"
            f"<source dev='{device}'/><target dev='vda' bus='virtio'/></disk>"
            "</devices></domain>")


def wait_until(what: str, probe: Callable[[], bool], timeout: float = PAUSE_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(0.25)


# --- plain qemu with QMP ----------------------------------------------------------------------


def qmp(path: Path, command: str, **arguments: Any) -> Any:
    """One QMP command on a fresh connection (the test's own client)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(path))
        stream = sock.makefile("rb")
        json.loads(stream.readline())
        for request in ({"execute": "qmp_capabilities"},
                        {"execute": command, **({"arguments": arguments} if arguments else {})}):
            sock.sendall(json.dumps(request).encode() + b"\n")
            while True:
                answer = json.loads(stream.readline())
                if "event" not in answer:
                    break
        assert "return" in answer, answer
        return answer["return"]


@dataclass
class Guest:
    """The writer guest in plain qemu (TCG), with its QMP socket."""

    socket: Path
    pid: int

    def status(self) -> str:
        return str(qmp(self.socket, "query-status")["status"])

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)


def start_qemu_guest(directory: Path, device: str) -> Guest:
    require_binary("qemu-system-x86_64")
    sock, pidfile = directory / "guest.sock", directory / "guest.pid"
    subprocess.run(
        ["qemu-system-x86_64", "-M", "pc", "-accel", "tcg", "-m", "32", "-nodefaults",
         "-display", "none", "-daemonize", "-pidfile", str(pidfile),
         "-drive", f"file={device},format=qcow2,if=virtio,cache=none,node-name=d0",
         "-boot", "c", "-qmp", f"unix:{sock},server=on,wait=off"],
        check=True, capture_output=True, timeout=60)
    return Guest(sock, int(pidfile.read_text().strip()))
