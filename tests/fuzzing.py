"""A structure-aware mutation fuzzer for every entry point, run in process.

Seeds are small images made by qemu-img and qemu-io (:func:`build_seeds`). A case is one seed
plus one to four mutations (header fields; L1, L2, refcount table and block, snapshot table and
bitmap directory entries; extension and backing-name bytes; bit flips; truncation; clusters
copied over others), chosen by ``random.Random(f"{seed}:{index}")``: the same seed and index
always give the same bytes, so any failure can be replayed (:func:`mutate_case`).

Each mutated image goes through every subcommand of qcow2-analyze (usage, info, header, check,
check --snapshot, map, dump --what each (l1 and l2 with a --snapshot selector), measure, -f) and
every adapter's ``main`` (check_qcow2, qcow2-telegraf, qcow2-textfile), in process for speed,
inside forked workers whose address space is capped (RLIMIT_AS). A case fails when an entry
point raises, prints an internal error or a Python exception name, exits with an undocumented
code, does more work than the budget below (calls, reads and bytes read, counted exactly by
tests/work.py: the same on any machine under any load, and on a replay), hangs, or runs out of
memory under the cap.

The suite runs a budget of cases (tests/test_fuzz.py); ``scripts/fuzz.sh`` runs it long::

    python tests/fuzzing.py --cases 100000 --seed 7 --workers 2
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import re
import resource
import select
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # run as a script: corpus.py lives beside this file
    sys.path.insert(0, str(HERE))

from corpus import QEMU_IMG, QEMU_IO, run  # noqa: E402
from work import Work, counting  # noqa: E402

KiB = 1024
MiB = 1024 * KiB

# The work one entry point may do on any image, whatever its bytes: "the work follows the
# file, not what its header claims". Counted exactly (tests/work.py). Reads and bytes read are
# counted on every run; calls only in tests/test_fuzz.py's cases, each with its own bound
# (counting them doubles the time of Python-heavy code: too dear for thousands of runs).
READS_PER_BYTE = 1 / 512  # reads <= one per 512 bytes of the file + 1,000 (a read per table
# of the smallest clusters); most measured: 24,298 on 92 MiB of 4 KiB tables (dump-l2)
MAX_READ_FACTOR = 4  # bytes read <= 4 x the file + 1 MiB; most measured: 3.25 x (a 32 MiB L1
# claimed over 8 MiB of data is read, and its tables after it); reading a table again per
# entry naming it is far above
# Where calls are not counted, a backstop for work nothing above bounds: CPU seconds of one
# entry point, at least 5x the most measured here under load (1.5 s: the 92 MiB of L2 tables
# and info on 65536 snapshots, 2 cores busy). The speed goals are bench/bench_hostile.py's.
MAX_CPU_SECONDS = 10.0
# Wall-clock time after which a worker is presumed hung and killed.
HANG_SECONDS = 30.0
# Address space a worker may add to what it holds after its imports.
ADDRESS_SPACE_HEADROOM = 1024 * MiB
# Cases a worker runs before it is replaced (bounds leaked state, e.g. file descriptors).
CASES_PER_WORKER = 250

IMAGE_NAME = "fuzz.qcow2"

# Python exception names in any output mean an unexpected exception reached a handler.
_EXCEPTION_NAME = re.compile(r"\b[A-Z]\w*(?:Error|Exception|Exit|Interrupt)\b(?!\))")
_INTERNAL = ("internal error:", "Traceback", "collection failed", "output not written")


# ---------------------------------------------------------------------------------------------
# Seeds


@dataclass(frozen=True)
class Seed:
    name: str
    path: Path  # the image to mutate; files beside it (backing, data file) are shared


def _create(path: Path, size: str, options: str = "", extra: Sequence[str] = ()) -> None:
    argv = [QEMU_IMG, "create", "-q", "-f", "qcow2", *extra]
    if options:
        argv += ["-o", options]
    run([*argv, str(path), size])


def _io(path: Path, *commands: str, killed: bool = False, image_opts: Sequence[str] = ()
        ) -> None:
    argv = [QEMU_IO, *image_opts] if image_opts else [QEMU_IO, "-f", "qcow2"]
    for command in commands:
        argv += ["-c", command]
    run([*argv, str(path)] if not image_opts else argv, allowed_returncodes=(-9,) if killed
        else (0,))


def build_seeds(root: Path) -> list[Seed]:
    """Small images covering every structure the analyzer reads, made by qemu's own tools."""
    root.mkdir(parents=True, exist_ok=True)
    seeds: list[Seed] = []

    def add(name: str) -> Path:
        path = root / name / IMAGE_NAME
        path.parent.mkdir(exist_ok=True)
        seeds.append(Seed(name, path))
        return path

    p = add("plain")
    _create(p, "4M", "cluster_size=65536")
    _io(p, "write -P 0xa1 0 128k", "write -P 0xa2 1M 64k", "write -P 0xa3 3M 200k")

    p = add("cs512")
    _create(p, "1M", "cluster_size=512")
    _io(p, "write -P 0xb1 0 96k", "write -P 0xb2 512k 33k", "write -P 0xb3 900k 4k")

    p = add("chain")
    _create(p.parent / "base.qcow2", "4M", "cluster_size=4096")
    _io(p.parent / "base.qcow2", "write -P 0xc1 0 512k")
    run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2",
         "-o", "cluster_size=4096", IMAGE_NAME, "4M"], cwd=p.parent)
    _io(p, "write -P 0xc2 256k 64k")

    p = add("snapshots")
    _create(p, "2M", "cluster_size=4096")
    _io(p, "write -P 0xd1 0 256k")
    run([QEMU_IMG, "snapshot", "-c", "first", str(p)])
    _io(p, "write -P 0xd2 64k 64k", "write -P 0xd3 1M 16k")
    run([QEMU_IMG, "snapshot", "-c", "second", str(p)])

    p = add("v2")
    _create(p, "2M", "compat=0.10,cluster_size=4096")
    _io(p, "write -P 0xe1 0 64k")
    run([QEMU_IMG, "snapshot", "-c", "old", str(p)])
    _io(p, "write -P 0xe2 0 8k")

    p = add("bitmaps")
    _create(p, "4M", "cluster_size=65536")
    run([QEMU_IMG, "bitmap", "-f", "qcow2", "--add", str(p), "b0"])
    run([QEMU_IMG, "bitmap", "-f", "qcow2", "--add", "--granularity", "128k", str(p), "b1"])
    _io(p, "write -P 0xf1 0 64k", "write -P 0xf2 2M 128k")

    p = add("compressed")
    _create(p, "2M", "cluster_size=4096")
    _io(p, "write -c -P 0x11 0 64k", "write -P 0x12 64k 8k", "write -c -P 0x13 1M 4k")

    p = add("extended-l2")
    _create(p, "2M", "cluster_size=16384,extended_l2=on")
    _io(p, "write -P 0x21 0 3k", "write -P 0x22 40k 10k", "write -z 100k 16k",
        "write -c -P 0x23 512k 16k")

    p = add("refbits-1")
    _create(p, "1M", "cluster_size=4096,refcount_bits=1")
    _io(p, "write -P 0x31 0 100k")

    p = add("refbits-64")
    _create(p, "1M", "cluster_size=4096,refcount_bits=64")
    _io(p, "write -P 0x32 0 100k", "write -z 200k 8k")

    p = add("lazy-dirty")
    _create(p, "2M", "cluster_size=4096,lazy_refcounts=on")
    _io(p, "write -P 0x41 0 64k", "write -P 0x42 1M 8k", "sigraise 9", killed=True)

    p = add("data-file")
    _create(p, "1M", f"cluster_size=4096,data_file={p.parent / 'data.raw'}")
    _io(p, "write -P 0x51 0 64k")

    p = add("luks")
    secret = ["--object", "secret,id=sec0,data=fuzz-passphrase"]
    for attempt in range(5):  # qemu's PBKDF benchmark may fail to time itself under load
        try:
            _create(p, "1M", "cluster_size=4096,encrypt.format=luks,encrypt.key-secret=sec0,"
                    "encrypt.iter-time=10", extra=secret)
            break
        except AssertionError:
            if attempt == 4:
                raise
            p.unlink(missing_ok=True)
    _io(p, "write -P 0x61 0 32k", image_opts=[
        *secret, "--image-opts",
        f"driver=qcow2,file.filename={p},encrypt.key-secret=sec0"])

    p = add("prealloc")
    _create(p, "8M", "cluster_size=65536,preallocation=metadata")

    # Big enough (8 MiB of nonzero data) for a header pointing a table at data to claim the
    # largest tables qemu accepts: the time of every command must follow the file, not them.
    p = add("big")
    _create(p, "64M", "cluster_size=4096")
    _io(p, "write -P 0x71 0 4M", "write -P 0x72 32M 2M", "write -P 0x73 60M 2M")
    return seeds


# ---------------------------------------------------------------------------------------------
# Where the structures of an image are (read from the seed's bytes, never trusted)

HEADER_FIELDS = (  # (name, offset, size) of every header field, v2 then v3
    ("magic", 0, 4), ("version", 4, 4), ("backing_file_offset", 8, 8),
    ("backing_file_size", 16, 4), ("cluster_bits", 20, 4), ("size", 24, 8),
    ("crypt_method", 32, 4), ("l1_size", 36, 4), ("l1_table_offset", 40, 8),
    ("refcount_table_offset", 48, 8), ("refcount_table_clusters", 56, 4),
    ("nb_snapshots", 60, 4), ("snapshots_offset", 64, 8), ("incompatible_features", 72, 8),
    ("compatible_features", 80, 8), ("autoclear_features", 88, 8), ("refcount_order", 96, 4),
    ("header_length", 100, 4), ("compression_type", 104, 1),
)
SNAPSHOT_FIELDS = (("l1_table_offset", 0, 8), ("l1_size", 8, 4), ("id_str_size", 12, 2),
                   ("name_size", 14, 2), ("vm_state_size", 32, 4), ("extra_data_size", 36, 4))
BITMAP_FIELDS = (("bitmap_table_offset", 0, 8), ("bitmap_table_size", 8, 4), ("flags", 12, 4),
                 ("type", 16, 1), ("granularity_bits", 17, 1), ("name_size", 18, 2),
                 ("extra_data_size", 20, 4))


@dataclass
class Layout:
    """Offsets of the fields and table entries a mutation may hit."""

    data: bytes
    cluster_size: int
    fields: list[tuple[str, int, int]] = field(default_factory=list)  # (name, offset, size)
    entries: dict[str, list[int]] = field(default_factory=dict)  # 8-byte table entries by kind
    clusters: list[int] = field(default_factory=list)  # offsets of metadata clusters
    refcount_blocks: list[tuple[int, int]] = field(default_factory=list)  # (offset, bits)
    names: list[tuple[int, int]] = field(default_factory=list)  # (offset, length) of names

    @property
    def length(self) -> int:
        return len(self.data)

    def u(self, offset: int, size: int) -> int:
        return _u(self.data, offset, size)

    def table(self, kind: str, offset: int, count: int) -> list[int]:
        """Record a table of 8-byte entries (at most 65536, inside the file); its values."""
        cs = self.cluster_size
        count = max(0, min(count, (self.length - offset) // 8, 1 << 16))
        slots = [offset + 8 * i for i in range(count)]
        self.entries.setdefault(kind, []).extend(slots)
        self.clusters.extend(range(offset - offset % cs, offset + 8 * count, cs))
        return [self.u(slot, 8) for slot in slots]

    def l1(self, offset: int, size: int) -> None:
        cs = self.cluster_size
        for entry in self.table("l1", offset, size):
            l2 = entry & 0x00FFFFFFFFFFFE00
            if l2 and l2 % cs == 0 and l2 + cs <= self.length:
                self.table("l2", l2, cs // 8)


def _u(data: bytes, offset: int, size: int) -> int:
    if offset < 0 or offset + size > len(data):
        return 0
    return int.from_bytes(data[offset:offset + size], "big")


def analyse_layout(data: bytes) -> Layout:
    cluster_bits = _u(data, 20, 4)
    lay = Layout(data, 1 << cluster_bits if 9 <= cluster_bits <= 21 else 65536)
    version = lay.u(4, 4)
    header_length = lay.u(100, 4) if version >= 3 else 72
    lay.fields += [f for f in HEADER_FIELDS if f[1] + f[2] <= max(header_length, 72)]
    lay.clusters.append(0)
    lay.l1(lay.u(40, 8), lay.u(36, 4))
    refcount_order = lay.u(96, 4) if version >= 3 else 4
    cs = lay.cluster_size
    for entry in lay.table("refcount-table", lay.u(48, 8), lay.u(56, 4) * cs // 8):
        block = entry & ~0x1FF & (2**64 - 1)
        if block and block % cs == 0 and block + cs <= len(data):
            lay.refcount_blocks.append((block, 1 << min(refcount_order, 6)))
            lay.clusters.append(block)
    backing_offset, backing_size = lay.u(8, 8), lay.u(16, 4)
    if backing_offset and backing_offset + backing_size <= len(data):
        lay.names.append((backing_offset, backing_size))
    _extensions(lay, header_length, backing_offset or cs)
    _snapshots(lay)
    return lay


def _extensions(lay: Layout, pos: int, end: int) -> None:
    while pos + 8 <= min(end, lay.length):
        ext_type, ext_len = lay.u(pos, 4), lay.u(pos + 4, 4)
        lay.fields += [(f"extension@{pos}.type", pos, 4), (f"extension@{pos}.length", pos + 4, 4)]
        if ext_type == 0 or pos + 8 + ext_len > lay.length:
            break
        if ext_type in (0xE2792ACA, 0x44415441, 0x6803F857):  # backing fmt, data file, features
            lay.names.append((pos + 8, ext_len))
        if ext_type == 0x23852875 and ext_len >= 24:  # bitmaps
            lay.fields += [("nb_bitmaps", pos + 8, 4), ("bitmap_directory_size", pos + 16, 8),
                           ("bitmap_directory_offset", pos + 24, 8)]
            _bitmap_directory(lay, lay.u(pos + 24, 8), lay.u(pos + 16, 8))
        if ext_type == 0x0537BE77 and ext_len >= 16:  # LUKS header pointer
            lay.fields += [("luks_offset", pos + 8, 8), ("luks_length", pos + 16, 8)]
        pos += 8 + (ext_len + 7) // 8 * 8


def _snapshots(lay: Layout) -> None:
    sn = lay.u(64, 8)
    for _ in range(min(lay.u(60, 4), 64)):
        sn = (sn + 7) // 8 * 8
        if sn + 40 > lay.length:
            break
        lay.fields += [(f"snapshot@{sn}.{name}", sn + off, size)
                       for name, off, size in SNAPSHOT_FIELDS]
        lay.clusters.append(sn - sn % lay.cluster_size)
        extra, id_size, name_size = lay.u(sn + 36, 4), lay.u(sn + 12, 2), lay.u(sn + 14, 2)
        lay.names.append((sn + 40 + extra, id_size + name_size))
        lay.l1(lay.u(sn, 8), min(lay.u(sn + 8, 4), 1 << 16))
        sn += 40 + extra + id_size + name_size


def _bitmap_directory(lay: Layout, offset: int, size: int) -> None:
    pos, end = offset, min(offset + size, lay.length)
    while pos + 24 <= end:
        lay.fields += [(f"bitmap@{pos}.{name}", pos + off, sz) for name, off, sz in BITMAP_FIELDS]
        lay.clusters.append(pos - pos % lay.cluster_size)
        name_size, extra = lay.u(pos + 18, 2), lay.u(pos + 20, 4)
        lay.names.append((pos + 24 + extra, name_size))
        lay.table("bitmap-table", lay.u(pos, 8), min(lay.u(pos + 8, 4), 1 << 16))
        pos += (24 + extra + name_size + 7) // 8 * 8


# ---------------------------------------------------------------------------------------------
# Mutations


def _interesting(rng: random.Random, size: int, old: int, lay: Layout) -> int:
    top = (1 << (8 * size)) - 1
    cs = lay.cluster_size
    choices: list[Callable[[], int]] = [
        lambda: 0, lambda: 1, lambda: top, lambda: top >> 1, lambda: 1 << (8 * size - 1),
        lambda: rng.randrange(top + 1), lambda: old + rng.choice((-1, 1, 8, cs)),
        lambda: old ^ (1 << rng.randrange(8 * size)), lambda: old * 2, lambda: old << 16,
        lambda: lay.length, lambda: lay.length + rng.choice((-cs, -1, 1, cs, 16 * cs)),
        lambda: rng.randrange(0, max(1, lay.length), cs) if size >= 4 else rng.randrange(64),
        lambda: rng.randrange(64), lambda: cs, lambda: rng.choice((9, 16, 21, 22, 30, 63)),
        lambda: rng.choice(lay.clusters) if lay.clusters else 0,
    ]
    return rng.choice(choices)() & top


def _entry_value(rng: random.Random, old: int, lay: Layout) -> int:
    cs = lay.cluster_size
    target = rng.choice(lay.clusters) if lay.clusters else 0
    choices: list[Callable[[], int]] = [
        lambda: 0, lambda: old ^ (1 << rng.randrange(64)), lambda: old | (1 << 63),
        lambda: old & ~(1 << 63), lambda: old | (1 << 62), lambda: old | 1,
        lambda: old | rng.choice((0x100, 0x1FE, 0x3F << 56)), lambda: target | (1 << 63),
        lambda: target, lambda: old + rng.choice((512, 8, cs)),
        lambda: (lay.length + rng.choice((0, cs, 1 << 20, 1 << 40))) & ~(cs - 1) | (1 << 63),
        lambda: rng.randrange(1 << 64), lambda: (1 << 63) | (rng.randrange(1 << 55) << 9),
        lambda: rng.randrange(0, max(1, lay.length), cs) | (1 << 63),
    ]
    return rng.choice(choices)() & (2**64 - 1)


def _put(data: bytearray, offset: int, size: int, value: int) -> None:
    if offset >= 0 and offset + size <= len(data):
        data[offset:offset + size] = value.to_bytes(size, "big")


Mutation = Callable[[bytearray, random.Random, Layout], Optional[str]]


def _header(data: bytearray, rng: random.Random, lay: Layout) -> Optional[str]:
    name, off, size = rng.choice([f for f in HEADER_FIELDS if f[1] + f[2] <= 105])
    value = _interesting(rng, size, _u(data, off, size), lay)
    _put(data, off, size, value)
    return f"header.{name}=0x{value:x}"


def _field(data: bytearray, rng: random.Random, lay: Layout) -> Optional[str]:
    if not lay.fields:
        return _header(data, rng, lay)
    name, off, size = rng.choice(lay.fields)
    value = _interesting(rng, size, _u(data, off, size), lay)
    _put(data, off, size, value)
    return f"{name}=0x{value:x}"


def _entry(data: bytearray, rng: random.Random, lay: Layout) -> Optional[str]:
    if not lay.entries:
        return None
    kind = rng.choice(sorted(lay.entries))
    if not lay.entries[kind]:
        return None
    slot = rng.choice(lay.entries[kind])
    value = _entry_value(rng, _u(data, slot, 8), lay)
    _put(data, slot, 8, value)
    return f"{kind} entry at 0x{slot:x}=0x{value:x}"


def _refcount(data: bytearray, rng: random.Random, lay: Layout) -> Optional[str]:
    if not lay.refcount_blocks:
        return None
    block, bits = rng.choice(lay.refcount_blocks)
    index = rng.randrange(lay.cluster_size * 8 // bits)
    value = rng.choice((0, 1, 2, (1 << bits) - 1, rng.randrange(1 << bits)))
    if bits >= 8:
        _put(data, block + index * (bits // 8), bits // 8, value)
    else:
        byte = block + index * bits // 8
        shift = index * bits % 8
        mask = ((1 << bits) - 1) << shift
        data[byte] = (data[byte] & ~mask) | ((value << shift) & mask)
    return f"refcount of cluster {index} in block 0x{block:x}={value}"


def _name(data: bytearray, rng: random.Random, lay: Layout) -> Optional[str]:
    if not lay.names:
        return None
    off, length = rng.choice(lay.names)
    if not length:
        return None
    pos = off + rng.randrange(length)
    value = rng.choice(b"\x00\xff\xc3/:.\n\\")
    if pos >= len(data):
        return None
    data[pos] = value
    return f"name byte at 0x{pos:x}=0x{value:02x}"


def _truncate(data: bytearray, rng: random.Random, lay: Layout) -> Optional[str]:
    length = rng.choice((rng.randrange(0, min(len(data), 4 * lay.cluster_size) + 1),
                         rng.randrange(0, len(data) + 1), len(data) - rng.randrange(1, 513)))
    del data[max(0, length):]
    return f"truncate to {max(0, length)}"


def _cluster(zero: bool) -> Mutation:
    def mutation(data: bytearray, rng: random.Random, lay: Layout) -> Optional[str]:
        cs = lay.cluster_size
        if len(data) < 2 * cs:
            return None
        nclusters = len(data) // cs
        dst = rng.choice(lay.clusters) if lay.clusters and rng.random() < 0.7 else \
            rng.randrange(nclusters) * cs
        if dst + cs > len(data):
            return None
        if zero:
            data[dst:dst + cs] = bytes(cs)
            return f"zero cluster 0x{dst:x}"
        src = rng.randrange(nclusters) * cs
        data[dst:dst + cs] = data[src:src + cs]
        return f"copy cluster 0x{src:x} to 0x{dst:x}"
    return mutation


def _bytes(data: bytearray, rng: random.Random, lay: Layout) -> Optional[str]:
    if not data:
        return None
    area = min(len(data), rng.choice((lay.cluster_size, 4 * lay.cluster_size, len(data))))
    pos = rng.randrange(area)
    chunk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
    data[pos:pos + len(chunk)] = chunk
    return f"bytes at 0x{pos:x}={chunk.hex()}"


def _bitflip(data: bytearray, rng: random.Random, lay: Layout) -> Optional[str]:
    if not data:
        return "empty"
    area = min(len(data), rng.choice((128, lay.cluster_size, 4 * lay.cluster_size, len(data))))
    flips = []
    for _ in range(rng.randrange(1, 9)):
        bit = rng.randrange(area * 8)
        data[bit // 8] ^= 1 << (bit % 8)
        flips.append(bit)
    return "bit flips " + ",".join(f"0x{b // 8:x}.{b % 8}" for b in flips)


# Strategy, weight. A strategy with nothing to hit in this image falls back to bit flips.
STRATEGIES: tuple[tuple[Mutation, int], ...] = (
    (_header, 12), (_field, 10), (_entry, 20), (_refcount, 8), (_name, 5), (_bitflip, 12),
    (_bytes, 5), (_truncate, 4), (_cluster(zero=False), 6), (_cluster(zero=True), 3),
)


def mutate(data: bytearray, rng: random.Random) -> str:
    """Apply one mutation in place; returns what it did (for failure reports)."""
    lay = analyse_layout(bytes(data))
    strategy = rng.choices([m for m, _ in STRATEGIES], weights=[w for _, w in STRATEGIES])[0]
    done = strategy(data, rng, lay)
    if done is None:
        done = _bitflip(data, rng, lay)
    assert done is not None
    return done


def mutate_case(seeds: Sequence[Seed], seed: int, index: int) -> tuple[Seed, bytes, list[str]]:
    """The bytes of case `index` of fuzzing run `seed` (deterministic)."""
    rng = random.Random(f"{seed}:{index}")
    chosen = rng.choice(seeds)
    data = bytearray(chosen.path.read_bytes())
    steps = [mutate(data, rng) for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4)))]
    return chosen, bytes(data), steps


# ---------------------------------------------------------------------------------------------
# Entry points, in process


@dataclass(frozen=True)
class Call:
    """One entry point run on the image at PATH; `{path}` in argv is replaced."""

    name: str
    argv: tuple[str, ...]
    codes: frozenset[int]  # the documented exit codes


ANALYZE_CODES = frozenset({0, 1, 2, 3})
EXIT_USAGE = 64
# --snapshot of the dumps and the check: the keywords, an ID and a name of the seeds.
SNAPSHOT_SELECTORS = ("active", "inactive", "all", "1", "second")
NAGIOS_CODES = frozenset({0, 1, 2, 3})


def calls(rng: random.Random) -> list[Call]:
    """Every subcommand and adapter; human or JSON output chosen per case."""
    def out() -> tuple[str, ...]:
        return ("--output", rng.choice(("json", "human")))

    result = [
        Call("usage", ("usage", *out(), "{path}"), ANALYZE_CODES),
        Call("info", ("info", *out(), "--backing-chain", "{path}"), ANALYZE_CODES),
        Call("header", ("header", *out(), "{path}"), ANALYZE_CODES),
        Call("check", ("check", *out(), "--chain", "--max-findings",
                       str(rng.choice((0, 5, 100))), "{path}"), ANALYZE_CODES),
        Call("measure", ("measure", *out(), "{path}"), ANALYZE_CODES),
        Call("map", ("map", *out(), "--width", "40", "{path}"), ANALYZE_CODES),
        Call("legacy", ("-f", "{path}", "-v", *rng.choice(((), ("-H",), ("-o", "raw")))),
             ANALYZE_CODES),
    ]
    result += [Call(f"dump-{what}", ("dump", "--what", what, *out(), "--limit",
                                     str(rng.choice((3, 1000))), "{path}"), ANALYZE_CODES)
               for what in ("refcount", "snapshots", "bitmaps")]
    # The snapshot views: a keyword, or an ID or a name the seeds have (a mutated table may
    # have lost it: then a bad argument, exit 64).
    for name, argv in (("dump-l1", ("dump", "--what", "l1")), ("dump-l2", ("dump", "--what", "l2")),
                       ("check-snapshot", ("check", "--max-findings", "5"))):
        selector = rng.choice(SNAPSHOT_SELECTORS)
        codes = ANALYZE_CODES if selector in ("active", "inactive", "all") else \
            ANALYZE_CODES | {EXIT_USAGE}
        result.append(Call(name, (*argv, *out(), "--snapshot", selector, *(
            ("--limit", str(rng.choice((3, 1000)))) if argv[0] == "dump" else ()), "{path}"),
            codes))
    result += [
        Call("check_qcow2", ("-f", "{path}", "-w", "80", "-c", "90", "--chain", "--check",
                             "-t", "3600", *rng.choice(((), ("-v",), ("-vvv",)))),
             NAGIOS_CODES),
        Call("qcow2-telegraf", ("--chain", "--check", "{path}"), frozenset({0})),
        Call("qcow2-textfile", ("-o", "-", "--chain", "--check", "{path}"), frozenset({0})),
    ]
    return result


def _entry_point(name: str) -> Callable[[list[str]], int]:
    if name == "check_qcow2":
        from qcow2_monitor.nagios.check_qcow2 import main as nagios_main
        return nagios_main
    if name == "qcow2-telegraf":
        from qcow2_monitor.telegraf.qcow2_telegraf import main as telegraf_main
        return telegraf_main
    if name == "qcow2-textfile":
        from qcow2_monitor.node_exporter_textfile.qcow2_textfile import main as textfile_main
        return textfile_main
    from qcow2_monitor.analyze.main import main as analyze_main
    return analyze_main


def budget_problems(work: Work, file_size: int) -> list[str]:
    """How `work` on a file of `file_size` bytes exceeds the budget above, and its own call
    limit when it counted calls (empty: it does not)."""
    found = []
    if work.stopped:
        found.append(f"made more than {work.call_limit:,} calls")
    max_reads = int(file_size * READS_PER_BYTE) + 1000
    if work.reads > max_reads:
        found.append(f"made {work.reads:,} reads of a {file_size:,} byte file (limit "
                     f"{max_reads:,})")
    if work.bytes_read > MAX_READ_FACTOR * file_size + MiB:
        found.append(f"read {work.bytes_read:,} bytes of a {file_size:,} byte file (limit "
                     f"{MAX_READ_FACTOR} x + 1 MiB)")
    if work.calls is None and work.cpu_seconds > MAX_CPU_SECONDS:
        found.append(f"took {work.cpu_seconds:.1f} s of CPU (backstop {MAX_CPU_SECONDS:g} s)")
    return found


def problems_of(call: Call, code: Optional[int], output: str, raised: Optional[str],
                work: Work, file_size: int) -> list[str]:
    if work.stopped:  # what it printed when it was stopped is no news
        return budget_problems(work, file_size)
    found = []
    if raised is not None:
        found.append(f"raised {raised}")
    elif code not in call.codes:
        found.append(f"exit code {code} (documented: {sorted(call.codes)})")
    for marker in _INTERNAL:
        if marker in output:
            found.append(f"printed {marker!r}")
    match = _EXCEPTION_NAME.search(output)
    if match:
        found.append(f"printed exception name {match.group(0)!r}")
    return found + budget_problems(work, file_size)


def run_call(call: Call, path: str, call_limit: Optional[int] = None
             ) -> tuple[list[str], str, Work]:
    """Run one entry point in this process, counting its work (its calls too, stopped past
    `call_limit`, when one is given); returns (problems, output, work)."""
    argv = [path if a == "{path}" else a for a in call.argv]
    main = _entry_point(call.name)
    buffer = io.StringIO()
    code: Optional[int] = None
    raised: Optional[str] = None
    with counting(call_limit) as work:
        try:
            with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
                code = main(argv)
        except BaseException as exc:
            raised = f"{type(exc).__name__}: {exc}"
    output = buffer.getvalue()
    return problems_of(call, code, output, raised, work, os.path.getsize(path)), output, work


# ---------------------------------------------------------------------------------------------
# Workers


@dataclass(frozen=True)
class Failure:
    seed: int
    index: int
    seed_image: str
    mutations: tuple[str, ...]
    entry_point: str
    argv: tuple[str, ...]
    problems: tuple[str, ...]
    output: str

    def __str__(self) -> str:
        return (f"case {self.seed}:{self.index} ({self.seed_image}; "
                f"{'; '.join(self.mutations)}): {self.entry_point} "
                f"{' '.join(self.argv)}: {'; '.join(self.problems)}\n    "
                + self.output.strip().replace("\n", "\n    ")[:2000])


def _address_space() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _prepare_workdir(seed: Seed, workdir: Path) -> Path:
    """A directory holding the seed's companions (backing file, data file) and the image."""
    case_dir = workdir / seed.name
    if not case_dir.exists():
        shutil.copytree(seed.path.parent, case_dir)
    return case_dir / IMAGE_NAME


def _worker(seeds: Sequence[Seed], seed: int, indices: Sequence[int], workdir: Path,
            out_fd: int) -> None:
    """Child process: run cases, write one JSON line per event to out_fd."""
    for name in ("check_qcow2", "qcow2-telegraf", "qcow2-textfile", "usage"):
        _entry_point(name)  # imports happen before the cap
    from qcow2_monitor.collectors.check import checker, dump, locate, measure  # noqa: F401

    cap = _address_space() + ADDRESS_SPACE_HEADROOM
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    out = os.fdopen(out_fd, "w", buffering=1)
    for index in indices:
        chosen, data, steps = mutate_case(seeds, seed, index)
        path = _prepare_workdir(chosen, workdir)
        path.write_bytes(data)
        rng = random.Random(f"{seed}:{index}:calls")
        for call in calls(rng):
            out.write(json.dumps({"start": index, "call": call.name}) + "\n")
            problems, output, _ = run_call(call, str(path))
            if problems:
                out.write(json.dumps({"failure": [
                    seed, index, chosen.name, steps, call.name,
                    [str(path) if a == "{path}" else a for a in call.argv], problems,
                    output[-4000:]]}) + "\n")
        out.write(json.dumps({"done": index}) + "\n")
    out.close()


@dataclass
class Report:
    cases: int = 0
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0


def _spawn(seeds: Sequence[Seed], seed: int, indices: list[int], workdir: Path
           ) -> tuple[int, int]:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_fd)
        code = 0
        try:
            _worker(seeds, seed, indices, workdir, write_fd)
        except BaseException:
            code = 70
        finally:
            os._exit(code)
    os.close(write_fd)
    return pid, read_fd


# A run stops starting workers after this many failures (each is printed).
MAX_FAILURES = 1000


@dataclass
class _Worker:
    pid: int
    stream: io.TextIOWrapper
    workdir: Path
    chunk: list[int]
    last_event: float
    current: Optional[dict[str, object]] = None  # the call running now ("start" event)


class _Pool:
    """Forked workers running chunks of cases; events arrive as JSON lines on pipes."""

    def __init__(self, seeds: Sequence[Seed], seed: int, base: Path,
                 progress: Optional[Callable[[Report], None]]) -> None:
        self.seeds, self.seed, self.base, self.progress = seeds, seed, base, progress
        self.report = Report()
        self.active: dict[int, _Worker] = {}
        self.started = 0

    def start(self, chunk: list[int]) -> None:
        workdir = self.base / f"w{self.started}"
        self.started += 1
        workdir.mkdir()
        pid, fd = _spawn(self.seeds, self.seed, chunk, workdir)
        self.active[fd] = _Worker(pid, os.fdopen(fd), workdir, chunk, time.monotonic())

    def event(self, fd: int) -> None:
        """Read one event from worker `fd`, or reap it when it has exited."""
        worker = self.active[fd]
        line = worker.stream.readline()
        if not line:
            _, status = os.waitpid(worker.pid, 0)
            worker.stream.close()
            del self.active[fd]
            if status != 0:
                self.report.failures.append(_crash(self.seed, worker.current,
                                                   f"worker died ({status})"))
            shutil.rmtree(worker.workdir, ignore_errors=True)
            return
        event = json.loads(line)
        worker.last_event = time.monotonic()
        if "failure" in event:
            f = event["failure"]
            self.report.failures.append(Failure(f[0], f[1], f[2], tuple(f[3]), f[4],
                                                tuple(f[5]), tuple(f[6]), f[7]))
        elif "done" in event:
            self.report.cases += 1
            if self.progress is not None:
                self.progress(self.report)
        elif "start" in event:
            worker.current = event

    def reap_hung(self) -> list[int]:
        """Kill workers silent for HANG_SECONDS; returns the cases they had left to run."""
        left: list[int] = []
        now = time.monotonic()
        for fd, worker in list(self.active.items()):
            if now - worker.last_event > HANG_SECONDS:
                self.stop(fd)
                self.report.failures.append(_crash(self.seed, worker.current,
                                                   f"no progress for {HANG_SECONDS:.0f} s"))
                if worker.current is not None:
                    hung = int(str(worker.current["start"]))
                    left += [i for i in worker.chunk if i > hung]
        return left

    def stop(self, fd: int) -> None:
        worker = self.active.pop(fd)
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(worker.pid, 0)
        worker.stream.close()


def fuzz(seeds: Sequence[Seed], *, seed: int, cases: int, workers: int = 2,
         workdir: Optional[Path] = None, deadline: Optional[float] = None,
         progress: Optional[Callable[[Report], None]] = None) -> Report:
    """Run cases 0..cases-1 of fuzzing run `seed` in `workers` forked processes. Stops early
    at `deadline` (time.monotonic()) or after MAX_FAILURES failures."""
    started = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="qcow2-fuzz-")) if workdir is None else workdir
    base.mkdir(parents=True, exist_ok=True)
    pool = _Pool(seeds, seed, base, progress)
    pending = list(range(cases))
    try:
        while pending or pool.active:
            if deadline is not None and time.monotonic() > deadline:
                break
            while (pending and len(pool.active) < workers
                   and len(pool.report.failures) < MAX_FAILURES):
                pool.start(pending[:CASES_PER_WORKER])
                pending = pending[CASES_PER_WORKER:]
            if not pool.active:
                break
            ready, _, _ = select.select(list(pool.active), [], [], 1.0)
            for fd in ready:
                pool.event(fd)
            pending += pool.reap_hung()
    finally:
        for fd in list(pool.active):
            pool.stop(fd)
        if workdir is None:
            shutil.rmtree(base, ignore_errors=True)
    pool.report.seconds = time.monotonic() - started
    return pool.report


def _crash(seed: int, current: Optional[dict[str, object]], what: str) -> Failure:
    index = int(str(current["start"])) if current else -1
    call = str(current["call"]) if current else "?"
    return Failure(seed, index, "?", (), call, (), (what,), "")


def iter_failures_text(report: Report) -> Iterator[str]:
    for failure in report.failures:
        yield str(failure)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long")
    parser.add_argument("--seeds-dir", type=Path, default=None,
                        help="where to build the seed images (default: a temporary directory)")
    parser.add_argument("--replay", type=int, default=None, metavar="INDEX",
                        help="rebuild case INDEX of --seed, keep its image and run it")
    args = parser.parse_args(argv)
    seeds_dir = args.seeds_dir or Path(tempfile.mkdtemp(prefix="qcow2-fuzz-seeds-"))
    seeds = build_seeds(seeds_dir)
    if args.replay is not None:
        chosen, data, steps = mutate_case(seeds, args.seed, args.replay)
        print(f"seed image {chosen.name}; mutations: {'; '.join(steps)}")
        path = _prepare_workdir(chosen, Path(tempfile.mkdtemp(prefix="qcow2-fuzz-replay-")))
        path.write_bytes(data)
        print(f"image kept at {path}")
        for call in calls(random.Random(f"{args.seed}:{args.replay}:calls")):
            problems, _, work = run_call(call, str(path))
            print(f"{call.name}: {work}: {'; '.join(problems) or 'ok'}")
        return 0
    deadline = time.monotonic() + args.seconds if args.seconds else None
    print(f"fuzzing: seed {args.seed}, {args.cases} cases, {args.workers} workers",
          flush=True)

    def progress(report: Report) -> None:
        if report.cases % 1000 == 0:
            print(f"  {report.cases} cases, {len(report.failures)} failures", flush=True)

    report = fuzz(seeds, seed=args.seed, cases=args.cases, workers=args.workers,
                  deadline=deadline, progress=progress)
    for text in iter_failures_text(report):
        print(text)
    print(f"{report.cases} cases in {report.seconds:.1f} s, {len(report.failures)} failures")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
