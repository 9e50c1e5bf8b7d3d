"""Builds the booking service app from explicit settings."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from mesh_common.app import create_service_app

from booking_service import __doc__ as DOC
from booking_service.models import metadata
from booking_service.settings import Settings

MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    return create_service_app(
        settings,
        title="edumesh booking",
        description=(DOC or "").strip(),
        metadata=metadata,
        migrations=MIGRATIONS,
    )
