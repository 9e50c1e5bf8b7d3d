"""What the running booking service holds (built at startup, ``runtime.extras["booking"]``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from coursedb.banking import BankCipher
from fastapi import Request
from mesh_common.app import ServiceRuntime
from mesh_common.auth import TokenVerifier
from mesh_contracts.booking import OrderResult
from sqlalchemy.ext.asyncio import AsyncEngine

from booking_service.booker import Booker
from booking_service.documents import Creditor, OrderDocuments, load_documents
from booking_service.mailing import NotificationWorker
from booking_service.service import BacklogWorker, OrderService
from booking_service.settings import Settings

EXTRAS_KEY = "booking"


@dataclass
class Booking:
    runtime: ServiceRuntime
    settings: Settings
    coursedb: AsyncEngine
    cipher: BankCipher
    booker: Booker
    orders: OrderService
    worker: BacklogWorker
    mailer: NotificationWorker
    verifier: TokenVerifier
    creditor: Creditor
    extras: dict[str, Any]

    async def documents(self, result: OrderResult) -> OrderDocuments | None:
        return await load_documents(self.coursedb, self.cipher, self.creditor, result)


def booking_of(runtime: ServiceRuntime) -> Booking:
    booking: Booking = runtime.extras[EXTRAS_KEY]
    return booking


def from_request(request: Request) -> Booking:
    return booking_of(request.app.state.runtime)
