"""JSON from typed values, by one generic function: :func:`to_json` walks dataclasses, enums,
tuples and errors; a type declares its keys, their order and presence rules once, as a `JSON`
tuple of :class:`JsonKey` (by default: its fields, in order). Every JSON document the tools
print is made here, from the result model (report/model.py) and the qemu-img look-alike views.
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from enum import Enum
from typing import Any, Callable, NamedTuple, Optional, Union

from .errors import Qcow2Error

Json = Union[None, bool, int, float, str, list["Json"], dict[str, "Json"]]
JsonObject = dict[str, Json]


def omit_none(value: object) -> bool:
    return value is None


def omit_falsy(value: object) -> bool:
    """Left out when None, zero, false or empty (qemu's has_* presence rules)."""
    return not value


class JsonKey(NamedTuple):
    """One key of a type's JSON object, in the order the type declares them (its `JSON`)."""

    key: str
    attribute: str = ""  # dotted attribute path; default: the key with '-' read as '_'
    omit: Optional[Callable[[object], bool]] = None  # left out when this says so
    form: Optional[Callable[[Any], Json]] = None  # how the value is written (e.g. in hex)
    flatten: bool = False  # an object whose keys are merged into this one


def hex_form(digits: int) -> Callable[[int], str]:
    """A value written as 0x and `digits` hex digits (raw table entries, type codes)."""
    return lambda value: f"0x{value:0{digits}x}"


def _layout(value: object) -> tuple[JsonKey, ...]:
    declared: Optional[tuple[JsonKey, ...]] = getattr(type(value), "JSON", None)
    if declared is not None:
        return declared
    return tuple(JsonKey(f.name) for f in fields(value))  # type: ignore[arg-type]


def _attribute(value: object, path: str) -> Any:
    for name in path.split("."):
        value = getattr(value, name)
    return value


def to_json(value: object) -> Json:
    """Any model value as JSON data: a dataclass as an object with the keys its `JSON` declares
    (by default its fields, in order), an enum as its value, a tuple or list as a list, bytes
    in hex, an error as its one JSON shape (Qcow2Error.as_dict)."""
    if isinstance(value, Enum):  # before str and int: the enums are both
        return to_json(value.value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, Qcow2Error):
        return to_json(value.as_dict())
    if isinstance(value, (tuple, list)):
        return [to_json(item) for item in value]
    if isinstance(value, dict):
        return {str(key): to_json(item) for key, item in value.items()}
    if is_dataclass(value) and not isinstance(value, type):
        return _object(value)
    raise TypeError(f"no JSON form for {type(value).__name__}")


def _object(value: object) -> JsonObject:
    data: JsonObject = {}
    for key in _layout(value):
        item = _attribute(value, key.attribute or key.key.replace("-", "_"))
        if key.omit is not None and key.omit(item):
            continue
        shown = key.form(item) if key.form is not None and item is not None else to_json(item)
        if key.flatten:
            if isinstance(shown, dict):
                data.update(shown)
        else:
            data[key.key] = shown
    return data


def to_json_object(value: object) -> JsonObject:
    """to_json() of a value whose JSON is an object (a dataclass)."""
    data = to_json(value)
    assert isinstance(data, dict), type(value)
    return data
