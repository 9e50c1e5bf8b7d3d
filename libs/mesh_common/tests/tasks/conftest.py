"""Fixtures of the task tests: a database per backend (SQLite file | fresh PostgreSQL schema) with
the task tables, and a factory of runners on it; two runners are two replicas of one service."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from mesh_common.db import Database, service_metadata
from mesh_common.tasks import TaskRegistry, TaskRunner, TaskTables, create_task_tables, task_tables
from sqlalchemy import text


class Env:
    """One service database and the runners (replicas) started on it."""

    def __init__(self, url: str, schema: str | None) -> None:
        self.url = url
        self.schema = schema
        self.tables: TaskTables = task_tables(service_metadata())
        self.dbs: list[Database] = []
        self.runners: list[TaskRunner] = []

    def database(self) -> Database:
        db = Database(self.url, schema=self.schema)
        self.dbs.append(db)
        return db

    async def runner(self, registry: TaskRegistry, *, start: bool = True, **kw: Any) -> TaskRunner:
        """A runner on its own engine (a separate replica); fast ticks unless told otherwise."""
        kw.setdefault("tick_seconds", 0.02)
        kw.setdefault("stop_grace_seconds", 2.0)
        runner = TaskRunner(self.database(), registry, self.tables, **kw)
        self.runners.append(runner)
        if start:
            await runner.start()
        return runner

    async def aclose(self) -> None:
        for runner in self.runners:
            await runner.stop()
        for db in self.dbs:
            await db.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
async def env(request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    if request.param == "sqlite":
        e = Env(request.getfixturevalue("sqlite_url"), None)
    else:
        e = Env(request.getfixturevalue("pg_url"), f"tasks_{uuid.uuid4().hex[:10]}")
    admin = e.database()
    await create_task_tables(admin, e.tables)
    try:
        yield e
    finally:
        await e.aclose()
        if e.schema:
            cleanup = Database(e.url)
            async with cleanup.engine.begin() as conn:
                await conn.execute(text(f'DROP SCHEMA IF EXISTS "{e.schema}" CASCADE'))
            await cleanup.dispose()


@pytest.fixture
def registry() -> TaskRegistry:
    return TaskRegistry()


Factory = Callable[..., Any]
