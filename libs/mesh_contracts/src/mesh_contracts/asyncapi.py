"""The AsyncAPI 3.0 document of edumesh's messages, generated from the contracts.

:func:`build_document` describes edumesh as one application, from its own point of view, for
teams that integrate over AMQP (the website's backend) without reading code: every event it
**sends**, every command and RPC request it **receives**, and the reply of each RPC. There is one
channel per message type, addressed by the routing key, on the topic exchanges ``mesh.events``,
``mesh.commands`` and ``mesh.rpc``. Payload schemas come from the pydantic models (what edumesh
accepts for messages it receives, what it emits for those it sends), hoisted into
``components/schemas`` with pydantic's own collision-free names; the headers are those of the bus
envelope (``mesh_common.bus.envelope``).

Pure: no IO, and no import of ``mesh_common`` (this package depends only on pydantic). The
exchange and header names are mirrored below; the gateway, which serves the document at
``/asyncapi.json``, passes the real exchange names in, and its tests keep the mirrors in step.
"""

from __future__ import annotations

import copy
import inspect
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Literal
from urllib.parse import quote

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from mesh_contracts.base import Command, Contract, Event, RpcRequest, all_contracts

ASYNCAPI_VERSION = "3.0.0"
AMQP_BINDING_VERSION = "0.3.0"
CONTENT_TYPE = "application/json"

Kind = Literal["event", "command", "rpc"]

# Mirrors of mesh_common.bus.topology (without a prefix).
EVENTS_EXCHANGE = "mesh.events"
COMMANDS_EXCHANGE = "mesh.commands"
RPC_EXCHANGE = "mesh.rpc"
DEFAULT_EXCHANGES: Mapping[Kind, str] = {
    "event": EVENTS_EXCHANGE,
    "command": COMMANDS_EXCHANGE,
    "rpc": RPC_EXCHANGE,
}

# Mirrors of the H_* header names of mesh_common.bus.envelope (AMQP header table).
H_KIND = "x-mesh-kind"
H_REQUEST_ID = "x-request-id"
H_ACTOR = "x-actor"
H_DEADLINE = "x-deadline"
H_CAUSATION = "x-causation-id"
H_ATTEMPT = "x-mesh-attempt"
H_ERROR = "x-mesh-error"
H_ERROR_TYPE = "x-mesh-error-type"
H_FAILED_QUEUE = "x-mesh-failed-queue"
H_FAILED_AT = "x-mesh-failed-at"
H_REPLAYED = "x-mesh-replayed"
H_STATUS = "x-mesh-status"
TRACE_HEADERS = ("traceparent", "tracestate")

# The headers schemas describe the AMQP basic properties too (under their AMQP names, marked
# ``x-amqp: property``), so runtime expressions can point at them.
REPLY_TO_LOCATION = "$message.header#/reply_to"
CORRELATION_ID_LOCATION = "$message.header#/correlation_id"

SCHEMA_REF = "#/components/schemas/{model}"
HEADERS_SCHEMA = "mesh.headers.{kind}"
RPC_ERROR_SCHEMA = "mesh.RpcError"
RPC_ERROR_MESSAGE = "mesh.rpc_error"
CORRELATION_ID = "rpc"
SCHEME_LOGIN = "user_password"
SCHEME_X509 = "x509"

INTRO = """\
Messages of **edumesh** on RabbitMQ (AMQP 0-9-1), generated from its message contracts.
Operations are written from edumesh's point of view: it *sends* events and *receives* commands
and RPC requests.

- **Events** (`<service>.<what_happened>.v<N>`): published by edumesh to the topic exchange
  `{events}` with the message type as routing key. To receive one, declare your own durable
  queue, bind it to `{events}` with that routing key (one binding per event type); every
  bound queue gets its own copy. Delivery is at least once: deduplicate by `message_id`.
- **Commands** (`<service>.<do_something>.v<N>`): publish to `{commands}` with the message
  type as routing key, persistent (`delivery_mode` 2), `mandatory`, with publisher confirms,
  `content_type` `application/json` and a unique `message_id` (edumesh deduplicates by it).
  A command that does not validate is dead-lettered at once; one whose handling fails is
  retried with back-off and then dead-lettered, where operators can replay it.
- **RPC** (`<service>.<name>`): publish to `{rpc}` with the message type as routing key,
  `reply_to` set to your own exclusive reply queue, a unique `correlation_id`, and
  `expiration` (milliseconds) set to how long you wait; optionally the absolute deadline in
  the `x-deadline` header (UNIX epoch milliseconds). edumesh always answers on `reply_to`
  through the default exchange, with the same `correlation_id`: the reply
  (`x-mesh-status: ok`) or an error envelope (`x-mesh-status: error`) whose `code` is stable
  (e.g. `invalid-request`, `not-found`, `conflict`, `deadline-exceeded`, `internal-error`).
  A request nobody serves is returned by the broker (`mandatory`), not answered.

Bodies are JSON (UTF-8), never anything else. Unknown fields are ignored, so fields may be added
to a message without a new version; a breaking change gets a new name or version.
"""


def kind_of(cls: type[Contract]) -> Kind:
    """``event``, ``command`` or ``rpc`` for a concrete contract class."""
    if issubclass(cls, Event):
        return "event"
    if issubclass(cls, Command):
        return "command"
    if issubclass(cls, RpcRequest):
        return "rpc"
    raise TypeError(f"{cls.__qualname__} is neither an Event, a Command nor an RpcRequest")


def reply_model_of(cls: type[Contract]) -> type[BaseModel] | None:
    """The reply model an RPC request declares (``__response_model__``), if any."""
    reply = getattr(cls, "__response_model__", None)
    return reply if isinstance(reply, type) and issubclass(reply, BaseModel) else None


def owner_of(cls: type[Contract]) -> str:
    """The owning service: the stem of the contract's module (``booking``, ...)."""
    return cls.__module__.rsplit(".", 1)[-1]


def amqp_servers(
    *, production_host: str, local_host: str = "127.0.0.1:5672", vhost: str = "/"
) -> dict[str, dict[str, Any]]:
    """The usual two servers: the production broker over AMQPS and a local one over AMQP."""
    pathname = "/" + quote(vhost, safe="")
    security = "#/components/securitySchemes/"
    return {
        "production": {
            "host": production_host,
            "pathname": pathname,
            "protocol": "amqps",
            "protocolVersion": "0-9-1",
            "title": "Production broker (AMQP over TLS)",
            "description": (
                "TLS 1.2 or newer. Verify the broker's certificate and host name. Present the "
                "client certificate issued for your system (the broker requires one unless its "
                "operators turned mutual TLS off), then log in with your user name and password. "
                f"Virtual host `{vhost}`."
            ),
            "security": [{"$ref": security + SCHEME_X509}, {"$ref": security + SCHEME_LOGIN}],
        },
        "local": {
            "host": local_host,
            "pathname": pathname,
            "protocol": "amqp",
            "protocolVersion": "0-9-1",
            "title": "Local broker (plain AMQP)",
            "description": f"A development broker without TLS. Virtual host `{vhost}`.",
            "security": [{"$ref": security + SCHEME_LOGIN}],
        },
    }


def build_document(
    *,
    title: str,
    version: str,
    servers: Mapping[str, Mapping[str, Any]],
    contracts: Sequence[type[Contract]] | None = None,
    exchanges: Mapping[Kind, str] | None = None,
    vhost: str = "/",
    description: str | None = None,
) -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document (a JSON-able dict) of ``contracts`` (default: every
    contract of this package). ``servers`` are AsyncAPI server objects (see
    :func:`amqp_servers`); ``exchanges`` the exchange name per kind (a bus prefix applied);
    ``vhost`` goes into the channel bindings."""
    found = all_contracts() if contracts is None else list(contracts)
    ordered = sorted(found, key=lambda c: c.__message_type__)
    types = [c.__message_type__ for c in ordered]
    duplicates = sorted({t for t in types if types.count(t) > 1})
    if duplicates:
        raise ValueError(f"message types defined twice: {', '.join(duplicates)}")
    names = {**DEFAULT_EXCHANGES, **(exchanges or {})}

    schemas, payloads = _schemas(ordered)
    builder = _Builder(names=names, vhost=vhost, payloads=payloads)
    for cls in ordered:
        builder.add(cls)

    services = sorted({owner_of(c) for c in ordered})
    info: dict[str, Any] = {
        "title": title,
        "version": version,
        "description": (description + "\n\n" if description else "")
        + INTRO.format(events=names["event"], commands=names["command"], rpc=names["rpc"]),
    }
    if services:
        info["tags"] = [_service_tag(name, ordered) for name in services]
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": info,
        "servers": copy.deepcopy({name: dict(server) for name, server in servers.items()}),
        "defaultContentType": CONTENT_TYPE,
        "channels": builder.channels,
        "operations": builder.operations,
        "components": {
            "schemas": schemas,
            "messages": builder.messages,
            "securitySchemes": {
                SCHEME_LOGIN: {
                    "type": "userPassword",
                    "description": "AMQP user name and password (SASL PLAIN).",
                },
                SCHEME_X509: {
                    "type": "X509",
                    "description": "TLS client certificate (mutual TLS).",
                },
            },
            "correlationIds": {
                CORRELATION_ID: {
                    "description": (
                        "The AMQP `correlation_id` property: set by the caller on the request, "
                        "echoed unchanged on the reply."
                    ),
                    "location": CORRELATION_ID_LOCATION,
                }
            },
        },
    }


# ------------------------------------------------------------------------------------ builder


def _mode(kind: Kind) -> JsonSchemaMode:
    # What edumesh emits (events) vs. what it accepts (commands, RPC requests).
    return "serialization" if kind == "event" else "validation"


def _schemas(
    contracts: Sequence[type[Contract]],
) -> tuple[dict[str, Any], dict[tuple[type[BaseModel], JsonSchemaMode], dict[str, Any]]]:
    """Every payload schema in one namespace (pydantic resolves name clashes, and names the
    input and output forms of a model apart when they differ), plus the mesh's own schemas."""
    wanted: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {}
    for cls in contracts:
        wanted[(cls, _mode(kind_of(cls)))] = None
        reply = reply_model_of(cls)
        if reply is not None:
            wanted[(reply, "serialization")] = None
    refs, top = models_json_schema(list(wanted), ref_template=SCHEMA_REF)
    schemas: dict[str, Any] = {
        name: _to_asyncapi_schema(schema) for name, schema in top.get("$defs", {}).items()
    }
    own = {HEADERS_SCHEMA.format(kind=k): _headers_schema(k) for k in _HEADER_KINDS}
    own[RPC_ERROR_SCHEMA] = copy.deepcopy(_RPC_ERROR)
    clash = sorted(set(own) & set(schemas))
    if clash:
        raise ValueError(f"contract schema names clash with the mesh's own: {', '.join(clash)}")
    schemas.update(own)
    payloads = {key: dict(refs[key]) for key in wanted}
    return dict(sorted(schemas.items())), payloads


def _to_asyncapi_schema(node: Any) -> Any:
    """pydantic emits JSON Schema 2020-12 with OpenAPI's discriminator object; the AsyncAPI
    Schema Object (a draft-07 superset) wants the discriminator's property name only."""
    if isinstance(node, list):
        return [_to_asyncapi_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _to_asyncapi_schema(value) for key, value in node.items()}
    discriminator = out.get("discriminator")
    if (
        isinstance(discriminator, dict)
        and isinstance(discriminator.get("propertyName"), str)
        and (isinstance(out.get("oneOf"), list) or isinstance(out.get("anyOf"), list))
    ):
        out["discriminator"] = discriminator["propertyName"]
    return out


def _doc(obj: object) -> str | None:
    doc = obj.__dict__.get("__doc__") if isinstance(obj, type) else getattr(obj, "__doc__", None)
    return inspect.cleandoc(doc) if isinstance(doc, str) and doc.strip() else None


def _summary(doc: str | None) -> str | None:
    if not doc:
        return None
    return " ".join(doc.split("\n\n", 1)[0].split())


def _service_tag(service: str, contracts: Sequence[type[Contract]]) -> dict[str, str]:
    tag = {"name": service}
    module = next((c.__module__ for c in contracts if owner_of(c) == service), None)
    doc = _doc(sys.modules[module]) if module in sys.modules else None
    if doc:
        tag["description"] = doc
    return tag


def _ref(*parts: str) -> dict[str, str]:
    return {"$ref": "#/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)}


class _Builder:
    """Collects channels, operations and messages, one contract at a time."""

    def __init__(
        self,
        *,
        names: Mapping[Kind, str],
        vhost: str,
        payloads: Mapping[tuple[type[BaseModel], JsonSchemaMode], dict[str, Any]],
    ) -> None:
        self.names = names
        self.vhost = vhost
        self.payloads = payloads
        self.channels: dict[str, Any] = {}
        self.operations: dict[str, Any] = {}
        self.messages: dict[str, Any] = {}

    def add(self, cls: type[Contract]) -> None:
        kind = kind_of(cls)
        mtype = cls.__message_type__
        exchange = self.names[kind]
        doc = _doc(cls)
        tags = [{"name": owner_of(cls)}]

        message: dict[str, Any] = {
            "name": cls.__name__,
            "title": f"{cls.__name__} ({_KIND_TITLE[kind]})",
            "contentType": CONTENT_TYPE,
            "headers": _ref("components", "schemas", HEADERS_SCHEMA.format(kind=kind)),
            "payload": self.payloads[(cls, _mode(kind))],
            "tags": tags,
            "bindings": {"amqp": {"messageType": mtype, "bindingVersion": AMQP_BINDING_VERSION}},
        }
        summary = _summary(doc)
        if summary:
            message["summary"] = summary
        if doc:
            message["description"] = doc
        if kind == "rpc":
            message["correlationId"] = _ref("components", "correlationIds", CORRELATION_ID)
        self.messages[mtype] = message

        self.channels[mtype] = {
            "address": mtype,
            "title": cls.__name__,
            "description": (
                f"{_KIND_TITLE[kind].capitalize()} `{mtype}`: routing key `{mtype}` on the "
                f"topic exchange `{exchange}`."
            ),
            "messages": {cls.__name__: _ref("components", "messages", mtype)},
            "tags": tags,
            "bindings": {
                "amqp": {
                    "is": "routingKey",
                    "exchange": {
                        "name": exchange,
                        "type": "topic",
                        "durable": True,
                        "autoDelete": False,
                        "vhost": self.vhost,
                    },
                    "bindingVersion": AMQP_BINDING_VERSION,
                }
            },
        }

        action = "send" if kind == "event" else "receive"
        operation: dict[str, Any] = {
            "action": action,
            "channel": _ref("channels", mtype),
            "messages": [_ref("channels", mtype, "messages", cls.__name__)],
            "title": f"{action.capitalize()} {cls.__name__}",
            "summary": summary or f"{_KIND_TITLE[kind].capitalize()} {mtype}",
            "description": _OPERATION_TEXT[kind].format(type=mtype, exchange=exchange),
            "tags": tags,
            "bindings": {"amqp": {**_OPERATION_BINDINGS[kind]}},
        }
        if kind == "rpc":
            operation["reply"] = self._reply(cls)
        self.operations[f"{action}_{mtype.replace('.', '_')}"] = operation

    def _reply(self, cls: type[Contract]) -> dict[str, Any]:
        mtype = cls.__message_type__
        reply_model = reply_model_of(cls)
        channel = f"{mtype}.reply"
        key = f"{mtype}.reply"
        reply: dict[str, Any] = {
            "name": reply_model.__name__ if reply_model else f"{cls.__name__}Reply",
            "title": f"Reply to {cls.__name__}",
            "summary": f"The successful reply to `{mtype}` (`x-mesh-status: ok`).",
            "contentType": CONTENT_TYPE,
            "headers": _ref("components", "schemas", HEADERS_SCHEMA.format(kind="reply")),
            "payload": (
                self.payloads[(reply_model, "serialization")]
                if reply_model
                else {"description": "Untyped JSON: the request declares no reply model."}
            ),
            "correlationId": _ref("components", "correlationIds", CORRELATION_ID),
            "tags": [{"name": owner_of(cls)}],
            "bindings": {"amqp": {"messageType": mtype, "bindingVersion": AMQP_BINDING_VERSION}},
        }
        doc = _doc(reply_model) if reply_model else None
        if doc:
            reply["description"] = doc
        self.messages[key] = reply
        if RPC_ERROR_MESSAGE not in self.messages:
            self.messages[RPC_ERROR_MESSAGE] = copy.deepcopy(_RPC_ERROR_MESSAGE)
        self.channels[channel] = {
            "address": None,
            "title": f"Reply queue for {cls.__name__}",
            "description": (
                "The caller's own reply queue (exclusive, auto-delete, named by the caller), "
                "given in the request's `reply_to`. edumesh publishes the reply to it through "
                "the default exchange with the request's `correlation_id`."
            ),
            "messages": {
                "reply": _ref("components", "messages", key),
                "error": _ref("components", "messages", RPC_ERROR_MESSAGE),
            },
            "bindings": {
                "amqp": {
                    "is": "queue",
                    "queue": {
                        "durable": False,
                        "exclusive": True,
                        "autoDelete": True,
                        "vhost": self.vhost,
                    },
                    "bindingVersion": AMQP_BINDING_VERSION,
                }
            },
        }
        return {
            "address": {
                "location": REPLY_TO_LOCATION,
                "description": "The request's AMQP `reply_to` property.",
            },
            "channel": _ref("channels", channel),
            "messages": [
                _ref("channels", channel, "messages", "reply"),
                _ref("channels", channel, "messages", "error"),
            ],
        }


_KIND_TITLE: Mapping[Kind, str] = {"event": "event", "command": "command", "rpc": "RPC request"}

_OPERATION_TEXT: Mapping[Kind, str] = {
    "event": (
        "edumesh publishes `{type}` to the topic exchange `{exchange}` (persistent, with "
        "publisher confirms). Subscribe with your own durable queue bound to `{exchange}` "
        "with routing key `{type}`. At least once: deduplicate by `message_id`."
    ),
    "command": (
        "Publish to the topic exchange `{exchange}` with routing key `{type}`: persistent, "
        "mandatory, confirmed, with a unique `message_id` (the deduplication key). A command "
        "that does not validate goes to edumesh's dead-letter queue; one whose handling fails "
        "is retried and then dead-lettered."
    ),
    "rpc": (
        "Publish to the topic exchange `{exchange}` with routing key `{type}`, `reply_to` = "
        "your reply queue, a unique `correlation_id` and `expiration` = your timeout in "
        "milliseconds. edumesh always answers: the reply or an error envelope."
    ),
}

_OPERATION_BINDINGS: Mapping[Kind, dict[str, Any]] = {
    "event": {
        "deliveryMode": 2,
        "mandatory": True,
        "timestamp": True,
        "bindingVersion": AMQP_BINDING_VERSION,
    },
    "command": {
        "deliveryMode": 2,
        "mandatory": True,
        "ack": True,
        "bindingVersion": AMQP_BINDING_VERSION,
    },
    "rpc": {
        "deliveryMode": 1,
        "mandatory": True,
        "ack": True,
        "bindingVersion": AMQP_BINDING_VERSION,
    },
}


# ------------------------------------------------------------------------------------ headers

_HEADER_KINDS = ("event", "command", "rpc", "reply")


def _p(where: Literal["property", "header"], description: str, **schema: Any) -> dict[str, Any]:
    return {**schema, "description": description, "x-amqp": where}


def _headers_schema(kind: str) -> dict[str, Any]:
    """AMQP basic properties (``x-amqp: property``) and header-table entries
    (``x-amqp: header``) of one kind of message."""
    props: dict[str, Any] = {
        "message_id": _p(
            "property",
            "Unique id of the message (edumesh uses uuid4 hex); the consumer's deduplication "
            "key, unchanged across re-sends and dead-letter replays.",
            type="string",
            minLength=1,
        ),
        "type": _p("property", "The message type (= the routing key).", type="string"),
        "content_type": _p("property", "Always `application/json`.", const=CONTENT_TYPE),
        "app_id": _p("property", "The sending service.", type="string"),
        "timestamp": _p(
            "property", "When the message was sent (UNIX epoch seconds).", type="integer"
        ),
        H_KIND: _p("header", "The kind of message.", enum=[kind]),
    }
    if kind == "reply":
        props.update(
            {
                "correlation_id": _p(
                    "property", "The request's `correlation_id`, unchanged.", type="string"
                ),
                "delivery_mode": _p("property", "Transient.", const=1),
                H_STATUS: _p(
                    "header",
                    "`ok`: the body is the reply; `error`: the body is an error envelope.",
                    enum=["ok", "error"],
                ),
            }
        )
        required = ["message_id", "correlation_id", H_KIND, H_STATUS]
        return _object(f"Headers of an RPC reply ({H_STATUS} says which body)", props, required)

    props.update(
        {
            H_REQUEST_ID: _p(
                "header",
                "The request id of the HTTP request or message that caused this one.",
                type="string",
            ),
            H_ACTOR: _p(
                "header", "Who caused it (user or service), for audit logs.", type="string"
            ),
            "traceparent": _p("header", "W3C trace context.", type="string"),
            "tracestate": _p("header", "W3C trace context.", type="string"),
            H_CAUSATION: _p(
                "header",
                "`message_id` of the message being handled when this one was sent.",
                type="string",
            ),
        }
    )
    if kind == "rpc":
        props.update(
            {
                "correlation_id": _p(
                    "property",
                    "Set by the caller; echoed on the reply.",
                    type="string",
                    minLength=1,
                ),
                "reply_to": _p(
                    "property",
                    "The caller's reply queue; edumesh answers there.",
                    type="string",
                    minLength=1,
                ),
                "expiration": _p(
                    "property",
                    "The caller's budget in milliseconds (a decimal string, as AMQP has it): a "
                    "request not picked up in time dies in the queue.",
                    type="string",
                    pattern="^[0-9]+$",
                ),
                "delivery_mode": _p("property", "Transient (1).", enum=[1]),
                H_DEADLINE: _p(
                    "header",
                    "Absolute deadline, UNIX epoch in integer milliseconds: a request that "
                    "arrives later is answered with `deadline-exceeded` and not executed.",
                    type="integer",
                    minimum=0,
                ),
            }
        )
        required = ["message_id", "correlation_id", "reply_to"]
        return _object("Headers of an RPC request", props, required)

    props.update(
        {
            "delivery_mode": _p("property", "Persistent (2).", enum=[2]),
            H_ATTEMPT: _p(
                "header",
                "Delivery attempt inside edumesh: 1 first, +1 per retry. Set by the bus; do not "
                "set it when publishing.",
                type="integer",
                minimum=1,
            ),
            H_REPLAYED: _p(
                "header",
                "How often operators replayed the message from a dead-letter queue.",
                type="integer",
                minimum=1,
            ),
            H_ERROR: _p("header", "Last error (retried and dead-lettered copies).", type="string"),
            H_ERROR_TYPE: _p("header", "Type of the last error.", type="string"),
            H_FAILED_QUEUE: _p("header", "Queue whose handler failed.", type="string"),
            H_FAILED_AT: _p("header", "When it failed (UNIX epoch seconds).", type="number"),
        }
    )
    if kind == "event":
        required = ["message_id", "type", "content_type", "app_id", H_KIND]
        return _object("Headers of an event published by edumesh", props, required)
    return _object("Headers of a command sent to edumesh", props, ["message_id"])


def _object(title: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "title": title,
        "description": (
            "AMQP basic properties (`x-amqp: property`, under their AMQP names) and entries of "
            "the AMQP header table (`x-amqp: header`). Further headers are allowed and ignored."
        ),
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": True,
    }


_RPC_ERROR: dict[str, Any] = {
    "title": "RpcError",
    "description": (
        "The error envelope of a failed RPC (`x-mesh-status: error`). `code` is stable and "
        "machine-readable (`invalid-request`, `deadline-exceeded`, `internal-error`, or the "
        "domain error's code such as `not-found`, `conflict`, `order-conflict`); `status` is "
        "the HTTP status the same error has over REST."
    ),
    "type": "object",
    "properties": {
        "code": {"type": "string", "minLength": 1},
        "message": {"type": "string"},
        "details": {"type": "object", "additionalProperties": True},
        "status": {"type": ["integer", "null"]},
        "domain": {
            "type": "boolean",
            "description": "True for a domain error (a refusal), false for a technical failure.",
        },
    },
    "required": ["code", "message", "details", "status", "domain"],
}

_RPC_ERROR_MESSAGE: dict[str, Any] = {
    "name": "RpcError",
    "title": "RPC error reply",
    "summary": "Any RPC's failure (`x-mesh-status: error`).",
    "contentType": CONTENT_TYPE,
    "headers": _ref("components", "schemas", HEADERS_SCHEMA.format(kind="reply")),
    "payload": _ref("components", "schemas", RPC_ERROR_SCHEMA),
    "correlationId": _ref("components", "correlationIds", CORRELATION_ID),
}
