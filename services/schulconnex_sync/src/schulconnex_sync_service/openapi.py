"""The official Schulconnex source-system API (``spec/openapi/api-qs.yaml``) as an openapi-core
``OpenAPI`` object, and request/response validation against it.

Both sides use it: the fake Schulconnex server validates every request it receives and every
response it sends, and the client can validate what it sends before sending it. The YAML files
are verbatim copies (CC BY-ND 4.0) and are never edited; the fix-ups below are applied to the
parsed data **in memory**, each for a stated reason (also listed in docs/schulconnex-sync.md,
"Spec quirks"):

1. ``https&zwj;://`` → ``https://``: upstream inserts an HTML entity into every URL to stop the
   documentation site from auto-linking; as written the URLs are invalid.
2. ``Person-basis.name.required`` lists ``vertrauensstufe``, which is not a property of ``name``
   but of the person (``docs/datenmodell-qs/person.md``: ``vertrauensstufe`` is a person
   attribute, ``name.md`` has no such field). As written, every person would need a
   ``name.vertrauensstufe``; we drop it from ``name.required``.
3. ``oneOf`` whose alternatives are all objects of optional properties only (``laufzeit``,
   ``faecher`` items of a group): every object matches every alternative, so ``oneOf`` (exactly
   one) can never pass, not even for the upstream examples (``v1.6`` ``gruppendatensatz.md``:
   ``"laufzeit": {"von": ..., "bis": ...}``), and ``anyOf`` would accept anything at all. They
   become one object schema with the union of the alternatives' properties, each keeping its
   own type, format and code list, which is what the data model pages say (``laufzeit.md``: von,
   vonlernperiode, bis, bislernperiode, each 0..1; ``fach.md``: kennung, bezeichnung). The rule
   "only one start and one end" (subcode 400/16) is checked by the fake server itself.

The multi-file ``$ref``s are inlined while loading (the specification has no recursive
references), so the result is one self-contained document. This module must not do HTTP.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import yaml
from openapi_core import OpenAPI
from openapi_core.datatypes import RequestParameters
from werkzeug.datastructures import Headers, ImmutableMultiDict

SPEC_DIR = Path(str(resources.files("schulconnex_sync_service") / "spec"))
OPENAPI_DIR = SPEC_DIR / "openapi"
ENTRY = "api-qs.yaml"

#: The server URL of the specification (``servers[0]``). Requests are validated as if they were
#: sent to it: our base URL is mapped onto it, so any host works.
SPEC_HOST = "https://schulconnex.test"
_UNSET: Any = object()
SPEC_BASE_PATH = "/v1"

FIXUPS: tuple[str, ...] = (
    "https&zwj;:// -> https:// in every string",
    "Person-basis: 'vertrauensstufe' removed from name.required (a person attribute)",
    "oneOf of all-optional object alternatives (laufzeit, faecher items) -> one object with "
    "the union of their properties",
)


def _load(name: str, cache: dict[str, Any]) -> Any:
    if name not in cache:
        text = (OPENAPI_DIR / name).read_text(encoding="utf-8")
        cache[name] = yaml.safe_load(text.replace("https&zwj;://", "https://"))
    return cache[name]


def _inline(node: Any, cache: dict[str, Any], stack: tuple[str, ...] = ()) -> Any:
    """Replace every ``{"$ref": "./file.yaml"}`` by the (inlined) content of that file."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and not ref.startswith("#"):
            name = ref.removeprefix("./")
            if name in stack:
                raise ValueError(f"recursive $ref {' -> '.join((*stack, name))}")
            target = copy.deepcopy(_load(name, cache))
            # Siblings of $ref (OpenAPI 3.0 ignores them; upstream uses e.g. "readOnly") are kept
            # where they do not clash, which is what the upstream authors evidently intended.
            merged = _inline(target, cache, (*stack, name))
            if isinstance(merged, dict):
                for key, value in node.items():
                    if key != "$ref" and key not in merged:
                        merged[key] = value
            return merged
        return {k: _inline(v, cache, stack) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v, cache, stack) for v in node]
    return node


def _all_optional_objects(alternatives: list[Any]) -> bool:
    return all(
        isinstance(a, dict) and a.get("type") == "object" and not a.get("required")
        for a in alternatives
    )


def _union(alternatives: list[Any]) -> dict[str, Any] | None:
    """One object schema with every alternative's properties; None if two alternatives define
    the same property differently (then there is no faithful union)."""
    properties: dict[str, Any] = {}
    for alt in alternatives:
        for name, schema in (alt.get("properties") or {}).items():
            if name in properties and properties[name] != schema:
                return None
            properties[name] = schema
    return {"type": "object", "properties": properties}


def _fix(node: Any) -> Any:
    if isinstance(node, dict):
        alternatives = node.get("oneOf")
        if isinstance(alternatives, list) and _all_optional_objects(alternatives):
            union = _union(alternatives)
            if union is not None:
                del node["oneOf"]
                node.update(union)
        name = node.get("properties", {}).get("name") if node.get("type") == "object" else None
        if (
            isinstance(name, dict)
            and "vertrauensstufe" in (name.get("required") or [])
            and "vertrauensstufe" not in name.get("properties", {})
            and "vertrauensstufe" in node.get("properties", {})
        ):
            name["required"] = [r for r in name["required"] if r != "vertrauensstufe"]
        for value in node.values():
            _fix(value)
    elif isinstance(node, list):
        for value in node:
            _fix(value)
    return node


@functools.cache
def spec_dict() -> dict[str, Any]:
    """The source-system API as one dict, ``$ref``s inlined and the fix-ups applied."""
    cache: dict[str, Any] = {}
    document = _inline(copy.deepcopy(_load(ENTRY, cache)), cache)
    return _fix(document)  # type: ignore[no-any-return]


@functools.cache
def raw_spec_dict() -> dict[str, Any]:
    """The same, inlined but **without** fix-ups 2 and 3 (tests show why they are needed)."""
    cache: dict[str, Any] = {}
    return _inline(copy.deepcopy(_load(ENTRY, cache)), cache)  # type: ignore[no-any-return]


@functools.cache
def openapi() -> OpenAPI:
    return OpenAPI.from_dict(spec_dict())


# --------------------------------------------------------------------------- openapi-core adapters


class ValidationRequest:
    """What openapi-core validates: one HTTP request, relative to the API's base path."""

    def __init__(
        self,
        method: str,
        path: str,
        *,
        query: str | Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        content_type: str = "application/json",
    ) -> None:
        self.host_url = SPEC_HOST
        self.method = method.lower()
        self.path = SPEC_BASE_PATH + path
        pairs = parse_qsl(query, keep_blank_values=True) if isinstance(query, str) else query or {}
        args = ImmutableMultiDict(pairs)
        self.parameters = RequestParameters(
            query=args,
            header=Headers(dict(headers or {})),
            cookie=ImmutableMultiDict(),
        )
        self.body = body if body else None
        self.content_type = content_type if body else ""


class ValidationResponse:
    def __init__(
        self,
        status_code: int,
        body: bytes | None,
        *,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status_code = status_code
        self.data = body if body else None
        self.content_type = content_type if body else ""
        self.headers = Headers(dict(headers or {}))


@dataclass(frozen=True)
class Violation:
    """One failed validation: where (request/response), which operation, and why."""

    kind: str  # "request" | "response"
    method: str
    path: str
    status: int | None
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "message": self.message,
        }


def _explain(exc: Exception) -> str:
    parts = [f"{type(exc).__name__}: {exc}"]
    for inner in getattr(exc, "schema_errors", None) or []:
        where = "/".join(str(p) for p in getattr(inner, "absolute_path", []) or [])
        parts.append(f"{where or '<root>'}: {getattr(inner, 'message', inner)}")
    cause = exc.__cause__ or exc.__context__
    if cause is not None and cause is not exc:
        for inner in getattr(cause, "schema_errors", None) or []:
            where = "/".join(str(p) for p in getattr(inner, "absolute_path", []) or [])
            parts.append(f"{where or '<root>'}: {getattr(inner, 'message', inner)}")
        if not getattr(cause, "schema_errors", None):
            parts.append(f"{type(cause).__name__}: {cause}")
    return "; ".join(parts)[:2000]


def check_request(request: ValidationRequest) -> str | None:
    """None when the request is valid, else an explanation. Security is not checked here
    (openapi-core does not verify OAuth2 tokens; the fake server does that itself)."""
    try:
        openapi().validate_request(request)
    except Exception as exc:
        text = _explain(exc)
        if "SecurityNotFound" in text or "security" in type(exc).__name__.lower():
            return None
        return text
    return None


# --------------------------------------------------------------------------- compiled validation

#: A compiled verdict: True when the value is valid.
Check = Callable[[Any], bool]


class _Unsupported(Exception):
    """A schema keyword the fast checks do not implement: that schema keeps openapi-core."""


def _always(value: Any) -> bool:
    return True


def _never(value: Any) -> bool:
    return False


class FastChecks:
    """The schemas of this specification as plain Python predicates, with the semantics of
    openapi-schema-validator's OAS 3.0 validators (``OAS30WriteValidator`` for requests,
    ``OAS30ReadValidator`` for responses) on jsonschema, which openapi-core uses.

    jsonschema walks a schema for every value, building a validator object per subschema on
    the way (``evolve``/``descend``): most of the fake server's CPU per request. The keywords
    this specification uses (``type``, ``properties``, ``required``, ``items``, ``allOf``,
    ``enum``, ``maxLength``, ``pattern``, ``format``, ``readOnly``/``writeOnly``, plus
    annotations) are compiled once into closures, each mirroring the keyword's code:

    * ``type``: the OAS 3.0 type checker (``None`` is never of a type: no ``nullable`` here);
    * ``required``: a missing property whose schema in the same object is ``readOnly`` (write)
      / ``writeOnly`` (read) is not required;
    * ``readOnly`` (write) / ``writeOnly`` (read): any value is an error;
    * ``format``: the very format checker of openapi-core's validator (``conforms``);
    * ``pattern``: ``re.search`` (or the ECMA regex openapi-schema-validator would use).

    Any other keyword raises :class:`_Unsupported` while compiling, and that schema keeps
    openapi-core's validator: nothing is skipped silently. A ``False`` verdict is always
    explained by openapi-core (the message and the 400 subcode stay openapi-core's), and a
    disagreement is reported, so the fast path can only ever be as strict as openapi-core.
    """

    ANNOTATIONS = frozenset({"description", "example", "title", "deprecated", "externalDocs"})
    KEYWORDS = frozenset(
        {
            "type",
            "properties",
            "required",
            "items",
            "allOf",
            "enum",
            "maxLength",
            "pattern",
            "format",
            "readOnly",
            "writeOnly",
        }
    )

    def __init__(self, *, write: bool, type_checker: Any, format_checker: Any) -> None:
        self.write = write
        self.types = type_checker
        self.formats = format_checker

    def compile(self, schema: Any) -> Check:
        if not isinstance(schema, Mapping):
            raise _Unsupported(f"schema of type {type(schema).__name__}")
        unknown = set(schema) - self.KEYWORDS - self.ANNOTATIONS
        if unknown:
            raise _Unsupported(", ".join(sorted(unknown)))
        checks: list[Check] = []
        forbidden = "readOnly" if self.write else "writeOnly"
        if schema.get(forbidden) is True:
            return _never  # "Tried to write read-only property" / "read write-only"
        if "type" in schema:
            checks.append(self._type(schema["type"]))
        if "enum" in schema:
            checks.append(self._enum(list(schema["enum"])))
        if "maxLength" in schema:
            limit = int(schema["maxLength"])
            checks.append(lambda v: not isinstance(v, str) or len(v) <= limit)
        if "pattern" in schema:
            checks.append(self._pattern(str(schema["pattern"])))
        if "format" in schema:
            fmt, conforms = str(schema["format"]), self.formats.conforms
            checks.append(lambda v: v is None or bool(conforms(v, fmt)))
        if "properties" in schema or "required" in schema:
            checks.append(self._object(schema))
        if "items" in schema:
            item = self.compile(schema["items"])
            checks.append(lambda v: not isinstance(v, list) or all(item(x) for x in v))
        if "allOf" in schema:
            parts = [self.compile(sub) for sub in schema["allOf"]]
            checks.append(lambda v: all(part(v) for part in parts))
        if not checks:
            return _always
        if len(checks) == 1:
            return checks[0]
        first, *rest = checks
        return lambda v: first(v) and all(c(v) for c in rest)

    def _type(self, name: Any) -> Check:
        if not isinstance(name, str):
            raise _Unsupported(f"type {name!r}")
        if name == "string":
            return lambda v: isinstance(v, str)
        if name == "object":
            return lambda v: isinstance(v, dict)
        if name == "array":
            return lambda v: isinstance(v, list)
        is_type = self.types.is_type
        return lambda v: v is not None and bool(is_type(v, name))

    @staticmethod
    def _enum(values: list[Any]) -> Check:
        if all(isinstance(x, str) for x in values):
            allowed = frozenset(values)
            return lambda v: isinstance(v, str) and v in allowed
        from jsonschema._utils import equal

        return lambda v: any(equal(v, x) for x in values)

    @staticmethod
    def _pattern(pattern: str) -> Check:
        from openapi_schema_validator._regex import has_ecma_regex

        if has_ecma_regex():
            from openapi_schema_validator._regex import search as ecma_search

            # An unusable pattern is an error there too (ECMARegexSyntaxError): refuse.
            def ecma(v: Any) -> bool:
                try:
                    return not isinstance(v, str) or bool(ecma_search(pattern, v))
                except ValueError:
                    return False

            return ecma
        import re

        search = re.compile(pattern).search
        return lambda v: not isinstance(v, str) or search(v) is not None

    def _object(self, schema: Mapping[str, Any]) -> Check:
        properties = schema.get("properties") or {}
        flag = "readOnly" if self.write else "writeOnly"
        required = tuple(
            name
            for name in schema.get("required") or ()
            if not (isinstance(properties.get(name), Mapping) and properties[name].get(flag))
        )
        compiled = {name: self.compile(sub) for name, sub in properties.items()}

        def check(value: Any) -> bool:
            if not isinstance(value, dict):
                return True
            for name in required:
                if name not in value:
                    return False
            for name, item in value.items():
                sub = compiled.get(name)
                if sub is not None and not sub(item):
                    return False
            return True

        return check


def _fast(factory: Any, spec: Any, schema_path: Any, validator: Any, write: bool) -> Check | None:
    """Fast checks for one schema, or None when it uses a keyword they do not implement."""
    inner = validator.validator  # the jsonschema validator openapi-core built for it
    checks = FastChecks(
        write=write, type_checker=inner.TYPE_CHECKER, format_checker=inner.format_checker
    )
    try:
        return checks.compile(_plain(schema_path))
    except _Unsupported:
        return None


def _plain(path: Any) -> Any:
    """The schema at a jsonschema-path location as plain data (the document is inlined)."""
    with path.open() as content:
        return copy.deepcopy(content)


@dataclass
class _Param:
    name: str
    location: str
    required: bool
    validator: Any
    fast: Check | None = None


@dataclass
class _Operation:
    params: list[_Param]
    body_required: bool
    body: Any  # openapi-core SchemaValidator of the JSON request body, or None
    responses: dict[str, Any]  # status -> SchemaValidator of the JSON content, or None
    fast_body: Check | None = None
    fast_responses: dict[str, Check | None] = field(default_factory=dict)


class CompiledValidator:
    """Request and response validation against the same document with openapi-core's own OAS
    3.0 schema validators (``OAS30WriteValidator`` for requests, ``OAS30ReadValidator`` for
    responses: readOnly/writeOnly, nullable, formats, code lists), built **once per
    operation** instead of once per request.

    openapi-core's ``validate_request`` walks the document through jsonschema-path for every
    request (finding the path, the operation, the media type, the schema), which costs several
    milliseconds each; the fake server validates tens of thousands of requests in a benchmark.
    This class does the same checks (required body, media type, JSON, schema; required and
    typed parameters; declared response status and content) with the walking done once. The
    fake can run both and record any disagreement (``validation="both"``, what the tests do),
    so it can never silently accept what openapi-core would refuse.

    The schemas themselves are checked by :class:`FastChecks` first (openapi-core's validator
    explains a refusal, so messages are unchanged); a value the fast checks refuse but
    openapi-core accepts is recorded in :attr:`disagreements` (the fake turns each into a
    violation) and accepted, openapi-core being the reference.
    """

    def __init__(self, api: OpenAPI | None = None) -> None:
        from openapi_core.validation.schemas import (
            oas30_read_schema_validators_factory,
            oas30_write_schema_validators_factory,
        )

        self._write = oas30_write_schema_validators_factory
        self._read = oas30_read_schema_validators_factory
        self.spec = (api or openapi()).spec
        self._ops: dict[tuple[str, str], _Operation] = {}
        self.disagreements: list[str] = []

    def _operation(self, method: str, pattern: str) -> _Operation:
        key = (method.lower(), pattern)
        op = self._ops.get(key)
        if op is None:
            op = self._ops[key] = self._compile(*key)
        return op

    def _compile(self, method: str, pattern: str) -> _Operation:
        path = self.spec / "paths" / pattern
        operation = path / method
        params: list[_Param] = []
        for owner in (path, operation):
            if "parameters" not in owner:
                continue
            for param in owner / "parameters":
                schema = param / "schema"
                validator = self._write.create(self.spec, schema)
                params.append(
                    _Param(
                        name=(param / "name").read_str(),
                        location=(param / "in").read_str(),
                        required=(param / "required").read_bool(default=False),
                        validator=validator,
                        fast=_fast(self._write, self.spec, schema, validator, True),
                    )
                )
        body_required, body, fast_body = False, None, None
        if "requestBody" in operation:
            request_body = operation / "requestBody"
            body_required = (request_body / "required").read_bool(default=False)
            schema = request_body / "content" / "application/json" / "schema"
            body = self._write.create(self.spec, schema)
            fast_body = _fast(self._write, self.spec, schema, body, True)
        responses: dict[str, Any] = {}
        fast_responses: dict[str, Check | None] = {}
        for status in (operation / "responses").keys():
            response = operation / "responses" / status
            content = response / "content" if "content" in response else None
            if content is not None and "application/json" in content:
                schema = content / "application/json" / "schema"
                validator = self._read.create(self.spec, schema)
                responses[str(status)] = validator
                fast_responses[str(status)] = _fast(self._read, self.spec, schema, validator, False)
            else:
                responses[str(status)] = None
        return _Operation(params, body_required, body, responses, fast_body, fast_responses)

    def _checked(self, fast: Check | None, validator: Any, value: Any, where: str) -> None:
        """Raise openapi-core's error if ``value`` is invalid; the fast checks decide first."""
        if fast is not None:
            if fast(value):
                return
            try:
                validator.validate(value)
            except Exception:
                raise
            self.disagreements.append(
                f"{where}: the fast checks refused a value openapi-core accepts"
            )
            return
        validator.validate(value)

    @staticmethod
    def _schema_error(where: str, exc: Exception) -> str:
        return f"{where} validation error: {_explain(exc)}"

    def request(
        self,
        method: str,
        pattern: str,
        *,
        path_params: Mapping[str, str],
        query: Mapping[str, str],
        body: bytes | None,
        content_type: str,
        value: Any = _UNSET,
    ) -> str | None:
        """None when valid, else openapi-core's explanation. ``value``: the body already
        parsed (saves parsing it twice)."""
        op = self._operation(method, pattern)
        for param in op.params:
            source = path_params if param.location == "path" else query
            if param.location not in ("path", "query"):
                continue  # this specification has path and query parameters only
            if param.name not in source:
                if param.required:
                    return f"MissingRequiredParameter: {param.location} parameter {param.name}"
                continue
            try:
                self._checked(param.fast, param.validator, source[param.name], param.name)
            except Exception as exc:
                return self._schema_error(f"Parameter {param.name}", exc)
        if not body:
            return (
                "MissingRequiredRequestBody: Missing required request body"
                if op.body_required
                else None
            )
        if op.body is None:
            return None  # a body the operation does not take is ignored, like openapi-core
        if not content_type.lower().startswith("application/json"):
            return f"MediaTypeNotFound: Content for {content_type!r} not found"
        if value is _UNSET:
            try:
                value = json.loads(body)
            except ValueError:
                return (
                    "RequestBodyValidationError: Failed to deserialize value with "
                    "application/json mimetype"
                )
        try:
            self._checked(op.fast_body, op.body, value, f"{method.upper()} {pattern} body")
        except Exception as exc:
            return self._schema_error("InvalidRequestBody: Request body", exc)
        return None

    def response(
        self,
        method: str,
        pattern: str,
        status: int,
        body: bytes | None,
        payload: Any = _UNSET,
    ) -> str | None:
        """None when valid; ``payload``: what ``body`` encodes (saves parsing it again)."""
        op = self._operation(method, pattern)
        key = str(status)
        if key not in op.responses:
            key = "default" if "default" in op.responses else key
        if key not in op.responses:
            return f"ResponseNotFound: Unknown response http status: {status}"
        validator = op.responses[key]
        if validator is None:
            return None
        if not body:
            return "MissingData: missing response data"
        try:
            value = json.loads(body) if payload is _UNSET else payload
        except ValueError:
            return "Failed to deserialize the response body"
        try:
            self._checked(
                op.fast_responses.get(key), validator, value, f"{method.upper()} {pattern} {key}"
            )
        except Exception as exc:
            return self._schema_error("InvalidData: Response data", exc)
        return None


def dumps(value: Any) -> bytes:
    """Compact JSON as both sides send it (UTF-8, no ASCII escaping)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
