"""`python -m booking_service`: run the booking service as its own process."""

import asyncio

from mesh_common.mail.sealing import rekey_target as mail_rekey_target
from mesh_common.rekey import RekeyTarget
from mesh_common.runner import main

from booking_service import models
from booking_service.app import create_app
from booking_service.settings import Settings


def rekey_targets(_settings: Settings) -> list[RekeyTarget]:
    """The encrypted columns ``python -m booking_service rekey`` re-encrypts (key rotation)."""
    return [mail_rekey_target(models.mail)]


def _uvloop() -> None:
    """Run on uvloop. The runner's uvicorn config names uvloop, but ``serve`` starts the
    server with ``asyncio.run``, which does not apply it; an order is a dozen network round
    trips, so the event loop's own cost per wake-up matters (docs/booking.md, Performance)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it where it exists
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


if __name__ == "__main__":
    _uvloop()
    raise SystemExit(main(create_app, Settings, rekey_targets=rekey_targets))
