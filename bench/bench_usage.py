"""Benchmark: the fast usage path and the adapters, side by side with qemu-img, in one run.

    .venv/bin/python bench/bench_usage.py [--work DIR] [--images 500]

1. A 4-layer LUKS-encrypted backing chain of 20 GiB images (default LUKS iteration time, as
   operators create them): `qemu-img check` of every layer (it needs every key and derives it
   each time) against one `qcow2-analyze usage` of the top image (whole chain, no key).
2. 500 ordinary images: 500 `qemu-img info` calls against one `qcow2-analyze usage` call, and
   each adapter (check_qcow2, qcow2-telegraf, qcow2-textfile) over the same 500 images.
Prints wall times, peak RSS of the child processes and the ratios.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SECRET = "bench-passphrase"


def child_run(argv: Sequence[str], *, ok_codes: Optional[Sequence[int]] = (0,)
              ) -> tuple[float, resource.struct_rusage, int]:
    """Wall time, rusage and exit code of one child process (os.wait4 gives that child's own
    rusage, its waited-for children included, unlike getrusage(RUSAGE_CHILDREN), which is a
    maximum over every child so far); exits with the child's message on an exit code not in
    `ok_codes` (None: any)."""
    start = time.perf_counter()
    proc = subprocess.Popen(list(argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    err = proc.stderr.read().decode(errors="replace")  # drained first: no pipe deadlock
    proc.stderr.close()
    _pid, status, rusage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    if ok_codes is not None and code not in ok_codes:
        raise SystemExit(f"{argv[0]} exited {code}: {err.strip()[:400]}")
    return elapsed, rusage, code


def timed(argv: Sequence[str], *, ok_codes: Sequence[int] = (0,)) -> tuple[float, int]:
    """Wall time and peak RSS (KiB) of one child process."""
    elapsed, rusage, _code = child_run(argv, ok_codes=ok_codes)
    return elapsed, rusage.ru_maxrss


def run(argv: Sequence[str], attempts: int = 5) -> None:
    """Run a tool; retried only when qemu's PBKDF benchmark could not time itself ("Unable to
    get accurate CPU usage", a timing artefact of a loaded machine, not an image problem)."""
    for attempt in range(attempts):
        proc = subprocess.run(list(argv), capture_output=True, text=True)
        if proc.returncode == 0:
            return
        if "Unable to get accurate CPU usage" not in proc.stderr or attempt == attempts - 1:
            raise SystemExit(f"{argv[0]} exited {proc.returncode}: {proc.stderr.strip()[:400]}")


def secret_args() -> list[str]:
    return ["--object", f"secret,id=s,data={SECRET}"]


def image_opts(path: Path, depth_below: int) -> str:
    """--image-opts naming the key for the image and each of its backing layers."""
    opts = [f"driver=qcow2,file.filename={path},encrypt.key-secret=s"]
    prefix = ""
    for _ in range(depth_below):
        prefix += "backing."
        opts.append(f"{prefix}encrypt.key-secret=s")
    return ",".join(opts)


def build_luks_chain(work: Path, layers: int = 4) -> list[Path]:
    chain_dir = work / "luks-chain"
    paths = [chain_dir / f"layer{i}.qcow2" for i in range(layers)]
    if all(p.exists() for p in paths):
        return paths
    shutil.rmtree(chain_dir, ignore_errors=True)
    chain_dir.mkdir(parents=True)
    for i, path in enumerate(paths):
        opts = "encrypt.format=luks,encrypt.key-secret=s"
        cmd = ["qemu-img", "create", "-q", "-f", "qcow2", *secret_args(), "-o", opts]
        if i:
            cmd += ["-b", paths[i - 1].name, "-F", "qcow2"]
        run([*cmd, str(path), "20G"])
        run(["qemu-io", *secret_args(), "--image-opts", image_opts(path, i),
             "-c", f"write -P 0x{0x40 + i:x} {i * 64}M 4M"])
    return paths


def build_many(work: Path, count: int) -> Path:
    many = work / f"many-{count}"
    if many.is_dir() and len(list(many.glob("*.qcow2"))) == count:
        return many
    shutil.rmtree(many, ignore_errors=True)
    many.mkdir(parents=True)
    template = many / "template.qcow2.tmp"
    run(["qemu-img", "create", "-q", "-f", "qcow2", str(template), "10G"])
    run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 8M", "-c", "write -P 0x12 5G 1M",
         str(template)])
    for i in range(count):
        shutil.copyfile(template, many / f"vm-{i:04d}.qcow2")
    template.unlink()
    return many


def row(label: str, ours: tuple[float, int], theirs: tuple[float, int]) -> str:
    ratio = theirs[0] / ours[0] if ours[0] else float("inf")
    return (f"| {label} | {theirs[0]:.3f} s | {ours[0]:.3f} s | {ratio:.1f}x faster | "
            f"{theirs[1] / 1024:.0f} MiB | {ours[1] / 1024:.0f} MiB |")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=REPO / "bench-work")
    parser.add_argument("--images", type=int, default=500)
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    analyze = str(BIN / "qcow2-analyze")

    print("building images (cached in", args.work, ")...", file=sys.stderr)
    chain = build_luks_chain(args.work)
    many = build_many(args.work, args.images)
    images = sorted(str(p) for p in many.glob("*.qcow2"))

    print("| measurement | qemu-img | qcow2-monitor | ratio | qemu-img peak RSS | "
          "ours peak RSS |")
    print("|---|---|---|---|---|---|")

    # 1. The LUKS chain: qemu-img check of every layer, with its keys.
    start = time.perf_counter()
    qemu_rss = 0
    for depth, path in enumerate(chain):
        _, rss = timed(["qemu-img", "check", *secret_args(), "--image-opts",
                        image_opts(path, depth)])
        qemu_rss = max(qemu_rss, rss)
    qemu_chain = (time.perf_counter() - start, qemu_rss)
    ours_chain = timed([analyze, "usage", "--output", "json", str(chain[-1])])
    print(row("4-layer LUKS chain of 20 GiB images: `check` of each layer vs one `usage`",
              ours_chain, qemu_chain))

    # 2. Many images: N `qemu-img info` calls vs one `usage` call.
    start = time.perf_counter()
    qemu_rss = 0
    for path in images:
        _, rss = timed(["qemu-img", "info", "--output=json", "-f", "qcow2", path])
        qemu_rss = max(qemu_rss, rss)
    qemu_many = (time.perf_counter() - start, qemu_rss)
    ours_many = timed([analyze, "usage", "--output", "json", *images])
    print(row(f"{len(images)} images: {len(images)} `qemu-img info` calls vs one `usage`",
              ours_many, qemu_many))
    startup = timed([sys.executable, "-c", "pass"])
    per_image_ms = (ours_many[0] - startup[0]) / len(images) * 1000
    print(f"\nusage over {len(images)} images: {ours_many[0]:.3f} s in all, "
          f"{per_image_ms:.3f} ms per image beyond interpreter start-up "
          f"({startup[0] * 1000:.0f} ms)")

    # 3. Adapters over the same images, one run each.
    print("\n| adapter over", len(images), "images | wall time | peak RSS |")
    print("|---|---|---|")
    adapters = {
        "check_qcow2": [str(BIN / "check_qcow2"), "-w", "80", "-c", "90",
                        *[a for p in images for a in ("-f", p)]],
        "qcow2-telegraf": [str(BIN / "qcow2-telegraf"), *images],
        "qcow2-textfile": [str(BIN / "qcow2-textfile"), "--output",
                           str(args.work / "qcow2.prom"), *images],
    }
    for name, cmd in adapters.items():
        if not Path(cmd[0]).exists():
            print(f"| {name} | not installed | |")
            continue
        elapsed, rss = timed(cmd, ok_codes=(0, 1, 2))
        print(f"| {name} | {elapsed:.3f} s | {rss / 1024:.0f} MiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
