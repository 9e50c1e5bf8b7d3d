"""HTTP API of the mailbox-invites service: thin routes that call the service layer."""

from __future__ import annotations

from fastapi import APIRouter, Request

router = APIRouter(tags=["mailbox-invites"])


@router.get("/about", summary="What this service is and which version runs")
async def about(request: Request) -> dict[str, str]:
    settings = request.app.state.settings
    return {
        "service": settings.service_name,
        "version": request.app.version,
        "environment": settings.environment,
    }
