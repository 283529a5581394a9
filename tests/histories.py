"""Random qcow2 histories made with qemu-img and qemu-io, for randomised differential tests.

A history is a chain of one to three qcow2 layers, each created with random options (cluster
size, refcount width, v2/v3, extended L2, external data file, preallocation, virtual size) and
then put through a
random sequence of steps: data writes, zero writes (with and without unmap), discards,
compressed writes, internal snapshots created and deleted, persistent bitmaps, and resizes.
Everything is drawn from ``random.Random(seed)``, so a seed names the same history on every
run; :meth:`History.describe` prints it as the commands that replay it by hand::

    python tests/histories.py DIRECTORY SEED [COUNT]

The generator only draws histories qemu accepts (compressed writes go to clusters no earlier
step touched; v2 images get no bitmaps, and no resize with snapshots or a backing file;
snapshots only where the refcount width has room for the extra references; neither snapshots
nor compressed writes with an external data file; preallocated overlays only with extended L2),
so building one never fails for a reason the history itself could have avoided. Every
command runs in the history's directory: qemu 7.2 resolves a relative data file name against
its working directory.
"""

from __future__ import annotations

import random
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from corpus import QEMU_IMG, QEMU_IO, KiB, MiB

CLUSTER_SIZES = tuple(1 << bits for bits in range(9, 22))  # 512 .. 2 MiB
# Clusters larger than the 64 KiB of qemu-img measure's target are where per-cluster and
# per-byte allocation differ: they are drawn as often as all the others together.
LARGE_CLUSTER_SIZES = (1 * MiB, 2 * MiB)
REFCOUNT_BITS = (1, 2, 4, 8, 16, 32, 64)
VIRTUAL_SIZES = (1 * MiB, 4 * MiB, 16 * MiB, 64 * MiB, 256 * MiB)
# preallocation=full writes the whole virtual size: only on small images.
FULL_PREALLOC_MAX_SIZE = 16 * MiB
MAX_LAYERS = 3


@dataclass(frozen=True)
class Step:
    """One step of a layer's history: ``io`` (qemu-io commands run in one process),
    ``snapshot-create``/``snapshot-delete`` (name), ``bitmap`` (name, granularity, enabled)
    or ``resize`` (new size, preallocation mode)."""

    kind: str
    args: tuple[str, ...]

    def argv(self, path: str) -> list[str]:
        if self.kind == "io":
            argv = [QEMU_IO, "-f", "qcow2"]
            for command in self.args:
                argv += ["-c", command]
            return [*argv, path]
        if self.kind == "snapshot-create":
            return [QEMU_IMG, "snapshot", "-c", self.args[0], path]
        if self.kind == "snapshot-delete":
            return [QEMU_IMG, "snapshot", "-d", self.args[0], path]
        if self.kind == "bitmap":
            name, granularity, enabled = self.args
            flags = [] if enabled == "enabled" else ["--disable"]
            return [QEMU_IMG, "bitmap", "--add", "-g", granularity, *flags, path, name]
        if self.kind == "resize":
            size, prealloc = self.args
            return [QEMU_IMG, "resize", "-q", f"--preallocation={prealloc}", path, size]
        raise ValueError(f"unknown step kind {self.kind!r}")


@dataclass
class Layer:
    """One qcow2 file of the chain: its creation options and its steps."""

    name: str
    size: int
    options: dict[str, str]
    backing: Optional[str] = None  # file name of the layer below (same directory)
    steps: list[Step] = field(default_factory=list)

    def create_argv(self) -> list[str]:
        opts = ",".join(f"{key}={value}" for key, value in self.options.items())
        argv = [QEMU_IMG, "create", "-q", "-f", "qcow2", "-o", opts]
        if self.backing is not None:
            argv += ["-b", self.backing, "-F", "qcow2"]
        return [*argv, self.name, str(self.size)]


@dataclass
class History:
    seed: int
    layers: list[Layer]

    @property
    def top(self) -> Layer:
        return self.layers[-1]

    def describe(self) -> str:
        """The shell commands that replay this history, in a fresh directory."""
        lines = [f"# history seed {self.seed}"]
        for layer in self.layers:
            lines.append(" ".join(layer.create_argv()))
            lines += [" ".join(_quote(a) for a in step.argv(layer.name)) for step in layer.steps]
        return "\n".join(lines)

    def build(self, directory: Path) -> list[Path]:
        """Run the history in ``directory`` (created if needed); the layers' paths, base
        first. Raises AssertionError with the qemu output and the replay script on failure."""
        directory.mkdir(parents=True, exist_ok=True)
        for layer in self.layers:
            self._run(layer.create_argv(), directory)
            for step in layer.steps:
                self._run(step.argv(layer.name), directory)
        return [directory / layer.name for layer in self.layers]

    def _run(self, argv: Sequence[str], cwd: Path) -> None:
        proc = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True,
                              check=False, timeout=300)
        # qemu-io exits 1 when a command fails; older builds only say "failed" on stdout.
        failed = proc.returncode != 0 or "failed" in proc.stdout + proc.stderr
        if failed:
            raise AssertionError(
                f"history step failed (exit {proc.returncode}): {' '.join(argv)}\n"
                f"{(proc.stdout + proc.stderr).strip()}\nreplay:\n{self.describe()}")


def _quote(arg: str) -> str:
    return f"'{arg}'" if " " in arg else arg


# -- drawing a history ------------------------------------------------------------------------
class _LayerDraw:
    """Draws the steps of one layer, keeping what qemu needs to accept them: the current
    virtual size, the clusters already touched (compressed writes only go to untouched ones),
    the live snapshots."""

    def __init__(self, rng: random.Random, layer: Layer, version: int, cluster_size: int,
                 refcount_bits: int, preallocated: bool) -> None:
        self.rng = rng
        self.layer = layer
        self.version = version
        self.data_file = "data_file" in layer.options
        self.cluster_size = cluster_size
        self.refcount_bits = refcount_bits
        self.compressed_any = False
        self.size = layer.size
        # Preallocated layers have every cluster allocated: no compressed write can go there.
        self.all_allocated = preallocated
        self.touched: set[int] = set()
        self.snapshots: list[str] = []
        self.snapshot_count = 0
        self.bitmap_count = 0
        self.io: list[str] = []

    def _flush(self) -> None:
        if self.io:
            self.layer.steps.append(Step("io", tuple(self.io)))
            self.io = []

    def _range(self) -> tuple[int, int]:
        rng = self.rng
        limit = rng.choice((4 * KiB, 64 * KiB, 1 * MiB, 4 * MiB))
        length = rng.randint(1, limit)
        if rng.random() < 0.8:  # mostly sector-aligned, as guests write
            length = max(512, length // 512 * 512)
        length = min(length, self.size)
        offset = rng.randrange(0, self.size - length + 1)
        if rng.random() < 0.8:
            offset = offset // 512 * 512
        return offset, length

    def _touch(self, offset: int, length: int) -> None:
        cs = self.cluster_size
        self.touched.update(range(offset // cs, (offset + length - 1) // cs + 1))

    def data_write(self) -> None:
        offset, length = self._range()
        self.io.append(f"write -P {self.rng.randrange(1, 256)} {offset} {length}")
        self._touch(offset, length)

    def zero_write(self) -> None:
        offset, length = self._range()
        unmap = " -u" if self.rng.random() < 0.5 else ""
        self.io.append(f"write -z{unmap} {offset} {length}")
        self._touch(offset, length)

    def discard(self) -> None:
        offset, length = self._range()
        self.io.append(f"discard {offset} {length}")
        self._touch(offset, length)

    def compressed_write(self) -> None:
        cs = self.cluster_size
        if (self.all_allocated or self.data_file
                or (self.snapshot_count and self.refcount_bits < 8)):
            return self.data_write()
        clusters = -(-self.size // cs)
        first = self.rng.randrange(clusters)
        count = self.rng.randint(1, 4)
        free = 0
        while free < count and first + free < clusters and first + free not in self.touched:
            free += 1
        if not free:
            return self.data_write()
        offset = first * cs
        # Whole clusters, or up to the end of the image for its last, partial cluster.
        length = min(free * cs, self.size - offset)
        self.io.append(f"write -c -P {self.rng.randrange(1, 256)} {offset} {length}")
        self._touch(offset, length)
        self.compressed_any = True
        return None

    def _snapshot_fits(self) -> bool:
        # A snapshot adds one reference to every cluster, and compressed clusters share a
        # host cluster: qemu refuses a snapshot whose refcounts would overflow (-EINVAL). The
        # at most 8 snapshots of a layer fit 8-bit refcounts, and 4-bit ones without sharing.
        if self.data_file:
            return False  # qemu: snapshots are not supported with an external data file
        return self.refcount_bits >= 8 or (self.refcount_bits == 4 and not self.compressed_any)

    def snapshot_create(self) -> None:
        if not self._snapshot_fits():
            return self.data_write()
        self._flush()
        name = f"snap{self.snapshot_count}"
        self.snapshot_count += 1
        self.snapshots.append(name)
        self.layer.steps.append(Step("snapshot-create", (name,)))
        return None

    def snapshot_delete(self) -> None:
        if not self.snapshots:
            return self.snapshot_create()
        self._flush()
        name = self.snapshots.pop(self.rng.randrange(len(self.snapshots)))
        self.layer.steps.append(Step("snapshot-delete", (name,)))
        return None

    def bitmap(self) -> None:
        if self.version < 3:
            return self.data_write()
        self._flush()
        name = f"bitmap{self.bitmap_count}"
        self.bitmap_count += 1
        granularity = 1 << self.rng.randint(9, 21)
        enabled = self.rng.choice(("enabled", "disabled"))
        self.layer.steps.append(Step("bitmap", (name, str(granularity), enabled)))
        return None

    def resize(self) -> None:
        if self.version < 3 and (self.snapshot_count or self.layer.backing is not None):
            # qemu: "Can't resize a v2 image which has snapshots", and growing a v2 overlay
            # over a longer backing file needs zero clusters v2 does not have.
            return self.data_write()
        self._flush()
        new_size = self.size + self.rng.choice((512, 64 * KiB, 1 * MiB, 3 * MiB + 512))
        prealloc = self.rng.choice(("off", "off", "metadata", "falloc"))
        if prealloc != "off":
            self.all_allocated = True
        self.layer.steps.append(Step("resize", (str(new_size), prealloc)))
        self.size = new_size
        return None

    def draw(self, count: int) -> None:
        actions = ((self.data_write, 35), (self.zero_write, 20), (self.discard, 15),
                   (self.compressed_write, 12), (self.snapshot_create, 7),
                   (self.snapshot_delete, 5), (self.bitmap, 3), (self.resize, 3))
        funcs = [func for func, _ in actions]
        weights = [weight for _, weight in actions]
        for _ in range(count):
            self.rng.choices(funcs, weights)[0]()
        self._flush()


def _draw_layer(rng: random.Random, name: str, backing: Optional[Layer]) -> Layer:
    version = 2 if rng.random() < 0.25 else 3
    cluster_size = rng.choice(CLUSTER_SIZES + LARGE_CLUSTER_SIZES * 6)
    options = {"compat": "0.10" if version == 2 else "1.1", "cluster_size": str(cluster_size)}
    refcount_bits = 16
    if version == 3:
        refcount_bits = rng.choice(REFCOUNT_BITS)
        options["refcount_bits"] = str(refcount_bits)
        if cluster_size >= 16 * KiB and rng.random() < 0.2:
            options["extended_l2"] = "on"
        if rng.random() < 0.15:
            options["data_file"] = name.replace(".qcow2", ".data")
            if backing is None and rng.random() < 0.5:  # qemu: no raw data over a backing
                options["data_file_raw"] = "on"
    size = rng.choice(VIRTUAL_SIZES)
    if rng.random() < 0.2:
        size += rng.randrange(1, 64) * 512  # not a multiple of the cluster size
    if backing is not None and rng.random() < 0.7:
        size = backing.size  # the usual overlay: same size as its backing file
    prealloc = rng.choices(("off", "metadata", "falloc", "full"), (55, 20, 15, 10))[0]
    if prealloc == "full" and size > FULL_PREALLOC_MAX_SIZE:
        prealloc = "falloc"
    if backing is not None and "extended_l2" not in options:
        prealloc = "off"  # qemu: preallocation over a backing file needs extended L2
    if prealloc != "off":
        options["preallocation"] = prealloc
    layer = Layer(name=name, size=size, options=options,
                  backing=backing.name if backing is not None else None)
    _LayerDraw(rng, layer, version, cluster_size, refcount_bits,
               preallocated=prealloc != "off").draw(rng.randint(1, 8))
    return layer


def draw_history(seed: int) -> History:
    """The history named by ``seed``: one to three layers, each over the one before."""
    rng = random.Random(seed)
    count = rng.choices(range(1, MAX_LAYERS + 1), (60, 30, 10))[0]
    layers: list[Layer] = []
    for index in range(count):
        below = layers[-1] if layers else None
        layers.append(_draw_layer(rng, f"layer{index}.qcow2", below))
    return History(seed=seed, layers=layers)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) not in (2, 3):
        print("usage: python tests/histories.py DIRECTORY SEED [COUNT]", file=sys.stderr)
        return 64
    root = Path(args[0])
    first = int(args[1])
    for seed in range(first, first + (int(args[2]) if len(args) == 3 else 1)):
        history = draw_history(seed)
        history.build(root / f"history-{seed}")
        print(history.describe())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
