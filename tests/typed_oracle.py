"""Strict structural check of a JSON value against a vendor SDK's TypedDict params types.

pydantic's TypeAdapter ignores unknown TypedDict keys and validates iterables lazily, so it would
let a misspelled or unsupported field through. This walks the annotation itself: every key must be
declared, every required key present, every value of a declared type.
"""

from __future__ import annotations

import collections.abc
import types
import typing
from typing import Any, Literal, NotRequired, Required, Union, get_args, get_origin, get_type_hints

from typing_extensions import is_typeddict


def problems(value: Any, tp: Any, path: str = "$") -> list[str]:
    """Every way ``value`` does not fit ``tp`` (empty: it fits)."""
    origin = get_origin(tp)
    if tp is Any or tp is object:
        return []
    if origin in (Required, NotRequired, typing.Annotated) or _name(origin) in ("Required", "NotRequired"):
        return problems(value, get_args(tp)[0], path)
    if origin is Union or origin is types.UnionType:
        found = [problems(value, a, path) for a in get_args(tp)]
        if any(not f for f in found):
            return []
        # report the member that got furthest into the value (deepest first problem)
        return min(found, key=lambda f: (-max(len(p.split(":")[0]) for p in f), len(f)))
    if origin is Literal:
        return [] if value in get_args(tp) else [f"{path}: {value!r} not in {get_args(tp)}"]
    if tp is type(None):
        return [] if value is None else [f"{path}: expected null"]
    if is_typeddict(tp):
        return _typeddict(value, tp, path)
    if origin in (list, collections.abc.Iterable, collections.abc.Sequence, typing.Iterable):
        if not isinstance(value, list):
            return [f"{path}: expected a list"]
        (item,) = get_args(tp) or (Any,)
        return [p for i, v in enumerate(value) for p in problems(v, item, f"{path}[{i}]")]
    if origin in (dict, collections.abc.Mapping) or tp in (dict, typing.Dict):  # noqa: UP006
        return [] if isinstance(value, dict) else [f"{path}: expected an object"]
    if tp is str:
        return [] if isinstance(value, str) else [f"{path}: expected a string"]
    if tp is bool:
        return [] if isinstance(value, bool) else [f"{path}: expected a boolean"]
    if tp is int:
        return (
            [] if isinstance(value, int) and not isinstance(value, bool) else [f"{path}: expected an integer"]
        )
    if tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return [] if ok else [f"{path}: expected a number"]
    if isinstance(tp, type) and hasattr(tp, "__supertype__"):
        return problems(value, tp.__supertype__, path)
    if getattr(tp, "__supertype__", None) is not None:  # typing.NewType
        return problems(value, tp.__supertype__, path)
    if isinstance(tp, typing.TypeAliasType if hasattr(typing, "TypeAliasType") else ()):
        return problems(value, tp.__value__, path)
    return []  # a type the SDK uses that we do not model (bytes-like, file handles): accept


def _typeddict(value: Any, tp: Any, path: str) -> list[str]:
    if not isinstance(value, dict):
        return [f"{path}: expected an object ({tp.__name__})"]
    hints = get_type_hints(tp, include_extras=True)
    out = [f"{path}.{k}: unknown field for {tp.__name__}" for k in value if k not in hints]
    # __required_keys__ misses Required[...] written as a string annotation (the SDKs use
    # ``from __future__ import annotations``), so read the resolved hints instead.
    total = getattr(tp, "__total__", True)
    for k, h in hints.items():
        req = get_origin(h) is Required or (total and get_origin(h) is not NotRequired)
        if req and k not in value:
            out.append(f"{path}.{k}: required by {tp.__name__}")
    for k, v in value.items():
        if k in hints:
            out += problems(v, hints[k], f"{path}.{k}")
    return out


def _name(x: Any) -> str:
    return getattr(x, "_name", "") or getattr(x, "__name__", "")
