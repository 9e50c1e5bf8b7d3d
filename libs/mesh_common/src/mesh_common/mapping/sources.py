"""Check a mapping definition against the fields its source records have.

A definition is validated on its own by :func:`~mesh_common.mapping.model.load_mapping`; when
the shape of the source is known (a pydantic model, the columns of a table, the header row of a
spreadsheet) :func:`check_sources` also reports every source path the records do not have, with
its location in the definition and a suggestion::

    fields[3].source: unknown source field 'emial' (did you mean 'email'?)

A :class:`SourceSchema` is a tree of known names built from dotted paths (``"location.city"``;
``"*"`` stands for list items, so ``"sessions.*.starts_at"`` admits ``sessions.0.starts_at``)
or from a pydantic model (nested models, lists of models; ``dict``/``Any`` fields accept any
path below them). This module must not do IO.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable, Iterator
from typing import Any, Union

from pydantic import BaseModel

from mesh_common.mapping.model import (
    AllOf,
    AnyOf,
    Condition,
    MappingDefinition,
    MappingValidationError,
    Not,
    Ref,
)

_ANY = "__any__"  # marks a node below which every path is accepted


class SourceSchema:
    """The set of paths source records have, as a tree of names."""

    def __init__(self, tree: dict[str, Any] | None = None) -> None:
        self.tree: dict[str, Any] = tree if tree is not None else {}

    @classmethod
    def from_paths(cls, paths: Iterable[str]) -> SourceSchema:
        tree: dict[str, Any] = {}
        for path in paths:
            node = tree
            for part in path.split("."):
                node = node.setdefault(part, {})
        return cls(tree)

    @classmethod
    def from_model(cls, model: type[BaseModel]) -> SourceSchema:
        return cls(_model_tree(model, depth=0))

    @classmethod
    def of(cls, source: SourceSchema | type[BaseModel] | Iterable[str]) -> SourceSchema:
        if isinstance(source, SourceSchema):
            return source
        if isinstance(source, type) and issubclass(source, BaseModel):
            return cls.from_model(source)
        if isinstance(source, str):
            raise TypeError("give an iterable of paths, not a single string")
        return cls.from_paths(source)

    def paths(self) -> list[str]:
        """Every leaf path (for messages and the API)."""
        out: list[str] = []

        def walk(node: dict[str, Any], prefix: str) -> None:
            if _ANY in node or not node:
                if prefix:
                    out.append(prefix + (".…" if _ANY in node else ""))
                if not node or len(node) == 1:
                    return
            for name, child in node.items():
                if name != _ANY:
                    walk(child, f"{prefix}.{name}" if prefix else name)

        walk(self.tree, "")
        return out

    def unknown(self, path: str) -> str | None:
        """None if records have ``path``, else a message naming the first unknown part."""
        node = self.tree
        seen: list[str] = []
        for part in path.split("."):
            if _ANY in node:
                return None
            key = "*" if part.lstrip("-").isdigit() else part
            if key not in node:
                where = f" in {'.'.join(seen)!r}" if seen else ""
                if key == "*":
                    return f"source field {'.'.join(seen) or part!r} is not a list"
                known = [k for k in node if k not in (_ANY, "*")]
                hint = difflib.get_close_matches(part, known, n=1)
                suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
                return f"unknown source field {part!r}{where}{suggestion}"
            node = node[key]
            seen.append(part)
        return None


def _unwrap(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin is Union or origin is types.UnionType:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else Any
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    return annotation


def _model_tree(model: type[BaseModel], depth: int) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        key = info.alias or name
        tree[key] = _type_tree(info.annotation, depth)
    return tree


def _type_tree(annotation: Any, depth: int) -> dict[str, Any]:
    ann = _unwrap(annotation)
    if depth > 8:  # recursive models: stop checking below this depth
        return {_ANY: {}}
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return _model_tree(ann, depth + 1)
    origin = typing.get_origin(ann)
    if origin in (list, tuple, set, frozenset) or ann in (list, tuple):
        args = typing.get_args(ann)
        return {"*": _type_tree(args[0], depth + 1) if args else {_ANY: {}}}
    if ann is Any or origin is dict or ann is dict or origin in (Union, types.UnionType):
        return {_ANY: {}}
    return {}  # a scalar: nothing below it


def source_refs(defn: MappingDefinition) -> Iterator[tuple[str, str]]:
    """Every source path the definition reads, as ``(location, path)``."""

    def cond(c: Condition, loc: str) -> Iterator[tuple[str, str]]:
        if isinstance(c, AllOf | AnyOf):
            for i, sub in enumerate(c.of):
                yield from cond(sub, f"{loc}.of[{i}]")
        elif isinstance(c, Not):
            yield from cond(c.of, f"{loc}.of")
        else:
            yield f"{loc}.field", c.field

    def ref(r: Ref, loc: str) -> Iterator[tuple[str, str]]:
        if r.source is not None:
            yield f"{loc}.source", r.source

    if defn.filter is not None:
        yield from cond(defn.filter, "filter")
    for i, f in enumerate(defn.fields):
        loc = f"fields[{i}]"
        if f.source is not None:
            yield f"{loc}.source", f.source
        if f.concat is not None:
            for j, part in enumerate(f.concat.parts):
                if isinstance(part, str):
                    yield f"{loc}.concat.parts[{j}]", part
                else:
                    yield from ref(part, f"{loc}.concat.parts[{j}]")
        if f.cond is not None:
            yield from cond(f.cond.when, f"{loc}.cond.when")
            yield from ref(f.cond.then, f"{loc}.cond.then")
            if f.cond.else_ is not None:
                yield from ref(f.cond.else_, f"{loc}.cond.else")


def check_sources(
    defn: MappingDefinition, source: SourceSchema | type[BaseModel] | Iterable[str]
) -> list[tuple[str, str]]:
    """``(location, message)`` for every source path of ``defn`` that ``source`` lacks."""
    schema = SourceSchema.of(source)
    errors = []
    for loc, path in source_refs(defn):
        message = schema.unknown(path)
        if message is not None:
            errors.append((loc, message))
    return errors


def require_sources(
    defn: MappingDefinition, source: SourceSchema | type[BaseModel] | Iterable[str]
) -> MappingDefinition:
    """``defn`` unchanged, or :class:`MappingValidationError` listing every unknown source."""
    errors = check_sources(defn, source)
    if errors:
        raise MappingValidationError(errors)
    return defn
