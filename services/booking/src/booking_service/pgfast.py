"""The order hot path on PostgreSQL: SQLAlchemy Core statements run straight on asyncpg.

Profiling the LIVE booking (docs/booking.md, "Performance") showed most of an order's CPU in
SQLAlchemy's per-statement machinery (execution context, greenlet hop, result processing, event
hooks, pool checkout objects), not in PostgreSQL or the network: the same statements on bare
asyncpg cost about a third. So the statements stay defined once as SQLAlchemy Core (the same
objects serve SQLite and MariaDB through the engine), and on PostgreSQL with asyncpg this module
runs them itself:

- each statement is compiled once per shape for the PostgreSQL dialect (SQLAlchemy's own cache
  key, so statements built per call still hit the cache; values embedded in them are taken from
  the key, as SQLAlchemy does); an expanding ``IN`` becomes ``= ANY($n)`` with one array
  parameter, so the SQL text and with it asyncpg's prepared statement never change with the
  number of values;
- bind processors of the column types (e.g. ``UTCDateTime``) and Python-side column defaults
  still apply; rows are asyncpg records that also allow attribute access, like SQLAlchemy rows;
- driver errors are raised as the SQLAlchemy exceptions the callers already handle
  (``IntegrityError``; ``DBAPIError`` with ``connection_invalidated`` for a lost connection and
  the server's SQLSTATE in ``orig``), so "unreachable", "repeat once on a dead connection" and
  "the order exists already" mean the same on both paths;
- a pool of its own (asyncpg's: no reset query on release, only a ``ROLLBACK`` when a
  transaction was left open; a connection interrupted mid-statement is terminated, not reused).

Only what the order path uses is supported; anything else (e.g. a ``POSTCOMPILE`` parameter
other than an ``IN`` list, an unknown kind of column default) fails loudly when compiled.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Dialect
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.schema import CallableColumnDefault, ScalarElementColumnDefault

_EXPANDING = re.compile(r"(NOT )?IN \(__\[POSTCOMPILE_([^\]]+)\]\)")
_RELEASE_TIMEOUT = 5.0


class Row(asyncpg.Record):  # type: ignore[misc]  # asyncpg ships no stubs
    """An asyncpg record that also reads like a SQLAlchemy row (``row.id``, ``row._mapping``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def _mapping(self) -> Row:
        return self


class Result:
    """The part of SQLAlchemy's result API the order path uses."""

    __slots__ = ("inserted_primary_key", "rows")

    def __init__(self, rows: list[Row], inserted_primary_key: tuple[Any, ...] | None) -> None:
        self.rows = rows
        self.inserted_primary_key = inserted_primary_key

    def all(self) -> list[Row]:
        return self.rows

    def first(self) -> Row | None:
        return self.rows[0] if self.rows else None

    def one(self) -> Row:
        if len(self.rows) != 1:
            raise sa_exc.NoResultFound() if not self.rows else sa_exc.MultipleResultsFound()
        return self.rows[0]

    def scalar(self) -> Any:
        return self.rows[0][0] if self.rows else None

    def scalars(self) -> list[Any]:
        return [row[0] for row in self.rows]


@dataclass(frozen=True, slots=True)
class _Slot:
    """Where the value of one positional parameter comes from."""

    name: str  # the parameter's name in the compiled statement
    key: str  # the bind parameter's key (what callers pass)
    extracted: int  # its index among the cache key's parameters (-1: none)
    bind: Any  # the compiled BindParameter (its value when nothing else applies)
    expanding: bool  # an IN list, bound as one array
    process: Callable[[Any], Any] | None  # the column type's bind processor
    default: Callable[[], Any] | None  # a Python-side column default (INSERT/UPDATE)


@dataclass(frozen=True, slots=True)
class _Plan:
    sql: str
    slots: tuple[_Slot, ...]  # $1, $2, ...
    returns_key: bool  # an INSERT whose RETURNING is only the implicit primary key


def _callable(default: Any, column: Any) -> Callable[[], Any]:
    if isinstance(default, ScalarElementColumnDefault):
        value = default.arg
        return lambda: value
    if isinstance(default, CallableColumnDefault):
        fn = default.arg
        return lambda: fn(None)  # type: ignore[arg-type]  # SQLAlchemy's wrapper needs no context
    raise NotImplementedError(f"column default of {column} is not supported by pgfast")


class Statements:
    """Compiled statements for one dialect (and schema translation), bounded LRU."""

    def __init__(self, dialect: Dialect, *, schema: str | None = None, size: int = 256) -> None:
        self.dialect = dialect
        self.schema_map = {None: schema} if schema else None
        self.size = size
        self._plans: OrderedDict[Any, _Plan] = OrderedDict()

    def bind(self, statement: Any, params: Mapping[str, Any] | None) -> tuple[_Plan, list[Any]]:
        """The plan of ``statement`` and its positional arguments for ``params``.

        The values are resolved as SQLAlchemy's ``construct_params`` does: a given parameter
        (by key or name); else the value embedded in this statement object (found through
        the cache key, positionally); else the compiled parameter's own value. A required
        parameter without a value is an error, not a NULL."""
        params = params or {}
        key = statement._generate_cache_key()
        if key is None:  # pragma: no cover - every statement of the order path is cacheable
            raise NotImplementedError("pgfast needs statements with a cache key")
        cache_key = (key.key, tuple(sorted(params)))
        plan = self._plans.get(cache_key)
        if plan is None:
            plan = self._compile(statement, key, cache_key[1])
            self._plans[cache_key] = plan
            if len(self._plans) > self.size:
                self._plans.popitem(last=False)
        extracted = key.bindparams
        args: list[Any] = []
        for slot in plan.slots:
            if slot.key in params:
                value = params[slot.key]
            elif slot.name in params:
                value = params[slot.name]
            elif slot.default is not None:
                value = slot.default()
            else:
                source = extracted[slot.extracted] if slot.extracted >= 0 else slot.bind
                if slot.bind.required and source is slot.bind:
                    raise sa_exc.InvalidRequestError(
                        f"A value is required for bind parameter {slot.key!r}"
                    )
                value = source.effective_value if slot.bind.callable else source.value
            process = slot.process
            if slot.expanding:
                value = [process(v) for v in value] if process is not None else list(value)
            elif process is not None:
                value = process(value)
            args.append(value)
        return plan, args

    def _compile(self, statement: Any, key: Any, column_keys: tuple[str, ...]) -> _Plan:
        kwargs: dict[str, Any] = {
            "dialect": self.dialect,
            "column_keys": list(column_keys),
            "cache_key": key,
        }
        if self.schema_map:
            kwargs["schema_translate_map"] = self.schema_map
            kwargs["render_schema_translate"] = True
        compiled: SQLCompiler = statement.compile(**kwargs)
        if getattr(compiled, "_collect_params", False):  # pragma: no cover - not used here
            raise NotImplementedError("pgfast cannot run statements with collected parameters")
        # positiontup holds the (escaped) names in the order of $1, $2, ...; IN lists have no
        # number yet and get the ones after the others.
        unescape = {v: k for k, v in (compiled.escaped_bind_names or {}).items()}
        bind_of = {name: bind for bind, name in compiled.bind_names.items()}
        positions = list(compiled.positiontup or ())
        expanding = {name for name in positions if bind_of[unescape.get(name, name)].expanding}
        names = [n for n in positions if n not in expanding]
        names += [n for n in positions if n in expanding]
        number = {name: i + 1 for i, name in enumerate(names)}

        def rewrite(match: re.Match[str]) -> str:
            n = number[match.group(2)]
            return f"<> ALL(${n})" if match.group(1) else f"= ANY(${n})"

        sql = _EXPANDING.sub(rewrite, compiled.string)
        if "__[POSTCOMPILE_" in sql:
            raise NotImplementedError(f"pgfast cannot run this statement: {sql[:200]}")
        # The statement's own parameters, positionally in its cache key (as SQLAlchemy relates
        # a cached compilation to a new statement of the same shape).
        match, _ = compiled._cache_key_bind_match  # type: ignore[misc]
        index = {bind: i for i, orig in enumerate(key.bindparams) for bind in match[orig]}
        # Python-side defaults SQLAlchemy would compute before executing: the default of an
        # INSERT's missing columns, the onupdate of an UPDATE's.
        defaults = {c.key: _callable(c.default, c) for c in compiled.insert_prefetch}
        defaults.update({c.key: _callable(c.onupdate, c) for c in compiled.update_prefetch})
        slots = []
        for name in names:
            bind = bind_of[unescape.get(name, name)]
            slots.append(
                _Slot(
                    name=unescape.get(name, name),
                    key=bind.key,
                    extracted=index.get(bind, -1),
                    bind=bind,
                    expanding=name in expanding,
                    process=bind.type.dialect_impl(self.dialect).bind_processor(self.dialect),
                    default=defaults.get(bind.key),
                )
            )
        returns_key = bool(
            compiled.isinsert
            and compiled.implicit_returning
            and not getattr(statement, "_returning", ())
        )
        return _Plan(sql=sql, slots=tuple(slots), returns_key=returns_key)


def _translate(exc: BaseException, sql: str | None, raw: Any) -> Exception:
    """The SQLAlchemy exception the engine would have raised for this driver error (``raw``:
    the connection it happened on; None while connecting)."""
    if isinstance(exc, asyncpg.IntegrityConstraintViolationError):
        return sa_exc.IntegrityError(sql, None, exc)
    if raw is None:  # no connection: refused, timed out, database missing, too many clients
        if isinstance(exc, OSError):
            return sa_exc.OperationalError(sql, None, exc)
        return sa_exc.DBAPIError(sql, None, exc)
    lost = isinstance(exc, asyncpg.ConnectionDoesNotExistError | OSError) or _is_closed(raw)
    if lost:
        return sa_exc.DBAPIError(sql, None, exc, connection_invalidated=True)
    if isinstance(exc, asyncpg.InterfaceError):
        return sa_exc.InterfaceError(sql, None, exc)
    return sa_exc.DBAPIError(sql, None, exc)


_DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)


class PgConnection:
    """One pooled asyncpg connection behind ``execute`` / ``scalar`` like an AsyncConnection."""

    __slots__ = ("dialect", "raw", "statements")

    def __init__(self, raw: asyncpg.Connection, statements: Statements) -> None:
        self.raw = raw
        self.statements = statements
        self.dialect = statements.dialect

    async def execute(self, statement: Any, params: Mapping[str, Any] | None = None) -> Result:
        plan, args = self.statements.bind(statement, params)
        try:
            rows = await self.raw.fetch(plan.sql, *args)
        except _DRIVER_ERRORS as exc:
            raise _translate(exc, plan.sql, self.raw) from exc
        key = tuple(rows[0]) if plan.returns_key and rows else None
        return Result(rows, key)

    async def scalar(self, statement: Any, params: Mapping[str, Any] | None = None) -> Any:
        return (await self.execute(statement, params)).scalar()


async def _no_reset(con: asyncpg.Connection) -> None:
    """Instead of asyncpg's reset query on every release (a round trip): the order path sets
    no session state. (An open transaction is still rolled back by asyncpg on release.)"""


class PgPool:
    """An asyncpg pool for the database of a SQLAlchemy engine (same URL and options).

    Connections open lazily (none at start, so an unreachable database does not stop the
    service); ``max_size`` bounds them. ``connect_timeout`` bounds each connection attempt,
    ``acquire_timeout`` the wait for a free connection (as the engine's ``pool_timeout``).
    """

    def __init__(
        self,
        url: URL,
        dialect: Dialect,
        *,
        max_size: int,
        schema: str | None = None,
        connect_timeout: float | None = None,
        acquire_timeout: float = 30.0,
    ) -> None:
        _, kwargs = dialect.create_connect_args(url)
        for option in ("prepared_statement_cache_size", "prepared_statement_name_func"):
            kwargs.pop(option, None)
        if connect_timeout is not None:
            kwargs["timeout"] = connect_timeout
        self._connect_kwargs = kwargs
        self.max_size = max_size
        self.acquire_timeout = acquire_timeout
        self.statements = Statements(dialect, schema=schema)
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def for_engine(
        cls,
        engine: AsyncEngine,
        *,
        max_size: int,
        connect_timeout: float | None = None,
        acquire_timeout: float = 30.0,
    ) -> PgPool | None:
        """A pool beside ``engine`` when it is PostgreSQL on asyncpg (else None). The
        engine's ``schema_translate_map`` (a service's own schema) is applied too."""
        if engine.dialect.name != "postgresql" or engine.dialect.driver != "asyncpg":
            return None
        translate = engine.get_execution_options().get("schema_translate_map") or {}
        return cls(
            engine.url,
            engine.dialect,
            max_size=max_size,
            schema=translate.get(None),
            connect_timeout=connect_timeout,
            acquire_timeout=acquire_timeout,
        )

    async def _get(self) -> asyncpg.Pool:
        pool = self._pool
        if pool is not None:
            return pool
        async with self._lock:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    min_size=0,
                    max_size=self.max_size,
                    reset=_no_reset,
                    record_class=Row,
                    **self._connect_kwargs,
                )
            return self._pool

    @asynccontextmanager
    async def _acquire(self) -> AsyncIterator[asyncpg.Connection]:
        pool = await self._get()
        try:
            raw = await pool.acquire(timeout=self.acquire_timeout)
        except _DRIVER_ERRORS as exc:  # TimeoutError is an OSError: "unreachable"
            raise _translate(exc, None, None) from exc
        try:
            yield raw
        except BaseException as exc:
            # Interrupted mid-statement (timeout, cancel) or the connection failed: do not
            # reuse it; closing the socket also ends the transaction and its row locks.
            if (
                not isinstance(exc, Exception)
                or isinstance(exc, TimeoutError)
                or getattr(exc, "connection_invalidated", False)
            ):
                _terminate(raw)
            raise
        finally:
            await pool.release(raw, timeout=_RELEASE_TIMEOUT)  # no-op once asyncpg let it go

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[PgConnection]:
        """A connection in autocommit mode (each statement is its own transaction)."""
        async with self._acquire() as raw:
            yield PgConnection(raw, self.statements)

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[PgConnection]:
        """A transaction: committed when the block ends normally, rolled back otherwise."""
        async with self._acquire() as raw:
            try:
                await raw.execute("BEGIN")
            except _DRIVER_ERRORS as exc:
                raise _translate(exc, "BEGIN", raw) from exc
            try:
                yield PgConnection(raw, self.statements)
            except Exception as exc:
                # A healthy connection is rolled back here (an interrupted or broken one is
                # closed by _acquire, which ends its transaction on the server).
                if not (
                    _is_closed(raw)
                    or isinstance(exc, TimeoutError)
                    or getattr(exc, "connection_invalidated", False)
                ):
                    try:
                        await raw.execute("ROLLBACK")
                    except _DRIVER_ERRORS:
                        _terminate(raw)
                raise
            try:
                await raw.execute("COMMIT")
            except _DRIVER_ERRORS as exc:
                raise _translate(exc, "COMMIT", raw) from exc

    async def close(self, grace: float = _RELEASE_TIMEOUT) -> None:
        """Close the pool like an engine's ``dispose()``: connections in use are closed when
        released (waiting up to ``grace`` seconds, then cut); a later use opens a new pool."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), grace)
            except (TimeoutError, *_DRIVER_ERRORS):
                pool.terminate()


def _is_closed(raw: asyncpg.Connection) -> bool:
    """Whether the pooled connection is gone. When the server or the network drops it, asyncpg
    closes it and detaches our proxy from it at once; the proxy then raises InterfaceError for
    every call, which here means "closed"."""
    try:
        return bool(raw.is_closed())
    except asyncpg.InterfaceError:
        return True


def _terminate(raw: asyncpg.Connection) -> None:
    """Close the pooled connection now (see :func:`_is_closed`: a detached one is closed)."""
    with contextlib.suppress(asyncpg.InterfaceError):
        raw.terminate()
