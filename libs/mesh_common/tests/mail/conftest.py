"""Fixtures of the mail tests: a service database per backend (SQLite file | fresh PostgreSQL
schema) with the mail and template tables, and mail settings pointing at the test SMTP server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from mesh_common.db import Database, service_metadata
from mesh_common.mail import (
    MailSender,
    MailSettings,
    MailTables,
    TemplateTables,
    create_mail_tables,
    mail_tables,
    template_tables,
)
from mesh_common.testing.smtp import SmtpCapture
from sqlalchemy import MetaData, text


class Env:
    """One service database (and its replicas' engines) with the mail tables."""

    def __init__(self, backend: str, url: str, schema: str | None) -> None:
        self.backend = backend
        self.url = url
        self.schema = schema
        self.metadata: MetaData = service_metadata()
        self.mail: MailTables = mail_tables(self.metadata)
        self.templates: TemplateTables = template_tables(self.metadata)
        self.dbs: list[Database] = []
        self.senders: list[MailSender] = []
        self.db = self.database()

    def database(self) -> Database:
        db = Database(self.url, schema=self.schema)
        self.dbs.append(db)
        return db

    def sender(self, settings: MailSettings, *, own_engine: bool = False, **kw: Any) -> MailSender:
        """A sender (not started); ``own_engine`` makes it a separate replica."""
        db = self.database() if own_engine else self.db
        sender = MailSender(db, self.mail, settings, **kw)
        self.senders.append(sender)
        return sender

    async def aclose(self) -> None:
        for sender in self.senders:
            await sender.stop()
        for db in self.dbs:
            await db.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
async def env(request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    if request.param == "sqlite":
        e = Env("sqlite", request.getfixturevalue("sqlite_url"), None)
    else:
        e = Env("postgres", request.getfixturevalue("pg_url"), f"mail_{uuid.uuid4().hex[:10]}")
    await create_mail_tables(e.db, e.mail, e.templates)
    try:
        yield e
    finally:
        await e.aclose()
        if e.schema:
            cleanup = Database(e.url)
            async with cleanup.engine.begin() as conn:
                await conn.execute(text(f'DROP SCHEMA IF EXISTS "{e.schema}" CASCADE'))
            await cleanup.dispose()


def mail_settings(server: SmtpCapture, **overrides: Any) -> MailSettings:
    """Settings for fast tests: the test server, short backoff and polling."""
    values: dict[str, Any] = {
        "smtp_host": server.host,
        "smtp_port": server.port,
        "smtp_timeout": 5,
        "mail_from": "VHS Musterstadt <noreply@vhs-musterstadt.de>",
        "mail_backoff_seconds": 0.05,
        "mail_backoff_max_seconds": 0.2,
        "mail_poll_seconds": 0.05,
        "mail_max_attempts": 5,
    }
    values.update(overrides)
    return MailSettings(**values)


@pytest.fixture
def settings(smtp_server: SmtpCapture) -> MailSettings:
    return mail_settings(smtp_server)
