"""Generate the Python source of one mapping definition, and compile it in a closed namespace.

What mature mapping engines do: instead of walking the definition for every record, the validated
:class:`~.model.MappingDefinition` is turned once into the text of a few plain functions --
``_apply(rec, since)`` (filter, then fields), ``_map(rec, since)`` (fields only) and
``_matches(rec, since)`` -- with every option decided at generation time (which transforms, which
rounding, which date template), then ``compile()``-d and ``exec``-uted once.

Safety rules, enforced here and proven by ``tests/mapping/test_codegen.py``:

- Nothing a definition says is ever put into the code as code. Identifiers are generated
  (``_g3``, ``_k7``); strings, numbers, booleans and None from the definition are written only as
  ``repr()`` of the value, checked to read back identically; every other value (lists, dicts,
  tables, time zones, Decimals, floats like NaN) is bound by name in the namespace.
- The namespace has no builtins (``__builtins__`` is empty) -- only the handful of functions,
  types and exceptions the generated code uses.
- The generator covers exactly the closed language of :mod:`.model`; anything else raises.

:mod:`.interpreter` is the reference: the generated functions must give the same results and the
same errors for every input, which a property test checks over generated definitions and records.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, ROUND_HALF_UP, ROUND_UP, Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

from mesh_common.mapping.model import (
    AllOf,
    AnyOf,
    ChangedSince,
    Compare,
    Concat,
    Condition,
    Conditional,
    DateFormat,
    DateTimeFormat,
    Default,
    FieldMap,
    Lookup,
    Lower,
    MappingDefinition,
    Not,
    NumberFormat,
    Ref,
    Transform,
    Trim,
    Truncate,
    Upper,
)
from mesh_common.mapping.runtime import Fail, MappingError, MappingResult, path_parts, show


def _strftime(value: date, fmt: str) -> str:
    # A Python-level wrapper: strftime/strptime import modules from C, which looks up
    # ``__import__`` in the calling frame's builtins -- the generated code has none.
    return value.strftime(fmt)


def _strptime(text: str, fmt: str) -> datetime:
    return datetime.strptime(text, fmt)


# Everything the generated code may name besides its own generated identifiers.
BASE_NAMESPACE: dict[str, Any] = {
    "__builtins__": {},
    "isinstance": isinstance,
    "len": len,
    "bool": bool,
    "str": str,
    "int": int,
    "float": float,
    "type": type,
    "format": format,
    "Exception": Exception,
    "TypeError": TypeError,
    "ValueError": ValueError,
    "IndexError": IndexError,
    "AttributeError": AttributeError,
    "_Fail": Fail,
    "_Result": MappingResult,
    "_Error": MappingError,
    "_show": show,
    "_isnan": math.isnan,
    "_Decimal": Decimal,
    "_InvalidOperation": InvalidOperation,
    "_datetime": datetime,
    "_date": date,
    "_UTC": UTC,
    "_seq": (list, tuple),
    "_strftime": _strftime,
    "_strptime": _strptime,
}

_ROUNDING = {
    "half_up": ROUND_HALF_UP,
    "half_even": ROUND_HALF_EVEN,
    "down": ROUND_DOWN,
    "up": ROUND_UP,
}

# strftime directives rendered as %-template + attribute (same text, several times faster).
_FAST_DIRECTIVES = {
    "d": ("%02d", "day"),
    "m": ("%02d", "month"),
    "Y": ("%d", "year"),
    "H": ("%02d", "hour"),
    "M": ("%02d", "minute"),
    "S": ("%02d", "second"),
}

_SMALL_INT = 10**15
_MEMO_MAX = 16_384  # entries per memoised transform (about 2 MB of short strings)


def is_literal(value: Any) -> bool:
    """Whether ``repr(value)`` is a Python literal that reads back as exactly ``value``."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return bool(-_SMALL_INT < value < _SMALL_INT)
    if kind is float:
        return math.isfinite(value)
    return False


@dataclass(frozen=True)
class Generated:
    """The source of one definition and the namespace it runs in."""

    source: str
    namespace: dict[str, Any]

    def build(self) -> dict[str, Callable[..., Any]]:
        """``compile`` + ``exec`` once; the generated functions by name."""
        code = compile(self.source, "<mapping>", "exec")
        ns = dict(self.namespace)
        exec(code, ns)  # noqa: S102 - generated from a validated definition, see module doc
        return {name: ns[name] for name in ("_apply", "_map", "_matches")}


class _Writer:
    """Collects lines and namespace bindings while the definition is walked."""

    def __init__(self) -> None:
        self.namespace: dict[str, Any] = dict(BASE_NAMESPACE)
        self.helpers: list[str] = []  # module-level helper functions, written before the main ones
        self._n = 0
        self._getters: dict[str, str] = {}

    def fresh(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    def bind(self, value: Any) -> str:
        name = self.fresh("_k")
        self.namespace[name] = value
        return name

    def const(self, value: Any) -> str:
        """Code for a constant from the definition: a checked literal or a bound name."""
        if is_literal(value):
            text = repr(value)
            # Belt and braces: the text must read back as this very value and type.
            back = ast.literal_eval(text)
            if type(back) is not type(value) or back != value:
                raise AssertionError(f"constant does not round-trip: {text}")
            return text
        return self.bind(value)

    # ------------------------------------------------------------------ paths

    def getter(self, path: str) -> str:
        """Expression reading ``path`` from ``rec`` (absent anywhere along the way -> None)."""
        parts = path_parts(path)
        if len(parts) == 1 and isinstance(parts[0], str):
            return f"rec.get({self.const(parts[0])})"
        name = self._getters.get(path)
        if name is None:
            name = self._getters[path] = self.fresh("_g")
            lines = [f"def {name}(rec):", "    cur = rec"]
            for p in parts:
                lines.append("    if cur is None: return None")
                if isinstance(p, int):
                    lines += [
                        "    if not isinstance(cur, _seq): return None",
                        f"    try: cur = cur[{self.const(p)}]",
                        "    except IndexError: return None",
                    ]
                else:
                    lines += [
                        f"    try: cur = cur.get({self.const(p)})",
                        "    except (AttributeError, TypeError): return None",
                    ]
            lines.append("    return cur")
            self.helpers.append("\n".join(lines))
        return f"{name}(rec)"

    # ------------------------------------------------------------------ conditions

    def condition(self, cond: Condition) -> str:
        """Expression over ``rec`` and ``since``; compound parts become their own functions so
        no expression nests deeper than a couple of levels whatever the definition's depth."""
        if isinstance(cond, AllOf | AnyOf):
            joiner = " and " if isinstance(cond, AllOf) else " or "
            inner = joiner.join(self._sub(c) for c in cond.of)
            return f"(True if ({inner}) else False)"
        if isinstance(cond, Not):
            return f"(not {self._sub(cond.of)})"
        if isinstance(cond, ChangedSince):
            return self._changed_since(cond)
        assert isinstance(cond, Compare)
        return self._compare(cond)

    def _sub(self, cond: Condition) -> str:
        if isinstance(cond, AllOf | AnyOf | Not):
            name = self.fresh("_p")
            self.helpers.append(f"def {name}(rec, since):\n    return {self.condition(cond)}")
            return f"{name}(rec, since)"
        return self.condition(cond)

    def _changed_since(self, cond: ChangedSince) -> str:
        name = self.fresh("_p")
        label = self.const(cond.field + ": ")
        self.helpers.append(
            "\n".join(
                [
                    f"def {name}(rec, since):",
                    "    if since is None: return True",
                    f"    v = {self.getter(cond.field)}",
                    "    if v is None: return True",
                    "    marker = since if since.tzinfo else since.replace(tzinfo=_UTC)",
                    "    if isinstance(v, _datetime): dt = v",
                    "    elif isinstance(v, _date): dt = _datetime(v.year, v.month, v.day)",
                    "    elif isinstance(v, str):",
                    "        try: dt = _datetime.fromisoformat(v)",
                    "        except ValueError:",
                    f"            raise _Fail({label} + _show(v) + ' is not an ISO date/time')"
                    " from None",
                    "    else:",
                    f"        raise _Fail({label} + 'expected a date/time, got ' + "
                    "type(v).__name__)",
                    "    if not dt.tzinfo: dt = dt.replace(tzinfo=_UTC)",
                    "    return dt > marker",
                ]
            )
        )
        return f"{name}(rec, since)"

    def _compare(self, cond: Compare) -> str:
        get = self.getter(cond.field)
        op = cond.op
        if op == "exists":
            return f"({get} is not None)"
        if op == "missing":
            return f"({get} is None)"
        value = self.const(cond.value)
        if op == "eq":
            return f"({get} == {value})"
        if op == "ne":
            return f"({get} != {value})"
        label = self.const(cond.field + ": ")
        name = self.fresh("_p")
        if op in ("in", "not_in"):
            members = list(cond.value)
            try:
                fast = self.bind(frozenset(members))
            except TypeError:  # unhashable members: compare one by one
                fast = self.bind(members)
            lines = [
                f"def {name}(rec, since):",
                f"    v = {get}",
                f"    try: return v in {fast}",
                f"    except TypeError: return v in {self.bind(members)}",
            ]
            self.helpers.append("\n".join(lines))
            return f"{name}(rec, since)" if op == "in" else f"(not {name}(rec, since))"
        if op == "contains":
            lines = [
                f"def {name}(rec, since):",
                f"    v = {get}",
                f"    try: return v is not None and {value} in v",
                "    except TypeError:",
                f"        raise _Fail({label} + 'cannot test ' + type(v).__name__ + "
                "\" for 'contains'\") from None",
            ]
        else:
            symbol = {"lt": "<", "le": "<=", "gt": ">", "ge": ">="}[op]
            other = self.const(f" with {type(cond.value).__name__}")
            lines = [
                f"def {name}(rec, since):",
                f"    v = {get}",
                "    if v is None: return False",
                f"    try: return v {symbol} {value}",
                "    except TypeError:",
                f"        raise _Fail({label} + 'cannot compare ' + type(v).__name__ + {other})"
                " from None",
            ]
        self.helpers.append("\n".join(lines))
        return f"{name}(rec, since)"

    # ------------------------------------------------------------------ values

    def ref(self, r: Ref) -> str:
        return self.getter(r.source) if r.source is not None else self.const(r.const)

    def concat(self, c: Concat) -> str:
        parts = [self.getter(p) if isinstance(p, str) else self.ref(p) for p in c.parts]
        values = "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"
        sep = self.const(c.separator)
        if c.skip_empty:
            return f'{sep}.join([str(x) for x in {values} if x is not None and x != ""])'
        return f'{sep}.join(["" if x is None else str(x) for x in {values}])'

    def conditional(self, c: Conditional) -> str:
        other = self.ref(c.else_) if c.else_ is not None else "None"
        return f"({self.ref(c.then)} if {self.condition(c.when)} else {other})"

    # ------------------------------------------------------------------ transforms

    def transform(self, t: Transform, tables: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """Statements turning ``v`` into the transformed ``v`` (raising _Fail on bad data)."""
        if isinstance(t, Trim | Upper | Lower):
            method = {Trim: "strip", Upper: "upper", Lower: "lower"}[type(t)]
            return [f"if isinstance(v, str): v = v.{method}()"]
        if isinstance(t, Truncate):
            keep = t.length - len(t.ellipsis)
            return [
                f"if isinstance(v, str) and len(v) > {self.const(t.length)}:",
                f"    v = v[:{self.const(keep)}] + {self.const(t.ellipsis)}",
            ]
        if isinstance(t, Default):
            return [f'if v is None or v == "": v = {self.const(t.value)}']
        if isinstance(t, Lookup):
            return self._lookup(t, tables)
        if isinstance(t, DateFormat):
            return self._date(t)
        if isinstance(t, DateTimeFormat):
            return self._datetime(t)
        assert isinstance(t, NumberFormat)
        return self._number(t)

    def _lookup(self, t: Lookup, tables: Mapping[str, Mapping[str, Any]]) -> list[str]:
        table = self.bind(dict(tables[t.table] if isinstance(t.table, str) else t.table))
        if t.on_missing == "default":
            missing = [f"    else: v = {self.const(t.default)}"]
        elif t.on_missing == "keep":
            missing = []
        else:
            missing = ["    else: raise _Fail('no lookup entry for ' + _show(v))"]
        return [
            "if v is not None:",
            "    key = v if isinstance(v, str) else str(v)",
            f"    if key in {table}: v = {table}[key]",
            *missing,
        ]

    def _format(self, fmt: str, var: str, *, with_time: bool) -> str:
        """Expression formatting the date/datetime in ``var`` with a validated pattern."""
        if fmt == "iso":
            return f"{var}.isoformat()"
        allowed = "dmYHMS" if with_time else "dmY"
        template: list[str] = []
        attrs: list[str] = []
        i = 0
        while i < len(fmt):
            ch = fmt[i]
            if ch != "%":
                template.append(ch)
                i += 1
                continue
            nxt = fmt[i + 1] if i + 1 < len(fmt) else ""
            if nxt == "%":
                template.append("%%")
            elif nxt and nxt in allowed:
                spec, attr = _FAST_DIRECTIVES[nxt]
                template.append(spec)
                attrs.append(f"{var}.{attr}")
            else:
                return f"_strftime({var}, {self.const(fmt)})"
            i += 2
        values = "(" + ", ".join(attrs) + ("," if len(attrs) == 1 else "") + ")"
        return f"{self.const(''.join(template))} % {values}"

    def _date(self, t: DateFormat) -> list[str]:
        if t.parse == "iso":
            parse = "d = _date.fromisoformat(v[:10])"
        else:
            parse = f"d = _strptime(v, {self.const(t.parse)}).date()"
        mismatch = self.const(f" does not match date format {t.parse!r}")
        return [
            'if v is None or v == "": v = None',
            "else:",
            "    if isinstance(v, _datetime): d = v.date()",
            "    elif isinstance(v, _date): d = v",
            "    elif isinstance(v, str):",
            f"        try: {parse}",
            f"        except ValueError: raise _Fail(_show(v) + {mismatch}) from None",
            "    else: raise _Fail('expected a date, got ' + type(v).__name__)",
            f"    v = {self._format(t.format, 'd', with_time=False)}",
        ]

    def _datetime(self, t: DateTimeFormat) -> list[str]:
        if t.parse == "iso":
            parse = "dt = _datetime.fromisoformat(v)"
        else:
            parse = f"dt = _strptime(v, {self.const(t.parse)})"
        mismatch = self.const(f" does not match datetime format {t.parse!r}")
        lines = [
            'if v is None or v == "": v = None',
            "else:",
            "    if isinstance(v, _datetime): dt = v",
            "    elif isinstance(v, str):",
            f"        try: {parse}",
            f"        except ValueError: raise _Fail(_show(v) + {mismatch}) from None",
            "    else: raise _Fail('expected a datetime, got ' + type(v).__name__)",
            f"    if dt.tzinfo is None: dt = dt.replace(tzinfo={self.bind(ZoneInfo(t.assume_tz))})",
        ]
        if t.tz:
            lines.append(f"    dt = dt.astimezone({self.bind(ZoneInfo(t.tz))})")
        fmt = self._format(t.format, "dt", with_time=True)
        lines.append(f"    v = {fmt}")
        if t.parse != "iso" or fmt.startswith("_strftime("):
            return lines
        # ISO text in, fixed zones and template out: a pure function of the text, so texts seen
        # before are answered from a bounded memo (session times repeat across courses; the
        # zone arithmetic costs more than the lookup). Failures are not memoised.
        memo = self.bind({})
        return [
            lines[0],
            f"elif type(v) is str and (mv := {memo}.get(v)) is not None: v = mv",
            "else:",
            "    mk = v",
            *lines[2:],
            "    if type(mk) is str:",
            f"        if len({memo}) >= {self.const(_MEMO_MAX)}: {memo}.clear()",
            f"        {memo}[mk] = v",
        ]

    def _number(self, t: NumberFormat) -> list[str]:
        rounding = self.const(_ROUNDING[t.rounding])
        lines = [
            'if v is None or v == "": v = None',
            "else:",
            "    if isinstance(v, bool): raise _Fail('expected a number, got bool')",
            "    try: d = v if isinstance(v, _Decimal) else _Decimal(v if isinstance(v, str) "
            "else str(v))",
            "    except _InvalidOperation: raise _Fail(_show(v) + ' is not a number') from None",
            "    if not d.is_finite(): raise _Fail(_show(v) + ' is not a finite number')",
        ]
        if t.places is not None:
            quantum = self.bind(Decimal(1).scaleb(-t.places))
            too_large = self.const(f" is too large to round to {t.places} places")
            lines += [
                f"    try: d = d.quantize({quantum}, rounding={rounding})",
                "    except _InvalidOperation:",
                f"        raise _Fail(_show(v) + {too_large}) from None",
            ]
        if t.output == "decimal":
            lines.append("    v = d")
        elif t.output == "float":
            lines.append("    v = float(d)")
        elif t.output == "int":
            lines.append(f"    v = int(d.to_integral_value(rounding={rounding}))")
        else:
            spec = "',f'" if t.thousands_sep else "'f'"
            if t.decimal_sep == "." and not t.thousands_sep:
                lines.append(f"    v = format(d, {spec})")
            else:
                # Swap via a placeholder so "." -> "," and "," -> "." do not collide.
                lines.append(
                    f"    v = format(d, {spec}).replace(',', '\\0')"
                    f".replace('.', {self.const(t.decimal_sep)})"
                    f".replace('\\0', {self.const(t.thousands_sep)})"
                )
        return lines

    # ------------------------------------------------------------------ fields

    def fast_fields(self, defn: MappingDefinition) -> list[FieldMap]:
        """Plain top-level copies: read straight into the output dict, no error handling."""
        return [
            f
            for f in defn.fields
            if f.source is not None
            and "." not in f.source
            and "." not in f.target
            and not f.transform
            and not f.required
            and not f.omit_if_null
        ]

    def field(self, f: FieldMap, tables: Mapping[str, Mapping[str, Any]]) -> list[str]:
        target = self.const(f.target)
        if f.source is not None:
            value = self.getter(f.source)
        elif f.concat is not None:
            value = self.concat(f.concat)
        elif f.cond is not None:
            value = self.conditional(f.cond)
        else:
            value = self.const(f.const)
        body = [f"v = {value}"]
        for t in f.transform:
            body += self.transform(t, tables)
        *head, last = f.target.split(".")
        dest = "out" + "".join(f".setdefault({self.const(p)}, {{}})" for p in head)
        store = f"{dest}[{self.const(last)}] = v"
        if f.required:
            # Decided inside the try: comparing an odd value with "" may raise (signalling NaN).
            body.append(
                'missing = True if (v is None or v == "" or (isinstance(v, float) and _isnan(v)))'
                " else False"
            )
            done = [
                "if missing:",
                f"    errors.append(_Error({target}, 'required value is missing'))",
                "else:",
                f"    {store}",
            ]
        elif f.omit_if_null:
            done = [f"if v is not None: {store}"]
        else:
            done = [store]
        return [
            "try:",
            *("    " + line for line in body),
            "except _Fail as exc:",
            f"    errors.append(_Error({target}, str(exc)))",
            "except Exception as exc:",
            f'    errors.append(_Error({target}, f"{{type(exc).__name__}}: {{exc}}"))',
            "else:",
            *("    " + line for line in done),
        ]


def _indent(lines: list[str], depth: int = 1) -> Iterator[str]:
    pad = "    " * depth
    for line in lines:
        yield pad + line


def generate(defn: MappingDefinition) -> Generated:
    """The source of ``_apply``, ``_map`` and ``_matches`` for ``defn``, and their namespace."""
    w = _Writer()
    fast = w.fast_fields(defn)
    fast_ids = {id(f) for f in fast}
    if fast:
        items = ", ".join(f"{w.const(f.target)}: {w.getter(str(f.source))}" for f in fast)
        start = [f"out = {{{items}}}"]
    else:
        start = ["out = {}"]
    body: list[str] = ["errors = []"]
    for f in defn.fields:
        if id(f) not in fast_ids:
            body += w.field(f, defn.tables)
    finish = [
        "if errors: return _Result(None, errors, False, out)",
        "return _Result(out, errors)",
    ]
    fields = [*start, *body, *finish]
    if defn.filter is not None:
        match = w.condition(defn.filter)
        gate = [
            f"try: ok = {match}",
            "except _Fail as exc: return _Result(None, [_Error('filter', str(exc))])",
            "if not ok: return _Result(None, [], True)",
        ]
    else:
        match = "True"
        gate = []
    source = "\n\n".join(
        [
            *w.helpers,
            "\n".join(["def _map(rec, since):", *_indent(fields)]),
            "\n".join(["def _apply(rec, since):", *_indent([*gate, *fields])]),
            f"def _matches(rec, since):\n    return {match}",
        ]
    )
    return Generated(source + "\n", w.namespace)
