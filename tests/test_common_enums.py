"""collectors/common/enums.py: enumerations that behave as the enum module's, declared alike
here, without importing it (nor functools and collections) at run time."""

from __future__ import annotations

import copy
import enum
import pickle
import subprocess
import sys

import pytest

from qcow2_monitor.collectors.common import enums

from tree import source_site


class Kind(enums.TextEnum):
    FILE = "file"
    BLOCK = "block"

    @property
    def shout(self) -> str:
        return self.value.upper()


class KindRef(str, enum.Enum):
    FILE = "file"
    BLOCK = "block"

    def __str__(self) -> str:  # what TextEnum adds: the value wherever it is written
        return str.__str__(self)

    def __format__(self, spec: str) -> str:
        return str.__format__(str.__str__(self), spec)

    @property
    def shout(self) -> str:
        return self.value.upper()


class Level(enums.IntEnum):
    LOW = 0
    HIGH = 2


class LevelRef(enum.IntEnum):
    LOW = 0
    HIGH = 2


class Scope(enums.Enum):
    NONE = "none"
    ALL = "all"


class ScopeRef(enum.Enum):
    NONE = "none"
    ALL = "all"


PAIRS = [(Kind, KindRef, "file", "FILE"), (Level, LevelRef, 2, "HIGH"),
         (Scope, ScopeRef, "all", "ALL")]


def _shown(member: object) -> tuple[object, ...]:
    """What a member says of itself, the class name left out."""
    texts = (str(member), format(member), f"{member:>15}".strip(), repr(member))
    return (*(text.replace("Ref", "") for text in texts), len(f"{member:>15}"), bool(member))


@pytest.mark.parametrize(("light", "reference", "value", "name"), PAIRS)
def test_members_behave_as_the_enum_module_s(light: type, reference: type, value: object,
                                            name: str) -> None:
    ours, theirs = light(value), reference(value)
    assert ours is light[name] is getattr(light, name) is light(ours)
    assert reference(theirs) is theirs
    assert (ours.name, ours.value) == (theirs.name, theirs.value) == (name, value)
    assert [m.name for m in light] == [m.name for m in reference]
    assert [m.name for m in reversed(light)] == [m.name for m in reversed(reference)]
    assert len(light) == len(reference) and list(light.__members__) == list(
        reference.__members__)
    assert _shown(ours) == _shown(theirs)
    assert (ours == value) == (theirs == value) and hash(ours) == hash(theirs)
    assert isinstance(ours, light) and (ours in light) == (theirs in reference)
    assert pickle.loads(pickle.dumps(ours)) is ours
    assert copy.copy(ours) is ours and copy.deepcopy(ours) is ours
    for wrong in ("nope", 99, None):
        with pytest.raises(ValueError) as raised_ours:
            light(wrong)
        with pytest.raises(ValueError) as raised_theirs:
            reference(wrong)
        assert str(raised_ours.value) == str(raised_theirs.value).replace("Ref", "")
    with pytest.raises(KeyError):
        light["nope"]
    with pytest.raises(AttributeError):
        setattr(light, name, 1)
    with pytest.raises(AttributeError):
        delattr(light, name)


def test_str_and_int_enums_are_their_values() -> None:
    assert Kind.FILE == "file" and f"{Kind.BLOCK}" == "block" and Kind.FILE.shout == "FILE"
    assert isinstance(Kind.FILE, str) and "x" + Kind.FILE == "xfile"
    assert Level.HIGH > Level.LOW and max(Level) is Level.HIGH and Level.HIGH + 1 == 3
    assert sorted([Level.HIGH, Level.LOW]) == [0, 2] and {Level.LOW: 1}[0] == 1
    assert Scope.NONE != "none" and Scope.ALL is Scope("all")


def test_declarations_it_does_not_offer_fail() -> None:
    with pytest.raises(TypeError):
        class MoreKinds(Kind):  # extending one with members, as the enum module refuses
            OTHER = "other"
    with pytest.raises(ValueError):
        class Aliased(enums.TextEnum):  # an alias: two names, one value
            ONE = "1"
            UNO = "1"


def test_importing_enums_imports_no_enum_module() -> None:
    code = ("import sys; import qcow2_monitor.collectors.common.enums; "
            "print(sorted({'enum', 'functools', 'collections', 'typing'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                          check=True, cwd="/", env={"PYTHONPATH": str(source_site())})
    assert done.stdout.strip() == "[]"
