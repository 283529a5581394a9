"""Benchmark: `qemu-img check` against `qcow2-analyze check`, side by side.

Builds (once) in WORKDIR (default ./bench-work) 1 TiB and 4 TiB preallocation=metadata images
(16.7 M and 67 M allocated clusters, 128 and 512 MiB of L2 tables) and a 64 TiB sparse image
with a little data, then runs both tools on each (after one warm-up run, so both read from
the page cache) and prints whole-process wall time, CPU time (user + system) and peak RSS
(from wait4's rusage of each child) with ratios. On a shared machine the CPU time is the
steadier figure: wall time grows with the other processes' load. `--busy N` runs N CPU-bound
processes beside both tools for the whole timed part, to show the ratios on a loaded host.

    .venv/bin/python bench/bench_check.py [WORKDIR] [--runs N] [--busy N]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

from bench_usage import BIN, child_run

TiB = 1 << 40


def build(workdir: Path) -> list[Path]:
    workdir.mkdir(parents=True, exist_ok=True)
    images = []
    for size in ("1T", "4T"):
        big = workdir / f"prealloc-metadata-{size}.qcow2"
        if not big.exists():
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o",
                            "preallocation=metadata", str(big) + ".tmp", size], check=True)
            os.rename(str(big) + ".tmp", big)
        images.append(big)
    sparse = workdir / "sparse-64T.qcow2"
    if not sparse.exists():
        tmp = str(sparse) + ".tmp"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", tmp, "64T"], check=True)
        subprocess.run(["qemu-io", "-c", "write -P 1 0 1M", "-c", "write -P 2 32T 1M",
                        "-c", "write -P 3 63T 4M", tmp], check=True, capture_output=True)
        os.rename(tmp, sparse)
    return [*images, sparse]


def analyzer() -> list[str]:
    script = BIN / "qcow2-analyze"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "qcow2_monitor.analyze"]


Row = tuple[str, str, float, float, int, int]


def measure(argv: list[str]) -> tuple[float, float, int, int]:
    """Wall seconds, CPU seconds, peak RSS in KiB and exit code of one child process."""
    wall, usage, code = child_run(argv, ok_codes=None)  # the exit codes are compared
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss, code


def bench(images: list[Path], runs: int) -> list[Row]:
    rows = []
    for image in images:
        tools = {"qemu-img check": ["qemu-img", "check", "-f", "qcow2", str(image)],
                 "qcow2-analyze check": [*analyzer(), "check", str(image)]}
        for name, argv in tools.items():
            measure(argv)  # warm-up: page cache
            best = min((measure(argv) for _ in range(runs)), key=lambda r: r[0])
            rows.append((image.name, name, *best))
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", nargs="?", default="bench-work")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per tool (best kept)")
    parser.add_argument("--busy", type=int, default=0, metavar="N",
                        help="CPU-bound processes running beside the tools (default 0)")
    args = parser.parse_args(argv)
    images = build(Path(args.workdir).resolve())
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(args.busy)]
    try:
        rows = bench(images, args.runs)
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()
    if busy:
        print(f"with {len(busy)} CPU-bound processes beside the tools "
              f"(load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs)")
    print(f"{'image':<28} {'tool':<21} {'wall s':>8} {'CPU s':>7} {'peak RSS MiB':>13} "
          f"{'exit':>5}")
    for image, tool, wall, cpu, rss, code in rows:
        print(f"{image:<28} {tool:<21} {wall:8.3f} {cpu:7.3f} {rss / 1024:13.1f} {code:5d}")
    print()
    for i in range(0, len(rows), 2):
        qemu, ours = rows[i], rows[i + 1]
        print(f"{qemu[0]}: time ratio ours/qemu = {ours[2] / qemu[2]:.2f} (CPU "
              f"{ours[3] / qemu[3]:.2f}), peak RSS ours = {ours[4] / 1024:.1f} MiB (qemu "
              f"{qemu[4] / 1024:.1f} MiB), same exit code: {qemu[5] == ours[5]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
