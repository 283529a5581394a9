"""JSON from typed values, by one generic function: :func:`to_json` walks records, enums,
tuples and errors; a type declares its keys, their order and presence rules once, as a `JSON`
tuple of :class:`JsonKey` (by default: its fields, in order). Every JSON document the tools
print is made here, from the result model (report/model.py) and the qemu-img look-alike views.
"""

from __future__ import annotations

from .enums import Enum
from .errors import Qcow2Error
from .record import fields, frozen_record, is_record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Optional, TypeAlias, Union

Json: TypeAlias = "Union[bool, int, float, str, list[Json], dict[str, Json], None]"
JsonObject: TypeAlias = "dict[str, Json]"


def omit_none(value: object) -> bool:
    return value is None


def omit_falsy(value: object) -> bool:
    """Left out when None, zero, false or empty (qemu's has_* presence rules)."""
    return not value


@frozen_record
class JsonKey:
    """One key of a type's JSON object, in the order the type declares them (its `JSON`)."""

    key: str
    # Dotted attribute path (None when a step on the way is None); default: the key with '-'
    # read as '_'.
    attribute: str = ""
    omit: Optional[Callable[[object], bool]] = None  # left out when this says so
    form: Optional[Callable[[Any], Json]] = None  # how the value is written (e.g. in hex)
    flatten: bool = False  # an object whose keys are merged into this one


def hex_form(digits: int) -> Callable[[int], str]:
    """A value written as 0x and `digits` hex digits (raw table entries, type codes)."""
    return lambda value: f"0x{value:0{digits}x}"


Builder: TypeAlias = "Callable[[Any], JsonObject]"
_BUILDERS: dict[type, Builder] = {}
# Values written as they are, recognised by their exact type (the fast path).
_PLAIN = frozenset({int, str, float, bool, type(None)})
# Declared types whose values are written as they are.
_PLAIN_TYPES = frozenset({"int", "str", "float", "bool", "Optional[int]", "Optional[str]",
                          "Optional[float]", "Optional[bool]"})
# Declared types whose values are written as a list of them as they are.
_PLAIN_TUPLES = frozenset({"tuple[str, ...]", "tuple[int, ...]", "tuple[int, int]"})


# The common presence rules, written inline.
_OMIT_TESTS: dict[Callable[[object], bool], str] = {omit_none: "v is not None", omit_falsy: "v"}


def _declared_types(cls: type) -> dict[str, str]:
    """The type of each field as declared (annotations are text here: `from __future__
    import annotations`), base classes first."""
    found: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        own = vars(klass).get("__annotations__", {})  # not a base's, as getattr would give
        # A named tuple holds them as ForwardRef('int'): the text is its argument.
        found.update({name: str(getattr(kind, "__forward_arg__", kind))
                      for name, kind in own.items()})
    return found


def _reach(path: str) -> str:
    """The expression that reads the dotted attribute `path` of `value`: None where a step on
    the way is None (an Extension that was not advised has no extend_by)."""
    first, *rest = path.split(".")
    expression = f"value.{first}"
    for part in rest:
        expression = f"(None if (_step := {expression}) is None else _step.{part})"
    return expression


def _builder(cls: type) -> Builder:
    """The function that writes a `cls` as a JSON object, made once per type from the keys it
    declares (its JSON, or its fields in order), as dataclasses would make __init__: one dict
    display of the keys in their order, those that may be left out or are written in a form
    a statement each; a field declared as a plain type taken as it is, any other written by
    to_json(). A 65536-entry snapshot table or bitmap directory is written about as fast as
    dicts built by hand, within the time the fuzzer allows."""
    names = getattr(cls, "_fields", None) or tuple(f.name for f in fields(cls))
    declared: tuple[JsonKey, ...] = getattr(cls, "JSON", None) or tuple(map(JsonKey, names))
    types = _declared_types(cls)
    scope: dict[str, Any] = {"_to_json": to_json}
    body: list[str] = []
    run: list[str] = []

    def flush() -> None:
        if run or not body:
            display = "{" + ", ".join(run) + "}"
            body.append(f"data.update({display})" if body else f"data = {display}")
            run.clear()

    for index, key in enumerate(declared):
        path = key.attribute or key.key.replace("-", "_")
        if not all(part.isidentifier() for part in path.split(".")):
            raise TypeError(f"{cls.__name__}: no attribute path {path!r}")
        kind = types.get(path)
        shown = "{}" if kind in _PLAIN_TYPES else "list({})" if kind in _PLAIN_TUPLES \
            else "_to_json({})"
        if key.omit is None and key.form is None and not key.flatten:
            run.append(f"{key.key!r}: {shown.format(_reach(path))}")
            continue
        flush()
        body.append(f"v = {_reach(path)}")
        indent = ""
        if key.omit is not None:
            scope[f"_omit{index}"] = key.omit
            test = _OMIT_TESTS.get(key.omit, f"not _omit{index}(v)")
            body.append(f"if {test}:")
            indent = "    "
        if key.flatten:
            body.append(f"{indent}data.update(_to_json(v) or {{}})")
        elif key.form is not None:
            scope[f"_form{index}"] = key.form
            body.append(f"{indent}data[{key.key!r}] = None if v is None else _form{index}(v)")
        else:
            body.append(f"{indent}data[{key.key!r}] = {shown.format('v')}")
    flush()
    body.append("return data")
    exec("def build(value):\n" + "".join(f"    {line}\n" for line in body), scope)
    build: Builder = scope["build"]  # only declared keys and checked attribute names above
    return build


def to_json(value: object) -> Json:
    """Any model value as JSON data: a record or a named tuple as an object with the keys
    its `JSON` declares (by default its fields, in order), an enum as its value, a tuple or
    list as a list, bytes in hex, an error as its one JSON shape (Qcow2Error.as_dict)."""
    cls = type(value)
    if cls in _PLAIN:
        return value  # type: ignore[return-value]
    build = _BUILDERS.get(cls)
    if build is not None:
        return build(value)
    if cls is tuple or cls is list:  # the common sequences, before the slower tests below
        return _sequence(value)  # type: ignore[arg-type]
    if isinstance(value, Enum):  # before str and int: the enums are both
        return to_json(value.value)
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, Qcow2Error):
        return to_json(value.as_dict())
    if hasattr(cls, "_fields") or (is_record(value) and not isinstance(value, type)):
        build = _BUILDERS[cls] = _builder(cls)
        return build(value)
    if isinstance(value, (tuple, list)):
        return _sequence(value)
    if isinstance(value, dict):
        return {str(key): to_json(item) for key, item in value.items()}
    raise TypeError(f"no JSON form for {cls.__name__}")


def _sequence(value: Union[tuple[Any, ...], list[Any]]) -> list[Json]:
    kinds = set(map(type, value))
    if _PLAIN.issuperset(kinds):
        return list(value)
    build = _BUILDERS.get(kinds.pop()) if len(kinds) == 1 else None
    if build is not None:  # a table of one type: every entry by its builder
        return list(map(build, value))
    return [to_json(item) for item in value]


def to_json_object(value: object) -> JsonObject:
    """to_json() of a value whose JSON is an object (a record)."""
    data = to_json(value)
    assert isinstance(data, dict), type(value)
    return data
