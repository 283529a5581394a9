"""collectors/qcow2/snapshots.py: snapshot selectors resolved as qemu resolves the argument of
`qemu-img snapshot -a` (IDs first, then names), the keywords, ambiguous and unknown selectors
refused with the candidates named (a bounded list), and a damaged snapshot table refused with
the file, the entry and the offset named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qcow2_monitor.collectors.common.errors import OUT_OF_BOUNDS, Qcow2Error
from qcow2_monitor.collectors.qcow2.image import Qcow2Image
from qcow2_monitor.collectors.qcow2.snapshots import (
    MAX_NAMED_IN_ERROR,
    SnapshotSelection,
    SnapshotSelectorError,
    select_snapshots,
)

from corpus import QEMU_IMG, QEMU_IO, run
from daemons import make_image
from damage import SNAPSHOT_EXTRA_DATA_SIZE_AT, copy_image, patch_u32, read_header
from hostile import many_snapshots_image
from work import counting


@pytest.fixture(scope="module")
def named(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Snapshots s1 (ID 1, data 1), "1" (ID 2, data 2), s1 again (ID 3, data 3) and "all"
    (ID 4): qemu-img lets names repeat and a name look like another snapshot's ID."""
    path = tmp_path_factory.mktemp("snapshots") / "named.qcow2"
    make_image(path, "64M")
    for pattern, name in ((1, "s1"), (2, "1"), (3, "s1"), (4, "all")):
        run([QEMU_IO, "-f", "qcow2", "-c", f"write -P {pattern} 0 64k", str(path)])
        run([QEMU_IMG, "snapshot", "-c", name, str(path)])
    return path


def qemu_snapshots(path: Path) -> list[tuple[str, str]]:
    info = json.loads(run([QEMU_IMG, "info", "--output=json", "-U", str(path)]).stdout)
    return [(sn["id"], sn["name"]) for sn in info.get("snapshots", [])]


def select(path: Path, selector: str) -> SnapshotSelection:
    with Qcow2Image.open(str(path)) as image:
        return select_snapshots(image, selector)


def ids_and_names(selection: SnapshotSelection) -> list[tuple[str, str]]:
    return [(sn.id_str, sn.name) for sn in selection.snapshots]


def test_keywords(named: Path) -> None:
    table = qemu_snapshots(named)
    assert table == [("1", "s1"), ("2", "1"), ("3", "s1"), ("4", "all")]
    active = select(named, "active")
    assert (active.selector, active.active, active.snapshots, active.ids) == (
        "active", True, (), frozenset())
    inactive = select(named, "inactive")
    assert (inactive.active, ids_and_names(inactive)) == (False, table)
    # `all` is the keyword, not the snapshot named "all".
    everything = select(named, "all")
    assert (everything.active, ids_and_names(everything)) == (True, table)
    assert everything.ids == frozenset({"1", "2", "3", "4"})


def test_an_id_before_a_name_as_qemu_resolves_it(named: Path, tmp_path: Path) -> None:
    """"1" is snapshot 1's ID and snapshot 2's name: qemu-img snapshot -a 1 applies snapshot
    1 (its data, pattern 1), and so does the selector."""
    applied = copy_image(named, tmp_path / "applied.qcow2")
    run([QEMU_IMG, "snapshot", "-a", "1", str(applied)])
    run([QEMU_IO, "-f", "qcow2", "-c", "read -P 1 0 64k", str(applied)])
    selection = select(named, "1")
    assert (selection.active, ids_and_names(selection)) == (False, [("1", "s1")])
    # The other selectors of one snapshot: its unique name, its ID.
    assert ids_and_names(select(named, "2")) == [("2", "1")]
    assert ids_and_names(select(named, "4")) == [("4", "all")]
    snapshot = select(named, "3").snapshots[0]
    assert (snapshot.table_index, snapshot.l1_table_offset) == (
        2, select(named, "inactive").snapshots[2].l1_table_offset)


def test_ambiguous_name_refused(named: Path) -> None:
    with pytest.raises(SnapshotSelectorError) as info:
        select(named, "s1")
    assert str(info.value) == (
        "snapshot name 's1' is ambiguous: snapshots with IDs 1, 3 have it (select one by a "
        "unique ID, or use inactive)")


def test_unknown_selector_names_what_there_is(named: Path, tmp_path: Path) -> None:
    with pytest.raises(SnapshotSelectorError) as info:
        select(named, "s9")
    assert str(info.value) == (
        f"no snapshot with ID or name 's9' in {named} (it has snapshot IDs 1, 2, 3, 4; or use "
        "active, inactive, all)")
    empty = tmp_path / "empty.qcow2"
    make_image(empty, "1M")
    assert qemu_snapshots(empty) == []
    with pytest.raises(SnapshotSelectorError, match=r"\(it has no snapshots; or use"):
        select(empty, "1")
    assert select(empty, "inactive").snapshots == ()


def test_many_matches_named_within_bounds(tmp_path: Path) -> None:
    """2000 snapshots all named "s" (one entry repeated): the error names the first
    MAX_NAMED_IN_ERROR IDs and counts the rest; the table is read in a few reads."""
    path = tmp_path / "many.qcow2"
    copies = 2000
    many_snapshots_image(path, copies)
    assert read_header(path)["nb_snapshots"] == copies
    with Qcow2Image.open(str(path)) as image, counting() as work, \
            pytest.raises(SnapshotSelectorError) as info:
        select_snapshots(image, "s")
    ids = ", ".join(["1"] * MAX_NAMED_IN_ERROR)  # the one entry copied: every ID is "1"
    more = copies - MAX_NAMED_IN_ERROR
    assert str(info.value).startswith(
        f"snapshot name 's' is ambiguous: snapshots with IDs {ids} and {more} more have it")
    # An entry of this table is 40 fixed bytes, 16 of extra data, ID and name: under 72
    # bytes, so the table is at most 144 KB; it is read a 256 KiB window at a time.
    assert work.reads <= 2, work
    with pytest.raises(SnapshotSelectorError, match="snapshot ID '1' is ambiguous"):
        select(path, "1")
    assert len(select(path, "inactive").snapshots) == copies


def test_damaged_table_names_file_entry_and_offset(named: Path, tmp_path: Path) -> None:
    """An extra-data size over qemu's 1024-byte limit (QCOW_MAX_SNAPSHOT_EXTRA_DATA):
    qemu refuses to open the image; selecting a snapshot fails with the entry named."""
    path = copy_image(named, tmp_path / "extra.qcow2")
    entry = read_header(path)["snapshots_offset"]
    patch_u32(path, entry + SNAPSHOT_EXTRA_DATA_SIZE_AT, 1025)
    qemu = run([QEMU_IMG, "info", str(path)], allowed_returncodes=(1,))
    assert "Too much extra metadata in snapshot table entry 0" in qemu.stderr
    # Even `active`: the table is read first (qemu opens no image with it either).
    for selector in ("active", "1", "inactive", "s9"):
        with pytest.raises(Qcow2Error) as info:
            select(path, selector)
        error = info.value
        assert (error.filename, error.structure, error.offset, error.value, error.kind) == (
            str(path), "snapshot table entry 0", entry + SNAPSHOT_EXTRA_DATA_SIZE_AT, 1025,
            OUT_OF_BOUNDS)
