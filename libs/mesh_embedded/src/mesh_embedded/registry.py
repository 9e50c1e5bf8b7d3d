"""Which services exist, where their code lives and which port each gets by default."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ServiceSpec:
    name: str  # hyphenated, as in URLs: /api/<name>/...
    package: str
    port: int

    def settings_class(self) -> Any:
        return importlib.import_module(f"{self.package}.settings").Settings

    def create_app(self) -> Any:
        return importlib.import_module(f"{self.package}.app").create_app


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("course-export", "course_export_service", 8101),
    ServiceSpec("booking", "booking_service", 8102),
    ServiceSpec("profile", "profile_service", 8103),
    ServiceSpec("portal", "portal_service", 8104),
    ServiceSpec("mailbox-invites", "mailbox_invites_service", 8105),
    ServiceSpec("schulconnex-sync", "schulconnex_sync_service", 8106),
)
GATEWAY_PORT = 8080
