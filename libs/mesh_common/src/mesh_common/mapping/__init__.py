"""Mapping definitions: declarative, versioned field maps from source records to target records.

A definition is data (store it as JSON, exchange it as JSON or YAML)::

    name: course-export-web
    version: 2
    tables: {status_label: {open: Anmeldung möglich, closed: geschlossen}}
    filter:                                   # and / or / not, comparisons, in, changed_since
      op: and
      of:
        - {op: eq, field: publish, value: true}
        - {op: changed_since, field: updated_at}   # vs. the marker passed to apply()/run()
    fields:
      - {target: id, source: number, required: true}
      - {target: title, source: title, transform: [{op: trim}, {op: truncate, length: 60}]}
      - target: dates.starts                  # nested target; dotted source into lists
        source: sessions.0.starts_at
        transform: [{op: datetime, tz: Europe/Berlin, format: "%d.%m.%Y, %H:%M Uhr"}]
      - {target: fee, source: fee,
         transform: [{op: number, places: 2, decimal_sep: ",", thousands_sep: "."}]}
      - {target: status, source: status, transform: [{op: lookup, table: status_label}]}
      - {target: place, concat: {parts: [location.name, location.city], separator: ", "}}
      - target: bookable
        cond: {when: {op: eq, field: status, value: open}, then: {const: true},
               else: {const: false}}

Use it as ``m = compile_mapping(load_yaml(text))`` once, then ``m.apply(row, since=marker)``
per record (or ``m.run(rows, since=marker)``); each result has ``record``, ``errors`` (a list of
:class:`MappingError`) and ``skipped``. ``check_sources(defn, schema)`` reports source paths the
records do not have (schema: a pydantic model or dotted paths). Public surface only here; the
language lives in :mod:`.model`, source checks in :mod:`.sources`.

``compile_mapping`` generates the Python source of one function per definition
(:mod:`.codegen`; ``m.source`` shows it), compiles it once and runs it in a namespace without
builtins. Text from a definition never becomes code: names are generated, values appear only as
``repr()`` literals checked to read back identically, everything else is bound by name.
:mod:`.interpreter` is the reference engine (closures, same API); a property test holds the two
to identical results and errors. This package must not do IO.
"""

from mesh_common.mapping.compiler import (
    CompiledMapping,
    MappingError,
    MappingResult,
    compile_mapping,
)
from mesh_common.mapping.model import (
    MappingDefinition,
    MappingValidationError,
    dump_json,
    dump_yaml,
    fingerprint,
    load_json,
    load_mapping,
    load_yaml,
    to_dict,
)
from mesh_common.mapping.sources import SourceSchema, check_sources, require_sources

__all__ = [
    "CompiledMapping",
    "MappingDefinition",
    "MappingError",
    "MappingResult",
    "MappingValidationError",
    "SourceSchema",
    "check_sources",
    "compile_mapping",
    "dump_json",
    "dump_yaml",
    "fingerprint",
    "load_json",
    "load_mapping",
    "load_yaml",
    "require_sources",
    "to_dict",
]
