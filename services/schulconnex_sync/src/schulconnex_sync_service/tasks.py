"""The sync on the shared task framework: one task, ``schulconnex-sync``.

A run is an execution with a per-record item log; "dry run", "retry failed only", cancel and the
lease (one run per tenant database at a time, across replicas) come from
:mod:`mesh_common.tasks`. Run parameters (all optional): the selection of seed step 2
(``courses`` — course numbers, ``semester``, ``statuses``, ``participants``, ``lecturers``) and
``connection`` (a stored connection; without it the ``SCHULCONNEX_*`` environment is used).
Manual only, unless ``SYNC_INTERVAL_SECONDS`` sets a schedule.

``mode=schuljahrwechsel`` (``POST /schuljahrwechsel``) is the school-year change of
:mod:`schulconnex_sync_service.schuljahr`: ``change`` holds its options, ``plan`` the reviewed
dry run. The same task on purpose: its lease keeps a change and a sync from running at once.
"""

from __future__ import annotations

from typing import Any

from mesh_common.app import ServiceRuntime
from mesh_common.connectors import Connectors
from mesh_common.connectors.api import EXTRAS_KEY as CONNECTORS
from mesh_common.tasks import Interval, TaskContext, TaskRegistry

from schulconnex_sync_service.client import SchulconnexClient
from schulconnex_sync_service.confirmations import ConfirmationStore
from schulconnex_sync_service.connection import ENV_TENANT, KIND, config_from_env
from schulconnex_sync_service.local import Selection
from schulconnex_sync_service.schuljahr import ChangeOptions
from schulconnex_sync_service.settings import Settings
from schulconnex_sync_service.sync import SyncDeps, SyncRun

TASK = "schulconnex-sync"
CONFIRMATIONS = "confirmations"


def build(holder: dict[str, Any], settings: Settings) -> TaskRegistry:
    """The task registry; ``holder["runtime"]`` is set at startup."""
    tasks = TaskRegistry()
    interval = settings.sync_interval_seconds
    schedule = Interval(interval) if interval else None

    @tasks.task(TASK, schedule=schedule)
    async def sync(ctx: TaskContext) -> None:
        """Synchronise persons, groups and memberships with Schulconnex (seed steps 1-11)."""
        runtime: ServiceRuntime = holder["runtime"]
        change: ChangeOptions | None = None
        if ctx.params.get("mode") == "schuljahrwechsel":
            change = ChangeOptions.model_validate(ctx.params.get("change") or {})
            selection = Selection.from_params(
                {
                    "semester": change.to_semester,
                    "statuses": change.statuses,
                    "participants": change.participants,
                    "lecturers": change.lecturers,
                }
            )
        else:
            selection = Selection.from_params(ctx.params)
        connectors: Connectors = runtime.extras[CONNECTORS]
        name = ctx.params.get("connection")
        if name:
            stored = await connectors.connections.resolve(str(name), kind=KIND)
            config, tenant = stored.client_config(), str(name)
        else:
            config, tenant = config_from_env(settings), ENV_TENANT
        async with SchulconnexClient(config) as client:
            deps = SyncDeps(
                client=client,
                coursedb=runtime.extras["coursedb"],
                connectors=connectors,
                confirmations=runtime.extras[CONFIRMATIONS],
                tenant=tenant,
                vertrauensstufe=settings.person_vertrauensstufe,
                group_import_types=tuple(settings.group_import_types),
                import_course_category=settings.import_course_category,
                width=max(4, 2 * config.max_concurrency),
                delete_mode=settings.sync_delete_mode,
                kontext_deletion_days=settings.kontext_deletion_days,
            )
            plan = ctx.params.get("plan")
            await SyncRun(ctx, deps).run(
                selection, change=change, plan_id=str(plan) if plan else None
            )

    return tasks


__all__ = ["CONFIRMATIONS", "TASK", "ConfirmationStore", "build"]
