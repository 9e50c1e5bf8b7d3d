"""The AsyncAPI document generated from the contracts: valid against the official AsyncAPI 3.0.0
JSON Schema, complete (every contract, right kind, exchange and direction), and self-contained
(every ``$ref`` resolves; real messages validate against the payload schemas it publishes)."""

from __future__ import annotations

import copy
import datetime as dt
import json
import sys
import types
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

import jsonschema
import pytest
from mesh_contracts import Command, Event, RpcReply, RpcRequest, all_contracts
from mesh_contracts.asyncapi import (
    CORRELATION_ID_LOCATION,
    REPLY_TO_LOCATION,
    amqp_servers,
    build_document,
    kind_of,
    reply_model_of,
)
from mesh_contracts.booking import (
    InvoicePayment,
    NewBankAccount,
    Order,
    OrderConfirmed,
    OrderItem,
    OrderParticipant,
    OrderResult,
    OrderStatus,
    PersonData,
    PlaceOrder,
    SepaPayment,
)
from mesh_contracts.common import Money
from mesh_contracts.course_export import RunExport
from mesh_contracts.mailbox_invites import RoomEventData, SyncRoomEvent
from pydantic import BaseModel

SCHEMA_FILE = Path(__file__).parent / "data" / "asyncapi-3.0.0-without-id.schema.json"
EXCHANGES = {"event": "mesh.events", "command": "mesh.commands", "rpc": "mesh.rpc"}


@cache
def official_validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    assert schema["title"] == "AsyncAPI 3.0.0 schema."
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(
        schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER
    )


def spec_errors(document: dict[str, Any]) -> list[str]:
    errors = sorted(official_validator().iter_errors(document), key=lambda e: list(e.path))
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}" for e in errors]


def make_document(**kw: Any) -> dict[str, Any]:
    kw.setdefault("servers", amqp_servers(production_host="mq.example.org:5671", vhost="edumesh"))
    return build_document(title="edumesh messages", version="1.2.3", **kw)


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return make_document()


def all_refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for value in node.values() for r in all_refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in all_refs(value)]
    return []


def resolve(document: dict[str, Any], ref: str) -> Any:
    """Follow a local reference (and references it leads to); KeyError when dangling."""
    for _ in range(10):
        assert ref.startswith("#/"), ref
        node: Any = document
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        if not (isinstance(node, dict) and set(node) == {"$ref"}):
            return node
        ref = node["$ref"]
    raise AssertionError(f"reference loop at {ref}")


def payload_validator(document: dict[str, Any], payload_ref: dict[str, Any]) -> Any:
    """A JSON Schema 2020-12 validator (pydantic's dialect) for one message payload, resolving
    its ``$ref``s inside the document's components."""
    schema = {"$ref": payload_ref["$ref"], "components": document["components"]}
    return jsonschema.Draft202012Validator(schema)


# ------------------------------------------------------------------------------ official schema


def test_document_is_valid_asyncapi_3(doc: dict[str, Any]) -> None:
    assert doc["asyncapi"] == "3.0.0"
    assert spec_errors(doc) == []


@pytest.mark.parametrize(
    "damage",
    [
        "operation without action",
        "openapi discriminator object",
        "reply address not a runtime expression",
        "unknown amqp exchange type",
        "message bindings of an unknown version",
    ],
)
def test_official_schema_catches_broken_documents(doc: dict[str, Any], damage: str) -> None:
    """The validation is not vacuous: each of these mistakes is reported."""
    broken = copy.deepcopy(doc)
    if damage == "operation without action":
        del broken["operations"]["receive_booking_place_order"]["action"]
    elif damage == "openapi discriminator object":
        payment = broken["components"]["schemas"]["Order"]["properties"]["payment"]
        payment["discriminator"] = {"propertyName": "method"}
    elif damage == "reply address not a runtime expression":
        reply = broken["operations"]["receive_booking_place_order"]["reply"]
        reply["address"]["location"] = "reply_to"
    elif damage == "unknown amqp exchange type":
        channel = broken["channels"]["booking.order_confirmed.v1"]
        channel["bindings"]["amqp"]["exchange"]["type"] = "x-consistent-hash"
    else:
        message = broken["components"]["messages"]["booking.place_order"]
        message["bindings"]["amqp"]["bindingVersion"] = "9.9.9"
    assert spec_errors(broken) != []


# ------------------------------------------------------------------------------ completeness


def test_every_contract_has_channel_operation_and_message(doc: dict[str, Any]) -> None:
    contracts = all_contracts()
    assert len(contracts) >= 10  # booking, course_export, mailbox_invites, profile at least
    for cls in contracts:
        mtype = cls.__message_type__
        kind = kind_of(cls)
        channel = doc["channels"][mtype]
        assert channel["address"] == mtype
        amqp = channel["bindings"]["amqp"]
        assert amqp["is"] == "routingKey"
        assert amqp["exchange"] == {
            "name": EXCHANGES[kind],
            "type": "topic",
            "durable": True,
            "autoDelete": False,
            "vhost": "/",
        }
        message = resolve(doc, channel["messages"][cls.__name__]["$ref"])
        assert message["name"] == cls.__name__
        assert message["bindings"]["amqp"]["messageType"] == mtype
        assert message["contentType"] == "application/json"
        assert resolve(doc, message["headers"]["$ref"])["properties"]["x-mesh-kind"]["enum"] == [
            kind
        ]
        payload = resolve(doc, message["payload"]["$ref"])
        # The payload schema is the model's: same title, every field (by its JSON name).
        assert payload["title"] == cls.__name__
        fields = {f.alias or name for name, f in cls.model_fields.items()}
        assert set(payload.get("properties", {})) == fields
        doc_string = cls.__dict__.get("__doc__")
        if doc_string:
            assert message["description"].split()[:3] == doc_string.split()[:3]
        action = "send" if kind == "event" else "receive"
        op_id = f"{action}_{mtype.replace('.', '_')}"
        operation = doc["operations"][op_id]
        assert operation["action"] == action
        assert operation["channel"] == {"$ref": f"#/channels/{mtype}"}
        assert operation["messages"] == [{"$ref": f"#/channels/{mtype}/messages/{cls.__name__}"}]
        assert ("reply" in operation) is (kind == "rpc")
        assert operation["bindings"]["amqp"]["deliveryMode"] == (1 if kind == "rpc" else 2)
    # Nothing else: one operation per contract, one channel per contract plus one reply channel
    # per RPC.
    rpcs = [c for c in contracts if kind_of(c) == "rpc"]
    assert len(doc["operations"]) == len(contracts)
    assert len(doc["channels"]) == len(contracts) + len(rpcs)
    assert {t["name"] for t in doc["info"]["tags"]} == {
        c.__module__.rsplit(".", 1)[-1] for c in contracts
    }


def test_kinds_follow_the_base_classes() -> None:
    for cls in all_contracts():
        expected = (
            "event"
            if issubclass(cls, Event)
            else "command"
            if issubclass(cls, Command)
            else "rpc"
            if issubclass(cls, RpcRequest)
            else None
        )
        assert kind_of(cls) == expected


def test_rpc_replies(doc: dict[str, Any]) -> None:
    rpcs = [c for c in all_contracts() if kind_of(c) == "rpc"]
    assert rpcs
    for cls in rpcs:
        mtype = cls.__message_type__
        reply_model = reply_model_of(cls)
        # Every RPC of the package declares its reply, and replies are RpcReply models.
        assert reply_model is not None, f"{cls.__qualname__} declares no __response_model__"
        assert issubclass(reply_model, RpcReply)
        reply = doc["operations"][f"receive_{mtype.replace('.', '_')}"]["reply"]
        assert reply["address"]["location"] == REPLY_TO_LOCATION
        channel = resolve(doc, reply["channel"]["$ref"])
        assert channel["address"] is None  # the caller's queue, named at runtime
        assert channel["bindings"]["amqp"]["is"] == "queue"
        assert channel["bindings"]["amqp"]["queue"]["exclusive"] is True
        ok, error = (resolve(doc, m["$ref"]) for m in reply["messages"])
        assert ok["name"] == reply_model.__name__
        assert resolve(doc, ok["payload"]["$ref"])["title"] == reply_model.__name__
        assert error["name"] == "RpcError"
        assert set(resolve(doc, error["payload"]["$ref"])["required"]) == {
            "code",
            "message",
            "details",
            "status",
            "domain",
        }
        headers = resolve(doc, ok["headers"]["$ref"])
        assert headers["properties"]["x-mesh-status"]["enum"] == ["ok", "error"]
        request = doc["components"]["messages"][mtype]
        for message in (request, ok, error):
            correlation = resolve(doc, message["correlationId"]["$ref"])
            assert correlation["location"] == CORRELATION_ID_LOCATION
        request_headers = resolve(doc, request["headers"]["$ref"])
        assert {"message_id", "correlation_id", "reply_to"} <= set(request_headers["required"])
        # The runtime expressions point at header properties that exist.
        assert "reply_to" in request_headers["properties"]
        assert "correlation_id" in headers["properties"]


def test_every_reference_resolves(doc: dict[str, Any]) -> None:
    refs = all_refs(doc)
    assert any(r.startswith("#/components/schemas/") for r in refs)
    for ref in refs:
        resolve(doc, ref)  # KeyError when dangling
    # No pydantic $defs left behind: everything was hoisted into components/schemas.
    assert "$defs" not in json.dumps(doc)


def test_document_is_json_and_deterministic(doc: dict[str, Any]) -> None:
    assert json.loads(json.dumps(doc)) == doc
    assert make_document() == doc


def test_servers_and_security(doc: dict[str, Any]) -> None:
    production, local = doc["servers"]["production"], doc["servers"]["local"]
    assert (production["protocol"], production["host"]) == ("amqps", "mq.example.org:5671")
    assert (local["protocol"], local["host"]) == ("amqp", "127.0.0.1:5672")
    assert production["pathname"] == "/edumesh"
    for server in (production, local):
        for requirement in server["security"]:
            assert resolve(doc, requirement["$ref"])["type"] in {"userPassword", "X509"}
    assert amqp_servers(production_host="h:5671")["production"]["pathname"] == "/%2F"


def test_exchange_names_and_vhost_are_configurable() -> None:
    names = {"event": "t.mesh.events", "command": "t.mesh.commands", "rpc": "t.mesh.rpc"}
    document = make_document(exchanges=names, vhost="edumesh")
    exchange = document["channels"]["booking.order_confirmed.v1"]["bindings"]["amqp"]["exchange"]
    assert (exchange["name"], exchange["vhost"]) == ("t.mesh.events", "edumesh")
    binding = document["channels"]["booking.place_order"]["bindings"]["amqp"]["exchange"]
    assert binding["name"] == "t.mesh.rpc"
    assert "`t.mesh.commands`" in document["info"]["description"]
    assert spec_errors(document) == []


# ------------------------------------------------------------------------------ payload schemas


def test_discriminated_unions_use_the_asyncapi_discriminator(doc: dict[str, Any]) -> None:
    payment = doc["components"]["schemas"]["Order"]["properties"]["payment"]
    assert payment["discriminator"] == "method"
    assert {resolve(doc, alt["$ref"])["title"] for alt in payment["oneOf"]} == {
        "SepaPayment",
        "InvoicePayment",
    }


def place_order() -> PlaceOrder:
    return PlaceOrder(
        order=Order(
            external_order_id="web-4711",
            participants=[
                OrderParticipant(
                    key="p1",
                    person=PersonData(
                        first_name="Ada", last_name="Lovelace", email="ada@example.org"
                    ),
                )
            ],
            items=[OrderItem(participant="p1", course_number="252-10105")],
            payment=SepaPayment(
                new_account=NewBankAccount(
                    account_holder="Ada Lovelace",
                    iban="DE89370400440532013000",
                    mandate_consent=True,
                )
            ),
        )
    )


def samples() -> list[BaseModel]:
    result = OrderResult(
        external_order_id="web-4711",
        status=OrderStatus.ACCEPTED,
        total=Money(amount=Decimal("129.50")),
        order_id=17,
        participant_ids={"p1": 3},
    )
    event = RoomEventData(
        event_id="e1",
        room_id="r1",
        title="Board meeting",
        starts_at=dt.datetime(2026, 3, 2, 9, tzinfo=dt.UTC),
        ends_at=dt.datetime(2026, 3, 2, 11, tzinfo=dt.UTC),
    )
    invoice_order = place_order().order.model_copy(update={"payment": InvoicePayment()})
    return [
        place_order(),
        PlaceOrder(order=invoice_order),
        OrderConfirmed(result=result),
        SyncRoomEvent(change="created", event=event),
        RunExport(mode="changes", requested_by="cms"),
    ]


@pytest.mark.parametrize("message", samples(), ids=lambda m: type(m).__message_type__)
def test_real_messages_validate_against_the_published_schema(
    doc: dict[str, Any], message: BaseModel
) -> None:
    mtype = type(message).__message_type__  # type: ignore[attr-defined]
    validator = payload_validator(doc, doc["components"]["messages"][mtype]["payload"])
    body = json.loads(message.model_dump_json())
    assert list(validator.iter_errors(body)) == []
    # ...and the schema is strict enough to refuse a broken one.
    schema = validator.schema["components"]["schemas"][type(message).__name__]
    required = schema.get("required", [])
    if required:
        assert list(validator.iter_errors({k: v for k, v in body.items() if k != required[0]}))
    first = next(iter(body))
    assert list(validator.iter_errors({**body, first: [[["not this"]]]})) != []


def test_rpc_reply_payload_validates(doc: dict[str, Any]) -> None:
    reply = OrderResult(
        external_order_id="web-4711", status=OrderStatus.PENDING, total=Money(amount=Decimal("5"))
    )
    ok = doc["components"]["messages"]["booking.place_order.reply"]
    body = json.loads(reply.model_dump_json())
    assert list(payload_validator(doc, ok["payload"]).iter_errors(body)) == []
    body["status"] = "maybe"
    assert list(payload_validator(doc, ok["payload"]).iter_errors(body)) != []
    error = doc["components"]["messages"]["mesh.rpc_error"]
    envelope = {
        "code": "order-conflict",
        "message": "different order, same id",
        "details": {},
        "status": 409,
        "domain": True,
    }
    assert list(payload_validator(doc, error["payload"]).iter_errors(envelope)) == []
    assert list(payload_validator(doc, error["payload"]).iter_errors({"code": 1})) != []


# ------------------------------------------------------------------------------ synthetic contracts


def synthetic_module(name: str) -> types.ModuleType:
    module = types.ModuleType(f"mesh_contracts.{name}", f"Contracts owned by {name}.")
    sys.modules[module.__name__] = module
    return module


def test_same_model_names_in_two_modules_do_not_clash() -> None:
    """Two services each define an ``Item`` of different shape, and the same Decimal value type
    is both received (a command: number or string accepted) and sent (an event: string)."""
    alpha, beta = synthetic_module("alpha"), synthetic_module("beta")
    try:

        class Amount(BaseModel):
            value: Decimal

        class AlphaItem(BaseModel):
            count: int

        AlphaItem.__name__ = AlphaItem.__qualname__ = "Item"
        AlphaItem.__module__ = alpha.__name__

        class BetaItem(BaseModel):
            label: str

        BetaItem.__name__ = BetaItem.__qualname__ = "Item"
        BetaItem.__module__ = beta.__name__

        class Happened(Event):
            """Something happened in alpha."""

            __message_type__: ClassVar[str] = "alpha.happened.v1"
            item: AlphaItem
            amount: Amount

        class DoIt(Command):
            """Beta, do it."""

            __message_type__: ClassVar[str] = "beta.do_it.v1"
            item: BetaItem
            amount: Amount

        class Ask(RpcRequest):
            """An RPC without a declared reply."""

            __message_type__: ClassVar[str] = "beta.ask"

        Happened.__module__ = alpha.__name__
        DoIt.__module__ = Ask.__module__ = beta.__name__
        document = make_document(contracts=[Happened, DoIt, Ask])
    finally:
        del sys.modules[alpha.__name__], sys.modules[beta.__name__]

    assert spec_errors(document) == []
    for ref in all_refs(document):
        resolve(document, ref)
    schemas = document["components"]["schemas"]
    happened = resolve(
        document, document["components"]["messages"]["alpha.happened.v1"]["payload"]["$ref"]
    )
    do_it = resolve(
        document, document["components"]["messages"]["beta.do_it.v1"]["payload"]["$ref"]
    )
    alpha_item = resolve(document, happened["properties"]["item"]["$ref"])
    beta_item = resolve(document, do_it["properties"]["item"]["$ref"])
    assert set(alpha_item["properties"]) == {"count"}
    assert set(beta_item["properties"]) == {"label"}
    assert happened["properties"]["item"]["$ref"] != do_it["properties"]["item"]["$ref"]
    # Input and output forms of the same model are told apart.
    amount_out = happened["properties"]["amount"]["$ref"]
    amount_in = do_it["properties"]["amount"]["$ref"]
    assert amount_out != amount_in
    assert payload_validator(document, {"$ref": amount_in}).is_valid({"value": 1.5})
    assert not payload_validator(document, {"$ref": amount_out}).is_valid({"value": 1.5})
    assert payload_validator(document, {"$ref": amount_out}).is_valid({"value": "1.5"})
    # Every name is a valid component key.
    assert all(json.dumps(name).strip('"') == name for name in schemas)
    # An RPC without a reply model is documented with an untyped reply.
    untyped = document["components"]["messages"]["beta.ask.reply"]
    assert "$ref" not in untyped["payload"]
    assert document["info"]["tags"] == [
        {"name": "alpha", "description": "Contracts owned by alpha."},
        {"name": "beta", "description": "Contracts owned by beta."},
    ]


def test_duplicate_message_types_are_refused() -> None:
    class Twice(Event):
        __message_type__: ClassVar[str] = OrderConfirmed.__message_type__

    with pytest.raises(ValueError, match="defined twice"):
        make_document(contracts=[OrderConfirmed, Twice])
