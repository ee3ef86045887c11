"""The vendor SDKs' own types as a strict test oracle (the one walker every oracle test uses).

Request bodies: :func:`check` walks a JSON value against an SDK's ``*Params`` TypedDict and
raises :class:`Mismatch` unless every key is declared (a misspelled or OpenAI-only field fails),
every required key is present and every value matches its declared type (Literals, unions,
nested TypedDicts, typed mappings and sequences). pydantic's TypeAdapter ignores unknown TypedDict
keys and validates iterables lazily, hence the walker. A type the walker does not model fails
loudly rather than letting the value through.

Responses: :func:`parse_strict` parses with the SDK's pydantic model and fails on any field the
model does not declare (pydantic keeps those as extras).
"""

from __future__ import annotations

import collections.abc
import types
import typing
from typing import Any, NotRequired, Required

from pydantic import BaseModel
from typing_extensions import is_typeddict


class Mismatch(AssertionError):
    pass


_SEQUENCES = {list, tuple, collections.abc.Iterable, collections.abc.Sequence}
_TYPE_ALIAS = getattr(typing, "TypeAliasType", ())


def check(value: Any, tp: Any, path: str = "$") -> None:
    """Raise Mismatch unless ``value`` is an instance of the typing annotation ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (Required, NotRequired, typing.Annotated):
        return check(value, typing.get_args(tp)[0], path)
    if tp is Any or tp is object:
        return None
    if tp is None or tp is type(None):
        if value is not None:
            raise Mismatch(f"{path}: expected null, got {value!r}")
        return None
    if getattr(tp, "__supertype__", None) is not None:  # typing.NewType
        return check(value, tp.__supertype__, path)
    if _TYPE_ALIAS and isinstance(tp, _TYPE_ALIAS):  # a ``type X = ...`` alias
        return check(value, tp.__value__, path)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arm in typing.get_args(tp):
            try:
                return check(value, arm, path)
            except Mismatch as e:
                errors.append(str(e))
        raise Mismatch(f"{path}: matches no arm of the union:\n  " + "\n  ".join(errors))
    if origin is typing.Literal:
        if value not in typing.get_args(tp) or isinstance(value, bool) != any(
            isinstance(a, bool) for a in typing.get_args(tp)
        ):
            raise Mismatch(f"{path}: {value!r} not in {typing.get_args(tp)}")
        return None
    if is_typeddict(tp):
        return _check_typeddict(value, tp, path)
    if origin in (dict, collections.abc.Mapping) or tp in (dict, typing.Dict):  # noqa: UP006
        if not isinstance(value, dict):
            raise Mismatch(f"{path}: expected an object, got {type(value).__name__}")
        args = typing.get_args(tp)
        for k, v in value.items():
            if args:
                check(k, args[0], f"{path}.<key>")
                check(v, args[1], f"{path}.{k}")
        return None
    if origin in _SEQUENCES or (origin is not None and getattr(origin, "__name__", "") == "SequenceNotStr"):
        if not isinstance(value, list):
            raise Mismatch(f"{path}: expected an array, got {type(value).__name__}")
        (item,) = typing.get_args(tp) or (Any,)
        for i, v in enumerate(value):
            check(v, item, f"{path}[{i}]")
        return None
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Mismatch(f"{path}: expected a number, got {value!r}")
        return None
    if tp in (int, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise Mismatch(f"{path}: expected {tp.__name__}, got {value!r}")
        return None
    if isinstance(tp, type) and tp.__name__ in ("FileTypes", "Base64FileInput"):
        return None  # file uploads: not part of any JSON body the adapters build
    raise Mismatch(f"{path}: the walker does not know the type {tp!r}")


def _check_typeddict(value: Any, td: Any, path: str) -> None:
    if not isinstance(value, dict):
        raise Mismatch(f"{path}: expected an object ({td.__name__}), got {type(value).__name__}")
    hints = typing.get_type_hints(td, include_extras=True)
    unknown = set(value) - set(hints)
    if unknown:
        raise Mismatch(f"{path}: {td.__name__} declares no {sorted(unknown)}")
    missing = _required(td, hints) - set(value)
    if missing:
        raise Mismatch(f"{path}: {td.__name__} requires {sorted(missing)}")
    for key, v in value.items():
        check(v, hints[key], f"{path}.{key}")


def _required(td: Any, hints: dict[str, Any]) -> set[str]:
    # The SDKs' string annotations (``from __future__ import annotations``) leave
    # __required_keys__ wrong for Required[...]: read Required / NotRequired / totality per class.
    keys: set[str] = set()
    for cls in reversed(td.__mro__):
        for key in getattr(cls, "__dict__", {}).get("__annotations__", {}):
            origin = typing.get_origin(hints.get(key))
            if origin is Required or (origin is not NotRequired and getattr(cls, "__total__", False)):
                keys.add(key)
            else:
                keys.discard(key)
    return keys


def parse_strict(model: type[BaseModel], data: Any) -> BaseModel:
    """The SDK's response model; fields it does not declare (kept as extras) fail."""
    parsed = model.model_validate(data)
    _no_extras(parsed, model.__name__)
    return parsed


def _no_extras(m: Any, path: str) -> None:
    if isinstance(m, BaseModel):
        assert not m.model_extra, f"{path}: undeclared fields {sorted(m.model_extra or {})}"
        for name in type(m).model_fields:
            _no_extras(getattr(m, name), f"{path}.{name}")
    elif isinstance(m, list):
        for i, x in enumerate(m):
            _no_extras(x, f"{path}[{i}]")
