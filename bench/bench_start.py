"""Benchmark: what one process costs to start and answer for one image, side by side with the
floor (`python -c pass`, the same interpreter) and `qemu-img info`, in one run.

    .venv/bin/python bench/bench_start.py [--repeat 21] [--no-libvirt]

Nagios and Icinga start one process per service check: on a host with hundreds of disks the
start is the plugin's whole cost. Each command runs --repeat times, the commands interleaved
(so that load changes touch them alike); the figure is the median CPU time (user + system,
from wait4: the process and every child it waited for, virsh included) and the median wall
time. Unless --no-libvirt, a private libvirtd is started (as the tests start it:
tests/live_daemons.py, root) so that `check_qcow2` with the libvirt live source asks a real
one (no domain runs: the bulk call answers with none, the cost of the call is all there is).

Targets (issue 16): `check_qcow2 -f IMG --no-live` within 3x the CPU of `python -c pass`;
with the libvirt live source within 8x the CPU of `qemu-img info`. Prints the figures and
ratios; exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench_usage import BIN, REPO, child_run

FLOOR_TARGET = 3.0  # check_qcow2 --no-live / python -c pass
LIVE_TARGET = 8.0  # check_qcow2 with libvirt / qemu-img info


def run_once(argv: Sequence[str]) -> tuple[float, float]:
    """CPU seconds (user + system, the child and its waited-for children) and wall seconds of
    one run; fails on a non-zero exit (check_qcow2: 0 is OK, which the image is)."""
    wall, usage, _code = child_run(argv)
    return usage.ru_utime + usage.ru_stime, wall


def commands(image: str, libvirt_uri: str | None) -> dict[str, list[str]]:
    found = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "qemu-img info": ["qemu-img", "info", image],
        "check_qcow2 --no-live": [str(BIN / "check_qcow2"), "-f", image, "--no-live"],
        "qcow2-telegraf --no-live": [str(BIN / "qcow2-telegraf"), "--no-live", image],
        "qcow2-textfile --no-live": [str(BIN / "qcow2-textfile"), "--no-live", "--output", "-",
                                     image],
        "qcow2-analyze usage --no-live": [str(BIN / "qcow2-analyze"), "usage", "--no-live",
                                          image],
        "qcow2-analyze info": [str(BIN / "qcow2-analyze"), "info", image],
    }
    if libvirt_uri is not None:
        found["check_qcow2 (libvirt)"] = [str(BIN / "check_qcow2"), "-f", image,
                                          "--libvirt-uri", libvirt_uri]
    return found


def measure(argvs: dict[str, list[str]], repeat: int) -> dict[str, tuple[float, float]]:
    """Median CPU and wall seconds of each command, the commands interleaved."""
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in argvs}
    for argv in argvs.values():  # one warm-up run each: page cache, .pyc files
        run_once(argv)
    for _ in range(repeat):
        for name, argv in argvs.items():
            samples[name].append(run_once(argv))
    return {name: (statistics.median(cpu for cpu, _ in runs),
                   statistics.median(wall for _, wall in runs))
            for name, runs in samples.items()}


def report(figures: dict[str, tuple[float, float]]) -> bool:
    floor, qemu = figures["python -c pass"][0], figures["qemu-img info"][0]
    print(f"{'command':32} {'CPU ms':>8} {'wall ms':>8} {'x floor':>8} {'x qemu-img':>10}")
    for name, (cpu, wall) in figures.items():
        print(f"{name:32} {cpu * 1000:8.1f} {wall * 1000:8.1f} {cpu / floor:8.2f} "
              f"{cpu / qemu:10.2f}")
    met = True
    ratio = figures["check_qcow2 --no-live"][0] / floor
    ok = ratio <= FLOOR_TARGET
    met &= ok
    print(f"check_qcow2 --no-live: {ratio:.2f}x python -c pass (target {FLOOR_TARGET:g}x): "
          f"{'met' if ok else 'MISSED'}")
    if "check_qcow2 (libvirt)" in figures:
        ratio = figures["check_qcow2 (libvirt)"][0] / qemu
        ok = ratio <= LIVE_TARGET
        met &= ok
        print(f"check_qcow2 with libvirt: {ratio:.2f}x qemu-img info (target {LIVE_TARGET:g}x): "
              f"{'met' if ok else 'MISSED'}")
    return met


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=21)
    parser.add_argument("--no-libvirt", action="store_true",
                        help="skip the run with the libvirt live source (no libvirtd started)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-start-") as work:
        # The adapters keep growth samples by default, as they do here, in a private directory
        # (root's default is /var/lib/qcow2-monitor, which a benchmark must not create).
        os.environ["MP_STATE_PATH"] = work
        image = str(Path(work) / "disk.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", image, "10G"], check=True)
        subprocess.run(["qemu-io", "-c", "write 0 64M", image], check=True,
                       capture_output=True)
        libvirt = None
        if not args.no_libvirt:
            sys.path.insert(0, str(REPO / "tests"))
            from live_daemons import start_libvirtd

            libvirt = start_libvirtd()
        try:
            uri = libvirt.ro_uri if libvirt is not None else None
            met = report(measure(commands(image, uri), args.repeat))
        finally:
            if libvirt is not None:
                from live_daemons import stop_libvirtd

                stop_libvirtd(libvirt)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
