"""Records: value types declared by their annotated fields, as dataclasses declares them --
``@frozen_record`` for ``@dataclass(frozen=True)``, ``@mutable_record`` for ``@dataclass`` -- with
:func:`field`, :func:`fields` and :func:`replace` as dataclasses has them.

Why not dataclasses: importing it imports inspect (and with it ast, dis and tokenize), and each
``@dataclass`` compiles its methods from source text. For the records a one-image
``check_qcow2`` run loads, that was about 15 ms of CPU, more than the interpreter's own start
(bench/bench_start.py), in a plugin that Nagios starts once per disk per minute. A record gets
the same methods from generic functions that read the class's field list once: ``__init__``
(fields in order, positional or by name, defaults, default factories, ``init=False`` fields),
``__repr__``, ``__eq__`` (same class, equal fields), ``__hash__`` for frozen records, and
assignment refused on frozen ones; a method the class writes itself is kept. Fields are read
from the class's own annotations (text: every module has ``from __future__ import
annotations``), base records' fields first; ``ClassVar`` annotations are not fields. Type
checkers see records as dataclasses (PEP 681, ``dataclass_transform``).

Entries that tables hold by the ten thousand (snapshots, bitmaps) are named tuples, declared as
``class Entry(NamedTuple)`` with :class:`NamedTuple` from here: type checkers see typing's, and
at run time a tuple class made from the annotations as collections.namedtuple makes one (fields
read by position, ``_fields``, ``_make``, ``_replace``, ``_asdict``, the same repr), without
importing collections (with keyword, reprlib, heapq) nor compiling a ``__new__`` per class.
typing's own would compile every field's annotation text (a ForwardRef each), and importing
typing at all is a start-up cost the light path does without: its modules import typing names
for type checkers only (``if TYPE_CHECKING:``), and the three that a class needs at run time
are here.
"""

from __future__ import annotations

from operator import attrgetter, itemgetter

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, dataclass_transform
    from typing import Generic as Generic
    from typing import NamedTuple as NamedTuple
    from typing import TypeVar as TypeVar

    T = TypeVar("T")
else:
    def dataclass_transform(**_options):
        return lambda decorated: decorated

    def TypeVar(name, *_constraints, **_options):
        """A type variable at run time: only its name (type checkers see typing's)."""
        return name

    class Generic:
        """A generic base at run time: subscripted, the class itself."""

        def __class_getitem__(cls, _parameters):
            return cls

    def _tuple_new(name, names, defaults):
        count = len(names)

        def __new__(cls, *args, **kwargs):
            if len(args) == count and not kwargs:
                return tuple.__new__(cls, args)
            if len(args) > count:
                raise TypeError(f"{name}() takes {count} positional arguments but "
                                f"{len(args)} were given")
            values = list(args)
            for key in names[len(args):]:
                if key in kwargs:
                    values.append(kwargs.pop(key))
                elif key in defaults:
                    values.append(defaults[key])
                else:
                    raise TypeError(f"{name}() missing required argument: {key!r}")
            if kwargs:
                raise TypeError(f"{name}() got an unexpected keyword argument "
                                f"{next(iter(kwargs))!r}")
            return tuple.__new__(cls, values)

        return __new__

    class _Tuple(tuple):
        """What every named tuple class has, as collections.namedtuple gives it."""

        __slots__ = ()
        _fields = ()

        @classmethod
        def _make(cls, iterable):
            made = tuple.__new__(cls, iterable)
            if len(made) != len(cls._fields):
                raise TypeError(f"Expected {len(cls._fields)} arguments, got {len(made)}")
            return made

        def _replace(self, **changes):
            made = self._make(map(changes.pop, self._fields, self))
            if changes:
                raise ValueError(f"Got unexpected field names: {list(changes)!r}")
            return made

        def _asdict(self):
            return dict(zip(self._fields, self))

        def __repr__(self):
            shown = ", ".join(f"{key}={value!r}" for key, value in zip(self._fields, self))
            return f"{self.__class__.__name__}({shown})"

        def __getnewargs__(self):
            return tuple(self)

    class _NamedTupleType(type):
        def __new__(mcs, name, bases, namespace):
            if not bases:  # NamedTuple itself
                return super().__new__(mcs, name, bases, namespace)
            annotations = namespace.get("__annotations__", {})
            names = tuple(key for key, kind in annotations.items() if not _is_class_var(kind))
            defaults = {key: namespace[key] for key in names if key in namespace}
            body = {key: value for key, value in namespace.items() if key not in names}
            body.update(__slots__=(), _fields=names, _field_defaults=defaults,
                        __match_args__=names, __new__=_tuple_new(name, names, defaults))
            for index, key in enumerate(names):
                body[key] = property(itemgetter(index), doc=f"Alias for field number {index}")
            return type(name, (_Tuple,), body)

    class NamedTuple(metaclass=_NamedTupleType):
        """``class Entry(NamedTuple)``: a named tuple class from the class's annotations, its
        methods and class attributes kept."""

_MISSING = object()
_FIELDS = "__record_fields__"


class FrozenInstanceError(AttributeError):
    """Assignment to a field of a frozen record (dataclasses.FrozenInstanceError's role)."""


class Field:
    """One field of a record: its name, default or default factory, and whether __init__
    takes it."""

    __slots__ = ("default", "default_factory", "init", "name")

    def __init__(self, default: object = _MISSING, default_factory: object = _MISSING,
                 init: bool = True) -> None:
        if default is not _MISSING and default_factory is not _MISSING:
            raise ValueError("cannot give both default and default_factory")
        self.name = ""
        self.default = default
        self.default_factory = default_factory
        self.init = init

    @property
    def required(self) -> bool:
        return self.default is _MISSING and self.default_factory is _MISSING

    def initial(self) -> object:
        """The value of a field __init__ was not given."""
        if self.default_factory is not _MISSING:
            return self.default_factory()  # type: ignore[operator]
        return self.default

    def __repr__(self) -> str:
        return f"Field({self.name!r})"


def field(*, default: Any = _MISSING, default_factory: Any = _MISSING, init: bool = True
          ) -> Any:
    """A field's default, default factory or init=False, as dataclasses.field."""
    return Field(default, default_factory, init)


def fields(value: object) -> tuple[Field, ...]:
    """The fields of a record or record class, in order."""
    found: tuple[Field, ...] | None = getattr(value, _FIELDS, None)
    if found is None:
        raise TypeError(f"{type(value).__name__} is not a record")
    return found


def is_record(value: object) -> bool:
    """A record instance (not a record class)."""
    return hasattr(type(value), _FIELDS)


def replace(value: T, **changes: Any) -> T:
    """A copy of the record `value` with the fields named in `changes` changed."""
    for item in fields(value):
        if not item.init:
            if item.name in changes:
                raise ValueError(f"field {item.name} cannot be changed (init=False)")
        elif item.name not in changes:
            changes[item.name] = getattr(value, item.name)
    return type(value)(**changes)


def _is_class_var(annotation: object) -> bool:
    text = annotation if isinstance(annotation, str) else repr(annotation)
    return text.startswith(("ClassVar", "typing.ClassVar"))


def _collect_fields(cls: type) -> tuple[Field, ...]:
    """Base records' fields first, then the class's own annotations in order (one that a
    base has keeps its place, as dataclasses keeps it)."""
    found: dict[str, Field] = {}
    for base in cls.__mro__[-1:0:-1]:
        inherited = base.__dict__.get(_FIELDS)
        if inherited:
            found.update((item.name, item) for item in inherited)
    own = cls.__dict__
    seen_default = False
    for name, annotation in own.get("__annotations__", {}).items():
        if _is_class_var(annotation):
            continue
        value = own.get(name, _MISSING)
        if isinstance(value, Field):  # the class attribute is the default, as in dataclasses
            item = value
            if item.default is _MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, item.default)
        else:
            item = Field(value)
        if item.default.__class__ in (list, dict, set):  # shared by every instance
            raise ValueError(f"{cls.__name__}.{name}: mutable default, use default_factory")
        item.name = name
        found[name] = item
    ordered = tuple(found.values())
    for item in ordered:
        if item.init and not item.required:
            seen_default = True
        elif item.init and seen_default:
            raise TypeError(f"{cls.__name__}: non-default field {item.name!r} follows a "
                            "default one")
    return ordered


def _make_init(cls: type, all_fields: tuple[Field, ...]) -> Callable[..., None]:
    taken = tuple(item for item in all_fields if item.init)
    names = frozenset(item.name for item in taken)
    rest = tuple(item for item in all_fields if not item.init)
    assign = object.__setattr__

    def __init__(self: object, *args: object, **kwargs: object) -> None:
        if len(args) > len(taken):
            raise TypeError(f"{cls.__name__}() takes {len(taken)} positional arguments but "
                            f"{len(args)} were given")
        for item, value in zip(taken, args):
            if item.name in kwargs:
                raise TypeError(f"{cls.__name__}() got multiple values for {item.name!r}")
            assign(self, item.name, value)
        for item in taken[len(args):]:
            if item.name in kwargs:
                assign(self, item.name, kwargs[item.name])
            elif item.required:
                raise TypeError(f"{cls.__name__}() missing argument {item.name!r}")
            else:
                assign(self, item.name, item.initial())
        if not names.issuperset(kwargs):
            unknown = sorted(set(kwargs) - names)
            raise TypeError(f"{cls.__name__}() got unexpected arguments {unknown}")
        for item in rest:
            assign(self, item.name, item.initial())

    return __init__


def _values(all_fields: tuple[Field, ...]) -> Callable[[object], tuple[object, ...]]:
    """The function that gives a record's field values as a tuple."""
    if len(all_fields) == 1:
        one = attrgetter(all_fields[0].name)
        return lambda value: (one(value),)
    if not all_fields:
        return lambda value: ()
    getter: Callable[[object], tuple[object, ...]] = attrgetter(
        *(item.name for item in all_fields))
    return getter


def _frozen_setattr(self: object, name: str, value: object) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _frozen_delattr(self: object, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r}")


def _make_record(cls: type[T], frozen: bool) -> type[T]:
    all_fields = _collect_fields(cls)
    values = _values(all_fields)
    names = tuple(item.name for item in all_fields)

    def __repr__(self: object) -> str:
        shown = ", ".join(f"{name}={value!r}" for name, value in zip(names, values(self)))
        return f"{type(self).__qualname__}({shown})"

    def __eq__(self: object, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return values(self) == values(other)

    def __hash__(self: object) -> int:
        return hash(values(self))

    own = vars(cls)
    explicit_hash = "__hash__" in own and not (own["__hash__"] is None and "__eq__" in own)
    methods: dict[str, object] = {"__init__": _make_init(cls, all_fields),
                                  "__repr__": __repr__, "__eq__": __eq__}
    if frozen:
        methods.update(__setattr__=_frozen_setattr, __delattr__=_frozen_delattr)
    for name, method in methods.items():
        if name not in own:
            setattr(cls, name, method)
    if not explicit_hash:
        cls.__hash__ = __hash__ if frozen else None  # type: ignore[assignment,method-assign]
    setattr(cls, _FIELDS, all_fields)
    return cls


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def frozen_record(cls: type[T]) -> type[T]:
    """A frozen record (``@dataclass(frozen=True)``)."""
    return _make_record(cls, frozen=True)


@dataclass_transform(field_specifiers=(field,))
def mutable_record(cls: type[T]) -> type[T]:
    """A record whose fields may be assigned (``@dataclass``)."""
    return _make_record(cls, frozen=False)
