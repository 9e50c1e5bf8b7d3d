"""Compile a :class:`MappingDefinition` into generated Python and apply it to records.

:func:`compile_mapping` generates the source of one function per definition (:mod:`.codegen`:
every option decided once, no user text in the code except as checked literals, a namespace
without builtins), compiles it once and wraps it in :class:`CompiledMapping`. Applying a mapping
per record is then one call of plain Python. :mod:`.interpreter` is the reference engine with the
same API, and a property test holds both to identical results and errors. Errors per record are
collected as :class:`MappingError` values instead of raised, so a sync can log per-record
outcomes and carry on. This module must not do IO, and it must not extend the language: anything
a definition can do is a model in :mod:`.model`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

from mesh_common.mapping.codegen import generate
from mesh_common.mapping.model import MappingDefinition
from mesh_common.mapping.runtime import Fail, MappingError, MappingResult

__all__ = ["CompiledMapping", "MappingError", "MappingResult", "compile_mapping"]

Record = Mapping[str, Any]


class CompiledMapping:
    """A definition ready to apply. Build with :func:`compile_mapping`; safe to share."""

    __slots__ = ("_apply", "_map", "_matches", "definition", "source")

    def __init__(self, definition: MappingDefinition) -> None:
        self.definition = definition
        generated = generate(definition)
        self.source = generated.source  # the generated Python, for debugging and review
        functions = generated.build()
        self._apply: Callable[[Record, datetime | None], MappingResult] = functions["_apply"]
        self._map: Callable[[Record, datetime | None], MappingResult] = functions["_map"]
        self._matches: Callable[[Record, datetime | None], bool] = functions["_matches"]

    def matches(self, record: Record, since: datetime | None = None) -> bool:
        """Whether the filter admits ``record`` (True without a filter); may raise on bad data."""
        try:
            return self._matches(record, since)
        except Fail as exc:
            raise ValueError(str(exc)) from None

    def apply(self, record: Record, since: datetime | None = None) -> MappingResult:
        """Filter then map one record; ``since`` is the run's marker for ``changed_since``."""
        return self._apply(record, since)

    def map(self, record: Record, since: datetime | None = None) -> MappingResult:
        """Map one record, ignoring the filter. Every field is tried; errors are collected.

        Plain top-level copies are written first, the other fields after them in definition
        order; compare documents as dicts, not by key order.
        """
        return self._map(record, since)

    def run(
        self, records: Iterable[Record], since: datetime | None = None
    ) -> Iterator[MappingResult]:
        """Apply to many records lazily; one result per input record, in order."""
        apply = self._apply
        for rec in records:
            yield apply(rec, since)


def compile_mapping(definition: MappingDefinition) -> CompiledMapping:
    """Generate and compile a validated definition once; reuse the result for every record."""
    return CompiledMapping(definition)
