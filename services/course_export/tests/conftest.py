"""Shared helpers of the course-export tests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from coursedb import schema
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

PublishedCourses = Callable[[AsyncEngine], Awaitable[list[Any]]]


async def _published_courses(engine: AsyncEngine) -> list[Any]:
    """(id, number) of every course the default templates publish, by id."""
    c = schema.courses
    query = (
        select(c.c.id, c.c.number)
        .where(c.c.publish.is_(True), c.c.status != "finished")
        .order_by(c.c.id)
    )
    async with engine.connect() as conn:
        return list((await conn.execute(query)).all())


@pytest.fixture
def published_courses() -> PublishedCourses:
    return _published_courses
