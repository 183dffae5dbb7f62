"""Typed, validated loading of nested mappings (parsed TOML) into frozen dataclasses.

Every error names the offending key by its dotted path and says how to fix it, so a typo in a
study file is caught before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Protocol, TypeVar, Union, runtime_checkable

from udacisense.common.errors import UserError

T = TypeVar("T")


def bounded(default: Any, *, min: float | None = None, max: float | None = None, doc: str = "") -> Any:
    """A dataclass field with an inclusive numeric range checked at load time."""
    return dataclasses.field(default=default, metadata={"min": min, "max": max, "doc": doc})


@runtime_checkable
class WrittenAs(Protocol):
    """A field value that a study file writes in another form than its Python type (a search-space
    range is ``[low, high]``). ``parse_dataclass`` reads such a field through its default, which
    knows what the file does not spell out (e.g. that a range is sampled on a log scale).
    """

    def parse(self, value: Any, hint: Any, key: str) -> Any:
        """A value of this kind from its written form (``hint`` is the field's type); raises UserError naming ``key``."""
        ...

    def written(self) -> Any:
        """The form a study file writes it in."""
        ...


def written_form(value: Any) -> Any:
    """``value`` as a study file writes it: dataclasses as tables, tuples as lists, ``WrittenAs`` values in their form."""
    if isinstance(value, WrittenAs):
        return value.written()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: written_form(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [written_form(item) for item in value]
    if isinstance(value, dict):
        return {key: written_form(item) for key, item in value.items()}
    return value


def limits(field: dataclasses.Field[Any]) -> tuple[float | None, float | None]:
    """The inclusive ``(min, max)`` a ``bounded`` field declares (None where it sets no limit)."""
    return field.metadata.get("min"), field.metadata.get("max")


def outside_limits(field: dataclasses.Field[Any], number: object) -> bool:
    """Whether ``number`` lies outside the limits ``field`` declares (values other than numbers never do)."""
    if not isinstance(number, (int, float)) or isinstance(number, bool):
        return False
    low, high = limits(field)
    return (low is not None and number < low) or (high is not None and number > high)


def span(low: float | None, high: float | None) -> str:
    """``limits`` in words: ``between 0.0 and 0.95``, ``at least 1``, ``at most 10``."""
    if low is not None and high is not None:
        return f"between {low} and {high}"
    return f"at least {low}" if low is not None else f"at most {high}"


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp) or origin is dict:
        return "a table"
    if tp is type(None):
        return "absent"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def coerce(value: Any, tp: Any, where: str) -> Any:
    """``value`` (parsed TOML) as type ``tp``; raises UserError naming ``where`` if it is not one."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for option in typing.get_args(tp):
            if option is type(None):
                continue
            try:
                return coerce(value, option, where)
            except UserError:
                continue
        raise _wrong_type(value, tp, where)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(
                f"`{where}` is {value!r}, which is not a known choice{hint}.",
                f"set `{where}` to one of: {', '.join(repr(a) for a in allowed)}.",
            )
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _wrong_type(value, tp, where)
        item_type = typing.get_args(tp)[0]
        return tuple(coerce(item, item_type, f"{where}[{i}]") for i, item in enumerate(value))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _wrong_type(value, tp, where)
        key_type, value_type = typing.get_args(tp)
        return {coerce(k, key_type, f"{where} key"): coerce(v, value_type, f"{where}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise _wrong_type(value, tp, where)
        return parse_dataclass(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _wrong_type(value, tp, where)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _wrong_type(value, tp, where)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise UserError(f"`{where}` is {value}, which is not a finite number.", f"give `{where}` a finite value.")
            return float(value)
        raise _wrong_type(value, tp, where)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _wrong_type(value, tp, where)
    raise TypeError(f"unsupported schema type {tp!r} at {where}")


def _wrong_type(value: Any, tp: Any, where: str) -> UserError:
    return UserError(
        f"`{where}` is {value!r} ({type(value).__name__}), but it must be {_type_name(tp)}.",
        f"change `{where}` in the study file to {_type_name(tp)}.",
    )


def _check_range(field: dataclasses.Field[Any], value: Any, key: str) -> None:
    for number in value if isinstance(value, tuple) else (value,):
        if outside_limits(field, number):
            raise UserError(f"`{key}` is {number}, out of range.", f"set `{key}` {span(*limits(field))}.")


def check_bounds(instance: Any, where: str = "") -> None:
    """Enforce the ``bounded`` ranges of a dataclass instance (and of dataclasses nested in it).

    ``parse_dataclass`` checks study files this way; configs built in code (sampled stages, tests,
    benchmarks) go through this same check, so a declared limit is never just documentation.
    """
    prefix = f"{where}." if where else ""
    for field in dataclasses.fields(instance):
        value = getattr(instance, field.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_bounds(value, f"{prefix}{field.name}")
        else:
            _check_range(field, value, f"{prefix}{field.name}")


def parse_dataclass(cls: type[T], mapping: Mapping[str, Any], where: str = "") -> T:
    """Build ``cls`` from ``mapping``, rejecting unknown keys, wrong types and out-of-range values."""
    # type[T] is not known to be a dataclass type here; every caller passes one (fields() raises otherwise).
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    prefix = f"{where}." if where else ""
    for key in mapping:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"did you mean `{prefix}{close[0]}`?" if close else f"known keys: {', '.join(fields)}."
            raise UserError(f"Unknown key `{prefix}{key}`.", f"remove it or correct the spelling; {hint}")
    kwargs: dict[str, Any] = {}
    for name, field in fields.items():
        key = f"{prefix}{name}"
        if name not in mapping:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise UserError(f"Missing required key `{key}`.", f"add `{name} = ...` ({_type_name(hints[name])}).")
            continue
        if isinstance(field.default, WrittenAs):
            value = field.default.parse(mapping[name], hints[name], key)
        else:
            value = coerce(mapping[name], hints[name], key)
            _check_range(field, value, key)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except UserError:
        raise
    except (TypeError, ValueError) as error:
        raise UserError(f"Invalid table `{where or 'study'}`: {error}.", "check the values in that table.") from None
