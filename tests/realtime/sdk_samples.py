"""Client events built from the openai SDK's GA models: every field filled, and where each
optional field sits, so that tests can set one of them to ``null`` at a time.

A union is filled with one of its members, chosen by ``variant`` (member ``variant % n``), so
a handful of variants together visit every member of the small unions (item kinds, turn
detection types, tool kinds, literal values).
"""

from __future__ import annotations

import ast
import inspect
import itertools
import textwrap
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import pydantic

Path = tuple[str | int, ...]
MAX_DEPTH = 8


@dataclass
class Sample:
    value: Any
    optional: list[Path] = field(default_factory=list)  # paths whose field may be null


def _members(annotation: Any) -> list[Any]:
    """The non-None members of a union (the annotation itself when it is no union)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _members(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        found: list[Any] = []
        for arg in typing.get_args(annotation):
            if arg is not type(None):
                found += _members(arg)
        return found
    return [annotation]


def allows_none(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return allows_none(typing.get_args(annotation)[0])
    return origin in (typing.Union, types.UnionType) and type(None) in typing.get_args(annotation)


def sample(annotation: Any, variant: int = 0) -> Sample:
    out = Sample(None)
    out.value = _fill(annotation, variant, (), out.optional, 0)
    return out


def _fill(annotation: Any, variant: int, path: Path, optional: list[Path], depth: int) -> Any:
    members = _members(annotation)
    chosen = members[variant % len(members)] if len(members) > 1 else members[0]
    origin = typing.get_origin(chosen)
    if origin is Literal:
        values = typing.get_args(chosen)
        return values[variant % len(values)]
    if isinstance(chosen, type) and issubclass(chosen, pydantic.BaseModel):
        if depth >= MAX_DEPTH:
            return None
        obj: dict[str, Any] = {}
        for name, info in chosen.model_fields.items():
            key = info.alias or name
            if allows_none(info.annotation):
                optional.append((*path, key))
            obj[key] = _fill(info.annotation, variant, (*path, key), optional, depth + 1)
        return obj
    if origin in (list, typing.List):  # noqa: UP006 - the SDK annotates with typing.List
        (element,) = typing.get_args(chosen)
        return [_fill(element, variant, (*path, 0), optional, depth + 1)]
    if origin in (dict, typing.Dict):  # noqa: UP006
        return {}
    if chosen is str:
        return "x"
    if chosen is bool:
        return True
    if chosen is int:
        return 1
    if chosen is float:
        return 0.5
    return {}  # object / Any: free-form JSON


def without_unset(value: Any) -> Any:
    """``value`` less the keys whose filled value is None (past MAX_DEPTH)."""
    if isinstance(value, dict):
        return {k: without_unset(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_unset(v) for v in value]
    return value


def with_null(value: Any, path: Path) -> Any:
    """A deep copy of ``value`` with the field at ``path`` set to None."""
    if not path:
        return None
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {k: (with_null(v, rest) if k == head else v) for k, v in value.items()}
    assert isinstance(value, list)
    return [with_null(v, rest) if i == head else v for i, v in enumerate(value)]


def without(value: Any, path: Path) -> Any:
    """A deep copy of ``value`` without the field at ``path``."""
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {k: without(v, rest) if rest and k == head else v
                for k, v in value.items() if rest or k != head}
    return [without(v, rest) if i == head else v for i, v in enumerate(value)]


def get_at(value: Any, path: Path) -> Any:
    for part in path:
        value = value[part]
    return value


def models_in(annotation: Any, seen: set[type[pydantic.BaseModel]] | None = None,
              ) -> Iterator[type[pydantic.BaseModel]]:
    """Every SDK model reachable from ``annotation``."""
    seen = set() if seen is None else seen
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        if annotation in seen:
            return
        seen.add(annotation)
        yield annotation
        for info in annotation.model_fields.values():
            yield from models_in(info.annotation, seen)
        return
    for arg in typing.get_args(annotation):
        yield from models_in(arg, seen)


def field_docs(model: type[pydantic.BaseModel]) -> dict[str, str]:
    """The docstring under each field of ``model``'s class body (the SDK documents there)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(model)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, after in itertools.pairwise(body):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)):
            docs[node.target.id] = after.value.value
    return docs
