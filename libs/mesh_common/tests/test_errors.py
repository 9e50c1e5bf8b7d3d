"""Numbers too large for the database are the client's mistake: 422 problem+json, not a 500."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from mesh_common.errors import install_problem_handlers
from sqlalchemy import Column, Integer, MetaData, Table, select
from sqlalchemy.ext.asyncio import create_async_engine


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, sqlite_url: str) -> str:
    if request.param == "sqlite":
        return sqlite_url
    return request.getfixturevalue("pg_url")


async def test_an_id_beyond_64_bits_is_a_422_problem(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = create_async_engine(db_url)
    metadata = MetaData()
    things = Table("things_overflow", metadata, Column("id", Integer, primary_key=True))
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    app = FastAPI()
    install_problem_handlers(app)

    @app.get("/things/{thing_id}")
    async def get_thing(thing_id: int) -> dict[str, int]:
        async with engine.connect() as conn:
            row = (await conn.execute(select(things).where(things.c.id == thing_id))).first()
        return {"found": int(row is not None)}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a real bug")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        ok = await client.get("/things/1")
        assert ok.json() == {"found": 0}
        r = await client.get(f"/things/{2**70}")
        assert r.status_code == 422
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["code"] == "value-out-of-range"
    # Answered inside the app: nothing re-raised to the server, nothing logged as an error.
    caplog.clear()
    strict = httpx.ASGITransport(app=app, raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=strict, base_url="http://t") as client:
        assert (await client.get(f"/things/{2**70}")).status_code == 422
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        # Other unexpected errors stay 500s.
        assert (await client.get("/boom")).status_code == 500
    await engine.dispose()
