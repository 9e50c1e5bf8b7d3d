"""Faults under load in the production topology: RabbitMQ killed with -9, PostgreSQL connections
cut mid-transaction and the database unreachable, the SMTP server down.

Load in every scenario: the website backend places orders over ``booking.place_order`` (RPC) and
the centre's staff edit course titles, which course-export turns into
``course_export.course_changed.v1`` events (transactional outbox → RabbitMQ → the website's
inbox in PostgreSQL). Booked orders send a confirmation mail (mail outbox → SMTP).

Each scenario counts, from the databases and the SMTP server rather than from the load
generators' own bookkeeping: messages sent, acknowledged, lost (must be 0), duplicated (must
have no second effect) and dead-lettered, into ``artifacts/chaos-report.json``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import httpx
import pytest
from mesh_common.bus.errors import RemoteUnavailable
from mesh_contracts.booking import Order, OrderResult, PlaceOrder
from sqlalchemy import text

from .conftest import LIMITED_SEATS, MAIL_MAX_ATTEMPTS, ChaosMesh
from .support import (
    COURSE_CHANGED,
    ChaosReport,
    CourseEditor,
    OrderStats,
    StreamCount,
    coursedb_orders,
    eventually,
    order,
    outbox_mark,
    outbox_rows,
    participants_tagged,
    registrations_by_status,
)

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.postgres,
    pytest.mark.rabbitmq,
    pytest.mark.slow,
    pytest.mark.asyncio(loop_scope="module"),
]

CONFIRMATION = "booking-confirmation"


# ------------------------------------------------------------------------------ counting


class EventWindow:
    """The course events of one scenario: outbox rows after a mark, the site's counters then."""

    def __init__(self, mesh: ChaosMesh) -> None:
        self.mesh = mesh
        self.mark = 0
        self.deliveries_before: Counter[str] = Counter()
        self.absorbed_before = 0

    async def open(self) -> EventWindow:
        self.mark = await outbox_mark(self.mesh.servicedb, "course_export")
        self.deliveries_before = Counter(self.mesh.site.deliveries)
        self.absorbed_before = self.mesh.site.inbox.duplicates
        return self

    async def rows(self) -> list[Any]:
        return await outbox_rows(self.mesh.servicedb, "course_export", self.mark, COURSE_CHANGED)

    async def drained(self, editor: CourseEditor) -> bool:
        """Every event of the window confirmed and applied, and the replica shows the coursedb."""
        rows = await self.rows()
        if not rows or any(r.sent_at is None and r.failed_at is None for r in rows):
            return False
        if {r.message_id for r in rows} - await self.mesh.site.inbox_ids():
            return False
        replica = await self.mesh.site.latest_titles()
        current = await editor.current_titles()
        return all(replica.get(number) == title for number, title in current.items())

    async def count(self, scenario: str, fault: str, seconds: float) -> StreamCount:
        site = self.mesh.site
        rows = await self.rows()
        ids = [r.message_id for r in rows]
        acked = {r.message_id for r in rows if r.sent_at is not None}
        applied = await site.inbox_ids()
        effects = await site.effects_per_message(ids)
        deliveries = site.deliveries - self.deliveries_before
        count = StreamCount(
            scenario=scenario,
            stream="course_changed events",
            fault=fault,
            sent=len(rows),
            acknowledged=len(acked),
            lost=len(acked - applied),
            duplicated=sum(max(deliveries[i] - 1, 0) for i in ids),
            dead_lettered=await site.dead_lettered() + sum(r.failed_at is not None for r in rows),
            effects=sum(effects.values()),
            seconds=round(seconds, 1),
            notes={
                "absorbed_by_inbox": site.inbox.duplicates - self.absorbed_before,
                "messages_with_more_than_one_effect": sum(1 for v in effects.values() if v > 1),
            },
        )
        return count


async def count_orders(
    mesh: ChaosMesh,
    scenario: str,
    fault: str,
    tag: str,
    orders: list[Order],
    stats: OrderStats,
    seconds: float,
) -> StreamCount:
    ids = [o.external_order_id for o in orders]
    booked = await coursedb_orders(mesh.coursedb, ids)
    return StreamCount(
        scenario=scenario,
        stream="place_order rpc",
        fault=fault,
        sent=len(orders),
        acknowledged=len(stats.answered),
        # an answered order must be in the coursedb exactly once, with its one registration
        lost=sum(1 for i in ids if booked.get(i) != 1),
        duplicated=stats.repeated,
        effects=sum(booked.values()),
        retries=stats.repeated,
        seconds=round(seconds, 1),
        notes={
            "call_errors": dict(stats.errors),
            "answers": dict(Counter(r.status for r in stats.answered.values())),
            "participants_created": await participants_tagged(mesh.coursedb, tag),
            "max_attempts_of_one_order": max(stats.attempts.values(), default=0),
        },
    )


async def confirmations(mesh: ChaosMesh, ids: set[str]) -> list[dict[str, Any]]:
    async with mesh.client() as client:
        page = (
            await client.get(
                "/api/booking/mail/outbox", params={"category": CONFIRMATION, "limit": 500}
            )
        ).json()
    return [m for m in page["items"] if m["ref"] in ids]


def recipients(orders: list[Order]) -> set[str]:
    return {str(o.participants[0].person.email) for o in orders if o.participants[0].person}


def all_confirmed(mesh: ChaosMesh, orders: list[Order]) -> bool:
    """Every order's payer has received a mail at the SMTP server."""
    return all(mesh.smtp.to(e) for e in recipients(orders))


async def count_mails(
    mesh: ChaosMesh, scenario: str, fault: str, orders: list[Order], seconds: float
) -> StreamCount:
    """Wait until every order's confirmation reached the SMTP server, then count."""
    ids = {o.external_order_id for o in orders}
    emails = recipients(orders)
    await eventually(
        lambda: all_confirmed(mesh, orders), timeout=40, what="every confirmation delivered"
    )

    async def settled() -> bool:
        # A mail the server accepted while booking's database was cut is recorded as sent once
        # the database is back (or re-sent after its claim lapses): count when it is recorded.
        return all(m["status"] in ("sent", "failed") for m in await confirmations(mesh, ids))

    await eventually(settled, timeout=40, what="every confirmation recorded")
    mails = await confirmations(mesh, ids)
    received = [m for e in emails for m in mesh.smtp.to(e)]
    by_message_id = Counter(m.message["Message-ID"] for m in received)
    return StreamCount(
        scenario=scenario,
        stream="confirmation mails",
        fault=fault,
        sent=len(mails),
        acknowledged=sum(m["status"] == "sent" for m in mails),
        lost=sum(1 for e in emails if not mesh.smtp.to(e)),
        duplicated=sum(n - 1 for n in by_message_id.values()),
        dead_lettered=sum(m["status"] == "failed" for m in mails),
        effects=len(by_message_id),
        retries=sum(max(m["attempts"] - 1, 0) for m in mails),
        seconds=round(seconds, 1),
    )


def check(count: StreamCount, report: ChaosReport) -> None:
    report.add(count)
    assert count.lost == 0, count
    assert count.dead_lettered == 0, count
    assert count.acknowledged == count.sent, count


# ------------------------------------------------------------------------------ RabbitMQ


async def test_rabbitmq_node_killed_with_9_and_restarted_under_load(
    mesh: ChaosMesh, chaos_report: ChaosReport
) -> None:
    scenario, fault = "rabbitmq-kill-9", "RabbitMQ node SIGKILLed mid-stream, restarted"
    started = time.monotonic()
    window = await EventWindow(mesh).open()
    editor = CourseEditor(mesh.coursedb, mesh.courses, "rmq")
    stop_edits = asyncio.Event()
    edits = asyncio.create_task(editor.run(stop_edits, interval=0.08))
    orders = [order("rmq", n, mesh.bookable[n % len(mesh.bookable)]) for n in range(30)]
    stats = OrderStats()
    crash: dict[str, Any] = {}

    async def kill_and_restart() -> None:
        # Strike while both streams flow: orders are being answered and the site holds events
        # whose effect committed but whose ack is not sent yet.
        await eventually(
            lambda: len(stats.answered) >= 8 and mesh.site.holding > 0,
            timeout=60,
            interval=0.01,
            what="load flowing",
        )
        crash["held_unacked"] = mesh.site.holding
        t0 = time.monotonic()
        await asyncio.to_thread(mesh.rabbit.kill)
        crash["answered_before"] = len(stats.answered)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(mesh.rabbit.start)
        crash["down_seconds"] = round(time.monotonic() - t0, 1)

    try:
        chaos = asyncio.create_task(kill_and_restart())
        await mesh.website.place_all(orders, stats=stats, clients=3, pace=0.05)
        await chaos
        await asyncio.sleep(2.0)  # edits keep flowing after the restart
    finally:
        stop_edits.set()
        await edits
    t_drain = time.monotonic()
    await eventually(lambda: window.drained(editor), timeout=60, what="events drained")
    crash["drain_seconds"] = round(time.monotonic() - t_drain, 1)

    assert crash["answered_before"] < len(orders)  # the crash really hit the load
    events = await window.count(scenario, fault, time.monotonic() - started)
    events.notes.update(crash, course_edits=editor.writes)
    check(events, chaos_report)
    # The broker lost the unacked deliveries' verdicts: they came again and the inbox absorbed
    # them — one effect row per message, never two.
    assert events.duplicated >= 1, events
    assert events.notes["messages_with_more_than_one_effect"] == 0
    assert events.effects == events.sent

    rpc = await count_orders(
        mesh, scenario, fault, "rmq", orders, stats, time.monotonic() - started
    )
    check(rpc, chaos_report)
    assert rpc.notes["answers"] == {"accepted": len(orders)}
    assert rpc.notes["participants_created"] == len(orders)

    mails = await count_mails(mesh, scenario, fault, orders, time.monotonic() - started)
    check(mails, chaos_report)


# ------------------------------------------------------------------------------ PostgreSQL


async def transactions_through(mesh: ChaosMesh) -> int:
    """Service backends (reached through the proxies) inside a transaction right now."""
    ports = [
        client.server_writer.get_extra_info("sockname")[1]
        for link in (mesh.service_link, mesh.coursedb_link)
        for client in list(link.proxy.clients)
        if client.server_writer is not None
    ]
    if not ports:
        return 0
    async with mesh.servicedb.connect() as conn:
        return int(
            await conn.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE client_port = ANY(:ports) AND xact_start IS NOT NULL"
                ),
                {"ports": ports},
            )
            or 0
        )


async def status_of(mesh: ChaosMesh, path: str) -> tuple[int, Any]:
    async with mesh.client() as client:
        response = await client.get(path)
    try:
        body = response.json()
    except ValueError:
        body = response.text
    return response.status_code, body


async def final_results(mesh: ChaosMesh, ids: list[str]) -> dict[str, dict[str, Any]]:
    async with mesh.client() as client:
        out = {}
        for i in ids:
            response = await client.get(f"/api/booking/orders/{i}")
            out[i] = response.json() if response.status_code == 200 else {}
        return out


async def test_postgresql_connections_cut_mid_transaction_and_database_unreachable(
    mesh: ChaosMesh, chaos_report: ChaosReport
) -> None:
    scenario = "postgresql-outage"
    fault = "connections cut mid-transaction x3, coursedb down, then service db down"
    started = time.monotonic()
    window = await EventWindow(mesh).open()
    editor = CourseEditor(mesh.coursedb, mesh.courses, "pg")
    stop_edits = asyncio.Event()
    edits = asyncio.create_task(editor.run(stop_edits, interval=0.08))
    # Every second order goes to the course with few seats: cuts, backlog and repeats must not
    # book one seat too many.
    orders = [
        order("pg", n, mesh.limited, mode="waiting_list")
        if n % 2
        else order("pg", n, mesh.bookable[n % len(mesh.bookable)])
        for n in range(24)
    ]
    limited_ids = {o.external_order_id for n, o in enumerate(orders) if n % 2}
    during = [order("pg", 900 + n, mesh.bookable[n]) for n in range(2)]  # coursedb down
    probe = order("pg", 999, mesh.bookable[0])  # booking's own database down
    stats = OrderStats()
    seen: dict[str, Any] = {}

    async def outage() -> None:
        await eventually(lambda: len(stats.answered) >= 5, timeout=60, interval=0.02)
        # 1. Cut every connection while service transactions are open on them.
        cuts = hits = 0
        deadline = time.monotonic() + 10
        while cuts < 3 and time.monotonic() < deadline:
            open_now = await transactions_through(mesh)
            if not open_now:
                await asyncio.sleep(0.005)
                continue
            await asyncio.gather(mesh.service_link.cut(), mesh.coursedb_link.cut())
            cuts, hits = cuts + 1, hits + open_now
            await asyncio.sleep(0.6)
        seen.update(cuts=cuts, transactions_open_at_cuts=hits)
        seen["connections_cut"] = (
            mesh.service_link.connections_cut + mesh.coursedb_link.connections_cut
        )
        # 2. The coursedb is unreachable: orders are answered pending and wait in the backlog.
        await mesh.coursedb_link.down()
        t0 = time.monotonic()
        # (whether or not the stream is still running: the website keeps ordering)
        await mesh.website.place_all(during, stats=stats, clients=len(during))
        assert {stats.answered[o.external_order_id].status for o in during} == {"pending"}
        backlog = await eventually(
            lambda: _backlog_pending(mesh), timeout=15, what="backlog visible"
        )
        seen["backlog_while_coursedb_down"] = backlog
        seen["course_export_ready_while_coursedb_down"] = (
            await status_of(mesh, "/api/course-export/health/ready")
        )[0]
        await asyncio.sleep(max(0.0, 2.0 - (time.monotonic() - t0)))
        await mesh.coursedb_link.up()
        # 3. booking's own database is unreachable: a clear 503, nothing booked.
        await mesh.service_link.down()
        try:
            await mesh.website.bus.call(PlaceOrder(order=probe), OrderResult, timeout=10)
            seen["probe_while_service_db_down"] = "answered"
        except RemoteUnavailable as exc:
            seen["probe_while_service_db_down"] = exc.code
        seen["booking_ready_while_service_db_down"] = (
            await status_of(mesh, "/api/booking/health/ready")
        )[0]
        await asyncio.sleep(1.0)
        await mesh.service_link.up()

    try:
        chaos = asyncio.create_task(outage())
        await mesh.website.place_all(orders, stats=stats, clients=3, pace=0.1)
        await chaos
        # The probe refused during the outage is placed again by the website, same id.
        await mesh.website.place_all([probe], stats=stats, clients=1)
        await asyncio.sleep(1.0)
    finally:
        stop_edits.set()
        await edits
        for link in (mesh.service_link, mesh.coursedb_link):
            if link.proxy.server is None:
                await link.up()

    all_orders = [*orders, *during, probe]
    ids = [o.external_order_id for o in all_orders]

    async def settled() -> dict[str, dict[str, Any]] | None:
        results = await final_results(mesh, ids)
        return results if all(v.get("status") == "accepted" for v in results.values()) else None

    results = await eventually(settled, timeout=60, interval=0.5, what="every order booked")
    # No overbooking: exactly the seats were booked, the rest queued on the waiting list in
    # distinct positions.
    lines = [results[i]["lines"][0] for i in limited_ids]
    outcomes = Counter(line["outcome"] for line in lines)
    waiting = [line for line in lines if line["outcome"] != "booked"]
    positions = sorted(line["waiting_list_position"] for line in waiting)
    seen["limited_course"] = dict(
        await registrations_by_status(mesh.coursedb, mesh.limited, limited_ids)
    )
    assert outcomes == {"booked": LIMITED_SEATS, "waiting_list": len(lines) - LIMITED_SEATS}, lines
    assert positions == list(range(1, len(lines) - LIMITED_SEATS + 1)), positions
    assert seen["limited_course"] == outcomes, seen["limited_course"]
    await eventually(lambda: window.drained(editor), timeout=60, what="events drained")
    code, backlog = await status_of(mesh, "/api/booking/backlog")
    assert code == 200, backlog
    seen["backlog_after"] = backlog["counts"]

    # Visible while it lasted, bounded, and recovered with nothing lost or half-written.
    assert seen["cuts"] >= 1 and seen["transactions_open_at_cuts"] >= 1, seen
    assert seen["backlog_while_coursedb_down"] >= 1, seen
    assert seen["course_export_ready_while_coursedb_down"] == 503, seen
    assert seen["probe_while_service_db_down"] == "booking-unavailable", seen
    assert seen["booking_ready_while_service_db_down"] == 503, seen
    assert backlog["counts"].get("pending", 0) == 0 and backlog["counts"].get("failed", 0) == 0

    events = await window.count(scenario, fault, time.monotonic() - started)
    events.notes.update(course_edits=editor.writes, course_edit_errors=editor.errors)
    check(events, chaos_report)
    assert events.notes["messages_with_more_than_one_effect"] == 0

    rpc = await count_orders(mesh, scenario, fault, "pg", all_orders, stats, 0.0)
    rpc.seconds = round(time.monotonic() - started, 1)
    rpc.notes.update(seen)
    check(rpc, chaos_report)
    assert rpc.effects == len(all_orders)  # one registration per order, none half-written
    assert rpc.notes["participants_created"] == len(all_orders)
    assert "RemoteInternalError:internal-error" not in rpc.notes["call_errors"], rpc.notes

    # Mails of an order whose preparation kept failing show "notification not sent: ..." on
    # the order (and in booking_notifications_failed_total); staff queue them again
    # (docs/booking.md). Counted in the report; the mails must arrive either way.
    requeued = 0

    async def delivered_or_requeued() -> bool:
        nonlocal requeued
        if all_confirmed(mesh, all_orders):
            return True
        requeued += await requeue_unsent_notifications(mesh, set(ids))
        return False

    await eventually(delivered_or_requeued, timeout=60, interval=1.0, what="mails delivered")
    mails = await count_mails(mesh, scenario, fault, all_orders, time.monotonic() - started)
    mails.notes["notifications_requeued_by_staff"] = requeued
    check(mails, chaos_report)


async def requeue_unsent_notifications(mesh: ChaosMesh, ids: set[str]) -> int:
    async with mesh.client() as client:
        listed = await client.get(
            "/api/booking/orders", params={"status": "accepted", "limit": 500}
        )
        assert listed.status_code == 200, listed.text
        unsent = [
            o["external_order_id"]
            for o in listed.json()
            if o["external_order_id"] in ids
            and (o["last_error"] or "").startswith("notification not sent")
        ]
        for external_id in unsent:
            response = await client.post(f"/api/booking/orders/{external_id}/notify")
            assert response.status_code == 200, response.text
            assert response.json()["mail_ids"], response.text
    return len(unsent)


async def _backlog_pending(mesh: ChaosMesh) -> int:
    code, body = await status_of(mesh, "/api/booking/backlog")
    return int(body["counts"].get("pending", 0)) if code == 200 else 0


# ------------------------------------------------------------------------------ SMTP


async def test_smtp_server_down_mail_waits_fails_visibly_and_is_delivered(
    mesh: ChaosMesh, chaos_report: ChaosReport
) -> None:
    scenario, fault = "smtp-down", "SMTP server stopped, later started again"
    started = time.monotonic()
    first = [order("smtp", n, mesh.bookable[n % len(mesh.bookable)]) for n in range(6)]
    second = [order("smtp", n, mesh.bookable[n % len(mesh.bookable)]) for n in range(6, 12)]
    first_ids = {o.external_order_id for o in first}
    second_ids = {o.external_order_id for o in second}
    stats = OrderStats()
    seen: dict[str, Any] = {}
    mesh.smtp.stop()
    try:
        await mesh.website.place_all(first, stats=stats, clients=3)

        async def pending_with_error(ids: set[str]) -> list[dict[str, Any]] | None:
            """Mails being retried: pending, with their attempts, next attempt and SMTP error."""
            mails = await confirmations(mesh, ids)
            waiting = [
                m
                for m in mails
                if m["status"] == "pending"
                and m["attempts"] >= 1
                and m["last_error"]
                and m["next_attempt_at"]
            ]
            return waiting or None

        async def all_failed(ids: set[str]) -> list[dict[str, Any]] | None:
            mails = await confirmations(mesh, ids)
            ok = len(mails) == len(ids) and all(m["status"] == "failed" for m in mails)
            return mails if ok else None

        # Visible while retried (attempts, next attempt, the SMTP error) ...
        waiting = await eventually(
            lambda: pending_with_error(first_ids), timeout=20, interval=0.1, what="pending"
        )
        seen["pending_error_sample"] = waiting[0]["last_error"]
        # ... and, after the bounded attempts, failed — listed for staff, counted in metrics.
        failed = await eventually(lambda: all_failed(first_ids), timeout=30, what="failed")
        assert all(m["attempts"] == MAIL_MAX_ATTEMPTS for m in failed), failed
        assert all("gave up" in (m["last_error"] or "") for m in failed), failed
        seen["failed_error_sample"] = failed[0]["last_error"]
        seen["failed_metric"] = await eventually(
            lambda: _failed_metric(mesh), timeout=20, what="mail_queue_depth{status=failed}"
        )
        # Mail queued during the outage that still has attempts left ...
        await mesh.website.place_all(second, stats=stats, clients=3)
        retrying = await eventually(
            lambda: pending_with_error(second_ids), timeout=20, interval=0.05
        )
        seen["retrying_when_server_returned"] = len(retrying)
    finally:
        mesh.smtp.start()
    # ... is delivered on its own once the server is back,
    auto = await eventually(
        lambda: _all_sent(mesh, second_ids), timeout=30, what="pending mail delivered"
    )
    seen["delivered_automatically"] = len(auto)
    # and the failed mail after a staff retry.
    async with mesh.client() as client:
        for mail in failed:
            response = await client.post(f"/api/booking/mail/outbox/{mail['id']}/retry")
            assert response.status_code == 200, response.text
            assert response.json()["status"] == "pending"
    await eventually(lambda: _all_sent(mesh, first_ids), timeout=30, what="retried mail sent")
    seen["delivered_after_staff_retry"] = len(failed)

    mails = await count_mails(mesh, scenario, fault, [*first, *second], time.monotonic() - started)
    mails.notes.update(seen)
    check(mails, chaos_report)
    assert mails.duplicated == 0  # one Message-ID each, delivered once
    assert stats.errors == Counter()  # booking itself never noticed the mail outage
    assert {r.status for r in stats.answered.values()} == {"accepted"}


async def _all_sent(mesh: ChaosMesh, ids: set[str]) -> list[dict[str, Any]] | None:
    mails = await confirmations(mesh, ids)
    return mails if len(mails) == len(ids) and all(m["status"] == "sent" for m in mails) else None


async def _failed_metric(mesh: ChaosMesh) -> float | None:
    spec = next(s for s in mesh.sup.topo.services if s.name == "booking")
    url = f"http://{mesh.sup.topo.host}:{mesh.sup.topo.port(spec)}/metrics"
    async with httpx.AsyncClient(timeout=5) as client:
        body = (await client.get(url)).text
    for line in body.splitlines():
        if line.startswith('mail_queue_depth{status="failed"}'):
            value = float(line.rsplit(" ", 1)[1])
            return value if value >= 1 else None
    return None
