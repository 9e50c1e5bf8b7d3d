"""Mapping definitions: the declarative, storable field-map language and its validation.

A :class:`MappingDefinition` is plain data (pydantic models) that can be stored as JSON,
exchanged as JSON or YAML and validated on save with located messages such as
``fields[3].transform[0].format: unknown date format directive '%Q'``. It is a closed language:
every operation is a tagged model listed here, so nothing in a definition can evaluate code,
templates or attribute access. This module must not execute mappings (see
:mod:`mesh_common.mapping.compiler`) and must not perform IO.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from mesh_common.errors import Invalid

# strftime/strptime directives that behave the same on every platform CPython supports; the
# platform-specific ones (%-d, %k, %s ...) are refused so a definition means the same everywhere.
_DIRECTIVES = frozenset("aAwdbBmyYHIpMSfzZjUWcxXGuV%")
_DIRECTIVE = re.compile(r"%(.)", re.S)
# Names may hold any Unicode letters ("Straße", "E-Mail": spreadsheet headers are German).
_NAME = r"[^\W\d][\w\-]*"
_PATH = re.compile(rf"^{_NAME}(\.(-?[0-9]+|{_NAME}))*$")


def _check_pattern(pattern: str) -> str:
    if pattern == "iso":
        return pattern
    for m in _DIRECTIVE.finditer(pattern):
        if m.group(1) not in _DIRECTIVES:
            raise ValueError(f"unknown date format directive '%{m.group(1)}'")
    if pattern.endswith("%") and not pattern.endswith("%%"):
        raise ValueError("date format ends with a lone '%'")
    return pattern


def _check_tz(name: str | None) -> str | None:
    if name is None:
        return None
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}") from None
    return name


def _check_path(path: str) -> str:
    if not _PATH.match(path):
        raise ValueError(
            f"invalid field path {path!r}: use dotted names, list indexes as numbers (a.0.b)"
        )
    return path


Path = Annotated[str, Field(min_length=1, max_length=200)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# --------------------------------------------------------------------------- conditions


class Compare(_Strict):
    """``field op value``; ``in``/``not_in`` take a list, ``exists``/``missing`` no value."""

    op: Literal["eq", "ne", "lt", "le", "gt", "ge", "in", "not_in", "contains", "exists", "missing"]
    field: Path
    value: Any = None

    _path = field_validator("field")(_check_path)

    @model_validator(mode="after")
    def _value_shape(self) -> Compare:
        if self.op in ("in", "not_in") and not isinstance(self.value, list):
            raise ValueError(f"'{self.op}' needs a list as value")
        return self


class ChangedSince(_Strict):
    """True when ``field`` (datetime or ISO string) is later than the run's marker timestamp.

    With no marker (first run) every record matches; a record without the field matches too,
    because missing a change is worse than sending a record twice.
    """

    op: Literal["changed_since"]
    field: Path

    _path = field_validator("field")(_check_path)


class AllOf(_Strict):
    op: Literal["and"]
    of: list[Condition] = Field(min_length=1)


class AnyOf(_Strict):
    op: Literal["or"]
    of: list[Condition] = Field(min_length=1)


class Not(_Strict):
    op: Literal["not"]
    of: Condition


Condition = Annotated[Compare | ChangedSince | AllOf | AnyOf | Not, Field(discriminator="op")]


# --------------------------------------------------------------------------- transforms


class Trim(_Strict):
    op: Literal["trim"]


class Upper(_Strict):
    op: Literal["upper"]


class Lower(_Strict):
    op: Literal["lower"]


class Truncate(_Strict):
    op: Literal["truncate"]
    length: int = Field(ge=1)
    ellipsis: str = ""

    @model_validator(mode="after")
    def _fits(self) -> Truncate:
        if len(self.ellipsis) >= self.length:
            raise ValueError("ellipsis must be shorter than length")
        return self


class Default(_Strict):
    """Replace a missing, null or empty-string value."""

    op: Literal["default"]
    value: Any


class Lookup(_Strict):
    """Map a value through a table (inline or by name from ``MappingDefinition.tables``).

    Keys are strings (JSON object keys), so non-string values are looked up by ``str(value)``.
    ``on_missing``: ``default`` uses ``default``, ``keep`` passes the value through, ``error``
    records a per-record error.
    """

    op: Literal["lookup"]
    table: dict[str, Any] | str
    on_missing: Literal["default", "keep", "error"] = "error"
    default: Any = None


class DateFormat(_Strict):
    """Parse a date (``date``/``datetime`` objects or a string via ``parse``) and format it."""

    op: Literal["date"]
    parse: str = "iso"
    format: str = "iso"

    _patterns = field_validator("parse", "format")(_check_pattern)


class DateTimeFormat(_Strict):
    """Parse a datetime, convert it to ``tz`` and format it.

    Naive inputs are taken to be in ``assume_tz`` (UTC unless set); ``tz`` unset keeps the
    input's zone.
    """

    op: Literal["datetime"]
    parse: str = "iso"
    format: str = "iso"
    tz: str | None = None
    assume_tz: str = "UTC"

    _patterns = field_validator("parse", "format")(_check_pattern)
    _zones = field_validator("tz", "assume_tz")(_check_tz)


class NumberFormat(_Strict):
    """Round to ``places`` (decimal arithmetic) and render as string, float, int or Decimal.

    ``output="str"`` uses ``decimal_sep``/``thousands_sep`` (German: ``","`` and ``"."``).
    """

    op: Literal["number"]
    places: int | None = Field(default=None, ge=0, le=12)
    rounding: Literal["half_up", "half_even", "down", "up"] = "half_up"
    output: Literal["str", "float", "int", "decimal"] = "str"
    decimal_sep: str = Field(default=".", max_length=1)
    thousands_sep: str = Field(default="", max_length=1)


Transform = Annotated[
    Trim | Upper | Lower | Truncate | Default | Lookup | DateFormat | DateTimeFormat | NumberFormat,
    Field(discriminator="op"),
]


# --------------------------------------------------------------------------- values and fields


class Ref(_Strict):
    """A single value: from a source path or a constant (exactly one)."""

    source: Path | None = None
    const: Any = None

    _path = field_validator("source")(lambda v: v if v is None else _check_path(v))

    @model_validator(mode="after")
    def _one(self) -> Ref:
        has_const = "const" in self.model_fields_set
        if (self.source is None) == (not has_const):
            raise ValueError("give exactly one of 'source' or 'const'")
        return self


class Concat(_Strict):
    """Join parts (source paths as strings, or ``{const: ...}`` / ``{source: ...}``)."""

    parts: list[Path | Ref] = Field(min_length=1)
    separator: str = " "
    skip_empty: bool = True

    @field_validator("parts")
    @classmethod
    def _paths(cls, parts: list[str | Ref]) -> list[str | Ref]:
        for p in parts:
            if isinstance(p, str):
                _check_path(p)
        return parts


class Conditional(_Strict):
    """``when`` holds → ``then``; otherwise ``else`` (null when omitted)."""

    when: Condition
    then: Ref
    else_: Ref | None = Field(default=None, alias="else")


class FieldMap(_Strict):
    """One target field: a value (exactly one of source/const/concat/cond) then transforms."""

    target: Path
    source: Path | None = None
    const: Any = None
    concat: Concat | None = None
    cond: Conditional | None = None
    transform: list[Transform] = Field(default_factory=list)
    required: bool = False
    omit_if_null: bool = False

    _target = field_validator("target")(_check_path)
    _source = field_validator("source")(lambda v: v if v is None else _check_path(v))

    @model_validator(mode="after")
    def _one_value(self) -> FieldMap:
        given = [
            n
            for n in ("source", "const", "concat", "cond")
            if n in self.model_fields_set and (n == "const" or getattr(self, n) is not None)
        ]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of 'source', 'const', 'concat' or 'cond'"
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self


class MappingDefinition(_Strict):
    """A named, versioned field map with an optional record filter."""

    name: str = Field(min_length=1, max_length=100)
    version: int = Field(default=1, ge=1)
    description: str = ""
    tables: dict[str, dict[str, Any]] = Field(default_factory=dict)
    filter: Condition | None = None
    fields: list[FieldMap] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> MappingDefinition:
        seen: dict[str, int] = {}
        for i, f in enumerate(self.fields):
            if f.target in seen:
                raise _LocatedError(
                    ("fields", i, "target"),
                    f"duplicate target {f.target!r} (also fields[{seen[f.target]}])",
                )
            seen[f.target] = i
            for j, t in enumerate(f.transform):
                if (
                    isinstance(t, Lookup)
                    and isinstance(t.table, str)
                    and t.table not in self.tables
                ):
                    raise _LocatedError(
                        ("fields", i, "transform", j, "table"), f"unknown table {t.table!r}"
                    )
        # "a" and "a.b" cannot both be targets: one would overwrite the other.
        for outer in seen:
            for inner in seen:
                if inner.startswith(outer + "."):
                    raise _LocatedError(
                        ("fields", seen[inner], "target"),
                        f"target {inner!r} is nested inside {outer!r}",
                    )
        return self


class _LocatedError(ValueError):
    """Cross-field error that knows its own location inside the definition."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message


# --------------------------------------------------------------------------- load / dump


class MappingValidationError(Invalid):
    """A definition failed validation; ``errors`` lists ``(location, message)`` pairs."""

    code = "invalid-mapping"
    title = "Invalid mapping definition"

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = errors
        super().__init__(
            "; ".join(f"{loc}: {msg}" if loc else msg for loc, msg in errors),
            extra={"errors": [{"loc": loc, "message": msg} for loc, msg in errors]},
        )


def _format_loc(loc: tuple[str | int, ...], data: Any) -> str:
    """Render ``('fields', 3, 'datetime', 'format')`` as ``fields[3].format``-style paths.

    pydantic puts the discriminator tag of a tagged union into the location; we walk the input
    alongside and drop a segment that is the ``op`` of the object there rather than one of its keys.
    """
    out = ""
    cur = data
    for seg in loc:
        if isinstance(seg, int):
            out += f"[{seg}]"
            cur = cur[seg] if isinstance(cur, list) and -len(cur) <= seg < len(cur) else None
            continue
        if isinstance(cur, dict) and seg not in cur and cur.get("op") == seg:
            continue
        if seg == "else_":
            seg = "else"
        out += f".{seg}" if out else seg
        cur = cur.get(seg) if isinstance(cur, dict) else None
    return out


def _clean_msg(msg: str) -> str:
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            return msg[len(prefix) :]
    return msg


def load_mapping(data: Any) -> MappingDefinition:
    """Validate a decoded definition; raise :class:`MappingValidationError` with locations."""
    try:
        return MappingDefinition.model_validate(data)
    except ValidationError as exc:
        errors: list[tuple[str, str]] = []
        for e in exc.errors(include_url=False):
            ctx_err = (e.get("ctx") or {}).get("error")
            if isinstance(ctx_err, _LocatedError):
                errors.append((_format_loc(ctx_err.loc, data), ctx_err.message))
            else:
                loc = _format_loc(tuple(e["loc"]), data)
                errors.append((loc, _unknown_op(e, loc) or _clean_msg(e["msg"])))
        raise MappingValidationError(errors) from None


def _unknown_op(error: Any, loc: str) -> str | None:
    """``unknown transform 'reverse' (known: trim, upper, ...)`` instead of pydantic's wording
    about tagged unions, for a transform or a filter condition with an unknown ``op``."""
    if error.get("type") != "union_tag_invalid":
        return None
    ctx = error.get("ctx") or {}
    what = "transform" if loc.rsplit(".", 1)[-1].startswith("transform") else "operator"
    known = str(ctx.get("expected_tags", "")).replace("'", "")
    return f"unknown {what} {ctx.get('tag')!r} (known: {known})"


class _NoDatesLoader(yaml.SafeLoader):  # type: ignore[misc]
    """Safe YAML loader that keeps dates as strings, so YAML and JSON load to the same model."""


_NoDatesLoader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:timestamp"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_json(text: str | bytes) -> MappingDefinition:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MappingValidationError([("", f"invalid JSON: {exc}")]) from None
    return load_mapping(data)


def load_yaml(text: str | bytes) -> MappingDefinition:
    try:
        data = yaml.load(text, Loader=_NoDatesLoader)  # noqa: S506 - safe loader subclass
    except yaml.YAMLError as exc:
        raise MappingValidationError([("", f"invalid YAML: {exc}")]) from None
    return load_mapping(data)


def to_dict(defn: MappingDefinition) -> dict[str, Any]:
    """JSON-ready dict; only what the author set (so ``const: null`` survives a round trip)."""
    return defn.model_dump(mode="json", by_alias=True, exclude_unset=True)


def fingerprint(defn: MappingDefinition) -> str:
    """Stable short hash of the definition's content (not its name/description), so an execution
    can record exactly which mapping it ran and a changed map is noticed even if ``version`` is not
    bumped."""
    body = to_dict(defn)
    for k in ("name", "description", "version"):
        body.pop(k, None)
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def dump_json(defn: MappingDefinition, *, indent: int | None = 2) -> str:
    return json.dumps(to_dict(defn), indent=indent, ensure_ascii=False)


def dump_yaml(defn: MappingDefinition) -> str:
    return str(yaml.safe_dump(to_dict(defn), sort_keys=False, allow_unicode=True))


for _m in (AllOf, AnyOf, Not, Conditional, MappingDefinition):
    _m.model_rebuild()
