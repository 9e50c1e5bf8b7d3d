"""Load generators, the website's consumer, link cutters and the counted report of the chaos suite.

Nothing here is a stand-in for a service: the services run as their own processes (see
``conftest.py``); these are the parties around them — the website backend placing orders over
RPC and applying course events through an inbox, the centre's staff editing courses in the
coursedb, and the network between the services and PostgreSQL (a TCP proxy that is cut).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiomisc.pytest import TCPProxy
from coursedb import schema as cdb
from coursedb.access import update_row
from mesh_common.bus import (
    BusError,
    BusSettings,
    MessageContext,
    RemoteInternalError,
    RemoteInvalidRequest,
    create_bus,
)
from mesh_common.bus.errors import RemoteConflict, RemoteUnavailable
from mesh_common.bus.inbox import Inbox, inbox_table
from mesh_contracts.booking import Order, OrderResult, PlaceOrder
from mesh_contracts.course_export import CourseChanged
from pydantic import SecretStr
from sqlalchemy import (
    BigInteger,
    Column,
    Identity,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

REPORT_PATH = Path(__file__).resolve().parents[2] / "artifacts" / "chaos-report.json"
COURSE_CHANGED = CourseChanged.__message_type__


async def eventually(
    check: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.2, what: str = ""
) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy; fail after ``timeout``."""
    end = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > end:
            raise AssertionError(f"not reached within {timeout:.0f}s: {what or check}")
        await asyncio.sleep(interval)


# ------------------------------------------------------------------------------ the report


@dataclass
class StreamCount:
    """One stream of messages through one fault: what went in, what came out."""

    scenario: str
    stream: str
    fault: str
    sent: int = 0  # messages the producer created (outbox rows, orders, mails)
    acknowledged: int = 0  # confirmed by the next hop (broker confirm, RPC answer, SMTP 250)
    lost: int = 0  # acknowledged but never took effect — must be 0
    duplicated: int = 0  # delivered again after a fault (absorbed: no second effect)
    dead_lettered: int = 0  # parked in a DLQ / marked failed for good at the end
    effects: int = 0  # effects counted in the database
    retries: int = 0  # bounded retries the fault caused (calls repeated, SMTP attempts...)
    seconds: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)


class ChaosReport:
    """Collects every stream of the run; written to artifacts/chaos-report.json."""

    def __init__(self, path: Path = REPORT_PATH) -> None:
        self.path = path
        self.streams: list[StreamCount] = []
        self.started = time.time()

    def add(self, count: StreamCount) -> StreamCount:
        self.streams.append(count)
        self.write()
        return count

    def totals(self) -> dict[str, int]:
        keys = ("sent", "acknowledged", "lost", "duplicated", "dead_lettered", "effects", "retries")
        return {k: sum(int(getattr(s, k)) for s in self.streams) for k in keys}

    def as_dict(self) -> dict[str, Any]:
        return {
            "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "duration_seconds": round(time.time() - self.started, 1),
            "totals": self.totals(),
            "streams": [asdict(s) for s in self.streams],
        }

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.as_dict(), indent=2, default=str) + "\n")

    def table(self) -> str:
        head = (
            f"{'scenario':<22} {'stream':<26} {'sent':>5} {'ack':>5} {'lost':>4} "
            f"{'dup':>4} {'dlq':>4} {'effects':>7} {'retries':>7} {'s':>6}"
        )
        lines = [head, "-" * len(head)]
        for s in self.streams:
            lines.append(
                f"{s.scenario:<22} {s.stream:<26} {s.sent:>5} {s.acknowledged:>5} {s.lost:>4} "
                f"{s.duplicated:>4} {s.dead_lettered:>4} {s.effects:>7} {s.retries:>7} "
                f"{s.seconds:>6.1f}"
            )
        t = self.totals()
        lines.append("-" * len(head))
        lines.append(
            f"{'total':<49} {t['sent']:>5} {t['acknowledged']:>5} {t['lost']:>4} "
            f"{t['duplicated']:>4} {t['dead_lettered']:>4} {t['effects']:>7} {t['retries']:>7}"
        )
        return "\n".join(lines)


# ------------------------------------------------------------------------------ the network


class PgLink:
    """The network between the services and PostgreSQL: an aiomisc TCP proxy that can be cut.

    ``cut()`` closes every open connection (whatever transaction was running on it dies);
    ``down()`` also stops listening, so new connections are refused; ``up()`` listens again on
    the same port.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 5432) -> None:
        self.proxy = TCPProxy(host, port)
        self.cuts = 0
        self.connections_cut = 0

    @property
    def port(self) -> int:
        return int(self.proxy.proxy_port)

    def url(self, database_url: str) -> str:
        return (
            make_url(database_url)
            .set(host="127.0.0.1", port=self.port)
            .render_as_string(hide_password=False)
        )

    @property
    def open_connections(self) -> int:
        return len(self.proxy.clients)

    async def up(self) -> None:
        await self.proxy.start(timeout=10)

    async def cut(self) -> int:
        n = self.open_connections
        self.cuts += 1
        self.connections_cut += n
        await self.proxy.disconnect_all()
        return n

    async def down(self) -> None:
        server, self.proxy.server = self.proxy.server, None
        if server is not None:
            server.close()
            await server.wait_closed()
        await self.cut()

    async def close(self) -> None:
        await self.proxy.close(timeout=10)


# ------------------------------------------------------------------------------ the website


class CatalogueSite:
    """The website backend's consumer of ``course_export.course_changed.v1``.

    Each event is applied through the inbox into a PostgreSQL table (one effect row per applied
    message), so duplicates can be counted where they would hurt: in the database. The ack is
    held back ``ack_delay`` seconds after the commit, like a consumer under load; a broker crash
    in that window redelivers messages whose effect already committed, which the inbox absorbs.
    """

    queue_handler = "on_course_changed"

    def __init__(self, amqp_url: str, db_url: str, *, ack_delay: float = 0.15) -> None:
        self.metadata = MetaData(schema="chaos_site")
        self.inbox_table = inbox_table(self.metadata)
        self.effects = Table(
            "course_effects",
            self.metadata,
            Column("id", BigInteger, Identity(), primary_key=True),
            Column("message_id", String(64), nullable=False),  # no unique: count repeats
            Column("number", String(40), nullable=False),
            Column("revision", Integer, nullable=False),
            Column("title", Text, nullable=False),
        )
        self.engine = create_async_engine(db_url, pool_size=10)
        self.inbox = Inbox(self.inbox_table, async_sessionmaker(self.engine))
        self.ack_delay = ack_delay
        self.deliveries: Counter[str] = Counter()
        self.holding = 0  # committed, ack not yet sent
        self.bus = create_bus(
            BusSettings(
                service="chaos-site",
                amqp_url=SecretStr(amqp_url),
                prefetch=16,
                reconnect_interval=0.2,
                publish_timeout=60.0,
                retry_delays=(0.2, 0.5, 1.0),
            )
        )

        async def apply(msg: CourseChanged, ctx: MessageContext, session: Any) -> None:
            await session.execute(
                self.effects.insert().values(
                    message_id=ctx.message_id,
                    number=msg.course.number,
                    revision=msg.course.revision,
                    title=msg.course.title,
                )
            )

        applied = self.inbox.idempotent(apply)

        @self.bus.event(CourseChanged, name=self.queue_handler)
        async def on_course_changed(msg: CourseChanged, ctx: MessageContext) -> None:
            self.deliveries[ctx.message_id] += 1
            await applied(msg, ctx)
            self.holding += 1
            try:
                await asyncio.sleep(self.ack_delay)
            finally:
                self.holding -= 1

    @property
    def queue(self) -> str:
        return self.bus.queue_name(self.queue_handler)

    async def start(self) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(text("CREATE SCHEMA IF NOT EXISTS chaos_site"))
            await conn.run_sync(self.metadata.create_all)
        await self.bus.start()

    async def stop(self) -> None:
        await self.bus.stop(grace=2)
        await self.engine.dispose()

    async def inbox_ids(self) -> set[str]:
        t = self.inbox_table
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(t.c.message_id).where(t.c.handler == self.queue))
            return {r[0] for r in rows}

    async def effects_per_message(self, ids: Iterable[str]) -> Counter[str]:
        wanted = list(ids)
        out: Counter[str] = Counter()
        if not wanted:
            return out
        e = self.effects
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(e.c.message_id, func.count())
                .where(e.c.message_id.in_(wanted))
                .group_by(e.c.message_id)
            )
            out.update({r[0]: int(r[1]) for r in rows})
        return out

    async def latest_titles(self) -> dict[str, str]:
        """The replica: each course's title at its highest applied revision."""
        e = self.effects
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(e.c.number, e.c.revision, e.c.title).order_by(e.c.number, e.c.revision)
            )
            return {r.number: r.title for r in rows}

    async def dead_lettered(self) -> int:
        return len(await self.bus.dlq_list(self.queue, limit=1000))


# ------------------------------------------------------------------------------ course edits


class CourseEditor:
    """The centre's staff editing course titles in the coursedb at a steady rate."""

    def __init__(self, engine: AsyncEngine, courses: list[tuple[int, str]], tag: str) -> None:
        self.engine = engine
        self.courses = courses
        self.tag = tag
        self.writes = 0
        self.errors = 0

    async def run(self, stop: asyncio.Event, *, interval: float = 0.1) -> None:
        n = 0
        while not stop.is_set():
            course_id, _ = self.courses[n % len(self.courses)]
            n += 1
            try:
                async with self.engine.begin() as conn:
                    await update_row(
                        conn, cdb.courses, course_id, {"title": f"Kurs {self.tag} #{n}"}
                    )
                self.writes += 1
            except Exception:
                self.errors += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    async def current_titles(self) -> dict[str, str]:
        numbers = [number for _, number in self.courses]
        c = cdb.courses
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(c.c.number, c.c.title).where(c.c.number.in_(numbers)))
            return {r.number: r.title for r in rows}


async def exported_courses(engine: AsyncEngine, limit: int) -> list[tuple[int, str]]:
    """Open, published courses (the ones course-export publishes), by id."""
    c = cdb.courses
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(c.c.id, c.c.number)
            .where(c.c.publish.is_(True), c.c.status == "open")
            .order_by(c.c.id)
            .limit(limit)
        )
        return [(int(r.id), str(r.number)) for r in rows]


async def make_bookable(engine: AsyncEngine) -> list[str]:
    """Open web-bookable courses get plenty of seats and a future deadline (seat contention is
    tested elsewhere); returns their numbers."""
    c = cdb.courses
    bookable = (c.c.status == "open") & c.c.web_bookable.is_(True)
    async with engine.begin() as conn:
        await conn.execute(
            update(c)
            .where(bookable)
            .values(
                max_participants=10000,
                registration_mode="direct",
                registration_deadline=text("now() + interval '30 days'"),
            )
        )
        return list((await conn.execute(select(c.c.number).where(bookable))).scalars())


async def limit_seats(engine: AsyncEngine, number: str, free: int) -> None:
    """Leave ``free`` seats (next to the seed's own registrations) and a waiting list on the
    course: overbooking would show here."""
    c, r = cdb.courses, cdb.registrations
    async with engine.begin() as conn:
        course_id = await conn.scalar(select(c.c.id).where(c.c.number == number))
        held = await conn.scalar(
            select(func.count())
            .select_from(r)
            .where(r.c.course_id == course_id, r.c.status.in_(["booked", "provisional"]))
        )
        await conn.execute(
            update(c)
            .where(c.c.id == course_id)
            .values(max_participants=int(held or 0) + free, registration_mode="waiting_list")
        )


async def registrations_by_status(
    engine: AsyncEngine, number: str, orders: Iterable[str]
) -> Counter[str]:
    """Registrations of ``orders`` on the course, by status."""
    c, r, o = cdb.courses, cdb.registrations, cdb.orders
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(r.c.status, func.count())
            .select_from(r.join(c, c.c.id == r.c.course_id).join(o, o.c.id == r.c.order_id))
            .where(c.c.number == number, o.c.external_order_id.in_(list(orders)))
            .group_by(r.c.status)
        )
        return Counter({str(row[0]): int(row[1]) for row in rows})


# ------------------------------------------------------------------------------ orders


def order(tag: str, n: int, course: str, *, mode: str | None = None) -> Order:
    """One website order of a new person with a unique e-mail address."""
    item: dict[str, Any] = {"participant": "p1", "course_number": course}
    if mode is not None:
        item["mode"] = mode
    return Order.model_validate(
        {
            "external_order_id": f"CH-{tag}-{n:04d}-{uuid.uuid4().hex[:6]}",
            "participants": [
                {
                    "key": "p1",
                    "person": {
                        "first_name": f"Chaos{n}",
                        "last_name": tag.capitalize(),
                        "birth_date": "1990-04-05",
                        "email": f"chaos-{tag}-{n}@example.org",
                    },
                }
            ],
            "items": [item],
            "payment": {"method": "invoice"},
        }
    )


@dataclass
class OrderStats:
    orders: int = 0
    calls: int = 0
    answered: dict[str, OrderResult] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    attempts: Counter[str] = field(default_factory=Counter)

    @property
    def repeated(self) -> int:
        return self.calls - self.orders


class Website:
    """The website backend placing orders over ``booking.place_order``: a call that gets no
    answer or a temporary error is repeated with the same order (same id), a bounded number of
    times, as docs/booking.md asks of callers."""

    def __init__(self, amqp_url: str, *, rpc_timeout: float = 6.0) -> None:
        self.bus = create_bus(
            BusSettings(
                service="chaos-web",
                amqp_url=SecretStr(amqp_url),
                rpc_timeout=rpc_timeout,
                reconnect_interval=0.2,
                publish_timeout=rpc_timeout,
            )
        )

    async def start(self) -> None:
        await self.bus.start()

    async def stop(self) -> None:
        await self.bus.stop(grace=1)

    async def place_all(
        self,
        orders: list[Order],
        *,
        clients: int = 4,
        max_attempts: int = 40,
        pause: float = 0.3,
        pace: float = 0.0,
        stats: OrderStats | None = None,
        on_answer: Callable[[OrderStats], Awaitable[None]] | None = None,
    ) -> OrderStats:
        stats = stats if stats is not None else OrderStats()
        stats.orders += len(orders)
        queue: asyncio.Queue[Order] = asyncio.Queue()
        for o in orders:
            queue.put_nowait(o)

        async def client() -> None:
            while not queue.empty():
                o = queue.get_nowait()
                key = o.external_order_id
                for _ in range(max_attempts):
                    stats.calls += 1
                    stats.attempts[key] += 1
                    try:
                        result = await self.bus.call(PlaceOrder(order=o), OrderResult)
                    except (RemoteConflict, RemoteInvalidRequest):
                        raise  # never expected: a repeat must get the stored answer
                    except (BusError, TimeoutError, ConnectionError) as exc:
                        kind = type(exc).__name__
                        if isinstance(exc, RemoteUnavailable | RemoteInternalError):
                            kind = f"{kind}:{exc.code}"
                        stats.errors[kind] += 1
                        await asyncio.sleep(pause)
                        continue
                    stats.answered[key] = result
                    if on_answer is not None:
                        await on_answer(stats)
                    break
                else:
                    raise AssertionError(f"{key}: no answer after {max_attempts} attempts")
                if pace:
                    await asyncio.sleep(pace)

        await asyncio.gather(*(client() for _ in range(clients)))
        return stats


async def coursedb_orders(engine: AsyncEngine, ids: list[str]) -> dict[str, int]:
    """external_order_id → number of registrations, for the orders in the coursedb."""
    o, r = cdb.orders, cdb.registrations
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(o.c.external_order_id, func.count(r.c.id))
            .select_from(o.outerjoin(r, r.c.order_id == o.c.id))
            .where(o.c.external_order_id.in_(ids))
            .group_by(o.c.external_order_id)
        )
        counts = {str(row[0]): int(row[1]) for row in rows}
        n_orders = await conn.scalar(
            select(func.count()).select_from(o).where(o.c.external_order_id.in_(ids))
        )
    assert n_orders == len(counts), "an external order id occurs twice in the coursedb"
    return counts


async def participants_tagged(engine: AsyncEngine, tag: str) -> int:
    p = cdb.participants
    async with engine.connect() as conn:
        return int(
            await conn.scalar(
                select(func.count()).select_from(p).where(p.c.email.like(f"chaos-{tag}-%"))
            )
            or 0
        )


async def outbox_mark(engine: AsyncEngine, schema: str) -> int:
    async with engine.connect() as conn:
        return int(
            await conn.scalar(text(f"SELECT coalesce(max(id), 0) FROM {schema}.mesh_outbox")) or 0
        )


async def outbox_rows(
    engine: AsyncEngine, schema: str, after_id: int, message_type: str
) -> list[Any]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                f"SELECT message_id, sent_at, failed_at, attempts FROM {schema}.mesh_outbox "
                "WHERE id > :after AND type = :type ORDER BY id"
            ),
            {"after": after_id, "type": message_type},
        )
        return list(rows)
