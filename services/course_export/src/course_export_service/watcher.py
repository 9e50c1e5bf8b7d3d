"""Live change export on PostgreSQL: NOTIFY from the coursedb change log starts a change run.

:class:`ChangeWatcher` runs in every replica when the change log is installed. It LISTENs on the
change log's channel; when a change was committed (after a short ``debounce`` that gathers a
burst) and the log holds rows, it starts the ``export-changes`` task now, so a change reaches
the bus within about a second instead of at the next interval. The task itself takes the rows
from the log, exports, and acks them; the watcher never touches the log.

When its own run ends the watcher looks again at once (rows committed meanwhile are waiting);
if the task is running elsewhere (another replica, a manual run), it retries every ``retry``
seconds while rows remain. The
interval schedule of ``export-changes`` stays as the fallback for a lost notification or a
listener that cannot connect. This module must not export or write anything itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from mesh_common.errors import Conflict
from mesh_common.tasks import TaskRunner
from sqlalchemy.ext.asyncio import AsyncEngine

from course_export_service.changefeed import ChangeListener, has_changes

log = logging.getLogger("course_export.watcher")


class ChangeWatcher:
    def __init__(
        self,
        coursedb: AsyncEngine,
        runner: TaskRunner,
        task: str,
        *,
        debounce: float = 0.1,
        retry: float = 0.25,
        idle: float = 30.0,
        run_timeout: float = 600.0,
    ) -> None:
        self.coursedb = coursedb
        self.runner = runner
        self.task_name = task
        self.debounce = debounce
        self.retry = retry
        self.idle = idle
        self.run_timeout = run_timeout
        self.listener = ChangeListener(coursedb)
        self.started_runs = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="change-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.listener.close()

    async def _loop(self) -> None:
        await self.listener.open()
        state = "again"  # look once at start: rows may have been logged while we were down
        while True:
            try:
                pause = {"again": 0.0, "busy": self.retry, "idle": self.idle}[state]
                notified = await self.listener.wait(pause) if pause else False
                if notified and self.debounce:
                    await asyncio.sleep(self.debounce)
                if notified or state != "idle":
                    state = await self._kick()
            except asyncio.CancelledError:
                raise
            except Exception:
                # The coursedb or the service database is unreachable: the interval schedule
                # still runs; try again shortly.
                log.warning("change watcher: check failed; retrying", exc_info=True)
                state = "busy"
                await asyncio.sleep(min(self.idle, 5.0))

    async def _kick(self) -> str:
        """Start a change run if rows wait. "idle": nothing waits; "busy": a run is in progress
        (here or on another replica), look again shortly; "again": our run ended, look at once
        (changes committed while it ran are waiting)."""
        if not await has_changes(self.coursedb):
            return "idle"
        try:
            execution_id = await self.runner.run_now(
                self.task_name, params={"trigger": "change-log"}
            )
        except Conflict as exc:
            if exc.code != "task-running":
                raise
            return "busy"
        self.started_runs += 1
        try:
            await self.runner.wait(execution_id, within=self.run_timeout)
        except TimeoutError:
            return "busy"  # still running; the lease keeps a second one from starting
        return "again"
