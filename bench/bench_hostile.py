"""Benchmark: the CPU time of every command on the hostile images the fuzzer found.

The speed goal behind the work bounds of tests/test_fuzz.py: no command takes over 1 s of CPU
on an image under 100 MB, whatever its bytes. The tests bound the work exactly (calls, reads,
bytes read) because time is not the same on a busy machine; this measures the time itself.
The images are the tests' own (tests/hostile.py builds them); every command and adapter runs
in process as the fuzzer runs it, both output formats, after one warm-up run, best of
--runs. `--busy N` keeps N CPU-bound processes running beside it, to show a loaded host.

    .venv/bin/python bench/bench_hostile.py [WORKDIR] [--runs N] [--busy N]
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from corpus import QEMU_IMG, QEMU_IO, run  # noqa: E402
from fuzzing import Call, calls, run_call  # noqa: E402
from hostile import (  # noqa: E402
    bitmaps_sharing_one_table,
    l2_tables_image,
    one_table_named,
    refcount_table_over_data,
    repoint_l1,
    snapshots_with_own_l1_tables,
)

MiB = 1 << 20


def _l1_naming_one_table(path: Path) -> None:
    run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", str(path), "1M"])
    run([QEMU_IO, "-f", "qcow2", "-c", "write -P 5 0 300k", str(path)])
    repoint_l1(path, 4 * MiB)


def _snapshots(path: Path) -> None:
    run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-o", "cluster_size=512", str(path), "1M"])
    run([QEMU_IO, "-f", "qcow2", "-c", "write -P 5 0 30k", str(path)])
    run([QEMU_IMG, "snapshot", "-c", "s1", str(path)])
    snapshots_with_own_l1_tables(path, 65536, 1)


CASES: dict[str, Callable[[Path], None]] = {
    "L1 of 4 Mi entries (32 MiB) all naming one L2 table": _l1_naming_one_table,
    "92 MB of L2 tables with random entries": lambda p: l2_tables_image(p, "random"),
    "92 MB of L2 tables, every entry an allocated cluster": lambda p: l2_tables_image(
        p, "allocated"),
    "65536 snapshots, each with an L1 table of its own": _snapshots,
    "8 TiB image whose L1 names one L2 table 4 Mi times": lambda p: one_table_named(
        p, 4 * MiB, "8T"),
    "65535 persistent bitmaps naming one table": lambda p: bitmaps_sharing_one_table(p, 65535),
    "refcount table over 8 MiB of guest data": refcount_table_over_data,
}


def _label(call: Call) -> str:
    argv = list(call.argv)
    return f"{call.name} {argv[argv.index('--output') + 1]}" if "--output" in argv \
        else call.name


def _best_cpu(call: Call, path: Path, runs: int) -> float:
    run_call(call, str(path))  # warm-up: imports, page cache
    return min(run_call(call, str(path))[2].cpu_seconds for _ in range(runs))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", nargs="?", type=Path, default=None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--busy", type=int, default=0, metavar="N")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-hostile-"))
    workdir.mkdir(parents=True, exist_ok=True)
    images = {}
    for index, (name, build) in enumerate(CASES.items()):
        path = workdir / f"case{index}.qcow2"
        if not path.exists():
            build(path)
        images[name] = path
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(args.busy)]
    try:
        print(f"CPU seconds, best of {args.runs}, {args.busy} busy processes beside; every "
              "command, both output formats")
        print(f"{'hostile image':<54} {'size':>8}  {'slowest command':<26} {'CPU':>6}")
        for name, path in images.items():
            figures = [(_best_cpu(call, path, args.runs), _label(call))
                       for seed in range(2) for call in calls(random.Random(seed))]
            cpu, command = max(figures)
            size = f"{path.stat().st_size / 1e6:.0f} MB"
            print(f"{name:<54} {size:>8}  {command:<26} {cpu:6.2f}", flush=True)
    finally:
        for process in busy:
            process.kill()
            process.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
