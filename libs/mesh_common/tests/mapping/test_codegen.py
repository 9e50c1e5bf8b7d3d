"""The code generator never turns definition text into code, and runs without builtins.

Hostile strings go into every place a definition can hold text -- constants, defaults, lookup
keys and values, separators, ellipses, comparison values, date formats, field names -- and the
generated source is parsed back: every name in it is one the generator made or one of its fixed
helpers, every attribute one of a fixed list, and the hostile text appears only as string
constants. Field names that validation would refuse are pushed through ``model_construct`` to
show the generator does not rely on validation for its safety. A canary file proves nothing ran.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
from mesh_common.mapping import compile_mapping, load_mapping
from mesh_common.mapping.codegen import BASE_NAMESPACE, generate
from mesh_common.mapping.interpreter import interpret_mapping
from mesh_common.mapping.model import FieldMap, MappingDefinition

LOCALS = {"rec", "since", "out", "errors", "v", "d", "dt", "key", "cur", "exc", "ok", "x"}
LOCALS |= {"marker", "missing", "mk", "mv"}
GENERATED = re.compile(r"_[gkp][0-9]+|_map|_apply|_matches")
ATTRIBUTES = {
    "get", "strip", "upper", "lower", "setdefault", "append", "join", "replace", "date",
    "year", "month", "day", "hour", "minute", "second", "tzinfo", "astimezone", "isoformat",
    "fromisoformat", "is_finite", "quantize", "to_integral_value", "__name__", "clear",
}  # fmt: skip


def payloads(canary: Path) -> list[str]:
    touch = f"__import__('pathlib').Path({str(canary)!r}).touch()"
    return [
        f"'); {touch}; ('",
        f'"); {touch}; ("',
        f"'''\n{touch}\n'''",
        f'"""\n{touch}\n"""',
        f"\\'); {touch} #",
        f"\n{touch}\n",
        f"\r{touch}\r",
        f"{{{touch}}}",  # f-string braces
        f"%s%(x)s{touch}",  # %-formatting
        "\x00\u2028\u2029\x0b\x0c",
        "\\N{DIGIT ONE}\\x41\\u0041",
    ]


def audit(source: str, allowed_strings: set[str]) -> set[str]:
    """Parse the generated source; fail on any name or attribute it should not have. Returns
    the string constants it holds."""
    tree = ast.parse(source)
    strings: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            assert node.id in BASE_NAMESPACE or node.id in LOCALS or GENERATED.fullmatch(node.id), (
                f"unexpected name {node.id!r}"
            )
        elif isinstance(node, ast.FunctionDef):
            assert GENERATED.fullmatch(node.name), node.name
            for arg in node.args.args:
                assert arg.arg in LOCALS, arg.arg
        elif isinstance(node, ast.Attribute):
            assert node.attr in ATTRIBUTES, f"unexpected attribute {node.attr!r}"
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            strings.add(node.value)
        elif isinstance(node, ast.Import | ast.ImportFrom | ast.Global | ast.Nonlocal):
            raise AssertionError(f"unexpected {type(node).__name__}")
        elif isinstance(node, ast.Lambda | ast.ClassDef | ast.AsyncFunctionDef):
            raise AssertionError(f"unexpected {type(node).__name__}")
    return strings


def hostile_definition(canary: Path) -> dict[str, Any]:
    evil = payloads(canary)
    table = {p: f"value {i} {p}" for i, p in enumerate(evil)}
    return {
        "name": "evil '\" \n name",
        "description": evil[1],
        "tables": {"t": table},
        "filter": {
            "op": "or",
            "of": [
                {"op": "ne", "field": "s", "value": evil[2]},
                {"op": "in", "field": "s", "value": evil},
                {"op": "contains", "field": "s", "value": evil[3]},
                {"op": "gt", "field": "s", "value": evil[4]},
            ],
        },
        "fields": [
            *({"target": f"c{i}", "const": p} for i, p in enumerate(evil)),
            {
                "target": "d",
                "source": "missing",
                "transform": [{"op": "default", "value": evil[5]}],
            },
            {"target": "l", "source": "s", "transform": [{"op": "lookup", "table": "t"}]},
            {
                "target": "m",
                "source": "s",
                "transform": [
                    {"op": "lookup", "table": table, "on_missing": "default", "default": evil[6]}
                ],
            },
            {"target": "j", "concat": {"parts": ["s", {"const": evil[7]}], "separator": evil[8]}},
            {
                "target": "tr",
                "source": "s",
                "transform": [{"op": "truncate", "length": 200, "ellipsis": evil[9]}],
            },
            {
                "target": "date",
                "source": "day",
                "transform": [{"op": "date", "format": "%d" + evil[0].replace("%", "")}],
            },
            {
                "target": "n",
                "source": "num",
                "transform": [
                    {"op": "number", "places": 2, "decimal_sep": "'", "thousands_sep": "\\"}
                ],
            },
            {
                "target": "when",
                "cond": {
                    "when": {"op": "eq", "field": "s", "value": evil[10]},
                    "then": {"const": evil[3]},
                    "else": {"const": evil[4]},
                },
            },
            # Unicode letters and hyphens are valid names (spreadsheet headers).
            {"target": "E-Mail.Straße", "source": "Straße"},
        ],
    }


def test_hostile_text_stays_data(tmp_path: Path) -> None:
    canary = tmp_path / "pwned"
    data = hostile_definition(canary)
    defn = load_mapping(data)
    compiled = compile_mapping(defn)
    evil = payloads(canary)
    strings = audit(compiled.source, set(evil))
    # Every hostile text that the code needs appears as one whole string constant.
    for p in (evil[2], evil[3], evil[4], evil[7], evil[8], evil[9], evil[10]):
        assert p in strings, p
    for i, p in enumerate(evil):
        assert f"c{i}" in strings and p in strings

    records: list[dict[str, Any]] = [
        {"s": p, "day": "2026-03-01", "num": "1234.5", "Straße": "Hauptstraße 1"} for p in evil
    ]
    records.append({"s": "other", "num": None})
    results = [compiled.apply(r) for r in records]
    assert [repr(r) for r in results] == [repr(interpret_mapping(defn).apply(r)) for r in records]
    first = results[0].record
    assert first is not None
    assert [first[f"c{i}"] for i in range(len(evil))] == evil
    assert first["d"] == evil[5]
    assert first["l"] == "value 0 " + evil[0]
    assert first["j"] == evil[0] + evil[8] + evil[7]
    assert first["n"] == "1\\234'50"
    assert first["E-Mail"] == {"Straße": "Hauptstraße 1"}
    last = results[-1]  # not in the table: "l" fails, "m" takes the default
    assert last.errors[0].field == "l" and last.partial is not None
    assert last.partial["m"] == evil[6]
    assert not canary.exists()


def test_field_names_that_validation_refuses_are_still_only_data(tmp_path: Path) -> None:
    """model_construct skips validation: even then a name cannot become code."""
    canary = tmp_path / "pwned"
    names = [p.replace(".", "·") for p in payloads(canary)]  # "." would nest the target
    fields = [
        FieldMap.model_construct(target=name, source=name, transform=[], required=True)
        for name in names
    ]
    fields += [
        FieldMap.model_construct(target="n" + name, source="x." + name, transform=[])
        for name in names
    ]
    defn = MappingDefinition.model_construct(name="x", tables={}, filter=None, fields=fields)
    compiled = compile_mapping(defn)
    audit(compiled.source, set(names))
    record: dict[str, Any] = {name: f"v{i}" for i, name in enumerate(names)}
    record["x"] = {name: i for i, name in enumerate(names)}
    result = compiled.apply(record)
    assert result.ok and result.record is not None
    assert [result.record[n] for n in names] == [f"v{i}" for i in range(len(names))]
    assert [result.record["n" + n] for n in names] == list(range(len(names)))
    assert not canary.exists()


def test_generated_functions_have_no_builtins() -> None:
    compiled = compile_mapping(
        load_mapping(
            {"name": "b", "fields": [{"target": "a", "source": "a", "transform": [{"op": "trim"}]}]}
        )
    )
    namespace = compiled._apply.__globals__
    assert namespace["__builtins__"] == {}
    assert set(namespace) <= set(BASE_NAMESPACE) | {"_apply", "_map", "_matches"} | {
        n for n in namespace if GENERATED.fullmatch(n)
    }
    assert "__import__" not in namespace and "eval" not in namespace and "open" not in namespace
    # strftime/strptime need an import inside C: they run through wrappers with real builtins.
    fmt = load_mapping(
        {
            "name": "f",
            "fields": [
                {
                    "target": "a",
                    "source": "a",
                    "transform": [{"op": "date", "parse": "%d/%m/%Y", "format": "%A %B"}],
                }
            ],
        }
    )
    assert compile_mapping(fmt).apply({"a": "01/03/2026"}).record == {"a": "Sunday March"}


def test_iso_datetime_transforms_answer_repeated_texts_from_a_bounded_memo(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A memo hit gives what the reference engine computes; bad texts are reported every time
    (never memoised); datetime objects are not memoised; the memo stays within its bound."""
    from mesh_common.mapping import codegen

    monkeypatch.setattr(codegen, "_MEMO_MAX", 8)
    defn = load_mapping(
        {
            "name": "m",
            "fields": [
                {
                    "target": "at",
                    "source": "at",
                    "transform": [{"op": "datetime", "assume_tz": "Europe/Berlin", "tz": "UTC"}],
                }
            ],
        }
    )
    compiled = compile_mapping(defn)
    assert "_strftime" not in compiled.source and ".clear()" in compiled.source
    reference = interpret_mapping(defn)
    namespace = compiled._map.__globals__
    memos = [v for k, v in namespace.items() if GENERATED.fullmatch(k) and type(v) is dict]
    assert memos, "the transform has a memo"
    texts = [f"2026-03-{d:02d}T10:00:00" for d in range(1, 21)] + ["2026-07-01T10:00:00"]
    for _ in range(2):
        for text in [*texts, "2026-03-29T02:30:00", "2026-02-30T10:00:00", "nope"]:
            got, want = compiled.map({"at": text}), reference.map({"at": text})
            assert (got.record, got.errors) == (want.record, want.errors), text
    assert compiled.map({"at": "2026-07-01T10:00:00"}).record == {"at": "2026-07-01T08:00:00+00:00"}
    bad = compiled.map({"at": "2026-02-30T10:00:00"})
    assert bad.record is None and "does not match" in bad.errors[0].message
    assert any(len(m) > 0 for m in memos) and all(len(m) <= 8 for m in memos)
    assert all("2026-02-30T10:00:00" not in m and "nope" not in m for m in memos)


def test_constants_that_are_not_plain_literals_are_bound_not_written() -> None:
    weird: list[Any] = [float("nan"), float("inf"), 10**40, [1, {"a": 2}], {"k": (1, 2)}]
    defn = load_mapping(
        {"name": "w", "fields": [{"target": f"f{i}", "const": w} for i, w in enumerate(weird)]}
    )
    generated = generate(defn)
    assert "nan" not in generated.source and "inf" not in generated.source
    assert str(10**40) not in generated.source
    record = compile_mapping(defn).apply({}).record
    assert record is not None
    assert repr(list(record.values())) == repr(weird)


def test_deeply_nested_conditions_compile() -> None:
    cond: dict[str, Any] = {"op": "eq", "field": "a", "value": 1}
    for i in range(150):  # as one expression: more than the parser's 200 nested parentheses
        cond = {"op": "not" if i % 3 == 0 else "and", "of": cond if i % 3 == 0 else [cond]}
    defn = load_mapping(
        {"name": "deep", "filter": cond, "fields": [{"target": "a", "source": "a"}]}
    )
    compiled = compile_mapping(defn)
    reference = interpret_mapping(defn)
    for rec in ({"a": 1}, {"a": 2}, {}):
        assert compiled.matches(rec) == reference.matches(rec)


@pytest.mark.parametrize("size", [1, 400])
def test_many_fields(size: int) -> None:
    defn = load_mapping(
        {
            "name": "wide",
            "fields": [
                {"target": f"t{i}", "source": f"s{i}", "transform": [{"op": "upper"}]}
                for i in range(size)
            ],
        }
    )
    result = compile_mapping(defn).apply({f"s{i}": f"v{i}" for i in range(size)})
    assert result.record == {f"t{i}": f"V{i}" for i in range(size)}
