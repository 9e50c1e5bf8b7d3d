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
from collections.abc import Mapping
from dataclasses import dataclass
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


@dataclass
class _Param:
    name: str
    location: str
    required: bool
    validator: Any


@dataclass
class _Operation:
    params: list[_Param]
    body_required: bool
    body: Any  # openapi-core SchemaValidator of the JSON request body, or None
    responses: dict[str, Any]  # status -> SchemaValidator of the JSON content, or None


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
                params.append(
                    _Param(
                        name=(param / "name").read_str(),
                        location=(param / "in").read_str(),
                        required=(param / "required").read_bool(default=False),
                        validator=self._write.create(self.spec, schema),
                    )
                )
        body_required, body = False, None
        if "requestBody" in operation:
            request_body = operation / "requestBody"
            body_required = (request_body / "required").read_bool(default=False)
            body = self._write.create(
                self.spec, request_body / "content" / "application/json" / "schema"
            )
        responses: dict[str, Any] = {}
        for status in (operation / "responses").keys():
            response = operation / "responses" / status
            content = response / "content" if "content" in response else None
            if content is not None and "application/json" in content:
                responses[str(status)] = self._read.create(
                    self.spec, content / "application/json" / "schema"
                )
            else:
                responses[str(status)] = None
        return _Operation(params, body_required, body, responses)

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
    ) -> str | None:
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
                param.validator.validate(source[param.name])
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
        try:
            value = json.loads(body)
        except ValueError:
            return (
                "RequestBodyValidationError: Failed to deserialize value with "
                "application/json mimetype"
            )
        try:
            op.body.validate(value)
        except Exception as exc:
            return self._schema_error("InvalidRequestBody: Request body", exc)
        return None

    def response(self, method: str, pattern: str, status: int, body: bytes | None) -> str | None:
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
            validator.validate(json.loads(body))
        except ValueError:
            return "Failed to deserialize the response body"
        except Exception as exc:
            return self._schema_error("InvalidData: Response data", exc)
        return None


def dumps(value: Any) -> bytes:
    """Compact JSON as both sides send it (UTF-8, no ASCII escaping)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
