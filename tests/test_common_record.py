"""collectors/common/record.py: records behave as the dataclasses they replace (checked against
dataclasses itself, declared alike in the test), and the run-time NamedTuple, TypeVar and
Generic stand-ins do what the light path needs of typing's."""

from __future__ import annotations

import collections
import copy
import dataclasses
import pickle
import subprocess
import sys
from typing import ClassVar, Optional

import pytest

from qcow2_monitor.collectors.common.record import (
    FrozenInstanceError,
    Generic,
    NamedTuple,
    TypeVar,
    field,
    fields,
    frozen_record,
    is_record,
    mutable_record,
    replace,
)


@frozen_record
class Point:
    x: int
    y: int = 0
    label: Optional[str] = None
    tags: list[str] = field(default_factory=list)
    kind: str = field(default="point", init=False)
    ORIGIN: ClassVar[int] = 0


@dataclasses.dataclass(frozen=True)
class DataPoint:
    x: int
    y: int = 0
    label: Optional[str] = None
    tags: list[str] = dataclasses.field(default_factory=list)
    kind: str = dataclasses.field(default="point", init=False)
    ORIGIN: ClassVar[int] = 0


@frozen_record
class Point3(Point):
    z: int = 0


@frozen_record
class Pair:
    a: int
    b: str


@mutable_record
class Counter:
    count: int = 0


def test_init_as_dataclasses_does() -> None:
    for args, kwargs in (((1,), {}), ((1, 2), {}), ((1,), {"label": "a"}),
                         ((), {"x": 1, "y": 2, "tags": ["t"]})):
        ours, theirs = Point(*args, **kwargs), DataPoint(*args, **kwargs)
        assert [getattr(ours, f.name) for f in fields(ours)] == \
            [getattr(theirs, f.name) for f in dataclasses.fields(theirs)]
    assert [f.name for f in fields(Point)] == [f.name for f in dataclasses.fields(DataPoint)]
    assert Point.ORIGIN == 0 and "ORIGIN" not in [f.name for f in fields(Point)]
    assert Point(1).tags is not Point(1).tags  # a fresh default each time
    assert Point.y == 0 and not hasattr(Point, "tags")  # as dataclasses leaves them


@pytest.mark.parametrize(("args", "kwargs", "message"), [
    ((), {}, "missing argument 'x'"),
    ((1, 2, "a", [], "extra"), {}, "takes 4 positional arguments but 5 were given"),
    ((1,), {"x": 2}, "multiple values for 'x'"),
    ((1,), {"colour": "red"}, "unexpected arguments ['colour']"),
    ((1,), {"kind": "other"}, "unexpected arguments ['kind']"),
])
def test_init_refuses_what_dataclasses_refuses(args: tuple[object, ...], kwargs: dict[str, object],
                                               message: str) -> None:
    with pytest.raises(TypeError):
        DataPoint(*args, **kwargs)  # type: ignore[arg-type,misc,call-arg]
    with pytest.raises(TypeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Point(*args, **kwargs)  # type: ignore[arg-type,misc,call-arg]


def test_equality_hash_and_repr() -> None:
    assert Point(1, 2) == Point(1, 2) and Point(1, 2) != Point(2, 1)
    assert Point(1) != Point3(1)  # another class, as dataclasses compares
    assert hash(Pair(1, "a")) == hash(Pair(1, "a"))
    assert len({Pair(1, "a"), Pair(1, "a"), Pair(2, "a")}) == 2
    with pytest.raises(TypeError, match="unhashable"):  # a list field, as with dataclasses
        hash(Point(1))
    assert repr(Point(1, label="a")) == \
        repr(DataPoint(1, label="a")).replace("DataPoint", "Point")
    assert Counter.__hash__ is None  # mutable and compared by value: unhashable, as dataclasses


def test_frozen_and_mutable() -> None:
    point = Point(1)
    with pytest.raises(FrozenInstanceError):
        point.x = 2  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        del point.x  # type: ignore[misc]
    assert isinstance(FrozenInstanceError(), AttributeError)
    counter = Counter()
    counter.count += 1
    assert counter == Counter(1)


def test_inheritance_keeps_the_base_fields_first() -> None:
    assert [f.name for f in fields(Point3)] == ["x", "y", "label", "tags", "kind", "z"]
    assert Point3(1, 2, z=3).z == 3 and Point3(1).kind == "point"

    with pytest.raises(TypeError, match="non-default field 'w' follows a default one"):
        @frozen_record
        class Bad(Point):
            w: int

    with pytest.raises(ValueError, match="mutable default"):  # as dataclasses refuses it
        @frozen_record
        class Shared:
            items: list[int] = []


def test_replace_and_fields() -> None:
    point = Point(1, 2, "a", ["t"])
    moved = replace(point, y=5)
    assert moved == Point(1, 5, "a", ["t"]) and point.y == 2 and moved.kind == "point"
    with pytest.raises(ValueError, match="init=False"):
        replace(point, kind="other")
    with pytest.raises(TypeError, match="is not a record"):
        fields(DataPoint(1))
    assert is_record(point) and not is_record(Point) and not is_record(DataPoint(1))


def test_methods_written_by_the_class_are_kept() -> None:
    @frozen_record
    class Shown:
        value: int

        def __repr__(self) -> str:
            return f"<{self.value}>"

    assert repr(Shown(3)) == "<3>" and Shown(3) == Shown(3)


def test_records_pickle() -> None:
    point = Point3(1, 2, "a", ["t"], z=4)
    assert pickle.loads(pickle.dumps(point)) == point


class Entry(NamedTuple):
    """An entry."""

    offset: int
    name: str = ""
    LIMIT: ClassVar[int] = 3

    @property
    def end(self) -> int:
        return self.offset + len(self.name)


def test_named_tuples_behave_as_collections_namedtuples() -> None:
    reference = collections.namedtuple("Entry", ["offset", "name"], defaults=[""])
    for made in (Entry, reference):
        entry = made(4, "abc")
        assert (entry.offset, entry[1], entry._asdict(), made(offset=1)) == (
            4, "abc", {"offset": 4, "name": "abc"}, (1, ""))
        assert copy.copy(entry) == entry == copy.deepcopy(entry)
        for args, kwargs in (((), {}), ((1, "a", 2), {}), ((1,), {"nope": 2})):
            with pytest.raises(TypeError):
                made(*args, **kwargs)
        with pytest.raises(TypeError):
            made._make((1,))
        with pytest.raises(ValueError):
            entry._replace(nope=1)
        with pytest.raises(AttributeError):
            entry.offset = 5  # type: ignore[misc]
        assert made._fields == ("offset", "name") and hash(entry) == hash((4, "abc"))
    entry = Entry(4, "abc")
    assert pickle.loads(pickle.dumps(entry)) == entry  # (the reference's name is taken)
    assert isinstance(entry, tuple) and tuple(entry) == (4, "abc")
    assert Entry._fields == ("offset", "name") and Entry(7) == (7, "")
    assert entry.end == 7 and Entry.LIMIT == 3 and Entry.__doc__ == "An entry."
    assert entry._replace(name="x") == (4, "x") and Entry._make((1, "y")).name == "y"
    assert repr(entry) == "Entry(offset=4, name='abc')"
    assert Entry.__qualname__ == "Entry" and Entry.__module__ == __name__


T = TypeVar("T")


class Box(Generic[T]):
    pass


def test_type_variables_and_generics_at_run_time() -> None:
    assert T == "T"
    assert Box[int] is Box  # subscripted for type checkers only


def test_importing_records_imports_no_dataclasses_nor_typing() -> None:
    code = ("import sys; import qcow2_monitor.collectors.common.record; "
            "print(sorted({'dataclasses', 'typing', 'inspect'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd="/")
    assert done.stdout.strip() == "[]"
