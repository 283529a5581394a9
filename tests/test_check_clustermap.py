"""collectors/check/clustermap.py: what each host cluster of an image holds, against the
clusters the tests' own reader (tests/damage.py) finds referenced and qemu-img check's end
offset and leaks; and the map's runs, totals and cells worked out by hand."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from qcow2_monitor.collectors.check.clustermap import (
    BEYOND,
    COMPRESSED,
    DATA,
    FREE,
    KIND_NAMES,
    LEAKED,
    METADATA,
    ClusterMap,
    cluster_map,
)
from qcow2_monitor.collectors.common.errors import Qcow2Error
from qcow2_monitor.collectors.qcow2.image import Qcow2Image

from corpus import QEMU_IMG, run
from daemons import make_image
from damage import (
    L1E_OFFSET_MASK,
    REFT_OFFSET_MASK,
    active_l2_entries,
    bitmaps_extension,
    compressed_range,
    copy_image,
    get_refcount,
    l1_entries,
    patch_u8,
    read_header,
    refcount_table_entries,
    set_refcount,
)

CLUSTER = 65536


def hand_map(kinds: list[int], cluster_size: int = 512, partial: int = 0) -> ClusterMap:
    length = len(kinds) * cluster_size - partial
    return ClusterMap(cluster_size, length, length, np.array(kinds, dtype=np.uint8))


def test_runs_and_totals_by_hand() -> None:
    # Two metadata clusters, two data, a free one, a leaked one, and 100 bytes of a last
    # cluster past the end (412 bytes short of a whole one).
    m = hand_map([METADATA, METADATA, DATA, DATA, FREE, LEAKED, BEYOND], partial=412)
    assert m.runs() == [(METADATA, 0, 1024), (DATA, 1024, 1024), (FREE, 2048, 512),
                        (LEAKED, 2560, 512), (BEYOND, 3072, 100)]
    assert m.totals() == {"beyond-end": 100, "free": 512, "data": 1024, "compressed": 0,
                          "metadata": 1024, "leaked": 512}
    assert sum(m.totals().values()) == m.length


def test_cells_by_hand() -> None:
    m = hand_map([METADATA, METADATA, DATA, DATA, FREE, LEAKED, BEYOND])
    # 7 clusters in 3 cells: [0, 2), [2, 4), [4, 7); the last holds one each of free,
    # leaked and beyond: a tie, won by the higher kind so that a leak is not lost.
    assert m.cells(3) == [METADATA, DATA, LEAKED]
    assert m.cells(7) == [METADATA, METADATA, DATA, DATA, FREE, LEAKED, BEYOND]
    assert m.cells(1) == [METADATA]  # 2 metadata, 2 data: a tie again, metadata is higher
    assert m.cells(0) == []
    # More cells than clusters (a small image drawn 80 wide): each cell is the cluster it
    # lies in; 3 clusters in 7 cells: cell i starts in cluster i * 3 // 7.
    three = hand_map([METADATA, DATA, LEAKED])
    assert three.cells(7) == [METADATA, METADATA, METADATA, DATA, DATA, LEAKED, LEAKED]
    assert three.cells(6) == [METADATA, METADATA, DATA, DATA, LEAKED, LEAKED]
    empty = hand_map([])
    assert (empty.runs(), empty.cells(4)) == ([], [])


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Data at 4M and 6M written first and discarded (two clusters of refcount 0 below the
    end, one then given a refcount: a leak), then normal, compressed and zero-allocated
    clusters."""
    path = tmp_path_factory.mktemp("clustermap") / "m.qcow2"
    make_image(path, "1G", write=[
        "write -P 7 4M 64k", "write -P 8 6M 64k", "write -P 1 0 128k", "write -c -P 2 1M 64k",
        "write -c -P 3 2M 64k", "write -P 4 3M 64k", "write -z 3M 64k", "write -P 5 700M 64k",
        "discard 4M 64k", "discard 6M 64k"])
    return path


def expected_kinds(path: Path) -> dict[int, int]:
    """The referenced clusters' kinds by the format's rules (docs/qcow2-format.md §7), and
    free or leaked for the unreferenced ones below the last with a refcount."""
    h = read_header(path)
    kinds: dict[int, int] = {0: METADATA}
    table = h["refcount_table_offset"] // CLUSTER
    kinds.update((c, METADATA) for c in range(table, table + h["refcount_table_clusters"]))
    kinds.update(((e & REFT_OFFSET_MASK) // CLUSTER, METADATA)
                 for e in refcount_table_entries(path) if e)
    kinds[h["l1_table_offset"] // CLUSTER] = METADATA
    kinds.update(((e & L1E_OFFSET_MASK) // CLUSTER, METADATA) for e in l1_entries(path) if e)
    for entry in active_l2_entries(path):
        if entry.compressed:
            start, length = compressed_range(entry.entry, h["cluster_bits"])
            kinds.update((c, COMPRESSED) for c in range(start // CLUSTER,
                                                        (start + length - 1) // CLUSTER + 1))
        elif entry.host_offset:
            kinds[entry.host_offset // CLUSTER] = DATA
    clusters = path.stat().st_size // CLUSTER
    end = max(c for c in range(clusters) if get_refcount(path, c)) + 1
    for c in range(end):
        if c not in kinds:
            kinds[c] = LEAKED if get_refcount(path, c) else FREE
    return kinds


def qemu_check(path: Path) -> tuple[dict[str, int], set[int]]:
    """qemu-img check's figures, and the clusters it reports leaked."""
    codes = (0, 3)
    figures = json.loads(run([QEMU_IMG, "check", "--output=json", str(path)],
                             allowed_returncodes=codes).stdout)
    text = run([QEMU_IMG, "check", str(path)], allowed_returncodes=codes)
    leaked = {int(c) for c in re.findall(r"^Leaked cluster (\d+) ", text.stdout + text.stderr,
                                         re.MULTILINE)}
    return figures, leaked


def test_kinds_of_a_real_image(image: Path, tmp_path: Path, qemu_tools: object) -> None:
    path = copy_image(image, tmp_path / "leaky.qcow2")
    freed = sorted(c for c in range(path.stat().st_size // CLUSTER)
                   if get_refcount(path, c) == 0)
    assert len(freed) == 2  # the two discarded clusters
    set_refcount(path, freed[1], 1)
    expected = expected_kinds(path)
    figures, leaked = qemu_check(path)
    assert leaked == {c for c, kind in expected.items() if kind == LEAKED} == {freed[1]}
    length = path.stat().st_size + 3 * CLUSTER  # a container 3 clusters longer
    with Qcow2Image.open(str(path)) as opened:
        m = cluster_map(opened, length)
    assert (m.cluster_size, m.end_offset, m.length) == (CLUSTER, figures["image-end-offset"],
                                                        length)
    end = m.end_offset // CLUSTER
    assert {c: int(k) for c, k in enumerate(m.kinds[:end])} == expected
    assert set(m.kinds[end:].tolist()) == {BEYOND} and len(m.kinds) == end + 3
    assert {KIND_NAMES[k] for k in expected.values()} == set(KIND_NAMES) - {"beyond-end"}
    totals = m.totals()
    assert totals["compressed"] == CLUSTER  # both compressed clusters fit in one host cluster
    assert totals["leaked"] == totals["free"] == CLUSTER
    assert totals["beyond-end"] == 3 * CLUSTER
    assert sum(totals.values()) == length


def test_container_shorter_than_the_end(image: Path) -> None:
    """A container (file or device) shorter than the end offset: mapped up to the end."""
    with Qcow2Image.open(str(image)) as opened:
        m = cluster_map(opened, CLUSTER)
    assert m.length == m.end_offset == len(m.kinds) * CLUSTER
    assert BEYOND not in m.kinds.tolist()


def test_unwalkable_image_names_file_and_structure(tmp_path: Path, qemu_tools: object) -> None:
    """A bitmap directory entry qemu refuses: qemu-img check fails, and so does the map, with
    the file, the entry and its offset."""
    path = tmp_path / "bitmap.qcow2"
    make_image(path, "1G")
    run([QEMU_IMG, "bitmap", "--add", str(path), "b0"])
    ext = bitmaps_extension(path)
    assert ext is not None
    patch_u8(path, ext.directory_offset + 17, 63)  # granularity_bits: at most 31
    with Qcow2Image.open(str(path)) as opened, pytest.raises(Qcow2Error) as info:
        cluster_map(opened, path.stat().st_size)
    error = info.value
    assert (error.filename, error.structure, error.offset) == (
        str(path), "bitmap directory entry 0", ext.directory_offset)
    assert run([QEMU_IMG, "check", str(path)], allowed_returncodes=(1,)).returncode == 1


def test_small_image_drawn_wider_than_its_clusters(image: Path) -> None:
    """`qcow2-analyze map` draws 80 x 8 cells: an image of a few clusters fills them all
    with its own kinds, in order, none past the end."""
    with Qcow2Image.open(str(image)) as opened:
        m = cluster_map(opened, opened.file.length)
    assert len(m.kinds) < 640
    cells = m.cells(640)
    assert BEYOND not in cells
    # Each cluster shows in the cells that start inside it.
    assert cells == [int(m.kinds[i * len(m.kinds) // 640]) for i in range(640)]
