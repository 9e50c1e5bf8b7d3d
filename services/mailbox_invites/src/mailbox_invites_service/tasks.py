"""mailbox-invites on the task framework: the MailboxProcessor job.

``mailbox-processor`` runs every ``processor_interval_seconds`` (default 60 s) and on demand
(``POST /tasks/mailbox-processor/run``, staff; ``dry_run`` shows what would be sent and read).
Each invitation sent and each mail read is an item of the execution; "retry failed" re-runs
only the invitations that failed. The task framework's lease keeps replicas from running it
twice at once.
"""

from __future__ import annotations

from mesh_common.app import ServiceRuntime
from mesh_common.tasks import Interval, TaskContext, TaskRegistry

from mailbox_invites_service.processor import MailboxProcessor

PROCESSOR = "mailbox-processor"


def build(holder: dict[str, ServiceRuntime], *, interval_seconds: float) -> TaskRegistry:
    tasks = TaskRegistry()

    @tasks.task(PROCESSOR, schedule=Interval(interval_seconds), kind="MailboxProcessor")
    async def mailbox_processor(ctx: TaskContext) -> None:
        """MailboxProcessor: send pending invitations (SMTP), read and apply replies (IMAP)."""
        await MailboxProcessor(holder["runtime"]).run(ctx)

    return tasks
