"""Test-time corpus of real qcow2 images, made with qemu-img and qemu-io.

Every image the test suite reads is built here, during the test run, by qemu's own
tools: nothing is checked in, so the corpus always matches the installed qemu. The core
function, :func:`build_corpus`, has no pytest dependency so a developer can also build the corpus
by hand::

    python -m tests.corpus /tmp/corpus

Each image is described by a :class:`CorpusImage`. ``consistent`` is not guessed: it records what
``qemu-img check`` (qemu 7.2) was observed to say about the image, and ``tests/test_corpus.py``
re-verifies it on every run.

Determinism: guest data comes from fixed ``-P`` patterns and from one seeded pattern file, so the
layout of every image is the same on every run. Values qemu draws itself (LUKS salts and UUID,
snapshot dates) differ between runs; nothing should depend on them.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

QEMU_IMG = "qemu-img"
QEMU_IO = "qemu-io"
# The figures of `qemu-img check --output=json` (qapi ImageCheck); qemu leaves the optional
# ones out when they are zero.
CHECK_FIGURES = ("check-errors", "image-end-offset", "corruptions", "leaks", "total-clusters",
                 "allocated-clusters", "fragmented-clusters", "compressed-clusters")

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

# Passphrase of every LUKS image. The iteration time is kept at 10 ms so opening the image in a
# test costs milliseconds, not the 2 s default.
LUKS_SECRET = "corpus-luks-passphrase"
LUKS_SECRET_ID = "sec0"
LUKS_ITER_TIME_MS = 10
# Attempts at creating a LUKS image (see _create_luks) where a test creates one of its own:
# on this machine about one benchmark in three measures 0 ms under load.
LUKS_ATTEMPTS = 20

# Seed of the pattern file used for compressed writes (see _write_pattern_file).
PATTERN_SEED = 20240611
PATTERN_FILE = "compressible-pattern.bin"
PATTERN_CHUNK = 256
PATTERN_LEN = 256 * KiB

ALL_CLUSTER_SIZES = tuple(1 << bits for bits in range(9, 22))  # 512 .. 2 MiB
ALL_REFCOUNT_BITS = (1, 2, 4, 8, 16, 32, 64)
EXTENDED_L2_CLUSTER_SIZES = (16 * KiB, 64 * KiB, 2 * MiB)

# Tags that must each be present on at least one corpus image (tests/test_corpus.py checks it).
REQUIRED_TAGS = frozenset(
    {f"cs-{cs}" for cs in ALL_CLUSTER_SIZES}
    | {f"refbits-{bits}" for bits in ALL_REFCOUNT_BITS}
    | {
        "v2",
        "v3",
        "zlib",
        "zstd",
        "compressed",
        "compressed-straddle",
        "extended-l2",
        "subclusters",
        "snapshots",
        "snapshot-deleted",
        "bitmaps",
        "bitmaps-in-use",
        "luks",
        "data-file",
        "data-file-raw",
        "dirty",
        "lazy",
        "discard",
        "prealloc-metadata",
        "prealloc-falloc",
        "prealloc-full",
        "chain",
        "backing-raw",
        "backing-missing",
        "huge-sparse",
    }
)


@dataclass(frozen=True)
class CorpusImage:
    """One image of the corpus and what a test needs to hand it to qemu.

    ``qemu_args`` are the arguments that follow ``qemu-img check`` (or ``info``) so qemu can open
    the image: ``['-f', 'qcow2', PATH]`` for most; the secret object and ``--image-opts`` for
    LUKS; a ``json:`` filename with ``"backing": null`` when the backing file is missing. qemu-img
    echoes that argument back as ``filename`` in its JSON output. ``info_args`` are the plain
    ``['-f', 'qcow2', PATH]``: ``qemu-img info`` needs neither the key nor the backing file
    (verified with qemu 7.2), and with plain args its ``filename`` is the path.
    """

    name: str
    path: Path
    tags: frozenset[str]
    secret: Optional[str]
    qemu_args: list[str]
    consistent: bool
    backing: Optional[Path]

    # A list field would make the generated __hash__ fail; the name identifies an image.
    def __hash__(self) -> int:
        return hash(self.name)

    @property
    def info_args(self) -> list[str]:
        return ["-f", "qcow2", str(self.path)]

    def has(self, *tags: str) -> bool:
        return all(tag in self.tags for tag in tags)


# --------------------------------------------------------------------------------------------
# Running qemu tools


def run(
    argv: Sequence[str],
    *,
    cwd: Optional[Path] = None,
    allowed_returncodes: Iterable[int] = (0,),
) -> subprocess.CompletedProcess[str]:
    """Run a command with captured output; fail with everything qemu said if it misbehaves."""
    allowed = tuple(allowed_returncodes)
    proc = subprocess.run(
        list(argv), cwd=cwd, capture_output=True, text=True, check=False, timeout=300
    )
    if proc.returncode not in allowed:
        raise AssertionError(
            f"command failed (exit {proc.returncode}, expected {allowed}): {' '.join(argv)}"
            f"\n  cwd: {cwd}\n  stdout: {proc.stdout.strip()}\n  stderr: {proc.stderr.strip()}"
        )
    return proc


def qemu_io(path: Path, *commands: str, allowed_returncodes: Iterable[int] = (0,)
            ) -> subprocess.CompletedProcess[str]:
    """qemu-io on a qcow2 image, one ``-c`` per command."""
    argv = [QEMU_IO, "-f", "qcow2"]
    for command in commands:
        argv += ["-c", command]
    return run([*argv, str(path)], allowed_returncodes=allowed_returncodes)


def qemu_img_json(subcmd: str, img: CorpusImage) -> tuple[dict[str, Any], int]:
    """Run ``qemu-img <subcmd> --output=json`` on a corpus image; return (parsed JSON, exit).

    ``info`` gets the plain path (no key, no backing needed); anything else (``check``) gets
    ``img.qemu_args``. A nonzero exit is data for the caller (check: 2 corruptions, 3 leaks), so
    it is returned rather than raised; an empty stdout (qemu could not open the image) gives
    ``{}``. Output that is present but not JSON is a harness bug and raises.
    """
    args = img.info_args if subcmd == "info" else img.qemu_args
    argv = [QEMU_IMG, subcmd, "--output=json", *args]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300)
    if not proc.stdout.strip():
        return {}, proc.returncode
    try:
        return json.loads(proc.stdout), proc.returncode
    except json.JSONDecodeError as exc:
        raise AssertionError(
            f"qemu-img {subcmd} printed non-JSON (exit {proc.returncode}): {' '.join(argv)}"
            f"\n  stdout: {proc.stdout.strip()}\n  stderr: {proc.stderr.strip()}"
        ) from exc


def _secret_object(secret: str) -> list[str]:
    return ["--object", f"secret,id={LUKS_SECRET_ID},data={secret}"]


def _luks_image_opts(path: Path) -> str:
    return f"driver=qcow2,file.filename={path},encrypt.key-secret={LUKS_SECRET_ID}"


def _no_backing_json(path: Path) -> str:
    # "backing": null lets qemu open an image whose backing file is gone; the metadata check
    # does not need the backing file.
    spec = {"driver": "qcow2", "backing": None, "file": {"driver": "file", "filename": str(path)}}
    return "json:" + json.dumps(spec, separators=(",", ":"))


def _create(
    path: Path,
    size: int,
    options: Mapping[str, str],
    *,
    fmt: str = "qcow2",
    extra: Sequence[str] = (),
    cwd: Optional[Path] = None,
) -> None:
    opts = ",".join(f"{key}={value}" for key, value in options.items())
    argv = [QEMU_IMG, "create", "-q", "-f", fmt, *extra]
    if opts:
        argv += ["-o", opts]
    argv += [str(path), str(size)]
    run(argv, cwd=cwd)


def _check_io_output(proc: subprocess.CompletedProcess[str], argv: Sequence[str]) -> None:
    # qemu-io reports a failed command ("write failed: ...") on stdout/stderr; older builds still
    # exit 0, so look at the text too.
    text = proc.stdout + proc.stderr
    if "failed" in text or "error" in text.lower():
        raise AssertionError(f"qemu-io reported a failure: {' '.join(argv)}\n{text.strip()}")


def _io(
    path: Path,
    commands: Sequence[str],
    *,
    fmt: str = "qcow2",
    secret: Optional[str] = None,
    killed: bool = False,
    cwd: Optional[Path] = None,
) -> None:
    """Run qemu-io commands in one process. ``killed``: the last command is ``sigraise 9``."""
    if secret is not None:
        argv = [QEMU_IO, *_secret_object(secret), "--image-opts"]
        target = _luks_image_opts(path)
    else:
        argv = [QEMU_IO, "-f", fmt]
        target = str(path)
    for command in commands:
        argv += ["-c", command]
    argv.append(target)
    # SIGKILL shows up as -9 from subprocess; it is the point of a "killed" session.
    allowed = (-9,) if killed else (0,)
    proc = run(argv, cwd=cwd, allowed_returncodes=allowed)
    _check_io_output(proc, argv)


def _snapshot(path: Path, op: str, name: str) -> None:
    run([QEMU_IMG, "snapshot", op, name, str(path)])


# --------------------------------------------------------------------------------------------
# Data placement


def spread_writes(size: int, cluster_size: int, *, pattern_base: int = 0xA0) -> list[str]:
    """A few deterministic writes spread over the disk, mixing whole and partial clusters.

    Offsets stay 512-aligned; lengths include a sub-cluster unaligned-end write (so qemu does a
    read-modify-write of one cluster) and multi-cluster runs (so L2 tables get consecutive
    entries).
    """
    step = max(cluster_size, 64 * KiB)
    plan = [
        (0, 3 * cluster_size),
        (size // 7, 4 * KiB + 512),
        (_align_down(size * 2 // 7, 512) + cluster_size // 2 + 512, cluster_size),
        (size * 3 // 5, step),
        (size * 5 // 6, 2 * cluster_size),
        (size - step, step),
    ]
    commands = []
    for index, (offset, length) in enumerate(plan):
        offset = _align_down(offset, 512)
        length = min(length, size - offset)
        pattern = (pattern_base + index) & 0xFF
        commands.append(f"write -P {pattern:#04x} {offset} {length}")
    return commands


def compressed_writes(offset: int, length: int, cluster_size: int, source: str) -> list[str]:
    """``write -c`` commands, one per cluster.

    qemu compresses the clusters of one multi-cluster request in parallel worker threads and
    allocates host space in completion order, so a single large compressed write gives a
    different layout on every run. One cluster per request keeps the layout deterministic.
    ``source`` is ``-P 0xNN`` or ``-s FILE`` (each request then starts at the file's start).
    """
    return [
        f"write -c {source} {start} {cluster_size}"
        for start in range(offset, offset + length, cluster_size)
    ]


def _align_down(value: int, alignment: int) -> int:
    return value - value % alignment


def _write_pattern_file(directory: Path) -> Path:
    """A seeded file of 256-byte chunks, each half random and half zero.

    A ``-P`` pattern compresses to a few bytes, so compressed clusters would be tiny and never
    cross a host cluster boundary. Any cluster-sized prefix of this file (512 B and up)
    compresses to a little over half a cluster, so consecutive compressed clusters straddle host
    cluster boundaries (the case qemu's check handles specially).
    """
    path = directory / PATTERN_FILE
    rng = random.Random(PATTERN_SEED)
    half = PATTERN_CHUNK // 2
    chunks = [rng.randbytes(half) + bytes(half) for _ in range(PATTERN_LEN // PATTERN_CHUNK)]
    path.write_bytes(b"".join(chunks))
    return path


# --------------------------------------------------------------------------------------------
# Image builders. Each takes the corpus root and returns the images it made.


def _base_tags(compat: str, cluster_size: int, refcount_bits: int) -> set[str]:
    return {"v2" if compat == "0.10" else "v3", f"cs-{cluster_size}", f"refbits-{refcount_bits}"}


def _plain(
    name: str,
    path: Path,
    tags: Iterable[str],
    *,
    consistent: bool = True,
    backing: Optional[Path] = None,
) -> CorpusImage:
    return CorpusImage(
        name=name,
        path=path,
        tags=frozenset(tags),
        secret=None,
        qemu_args=["-f", "qcow2", str(path)],
        consistent=consistent,
        backing=backing,
    )


def _simple(  # noqa: PLR0913 - qemu-img create options, keyword-only
    root: Path,
    name: str,
    *,
    size: int = 32 * MiB,
    cluster_size: int = 64 * KiB,
    refcount_bits: int = 16,
    compat: str = "1.1",
    options: Optional[Mapping[str, str]] = None,
    writes: Optional[Sequence[str]] = None,
    tags: Iterable[str] = (),
) -> tuple[Path, set[str]]:
    """Create one qcow2 image and write into it; return its path and its base tags."""
    path = root / f"{name}.qcow2"
    all_options = {
        "compat": compat,
        "cluster_size": str(cluster_size),
        "refcount_bits": str(refcount_bits),
        **(options or {}),
    }
    _create(path, size, all_options)
    commands = spread_writes(size, cluster_size) if writes is None else writes
    if commands:
        _io(path, commands)
    return path, _base_tags(compat, cluster_size, refcount_bits) | set(tags)


def build_cluster_sizes(root: Path) -> list[CorpusImage]:
    images = []
    for cs in ALL_CLUSTER_SIZES:
        size = 32 * MiB if cs <= 64 * KiB else 64 * MiB
        name = f"cs-{cs}"
        path, tags = _simple(root, name, size=size, cluster_size=cs)
        images.append(_plain(name, path, tags))
    return images


def build_refcount_widths(root: Path) -> list[CorpusImage]:
    # 4 KiB clusters so wide refcounts need several refcount blocks (64-bit: 512 per block).
    images = []
    for bits in ALL_REFCOUNT_BITS:
        name = f"refbits-{bits}"
        path, tags = _simple(root, name, cluster_size=4 * KiB, refcount_bits=bits)
        images.append(_plain(name, path, tags))
    return images


def build_v2(root: Path) -> list[CorpusImage]:
    plain_path, plain_tags = _simple(root, "v2-plain", compat="0.10")
    # A v2 image with a compressed cluster, one snapshot and a copy-on-write after it, so some
    # clusters have refcount 2 and some L2 entries lost their COPIED flag.
    snap_path, snap_tags = _simple(
        root,
        "v2-snapshot",
        compat="0.10",
        writes=["write -P 0xa1 0 1M", *compressed_writes(4 * MiB, 128 * KiB, 64 * KiB, "-P 0xa2")],
        tags={"snapshots", "compressed", "zlib"},
    )
    _snapshot(snap_path, "-c", "snap1")
    _io(snap_path, ["write -P 0xa3 64k 128k", "write -P 0xa4 8M 64k"])
    return [
        _plain("v2-plain", plain_path, plain_tags),
        _plain("v2-snapshot", snap_path, snap_tags),
    ]


def build_compressed(root: Path) -> list[CorpusImage]:
    pattern = _write_pattern_file(root)
    images = []
    for compression in ("zlib", "zstd"):
        for cs in (512, 4 * KiB, 64 * KiB):
            name = f"compressed-{compression}-{cs}"
            # Compressed writes must cover whole clusters. The seeded file gives compressed
            # ranges of about half a cluster; the -P write shows many entries sharing a cluster.
            length = min(PATTERN_LEN, 16 * cs) if cs < 64 * KiB else PATTERN_LEN
            writes = [
                *compressed_writes(0, length, cs, f"-s {pattern}"),
                *compressed_writes(8 * MiB, 4 * cs, cs, "-P 0xa5"),
                # Overwrite half of one compressed cluster: qemu decompresses and rewrites it as
                # a normal cluster, freeing part of a shared compressed cluster.
                f"write -P 0xa6 {cs} {max(cs // 2, 512)}",
                "write -P 0xa7 16M 64k",
            ]
            tags = {"compressed", compression}
            if cs < 64 * KiB:
                tags.add("compressed-straddle")
            path, all_tags = _simple(
                root,
                name,
                cluster_size=cs,
                options={"compression_type": compression},
                writes=writes,
                tags=tags,
            )
            images.append(_plain(name, path, all_tags))
    return images


def build_extended_l2(root: Path) -> list[CorpusImage]:
    images = []
    for cs in EXTENDED_L2_CLUSTER_SIZES:
        sub = cs // 32
        size = 64 * MiB
        writes = [
            # Partial writes: a few subclusters allocated inside otherwise unallocated clusters.
            f"write -P 0xb1 {sub} {sub}",
            f"write -P 0xb2 {cs + 3 * sub} {5 * sub}",
            # A fully written cluster, then zeroes over part of it: allocated and zero bits mix.
            f"write -P 0xb3 {4 * cs} {cs}",
            f"write -z {4 * cs + 2 * sub} {2 * sub}",
            # Zeroes in a never-written cluster: zero bits with no host cluster.
            f"write -z {8 * cs + sub} {3 * sub}",
            # Whole-cluster zeroes.
            f"write -z {12 * cs} {cs}",
            f"write -P 0xb4 {size // 2} {2 * cs}",
        ]
        tags = {"extended-l2", "subclusters"}
        if cs == 64 * KiB:
            # Compressed clusters with extended L2 (their bitmap must be 0).
            writes += compressed_writes(size // 4, 2 * cs, cs, "-P 0xb5")
            tags |= {"compressed", "zlib"}
        name = f"extended-l2-{cs}"
        path, all_tags = _simple(
            root,
            name,
            size=size,
            cluster_size=cs,
            options={"extended_l2": "on"},
            writes=writes,
            tags=tags,
        )
        images.append(_plain(name, path, all_tags))
    return images


def build_snapshots(root: Path) -> list[CorpusImage]:
    snap_path, snap_tags = _simple(root, "snapshots", tags={"snapshots"})
    _snapshot(snap_path, "-c", "snap1")
    _io(snap_path, ["write -P 0xc1 0 256k", "write -P 0xc2 20M 64k"])
    _snapshot(snap_path, "-c", "snap2")
    _io(snap_path, ["write -P 0xc3 128k 256k"])

    # Deleting the older snapshot frees the clusters only it referenced: holes below the end.
    del_path, del_tags = _simple(
        root, "snapshot-deleted", tags={"snapshots", "snapshot-deleted", "holes"}
    )
    _snapshot(del_path, "-c", "snap1")
    _io(del_path, ["write -P 0xc4 0 1M", "write -P 0xc5 24M 256k"])
    _snapshot(del_path, "-c", "snap2")
    _io(del_path, ["write -P 0xc6 0 512k"])
    _snapshot(del_path, "-d", "snap1")
    return [
        _plain("snapshots", snap_path, snap_tags),
        _plain("snapshot-deleted", del_path, del_tags),
    ]


def _add_bitmaps(path: Path) -> None:
    run([QEMU_IMG, "bitmap", "-f", "qcow2", "--add", str(path), "b0"])
    run([QEMU_IMG, "bitmap", "-f", "qcow2", "--add", "--granularity", "128k", str(path), "b1"])
    run([QEMU_IMG, "bitmap", "-f", "qcow2", "--add", "--disable", str(path), "b2"])


def build_bitmaps(root: Path) -> list[CorpusImage]:
    # Bitmaps added before the writes, so the enabled ones get dirty bits and hence bitmap
    # tables with data clusters.
    path, tags = _simple(root, "bitmaps", writes=[], tags={"bitmaps"})
    _add_bitmaps(path)
    _io(path, spread_writes(32 * MiB, 64 * KiB))

    # Opening read-write marks every bitmap in_use on disk; SIGKILL keeps it that way. No
    # write in that session, so nothing else is left half-done. qemu-img check: no errors.
    in_use_path, in_use_tags = _simple(
        root, "bitmaps-in-use", writes=[], tags={"bitmaps", "bitmaps-in-use"}
    )
    _add_bitmaps(in_use_path)
    _io(in_use_path, ["write -P 0xd1 0 1M"])
    _io(in_use_path, ["sigraise 9"], killed=True)
    return [_plain("bitmaps", path, tags), _plain("bitmaps-in-use", in_use_path, in_use_tags)]


def _create_luks(path: Path, size: int, options: Mapping[str, str], attempts: int = 5) -> None:
    """qemu-img create for LUKS, retried when qemu's PBKDF benchmark cannot time itself.

    qemu times PBKDF2 iterations with the thread's CPU clock; under load (the corpus builds in
    parallel) a benchmark round can measure 0 ms and qemu gives up with "Unable to get accurate
    CPU usage". That is a timing artefact, not a problem with the image, so try again.
    """
    for attempt in range(attempts):
        try:
            _create(path, size, options, extra=_secret_object(LUKS_SECRET))
            return
        except AssertionError as exc:
            if "Unable to get accurate CPU usage" not in str(exc) or attempt == attempts - 1:
                raise
            path.unlink(missing_ok=True)


def _luks_image(root: Path, name: str, cluster_size: int) -> CorpusImage:
    path = root / f"{name}.qcow2"
    size = 32 * MiB
    options = {
        "cluster_size": str(cluster_size),
        "encrypt.format": "luks",
        "encrypt.key-secret": LUKS_SECRET_ID,
        "encrypt.iter-time": str(LUKS_ITER_TIME_MS),
    }
    _create_luks(path, size, options)
    _io(path, spread_writes(size, cluster_size), secret=LUKS_SECRET)
    return CorpusImage(
        name=name,
        path=path,
        tags=frozenset(_base_tags("1.1", cluster_size, 16) | {"luks"}),
        secret=LUKS_SECRET,
        qemu_args=[*_secret_object(LUKS_SECRET), "--image-opts", _luks_image_opts(path)],
        consistent=True,
        backing=None,
    )


def build_luks(root: Path) -> list[CorpusImage]:
    # With 4 KiB clusters the ~2 MiB LUKS header area spans hundreds of clusters.
    return [_luks_image(root, "luks", 64 * KiB), _luks_image(root, "luks-cs-4096", 4 * KiB)]


def build_data_file(root: Path) -> list[CorpusImage]:
    images = []
    for raw in (False, True):
        name = "data-file-raw" if raw else "data-file"
        # qemu 7.2 resolves a relative data file name against the *current directory*, not the
        # image's directory, so the name stored in the header is absolute.
        data_path = root / f"{name}.raw"
        options = {"data_file": str(data_path)}
        tags = {"data-file"}
        if raw:
            options["data_file_raw"] = "on"
            tags.add("data-file-raw")
        path, all_tags = _simple(root, name, options=options, tags=tags)
        images.append(_plain(name, path, all_tags))
    return images


def build_lazy(root: Path) -> list[CorpusImage]:
    lazy = {"lazy_refcounts": "on"}
    clean_path, clean_tags = _simple(root, "lazy-clean", options=lazy, tags={"lazy"})

    # SIGKILL after a write with lazy refcounts: the dirty bit stays set and the refcounts of
    # the new clusters were never written. qemu-img check (no -r) reports them as corruptions
    # ("refcount=0 reference=1" plus OFLAG_COPIED), exit 2.
    dirty_path, dirty_tags = _simple(
        root, "lazy-dirty", options=lazy, writes=[], tags={"lazy", "dirty"}
    )
    _io(dirty_path, ["write -P 0xe1 0 1M", "write -P 0xe2 8M 256k", "sigraise 9"], killed=True)
    return [
        _plain("lazy-clean", clean_path, clean_tags),
        _plain("lazy-dirty", dirty_path, dirty_tags, consistent=False),
    ]


def build_discard(root: Path) -> list[CorpusImage]:
    writes = [
        "write -P 0xf1 0 4M",
        "write -P 0xf2 12M 1M",
        # Discard frees whole clusters in the middle: refcount 0 holes below the image end.
        "discard 1M 1M",
        "discard 12M 512k",
    ]
    images = []
    for cs in (4 * KiB, 64 * KiB):
        name = f"discard-{cs}"
        path, tags = _simple(root, name, cluster_size=cs, writes=writes, tags={"discard", "holes"})
        images.append(_plain(name, path, tags))
    return images


def build_prealloc(root: Path) -> list[CorpusImage]:
    images = []
    for mode in ("metadata", "falloc", "full"):
        name = f"prealloc-{mode}"
        path, tags = _simple(
            root,
            name,
            size=16 * MiB,
            options={"preallocation": mode},
            writes=["write -P 0xf3 1M 256k"],
            tags={name},
        )
        images.append(_plain(name, path, tags))
    return images


def build_chains(root: Path) -> list[CorpusImage]:
    """Backing chains with relative backing names, created from inside their directory."""
    chain_dir = root / "chain"
    chain_dir.mkdir(exist_ok=True)
    size = 32 * MiB
    v3 = _base_tags("1.1", 64 * KiB, 16)

    def create_over(name: str, backing: str, backing_fmt: str) -> Path:
        # Relative -b names are resolved against the new image's directory, hence cwd.
        run(
            [QEMU_IMG, "create", "-q", "-f", "qcow2", "-b", backing, "-F", backing_fmt, name],
            cwd=chain_dir,
        )
        return chain_dir / name

    base = chain_dir / "base.qcow2"
    _create(base, size, {})
    _io(base, ["write -P 0x11 0 2M", "write -P 0x12 16M 1M"])
    mid = create_over("mid.qcow2", "base.qcow2", "qcow2")
    _io(mid, ["write -P 0x21 1M 2M", "write -P 0x22 20M 64k"])
    top = create_over("top.qcow2", "mid.qcow2", "qcow2")
    _io(top, ["write -P 0x31 512k 64k", "write -P 0x32 30M 128k"])

    raw_base = chain_dir / "base.raw"
    _create(raw_base, size, {}, fmt="raw")
    _io(raw_base, ["write -P 0x41 0 1M"], fmt="raw")
    over_raw = create_over("over-raw.qcow2", "base.raw", "raw")
    _io(over_raw, ["write -P 0x42 512k 64k"])

    gone = chain_dir / "gone.qcow2"
    _create(gone, size, {})
    orphan = create_over("orphan.qcow2", "gone.qcow2", "qcow2")
    _io(orphan, ["write -P 0x51 0 64k"])
    gone.unlink()

    return [
        _plain("chain-base", base, v3 | {"chain"}),
        _plain("chain-mid", mid, v3 | {"chain", "backing"}, backing=base),
        _plain("chain-top", top, v3 | {"chain", "backing"}, backing=mid),
        _plain(
            "chain-over-raw", over_raw, v3 | {"chain", "backing", "backing-raw"}, backing=raw_base
        ),
        CorpusImage(
            name="chain-backing-missing",
            path=orphan,
            tags=frozenset(v3 | {"chain", "backing", "backing-missing"}),
            secret=None,
            # Plain -f qcow2 PATH makes qemu-img check exit 1 ("Could not open backing file").
            qemu_args=[_no_backing_json(orphan)],
            consistent=True,
            backing=gone,
        ),
    ]


def build_huge_sparse(root: Path) -> list[CorpusImage]:
    size = 64 * TiB
    writes = [
        "write -P 0x61 0 128k",
        f"write -P 0x62 {1 * TiB} 64k",
        f"write -P 0x63 {32 * TiB + 64 * KiB} 64k",
        f"write -P 0x64 {size - 64 * KiB} 64k",
    ]
    path, tags = _simple(root, "huge-sparse", size=size, writes=writes, tags={"huge-sparse"})
    return [_plain("huge-sparse", path, tags)]


def build_mixed(root: Path) -> list[CorpusImage]:
    """Everything at once: the base for byte-patched damage (tests/damage.py).

    Normal, compressed and COW-shared clusters, one snapshot, and bitmaps with data, so each
    damage recipe finds the structure it patches.
    """
    path, tags = _simple(
        root, "mixed", writes=[], tags={"snapshots", "bitmaps", "compressed", "zlib"}
    )
    _add_bitmaps(path)
    cs = 64 * KiB
    _io(path, [*spread_writes(32 * MiB, cs), *compressed_writes(2 * MiB, 256 * KiB, cs, "-P 0x71")])
    _snapshot(path, "-c", "snap1")
    _io(
        path,
        [
            "write -P 0x72 0 128k",
            "write -P 0x73 6M 192k",
            *compressed_writes(10 * MiB, 128 * KiB, cs, "-P 0x74"),
        ],
    )
    return [_plain("mixed", path, tags)]


BUILDERS: tuple[Callable[[Path], list[CorpusImage]], ...] = (
    build_cluster_sizes,
    build_refcount_widths,
    build_v2,
    build_compressed,
    build_extended_l2,
    build_snapshots,
    build_bitmaps,
    build_luks,
    build_data_file,
    build_lazy,
    build_discard,
    build_prealloc,
    build_chains,
    build_huge_sparse,
    build_mixed,
)


def build_corpus(
    directory: os.PathLike[str] | str, *, workers: Optional[int] = None
) -> list[CorpusImage]:
    """Build the whole corpus in ``directory`` (created if needed); return it in a fixed order.

    Builders are independent and spend their time in qemu subprocesses, so they run in threads.
    """
    root = Path(directory).resolve()
    root.mkdir(parents=True, exist_ok=True)
    for tool in (QEMU_IMG, QEMU_IO):
        if shutil.which(tool) is None:
            raise AssertionError(f"{tool} not found on PATH (Debian: apt-get install qemu-utils)")
    with ThreadPoolExecutor(max_workers=workers or max(2, os.cpu_count() or 2)) as pool:
        results = list(pool.map(lambda builder: builder(root), BUILDERS))
    images = [image for batch in results for image in batch]
    names = [image.name for image in images]
    duplicates = {name for name in names if names.count(name) > 1}
    assert not duplicates, f"duplicate corpus image names: {sorted(duplicates)}"
    return images


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m tests.corpus DIRECTORY", file=sys.stderr)
        return 64
    for image in build_corpus(args[0]):
        print(f"{image.name:28} {' '.join(sorted(image.tags))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
