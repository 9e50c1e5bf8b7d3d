"""Builds the course-export service app from explicit settings."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from mesh_common.app import create_service_app

from course_export_service import __doc__ as DOC
from course_export_service.models import metadata
from course_export_service.settings import Settings

MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    return create_service_app(
        settings,
        title="edumesh course-export",
        description=(DOC or "").strip(),
        metadata=metadata,
        migrations=MIGRATIONS,
    )
