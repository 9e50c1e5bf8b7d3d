"""Tables owned by the mailbox-invites service (its own schema / database file).

Nothing else writes here.

``mesh_outbox`` and ``mesh_inbox`` give the service the transactional outbox and the inbox; the
app factory wires the relay and the idempotent-handler helper when they are declared here.
"""

from __future__ import annotations

from mesh_common.bus.inbox import inbox_table
from mesh_common.bus.outbox import outbox_table
from mesh_common.db import service_metadata

metadata = service_metadata()
outbox = outbox_table(metadata)
inbox = inbox_table(metadata)
