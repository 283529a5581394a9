"""Benchmark: what live figures from libvirt cost in one `qcow2-analyze usage` run.

    .venv/bin/python bench/bench_live.py [--images 500] [--domains 20] [--repeat 5]

Starts a private libvirtd (as the tests do: tests/live_daemons.py; root, TCG), creates
--images qcow2 images of which the first --domains are the disks of running domains (each
written through its device, so the live figure is ahead of the on-disk one), then times the
same `usage` run over all images with libvirt answering and with --no-live (median of
--repeat runs each, interleaved). Also times the run when no libvirt listens at the URI, and
the bare virsh call.
Prints the figures and fails when the live run takes more than 1.5x the --no-live run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from daemons import make_image  # noqa: E402
from live_daemons import file_disk, start_libvirtd, stop_libvirtd  # noqa: E402

LIMIT = 1.5


def usage_run(args: list[str]) -> tuple[float, list[dict[str, object]]]:
    argv = [sys.executable, "-m", "qcow2_monitor.analyze", "usage", "--output", "json", *args]
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"usage exited {proc.returncode}: {proc.stderr[:400]}")
    return elapsed, list(json.loads(proc.stdout))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--domains", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    opts = parser.parse_args()

    libvirt = start_libvirtd()
    work = Path(tempfile.mkdtemp(prefix="bench-live-", dir=libvirt.directory))
    try:
        first = make_image(work / "img0000.qcow2", "1G")
        for index in range(1, opts.images):
            shutil.copyfile(first, work / f"img{index:04d}.qcow2")
        started = time.perf_counter()
        for index in range(opts.domains):
            name = f"bench{index}"
            libvirt.create(name, file_disk(work / f"img{index:04d}.qcow2", "sda", 0))
            libvirt.qemu_io(name, 0, f"write -P 1 0 {1 + index % 4}M")
        print(f"{opts.domains} domains started and written in "
              f"{time.perf_counter() - started:.1f} s")

        live_args = ["--libvirt-uri", libvirt.ro_uri, str(work)]
        off_args = ["--no-live", str(work)]
        down_args = ["--libvirt-uri", f"qemu+unix:///system?socket={work}/none", str(work)]
        _, results = usage_run(live_args)  # warm-up, and the figures are checked once
        covered = [r for r in results if r.get("live_end_offset") is not None]
        ahead = [r for r in covered if r["end_offset_source"] == "live"]
        assert len(results) == opts.images, len(results)
        assert len(covered) == opts.domains and len(ahead) == opts.domains, (covered, ahead)
        usage_run(off_args)

        virsh = ["virsh", "-r", "-q", "-c", libvirt.ro_uri, "domstats", "--block", "--backing",
                 "--list-active"]
        times: dict[str, list[float]] = {"live": [], "no-live": [], "libvirt down": []}
        virsh_times: list[float] = []
        for _ in range(opts.repeat):
            times["live"].append(usage_run(live_args)[0])
            times["no-live"].append(usage_run(off_args)[0])
            times["libvirt down"].append(usage_run(down_args)[0])
            start = time.perf_counter()
            subprocess.run(virsh, capture_output=True, check=True)
            virsh_times.append(time.perf_counter() - start)
    finally:
        stop_libvirtd(libvirt)

    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"{opts.images} images, {opts.domains} running domains, median of {opts.repeat}:")
    for name, value in median.items():
        print(f"  usage {name:<13} {value * 1000:7.1f} ms  "
              f"({value / median['no-live']:.2f}x --no-live)")
    print(f"  the virsh domstats call alone: {statistics.median(virsh_times) * 1000:.1f} ms")
    ratio = median["live"] / median["no-live"]
    if ratio > LIMIT:
        print(f"FAIL: live run {ratio:.2f}x the --no-live run (limit {LIMIT}x)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
