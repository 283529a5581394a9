"""Benchmark: what thin provisioning costs a 500-image run, against a baseline installation.

    .venv/bin/python bench/bench_thin.py --baseline /path/to/other/venv/bin [--images 500]

Runs each adapter (and `qcow2-analyze usage`) over the same images, interleaved, best of
--repeat runs: the baseline's commands (e.g. an install of the previous release), ours with
--no-state (the extension advice, pause and free-below-end figures, no state kept), and ours
keeping state in a directory already at its steady state (720 samples per disk over the
6-hour window: two adapters every minute). Then the cost of free_below_end_bytes alone: the
image end offset from the refcounts (the top blocks down to the end) against the end offset
and the free clusters below it (every refcount block below the end), on a large
preallocated image.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from bench_usage import BIN, REPO, build_many, run, timed


def commands(bin_dir: Path, images: list[str], work: Path, extra: list[str]
             ) -> dict[str, list[str]]:
    return {
        "check_qcow2": [str(bin_dir / "check_qcow2"), "-w", "80", "-c", "90", *extra, *images],
        "qcow2-telegraf": [str(bin_dir / "qcow2-telegraf"), *extra, *images],
        "qcow2-textfile": [str(bin_dir / "qcow2-textfile"), "--output",
                           str(work / "qcow2.prom"), *extra, *images],
        "qcow2-analyze usage": [str(bin_dir / "qcow2-analyze"), "usage", "--output", "json",
                                *extra, *images],
    }


def steady_state(directory: Path, images: list[str]) -> None:
    """A state directory as one-minute runs of two adapters leave it: 720 samples of the last
    6 hours per disk, in the buckets of a state file."""
    from qcow2_monitor.collectors.common.record import replace
    from qcow2_monitor.collectors.report.collect import collect
    from qcow2_monitor.collectors.report.growth import DEFAULT_WINDOW, GrowthTracker, merge
    from qcow2_monitor.collectors.report.thin import Judging

    tracker = GrowthTracker(str(directory))
    collect(images, judging=Judging(growth=tracker))
    now = time.time()
    for path in directory.glob("*.json"):
        lines = path.read_bytes().splitlines()
        disk = _disk(json.loads(lines[0]))
        for i in range(720):
            sample = replace(disk, time=now - DEFAULT_WINDOW + 30 * i)
            history = merge(lines, sample, DEFAULT_WINDOW)
            lines = history.lines if history.rewrite else [
                *history.lines, json.dumps(list(history.sample)).encode()]
        path.write_bytes(b"".join(line + b"\n" for line in lines))
    assert len(list(directory.glob("*.json"))) == len(images)


def _disk(document: dict[str, Any]) -> Any:
    """A DiskSample standing for the disk of `document` (the same identity and container)."""
    from qcow2_monitor.collectors.report.growth import DiskSample
    from qcow2_monitor.collectors.report.usage import analyze_image

    usage = analyze_image(document["path"])
    return DiskSample(document["path"], document["identity"], usage, 0.0)


def free_below_end_cost(work: Path, size: str, repeat: int) -> tuple[float, float, int]:
    """Best times of the end offset alone and with the free clusters, and the refcount
    blocks the latter reads."""
    from qcow2_monitor.collectors.qcow2.image import Qcow2Image
    from qcow2_monitor.collectors.qcow2.refcount import (
        end_and_free_below,
        image_end_offset_from_refcounts,
    )

    path = work / f"prealloc-{size}.qcow2"
    if not path.exists():
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "preallocation=metadata",
             str(path), size])
    best = [float("inf"), float("inf")]
    with Qcow2Image.open(str(path)) as image:
        for _ in range(repeat):
            for k, call in enumerate((lambda: image_end_offset_from_refcounts(image),
                                      lambda: end_and_free_below(image))):
                start = time.perf_counter()
                call()
                best[k] = min(best[k], time.perf_counter() - start)
        end = image_end_offset_from_refcounts(image)
        blocks = -(-(end // image.header.cluster_size) // image.header.refcount_block_entries)
    return best[0], best[1], blocks


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True,
                        help="bin directory of the installation to compare with")
    parser.add_argument("--work", type=Path, default=REPO / "bench-work")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--prealloc-size", default="1T")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    many = build_many(args.work, args.images)
    images = sorted(str(p) for p in many.glob("*.qcow2"))
    state = Path(tempfile.mkdtemp(prefix="bench-state-"))
    try:
        steady_state(state / "qcow2-monitor", images)
        variants = {
            "baseline": commands(args.baseline, images, args.work, []),
            "--no-state": commands(BIN, images, args.work, ["--no-state"]),
            "state (steady)": commands(BIN, images, args.work,
                                       ["--state-dir", str(state / "qcow2-monitor")]),
        }
        best: dict[tuple[str, str], float] = {}
        for _ in range(args.repeat):
            for variant, cmds in variants.items():
                for name, cmd in cmds.items():
                    elapsed, _ = timed(cmd, ok_codes=(0, 1, 2))
                    key = (variant, name)
                    best[key] = min(best.get(key, float("inf")), elapsed)
        print(f"| {len(images)} images, best of {args.repeat} | baseline | --no-state | ratio "
              "| state kept (steady) | ratio |")
        print("|---|---|---|---|---|---|")
        for name in variants["baseline"]:
            base = best[("baseline", name)]
            plain, kept = best[("--no-state", name)], best[("state (steady)", name)]
            print(f"| {name} | {base:.3f} s | {plain:.3f} s | {plain / base:.2f} | "
                  f"{kept:.3f} s | {kept / base:.2f} |")
    finally:
        shutil.rmtree(state, ignore_errors=True)
    alone, both, blocks = free_below_end_cost(args.work, args.prealloc_size, args.repeat)
    print(f"\nfree_below_end_bytes on a {args.prealloc_size} preallocation=metadata image "
          f"({blocks} refcount blocks below the end): end offset alone {alone * 1000:.2f} ms, "
          f"with the free clusters {both * 1000:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
