"""collectors/host/sources.py: which live sources a run asks, and what an operator is told
when none covers an image."""

from __future__ import annotations

import subprocess
import sys

from qcow2_monitor.collectors.host.sources import (
    DEFAULT_LIBVIRT_URI,
    NO_LIVE_SOURCES,
    LiveSources,
    no_live_source_note,
)


def test_what_is_asked() -> None:
    assert not NO_LIVE_SOURCES.asked and LiveSources(None, ()) == NO_LIVE_SOURCES
    assert LiveSources(DEFAULT_LIBVIRT_URI).asked and DEFAULT_LIBVIRT_URI == "qemu:///system"
    assert LiveSources(None, ("/run/qmp.sock",)).asked


def test_the_note_says_why_and_what_to_do() -> None:
    assert no_live_source_note(None) == (
        "no live source covers it: let libvirt answer (--libvirt-uri URI, read-only) or name "
        "the qemu's QMP socket with --qmp SOCKET")
    assert no_live_source_note("live figures off (--no-live)").startswith(
        "no live source covers it (live figures off (--no-live)): let libvirt answer")


def test_declaring_the_sources_imports_no_client() -> None:
    code = ("import sys; import qcow2_monitor.collectors.host.sources; "
            "print(sorted({'socket', 'subprocess', 'threading', 'qcow2_monitor.collectors.host"
            ".live'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd="/")
    assert done.stdout.strip() == "[]"
