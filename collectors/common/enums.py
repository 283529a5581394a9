"""Enumerations, declared as the enum module declares them (``class Kind(TextEnum): FILE =
"file"``), with :class:`Enum`, :class:`IntEnum` and :class:`TextEnum` (a str-valued enum that is
its value wherever it is written).

Why not the enum module at run time: importing it imports functools and collections, and each
class it makes costs about as much as importing a small module (its metaclass checks and wraps
every member). For the dozen enums a one-image ``check_qcow2`` run loads, that was about a
fifth of the plugin's start (bench/bench_start.py), in a plugin Nagios starts once per disk per
minute. Type checkers see the enum module's classes (``if TYPE_CHECKING:``), so a match on an
enum is checked as one.

What an enumeration here does, as the enum module's does (tests/test_common_enums.py compares
the two): members are the class attributes whose names do not start with ``_`` and that are no
descriptors (methods, properties), in order; a member is an instance of the class (made by its
str or int base for TextEnum and IntEnum, so it compares, sorts and formats as its value) with
``name`` and ``value``; the class iterates over its members, has their number as len(), looks
one up by value (``Kind("file")``, ValueError otherwise) and by name (``Kind["FILE"]``), has
``__members__``, refuses to rebind a member and to be subclassed once it has members. A member
hashes as its name, repr()s as ``<Kind.FILE: 'file'>``, pickles as a lookup by value and is its
own copy. Not offered: aliases, ``auto()``, flags, ``_missing_``; a declaration that would need
them fails.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from enum import Enum as Enum
    from enum import IntEnum as IntEnum

    class TextEnum(str, Enum):
        """A str-valued enum that is its value wherever it is written."""

else:
    def _is_member(name, value):
        return not name.startswith("_") and not (
            hasattr(value, "__get__") or hasattr(value, "__set__")
            or hasattr(value, "__delete__"))

    class EnumType(type):
        """The class of every enumeration: makes the members, and looks them up."""

        def __new__(mcs, name, bases, namespace):
            members = {key: value for key, value in namespace.items()
                       if _is_member(key, value)}
            for base in bases:
                if getattr(base, "_member_map_", None):
                    raise TypeError(f"{name}: cannot extend {base.__name__}, which has members")
            body = {key: value for key, value in namespace.items() if key not in members}
            cls = super().__new__(mcs, name, bases, body)
            make = next((base.__new__ for base in cls.__mro__
                         if base in (str, int)), None)
            by_name, by_value = {}, {}
            for key, value in members.items():
                if value in by_value:
                    raise ValueError(f"{name}.{key}: the value of {by_value[value].name}, and "
                                     "aliases are not offered")
                member = object.__new__(cls) if make is None else make(cls, value)
                member._name_, member._value_ = key, value
                by_name[key] = by_value[value] = member
            type.__setattr__(cls, "_member_map_", by_name)
            type.__setattr__(cls, "_value2member_map_", by_value)
            for key, member in by_name.items():
                type.__setattr__(cls, key, member)
            return cls

        def __call__(cls, value):
            if isinstance(value, cls):
                return value
            try:
                return cls._value2member_map_[value]
            except (KeyError, TypeError):
                raise ValueError(f"{value!r} is not a valid {cls.__name__}") from None

        def __getitem__(cls, name):
            return cls._member_map_[name]

        def __iter__(cls):
            return iter(cls._member_map_.values())

        def __reversed__(cls):
            return reversed(list(cls._member_map_.values()))

        def __len__(cls):
            return len(cls._member_map_)

        def __bool__(cls):
            return True

        def __contains__(cls, member):
            return isinstance(member, cls) and member._name_ in cls._member_map_

        def __setattr__(cls, name, value):
            if name in cls.__dict__.get("_member_map_", {}):
                raise AttributeError(f"cannot reassign member {name!r}")
            super().__setattr__(name, value)

        def __delattr__(cls, name):
            if name in cls.__dict__.get("_member_map_", {}):
                raise AttributeError(f"cannot delete member {name!r}")
            super().__delattr__(name)

        @property
        def __members__(cls):
            return dict(cls._member_map_)

        def __repr__(cls):
            return f"<enum {cls.__name__!r}>"

    class Enum(metaclass=EnumType):
        """A plain enumeration: its members compare by identity."""

        _member_map_ = {}
        _value2member_map_ = {}

        @property
        def name(self):
            return self._name_

        @property
        def value(self):
            return self._value_

        def __repr__(self):
            return f"<{type(self).__name__}.{self._name_}: {self._value_!r}>"

        def __str__(self):
            return f"{type(self).__name__}.{self._name_}"

        def __format__(self, spec):
            return format(str(self), spec)

        def __hash__(self):
            return hash(self._name_)

        def __reduce_ex__(self, protocol):
            return type(self), (self._value_,)

        def __copy__(self):
            return self

        def __deepcopy__(self, memo):
            return self

    class IntEnum(int, Enum):
        """An int-valued enumeration: its members are ints (str() gives the number)."""

        __repr__ = Enum.__repr__
        __str__ = int.__repr__
        __format__ = int.__format__

    class TextEnum(str, Enum):
        """A str-valued enumeration that is its value wherever it is written: str(), f-strings,
        JSON, labels."""

        __repr__ = Enum.__repr__
        __str__ = str.__str__
        __format__ = str.__format__
