"""Strict construction of frozen config dataclasses from plain mappings (one helper for all).

Hydra hands the library plain values that may be of the wrong type (``seed=abc`` is the
string ``'abc'``, ``model.head_dim=true`` is the bool ``True``, which Python would happily
treat as the integer 1). :func:`from_dict` refuses unknown keys and checks every value
against its field's annotation (nested config dataclasses included) before the dataclass is
built, with a one-line error that
names the field and the expected type. Only the simple annotations configs use are checked
(int, float, bool, str, their ``| None``, tuples/lists of int or str); anything richer is
left to the dataclass's own validation.
"""

from __future__ import annotations

import dataclasses
import numbers
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")
_SIMPLE = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _show(value: Any) -> str:
    if hasattr(value, "item") and callable(value.item):  # numpy scalars print as plain values
        try:
            value = value.item()
        except (TypeError, ValueError):
            pass
    return repr(value)


def _matches(value: Any, tp: Any) -> tuple[bool, Any]:
    """(ok, the value converted) for ``tp`` in int, float, bool, str."""
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            return False, value
        return True, int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False, value
        return True, float(value)
    if tp is str:
        return isinstance(value, str), value
    return True, value


def check_value(section: str, name: str, value: Any, tp: Any) -> Any:
    """``value`` converted to ``tp``, or ValueError naming ``section.name`` and the expected type."""
    if section:
        return _check(f"{section}.{name}", value, tp)
    return _check(name, value, tp)


def _check(field: str, value: Any, tp: Any) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    optional = False
    if origin in (typing.Union, types.UnionType):
        optional = type(None) in args
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            return value
        tp = rest[0]
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    if value is None:
        if optional:
            return None
        if tp in _SIMPLE:
            raise ValueError(f"{field} is null; expected {_SIMPLE[tp]}")
        return None
    if tp in _SIMPLE:
        ok, out = _matches(value, tp)
        if not ok:
            extra = " or null" if optional else ""
            raise ValueError(f"{field}={_show(value)} must be {_SIMPLE[tp]}{extra} "
                             f"(got {type(value).__name__})")
        return out
    if origin in (tuple, list) and args and args[0] in (int, str) and (len(args) == 1 or args[-1] is Ellipsis):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            return value  # a scalar where a list may also be accepted: the class decides
        for item in value:
            ok, _ = _matches(item, args[0])
            if not ok:
                raise ValueError(f"{field} item {_show(item)} must be {_SIMPLE[args[0]]} "
                                 f"(got {type(item).__name__})")
    return value


def _dataclass_of(tp: Any) -> type | None:
    """The dataclass in ``tp`` (``X`` or ``X | None``), else None."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = rest[0] if len(rest) == 1 else None
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def from_dict(cls: type[T], d: Mapping[str, Any], *, section: str) -> T:
    """``cls(**d)``, refusing unknown keys and values of the wrong type (see the module doc)."""
    d = dict(d)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ValueError(f"{section}: unknown field(s) {unknown}; allowed: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    checked = {}
    for k, v in d.items():
        nested = _dataclass_of(hints.get(k, Any))
        if nested is not None and isinstance(v, Mapping):  # a nested config section
            checked[k] = from_dict(nested, v, section=f"{section}.{k}" if section else k)
        else:
            checked[k] = check_value(section, k, v, hints.get(k, Any))
    try:
        return cls(**checked)
    except TypeError as e:  # a required field is missing
        required = [n for n, f in fields.items()
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        raise ValueError(f"{section}: {e}; required fields: {', '.join(required)}") from None
