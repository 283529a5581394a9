"""Snapshot views (`dump --what l1|l2 --snapshot SEL`, `check --snapshot SEL`) on images whose
snapshots qemu-img made: shared and unshared L2 tables, an L1 table that grew with a resize, a
deleted snapshot, a snapshot named like another's ID, damage in one snapshot's table.

What the views must show is read here with a minimal reader of the snapshot table and the L1
tables (qcow2.txt's layout, independent of collectors/), and what qemu resolves a selector to
is asked of qemu itself (`qemu-img snapshot -a` on a copy)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from qcow2_monitor.analyze.main import main

from corpus import QEMU_IMG, QEMU_IO, run
from damage import patch_u64, read_header, read_u64, snapshot_table
from writers import QemuIo

L1E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
RESERVED_BIT = 1 << 1  # in L2E_STD_RESERVED_MASK (qcow2.txt: bits 1-8 of a standard entry)
CLUSTER = 65536


def _analyze(*argv: str) -> subprocess.CompletedProcess[str]:
    """qcow2-analyze ARGV, in process (its main() with its own streams)."""
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out, err)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def _json(*argv: str) -> Any:
    proc = _analyze(*argv, "--output", "json")
    assert proc.returncode in (0, 2, 3), proc.stderr[-500:]
    return json.loads(proc.stdout)


def l2_tables(path: Path, l1_offset: int, l1_size: int) -> list[int]:
    """The L2 table offsets an L1 table names, in L1 order (0: none)."""
    return [read_u64(path, l1_offset + 8 * i) & L1E_OFFSET_MASK for i in range(l1_size)]


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1 GiB, 64 KiB clusters (an L1 entry per 512 MiB): data in L1[0] and L1[1]; snapshot s1;
    L1[0]'s data rewritten (its L2 table copied, L1[1]'s still shared); snapshot s2; resized
    to 2 GiB (the active L1 grows from 2 to 4 entries) and written in L1[2]; snapshot named
    "1" (ID 3); L1[0] rewritten again; s2 deleted."""
    path = tmp_path_factory.mktemp("snapviews") / "h.qcow2"
    run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-o", f"cluster_size={CLUSTER}", str(path),
         "1G"])
    run([QEMU_IO, "-c", "write -P 1 0 128k", "-c", "write -P 2 600M 64k", str(path)])
    run([QEMU_IMG, "snapshot", "-c", "s1", str(path)])
    run([QEMU_IO, "-c", "write -P 3 0 64k", str(path)])
    run([QEMU_IMG, "snapshot", "-c", "s2", str(path)])
    run([QEMU_IMG, "resize", "-q", str(path), "2G"])
    run([QEMU_IO, "-c", "write -P 4 1500M 64k", str(path)])
    run([QEMU_IMG, "snapshot", "-c", "1", str(path)])
    run([QEMU_IO, "-c", "write -P 5 0 64k", str(path)])
    run([QEMU_IMG, "snapshot", "-d", "s2", str(path)])
    return path


def _owners(table: dict[str, Any]) -> list[str]:
    return (["active"] if table["active"] else []) + [sn["id"] for sn in table["snapshots"]]


def test_l1_tables_of_each_selector(history: Path) -> None:
    header = read_header(history)
    table = {sn_id: (name, offset, size) for sn_id, name, offset, size in
             snapshot_table(history)}
    assert sorted(table) == ["1", "3"] and table["3"][0] == "1"  # s2 deleted
    assert (header["l1_size"], table["1"][2], table["3"][2]) == (4, 2, 4)  # 1 GiB, then 2 GiB
    everything = _json("dump", "--what", "l1", "--snapshot", "all", str(history))
    assert everything["snapshot"] == "all" and everything["l1_tables"] == 3
    shown = [(t["l1_table_offset"], t["l1_size"], _owners(t)) for t in everything["tables"]]
    assert shown == [(header["l1_table_offset"], 4, ["active"]),
                     (table["1"][1], 2, ["1"]), (table["3"][1], 4, ["3"])]
    for t in everything["tables"]:
        named = l2_tables(history, t["l1_table_offset"], t["l1_size"])
        assert [e["index"] for e in t["entries"]] == [i for i, o in enumerate(named) if o]
        assert [e["l2_offset"] for e in t["entries"]] == [o for o in named if o]
    inactive = _json("dump", "--what", "l1", "--snapshot", "inactive", str(history))
    assert [_owners(t) for t in inactive["tables"]] == [["1"], ["3"]]
    active = _json("dump", "--what", "l1", str(history))
    assert active["snapshot"] == "active" and [_owners(t) for t in active["tables"]] == [
        ["active"]]


def test_shared_l2_tables_shown_once_with_every_owner(history: Path) -> None:
    header = read_header(history)
    snaps = {sn_id: l2_tables(history, offset, size)
             for sn_id, _, offset, size in snapshot_table(history)}
    active = l2_tables(history, header["l1_table_offset"], header["l1_size"])
    # What qemu-img made: L1[1]'s table shared by all three, L1[0]'s copied at each rewrite,
    # L1[2]'s (written after the resize) shared by the active image and snapshot 3.
    assert active[1] == snaps["1"][1] == snaps["3"][1]
    assert len({active[0], snaps["1"][0], snaps["3"][0]}) == 3
    assert active[2] == snaps["3"][2] and active[3] == snaps["3"][3] == 0
    expected: dict[int, list[str]] = {}
    for owner, named in (("active", active), *snaps.items()):
        for offset in named:
            if offset:
                expected.setdefault(offset, []).append(owner)
    data = _json("dump", "--what", "l2", "--snapshot", "all", str(history))
    assert data["distinct_tables"] == len(data["tables"]) == 5
    assert data["tables_named"] == 3 + 2 + 3
    assert {t["l2_offset"]: _owners(t) for t in data["tables"]} == expected
    text = _analyze("dump", "--what", "l2", "--snapshot", "all", str(history)).stdout
    assert (f"L2 table at 0x{active[1]:x} (L1[1]), 1 non-empty entry; named by active, "
            f"snapshot 1 (s1), snapshot 3 (1)") in text


def test_entries_map_what_each_snapshot_holds(history: Path) -> None:
    """Guest offset 0 of each view leads to the data qemu-io wrote before that snapshot."""
    patterns = {"active": 5, "1": 1, "3": 3}
    data = history.read_bytes()
    for selector, pattern in patterns.items():
        dump = _json("dump", "--what", "l2", "--snapshot", selector, str(history))
        first = next(t for t in dump["tables"] if t["l1_index"] == 0)
        entry = first["entries"][0]
        assert entry["guest_offset"] == 0 and entry["type"] == "normal"
        assert data[entry["host_offset"]:entry["host_offset"] + CLUSTER] == \
            bytes([pattern]) * CLUSTER, selector
    # s1 wrote 128 KiB in L1[0]: two entries of its own table.
    s1 = _json("dump", "--what", "l2", "--snapshot", "s1", str(history))
    assert [e["guest_offset"] for e in s1["tables"][0]["entries"]] == [0, CLUSTER]


def test_ids_come_before_names_as_in_qemu(history: Path, tmp_path: Path) -> None:
    """`1` is snapshot ID 1 (s1), not the snapshot named "1" (ID 3): qemu-img snapshot -a 1
    on a copy makes the active L1 name what our view of `1` shows."""
    copy = tmp_path / "copy.qcow2"
    shutil.copy(history, copy)
    run([QEMU_IMG, "snapshot", "-a", "1", str(copy)])
    reverted = _json("dump", "--what", "l1", str(copy))["tables"][0]
    ours = _json("dump", "--what", "l1", "--snapshot", "1", str(history))["tables"][0]
    assert _owners(ours) == ["1"] and ours["snapshots"][0]["name"] == "s1"
    assert [(e["index"], e["l2_offset"]) for e in reverted["entries"]] == \
        [(e["index"], e["l2_offset"]) for e in ours["entries"]]
    by_name = _json("dump", "--what", "l1", "--snapshot", "3", str(history))["tables"][0]
    assert by_name["snapshots"] == [{"id": "3", "name": "1"}]


@pytest.mark.parametrize("argv", [["dump", "--what", "l2"], ["check"]])
@pytest.mark.parametrize("selector", ["2", "s2", "nope"])
def test_unknown_or_deleted_selector_is_a_bad_argument(history: Path, argv: list[str],
                                                       selector: str) -> None:
    for output in ("human", "json"):
        proc = _analyze(*argv, "--snapshot", selector, "--output", output, str(history))
        assert proc.returncode == 64, proc.stderr
        assert proc.stdout == ""
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
        assert f"no snapshot with ID or name '{selector}'" in proc.stderr
        assert "snapshot IDs 1, 3" in proc.stderr and str(history) in proc.stderr


def test_ambiguous_name_and_misused_option(tmp_path: Path) -> None:
    path = tmp_path / "dup.qcow2"
    run([QEMU_IMG, "create", "-q", "-f", "qcow2", str(path), "1M"])
    run([QEMU_IMG, "snapshot", "-c", "dup", str(path)])
    run([QEMU_IMG, "snapshot", "-c", "dup", str(path)])  # qemu-img allows a name twice
    proc = _analyze("dump", "--what", "l1", "--snapshot", "dup", str(path))
    assert proc.returncode == 64 and "'dup' is ambiguous" in proc.stderr
    assert "IDs 1, 2" in proc.stderr
    assert _json("dump", "--what", "l1", "--snapshot", "2", str(path))["l1_tables"] == 1
    for argv in (["dump", "--what", "refcount", "--snapshot", "1"],
                 ["check", "--chain", "--snapshot", "1"]):
        proc = _analyze(*argv, str(path))
        assert proc.returncode == 64 and "--snapshot" in proc.stderr, proc.stderr


@pytest.fixture
def damaged(history: Path, tmp_path: Path) -> tuple[Path, int, int]:
    """A copy with a reserved bit set in entry 1 of snapshot 1's own L2 table (L1[0]) and in
    entry 1408 (600 MiB) of the L2 table all three share (L1[1]). Returns (copy, own, shared)."""
    copy = tmp_path / "damaged.qcow2"
    shutil.copy(history, copy)
    [(_, _, offset, size)] = [sn for sn in snapshot_table(copy) if sn[0] == "1"]
    own, shared = l2_tables(copy, offset, size)
    for table, entry in ((own, 1), (shared, (600 - 512) * 16)):
        patch_u64(copy, table + 8 * entry, read_u64(copy, table + 8 * entry) | RESERVED_BIT)
    return copy, own, shared


def _locations(data: dict[str, Any]) -> list[str]:
    return [f["location"] for f in data["findings"] if f["kind"] == "l2-reserved-bits"]


def test_check_lists_the_findings_of_the_selected_tables(damaged: tuple[Path, int, int]
                                                         ) -> None:
    path, own, shared = damaged
    qemu = json.loads(subprocess.run([QEMU_IMG, "check", "--output=json", str(path)],
                                     capture_output=True, text=True).stdout)
    whole = _json("check", str(path))
    own_at = f"snapshot 1: L2 table at 0x{own:x} entry 1 (L1[0], guest offset 0x10000)"
    shared_at = f"L2 table at 0x{shared:x} entry 1408 (L1[1], guest offset 0x25800000)"
    # The shared table is walked for the active L1 and for the snapshots' (as qemu walks it
    # for each L1 naming it): its entry is found at both, and belongs to every view naming it.
    shared_seen = [shared_at, f"snapshot 1: {shared_at}"]
    assert sorted(_locations(whole)) == sorted([own_at, *shared_seen])
    assert whole["findings-total"] == qemu["corruptions"] == 4
    for selector, listed in (("1", [own_at, *shared_seen]), ("s1", [own_at, *shared_seen]),
                             ("active", shared_seen), ("3", shared_seen),
                             ("all", [own_at, *shared_seen]),
                             ("inactive", [own_at, *shared_seen])):
        view = _json("check", "--snapshot", selector, str(path))
        for key in ("corruptions", "leaks", "check-errors", "image-end-offset",
                    "allocated-clusters", "fragmented-clusters"):
            assert view.get(key) == qemu.get(key), (selector, key)  # the whole image's
        assert sorted(_locations(view)) == sorted(listed), selector
        assert view["snapshot"] == selector
        # Snapshots 1 and 3 name the shared table: its finding in their walk counts twice
        # (listed once), as qemu's corruptions count it.
        assert view["findings-total"] == len(view["findings"]) + 1, selector
        assert view["findings-total"] + view["findings-elsewhere"] == whole["findings-total"]
        assert view["findings-unexamined"] == 0
    text = _analyze("check", "--snapshot", "active", str(path)).stdout
    assert "Findings limited to --snapshot active: 3 in its tables, 1 elsewhere" in text
    assert own_at not in text and shared_at in text


def test_check_view_past_max_findings_says_what_it_did_not_examine(
        damaged: tuple[Path, int, int]) -> None:
    path, _, _ = damaged
    view = _json("check", "--snapshot", "1", "--max-findings", "1", str(path))
    assert len(view["findings"]) == 1
    assert view["findings-total"] + view["findings-elsewhere"] \
        + view["findings-unexamined"] == _json("check", str(path))["findings-total"]


def test_json_shapes(history: Path) -> None:
    l1 = _json("dump", "--what", "l1", "--snapshot", "all", "--limit", "1", str(history))
    assert list(l1) == ["what", "snapshot", "l1_tables", "nonzero_entries", "tables",
                        "truncated", "filename"]
    assert list(l1["tables"][0]) == ["l1_table_offset", "l1_size", "active", "snapshots",
                                     "snapshot_count", "nonzero_entries", "entries"]
    assert l1["truncated"] and len(l1["tables"]) == 1 and l1["l1_tables"] == 3
    l2 = _json("dump", "--what", "l2", "--snapshot", "all", "--limit", "2", str(history))
    assert list(l2) == ["what", "snapshot", "cluster_size", "extended_l2", "nonempty_entries",
                        "tables_named", "tables_past_end_of_file", "distinct_tables", "tables",
                        "truncated", "filename"]
    assert list(l2["tables"][0]) == ["l1_index", "l2_offset", "active", "snapshots",
                                     "snapshot_count", "nonempty_entries", "entries"]
    assert l2["truncated"] and len(l2["tables"]) == 2
    assert l2["tables"][1]["snapshots"] == [{"id": "1", "name": "s1"}, {"id": "3", "name": "1"}]
    check = _json("check", "--snapshot", "1", str(history))
    assert [k for k in check if k.startswith(("snapshot", "findings"))] == [
        "snapshot", "findings-elsewhere", "findings-unexamined", "findings-total", "findings"]
    assert "snapshot" not in _json("check", str(history))


def test_the_readme_examples_are_this_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    """The README's snapshot-view session, rebuilt: every command's output is the README's."""
    monkeypatch.chdir(tmp_path)
    run([QEMU_IMG, "create", "-q", "-f", "qcow2", "vm.qcow2", "1G"])
    run([QEMU_IO, "-c", "write -P 1 0 128k", "-c", "write -P 2 600M 64k", "vm.qcow2"])
    run([QEMU_IMG, "snapshot", "-c", "before-upgrade", "vm.qcow2"])
    run([QEMU_IO, "-c", "write -P 3 0 64k", "vm.qcow2"])
    run([QEMU_IMG, "snapshot", "-c", "after-upgrade", "vm.qcow2"])
    [(_, _, offset, size)] = [sn for sn in snapshot_table(tmp_path / "vm.qcow2") if sn[0] == "1"]
    own = l2_tables(tmp_path / "vm.qcow2", offset, size)[0]
    patch_u64(tmp_path / "vm.qcow2", own + 8, read_u64(tmp_path / "vm.qcow2", own + 8)
              | RESERVED_BIT)
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for argv in (["dump", "--what", "l2", "--snapshot", "all"],
                 ["dump", "--what", "l1", "--snapshot", "before-upgrade"],
                 ["check", "--snapshot", "1"]):
        proc = _analyze(*argv, "vm.qcow2")
        assert f"$ qcow2-analyze {' '.join(argv)} vm.qcow2\n{proc.stdout}" in readme, argv
    proc = _analyze("check", "--snapshot", "3", "vm.qcow2")
    assert proc.returncode == 64 and f"vm.qcow2\n{proc.stderr}$ echo $?\n64\n" in readme


def test_an_image_held_for_writing_is_settled_then_limited(damaged: tuple[Path, int, int]
                                                          ) -> None:
    """A running qemu (qemu-io) holds the damaged image: the check reads it until what it
    finds holds still, over the whole image, and the view lists its part of that."""
    path, own, _ = damaged
    with QemuIo(path) as io:
        io.run("write -P 9 1M 64k", "flush")
        whole = _json("check", str(path))
        view = _json("check", "--snapshot", "1", str(path))
        active = _json("check", "--snapshot", "active", str(path))
    own_at = f"snapshot 1: L2 table at 0x{own:x} entry 1 (L1[0], guest offset 0x10000)"
    assert any("held for writing" in note for note in view["notes"]), view["notes"]
    assert own_at in _locations(whole) and own_at in _locations(view)
    assert own_at not in _locations(active)
    for data in (view, active):
        assert data["corruptions"] == whole["corruptions"]
        assert len(data["findings"]) + data["findings-elsewhere"] == len(whole["findings"])
