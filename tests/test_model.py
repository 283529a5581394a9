"""The result model (collectors/report/model.py) and the one JSON function
(collectors/common/jsonform.py): enums that are their documented strings, the records' derived
figures, to_json's rules, and `usage`'s JSON keys against the README table (the contract)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import ClassVar, NamedTuple, Optional

import pytest

from qcow2_monitor.collectors.common.errors import IO_ERROR, Qcow2Error
from qcow2_monitor.collectors.common.jsonform import (
    JsonKey,
    hex_form,
    omit_falsy,
    omit_none,
    to_json,
    to_json_object,
)
from qcow2_monitor.collectors.common.record import frozen_record, replace
from qcow2_monitor.collectors.report.model import (
    HEALTHY,
    RUNNING_PROCESSES,
    ChainLayer,
    Collection,
    Container,
    ContainerKind,
    EndOffsetSource,
    Extension,
    Growth,
    Health,
    ImageRecord,
    ImageUsage,
    LayerStatus,
    Pause,
    PauseReason,
    Reason,
    State,
)

from daemons import make_image
from tree import REPO


def _readme_section(title: str) -> str:
    text = (REPO / "README.md").read_text()
    start = text.index(title)
    return text[start:text.index("\n#", start + len(title))]


def documented_usage_keys() -> set[str]:
    """The keys of the README's usage table: the backquoted names of its first column."""
    rows = [line for line in _readme_section("### Figures reported by `usage`").splitlines()
            if line.startswith("| `")]
    keys = {key for row in rows for key in re.findall(r"`([a-z_]+)`", row.split(" | ")[0])}
    assert len(keys) > 25, keys  # the table was really read
    return keys


def documented_layer_statuses() -> set[str]:
    """The `status` values the README's backing_chain row lists."""
    row = next(line for line in _readme_section("### Figures reported by `usage`").splitlines()
               if line.startswith("| `backing_chain`"))
    listed = row[row.index("`status` (") + len("`status` ("):]
    return set(re.findall(r"`([a-z0-9-]+)`", listed[:listed.index(")")]))


def documented_pause_reasons() -> set[str]:
    """The `pause_reason` values the README's paused row lists."""
    row = next(line for line in _readme_section("### Figures reported by `usage`").splitlines()
               if line.startswith("| `paused`, `pause_reason`"))
    described = row.split(" | ")[1]
    return set(re.findall(r"`([a-z-]+)`", described[:described.index("See ")]))


# --- enums -----------------------------------------------------------------------------------


def test_layer_statuses_are_the_documented_words() -> None:
    assert {status.value for status in LayerStatus} == documented_layer_statuses()


def test_pause_reasons_are_the_documented_words() -> None:
    assert {reason.value for reason in PauseReason} == documented_pause_reasons()


@pytest.mark.parametrize("member", [LayerStatus.TOO_DEEP, ContainerKind.BLOCK,
                                    EndOffsetSource.LIVE, PauseReason.OTHER_DISK])
def test_a_text_enum_is_its_value_wherever_written(member: LayerStatus) -> None:
    assert member == member.value  # compares as the plain string
    assert str(member) == f"{member}" == f"{member:>3}".strip() == member.value
    assert json.dumps({"s": member}) == json.dumps({"s": member.value})
    assert to_json(member) == member.value and type(to_json(member)) is str


def test_states_are_numbered_and_named_as_nagios() -> None:
    assert [(state.name, int(state)) for state in State] == [
        ("OK", 0), ("WARNING", 1), ("CRITICAL", 2), ("UNKNOWN", 3)]
    assert str(State.CRITICAL) == f"{State.CRITICAL}" == "2"
    assert json.dumps(State.UNKNOWN) == "3" and to_json(State.WARNING) == 1


# --- to_json ---------------------------------------------------------------------------------


@frozen_record
class Inner:
    a: int
    b: Optional[str] = None


@frozen_record
class Declared:
    inner: Inner
    raw: int
    flags: tuple[str, ...] = ()
    note: Optional[str] = None

    JSON: ClassVar[tuple[JsonKey, ...]] = (
        JsonKey("raw-value", "raw", form=hex_form(4)),
        JsonKey("a", "inner.a"),
        JsonKey("flags", omit=omit_falsy),
        JsonKey("note", omit=omit_none),
        JsonKey("inner", flatten=True),
    )


def test_to_json_default_layout_is_the_fields_in_order() -> None:
    assert to_json(Inner(1)) == {"a": 1, "b": None}
    assert list(to_json_object(Inner(2, "x"))) == ["a", "b"]


def test_to_json_follows_the_declared_keys() -> None:
    value = Declared(Inner(7, "x"), 0xAB)
    assert to_json(value) == {"raw-value": "0x00ab", "a": 7, "b": "x"}
    assert list(to_json_object(value)) == ["raw-value", "a", "b"]  # flattened keys last
    shown = to_json(Declared(Inner(7), 1, ("in-use",), "n"))
    assert shown == {"raw-value": "0x0001", "a": 7, "flags": ["in-use"], "note": "n", "b": None}


@frozen_record
class Outer:
    inner: Optional[Inner]

    JSON: ClassVar[tuple[JsonKey, ...]] = (
        JsonKey("a", "inner.a"), JsonKey("b", "inner.b", omit=omit_none))


def test_to_json_reads_a_dotted_path_through_none_as_none() -> None:
    assert to_json(Outer(Inner(3, "x"))) == {"a": 3, "b": "x"}
    assert to_json(Outer(None)) == {"a": None}  # no inner: nothing to read, and b left out


class _RowFields(NamedTuple):
    index: int
    flags: tuple[str, ...]
    kind: LayerStatus
    size: Optional[int] = None


class Row(_RowFields):
    """A named tuple with declared keys, as the views' large tables are."""

    __slots__ = ()
    JSON: ClassVar[tuple[JsonKey, ...]] = (
        JsonKey("index"), JsonKey("flags"), JsonKey("kind"), JsonKey("size", omit=omit_none))


@frozen_record
class Bad:
    a: int

    JSON: ClassVar[tuple[JsonKey, ...]] = (JsonKey("a", "a; import os"),)


def test_to_json_writes_named_tuples_as_objects() -> None:
    rows = (Row(1, ("a",), LayerStatus.LOOP), Row(2, (), LayerStatus.OK, 5))
    assert to_json(rows) == [{"index": 1, "flags": ["a"], "kind": "loop"},
                             {"index": 2, "flags": [], "kind": "ok", "size": 5}]
    assert to_json(_RowFields(3, (), LayerStatus.OK)) == {
        "index": 3, "flags": [], "kind": "ok", "size": None}  # its fields, in order
    with pytest.raises(TypeError, match="no attribute path"):
        to_json(Bad(1))  # a key names an attribute, never code


def test_to_json_writes_every_kind_of_value() -> None:
    error = Qcow2Error("gone", structure="file", kind=IO_ERROR, filename="/x")
    assert to_json(error) == error.as_dict()
    assert to_json((1, [LayerStatus.OK], {"k": b"\x01\xff"})) == [1, ["ok"], {"k": "01ff"}]
    assert to_json(None) is None and to_json(1.5) == 1.5 and to_json(True) is True
    with pytest.raises(TypeError):
        to_json(object())
    with pytest.raises(TypeError):
        to_json(Inner)  # a class, not a value


# --- records ---------------------------------------------------------------------------------


def usage(image_end: int = 1 << 20, live_end: Optional[int] = None) -> ImageUsage:
    container = Container(ContainerKind.FILE, 100 << 20, 50 << 20, 2 << 20, 1 << 20,
                          used=50 << 20, filesystem="/")
    return ImageUsage("/i/a.qcow2", image_end, EndOffsetSource.REFCOUNTS, container, 0.5,
                      3 << 20, 16 << 20, 65536, 3, False, False, False, False, True, False,
                      None, None, None, 0, 0, live_end_offset=live_end)


def test_end_offset_is_the_live_figure_when_ahead() -> None:
    assert (usage().end_offset, usage().end_offset_source) == (1 << 20, "refcounts")
    ahead = usage(live_end=3 << 20)
    assert (ahead.end_offset, ahead.end_offset_source) == (3 << 20, EndOffsetSource.LIVE)
    behind = usage(live_end=1 << 10)
    assert (behind.end_offset, behind.end_offset_source) == (1 << 20, "refcounts")


def test_usage_json_carries_the_thin_figures_or_null() -> None:
    """The thin-provisioning keys of usage's JSON, between `bitmaps` and `notes`: the pause,
    the extension advice and the growth where known, null where not known or not due."""
    plain = to_json_object(usage())
    keys = list(plain)
    thin = keys[keys.index("bitmaps") + 1:keys.index("notes")]
    assert thin == ["paused", "pause_reason", "free_below_end_bytes", "extend_by_bytes",
                    "extend_to_bytes", "extend_command", "growth_bytes_per_second",
                    "time_to_full_seconds"]
    assert plain["paused"] is False and all(plain[key] is None for key in thin[1:])
    advised = replace(usage(), free_below_end=65536,
                      pause=Pause("vm1", "vda", PauseReason.NOSPACE, resume="virsh resume vm1"),
                      extension=Extension(512 << 20, 1 << 30, 1 << 30, 3 << 30, 4 << 20,
                                          "vg/lv", "lvextend -L +1G vg/lv"),
                      growth=Growth(100.0, 3600.0, 7, 600.0))
    shown = to_json_object(advised)
    assert [shown[key] for key in thin] == [True, "nospace", 65536, 1 << 30, 3 << 30,
                                            "lvextend -L +1G vg/lv", 100.0, 3600.0]


def test_chain_layer_names_its_file_and_says_raw() -> None:
    raw = ChainLayer(1, "base.img", "/i/base.img", LayerStatus.OTHER_FORMAT, "raw")
    assert raw.is_raw and raw.filename == "/i/base.img"
    vmdk = ChainLayer(1, "b.vmdk", "/i/b.vmdk", LayerStatus.OTHER_FORMAT, "vmdk")
    protocol = ChainLayer(1, "nbd:host:1", None, LayerStatus.PROTOCOL, None)
    assert not vmdk.is_raw and not protocol.is_raw and protocol.filename == "nbd:host:1"


def test_health_splits_problems_from_notes() -> None:
    note = Reason("dirty-in-use", State.OK, "dirty while in use")
    problem = Reason("leaks", State.WARNING, "1 leaked cluster")
    health = Health(State.WARNING, (note, problem))
    assert health.problems == (problem,) and health.notes == (note,)
    assert HEALTHY.state == State.OK and HEALTHY.reasons == ()


def test_records_name_their_disk() -> None:
    failed = ImageRecord("/srv/*.qcow2", None, 0, None, None,
                         Qcow2Error("no file matches", structure="target"))
    assert failed.label_path == failed.filename == "/srv/*.qcow2" and failed.is_image
    layer = ImageRecord("/i/top", "/i/link", 1, usage(), None, None, name="link",
                        canonical="/i/base.qcow2")
    assert (layer.label_path, layer.filename) == ("/i/base.qcow2", "/i/link")
    uninspected = ImageRecord(RUNNING_PROCESSES, None, 0, None, None, failed.error)
    socket = ImageRecord("/run/q.sock", "/run/q.sock", 0, None, None, failed.error, source=True)
    assert not uninspected.is_image and not socket.is_image
    collection = Collection((failed, layer, socket), 0.1, 1.0)
    assert collection.failed == (failed, socket)


# --- the usage document: the README table is the contract ------------------------------------


def test_every_documented_usage_key_is_produced(tmp_path: Path) -> None:
    base = make_image(tmp_path / "base.qcow2", "16M", write=["write 0 1M"])
    top = make_image(tmp_path / "top.qcow2", backing=base)
    proc = subprocess.run([sys.executable, "-m", "qcow2_monitor.analyze", "usage", "--no-live",
                           "--output", "json", str(top)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    [entry] = json.loads(proc.stdout)
    documented = documented_usage_keys()
    # A file image has every key (allocated_bytes is for files only); `status` is documented
    # in the prose beside the table.
    assert set(entry) == documented | {"status"}
    [layer] = entry["backing_chain"]
    assert set(layer) == (documented - {"backing_chain"}) | {
        "depth", "name", "path", "status", "format"}
    assert (entry["status"], layer["status"], layer["depth"]) == ("ok", "ok", 1)
    assert entry["image_end_offset_source"] == "refcounts" and entry["container_type"] == "file"
    assert entry["end_offset_source"] == "refcounts" and layer["filename"] == str(base)
