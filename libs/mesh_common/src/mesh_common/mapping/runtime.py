"""What both mapping engines share at run time: results, per-record errors, message helpers.

:mod:`.compiler` (generated Python, the engine in use) and :mod:`.interpreter` (closures, the
reference it is tested against) return the same :class:`MappingResult` values and word their
errors with the same helpers, so the two can be compared result for result. No IO here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

# A path segment that is a list index ("sessions.0.starts_at", "sessions.-1..."): ASCII digits
# only, like the definition grammar (str.isdigit would also accept "²" and then fail in int()).
INDEX = re.compile(r"-?[0-9]+")


def path_parts(path: str) -> list[str | int]:
    """``"a.0.b"`` -> ``["a", 0, "b"]``."""
    return [int(p) if INDEX.fullmatch(p) else p for p in path.split(".")]


@dataclass(frozen=True, slots=True)
class MappingError:
    """One problem with one record: the target field (or ``"filter"``) and a readable message."""

    field: str
    message: str


@dataclass(slots=True)
class MappingResult:
    """Outcome for one record. ``skipped`` means the filter excluded it (not an error)."""

    record: dict[str, Any] | None
    errors: list[MappingError] = field(default_factory=list)
    skipped: bool = False
    # With errors: the fields that did map (for reporting every problem of a record at once).
    partial: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return not self.skipped and not self.errors


class Fail(Exception):
    """Raised while mapping a value; becomes a :class:`MappingError` for the current field."""


def show(value: Any) -> str:
    """Short repr for error messages: they end up in logs, so never quote a whole field."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
