"""The authorisation policy of every endpoint behind the gateway, written down as data.

One entry per operation (``"METHOD /path"`` exactly as in the gateway's aggregated OpenAPI) →
the set of principals the auth layer lets through. It is written from the documented rules
(docs/auth.md, docs/<service>.md, the API module docstrings), not generated from the code, so a
changed dependency shows up as a failing cell. An operation missing here fails the matrix test
until someone classifies it, and an entry whose operation is gone fails too: the table cannot
silently go stale.

Principals (what each token carries is in ``test_authz_matrix.PRINCIPALS``):

* ``anonymous`` no token; ``participant`` / ``other_participant`` two participant tokens with
  different ``participant_id``; ``staff``; ``admin`` (implies staff, holds every scope);
  ``service`` a machine client (website backend) without delegation;
* ``staff+sync`` / ``service+sync``: the same roles with the scope ``schulconnex.sync`` (the
  seed's "Synchronisation mit Schulconnex-Service" permission).

``own`` marks operations whose data belongs to one participant: the auth layer lets every
participant through and the *data* rule decides (``me``: the token's own participant, there is
no way to name another; ``order``: a participant sees only orders they placed or are part of,
others get 404). ``test_own_data`` exercises each of them with real data.

``customer``: the portal's customer pages need the portal's own session cookie; a mesh token of
any role is no customer session (401 ``not-signed-in`` for all principals).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ANONYMOUS = "anonymous"
PARTICIPANT = "participant"
OTHER_PARTICIPANT = "other_participant"
STAFF = "staff"
ADMIN = "admin"
SERVICE = "service"
STAFF_SYNC = "staff+sync"
SERVICE_SYNC = "service+sync"

ALL_PRINCIPALS = (
    ANONYMOUS,
    PARTICIPANT,
    OTHER_PARTICIPANT,
    STAFF,
    ADMIN,
    SERVICE,
    STAFF_SYNC,
    SERVICE_SYNC,
)

Own = Literal["me", "order"]


@dataclass(frozen=True)
class Rule:
    allowed: frozenset[str]
    own: Own | None = None
    customer: bool = False


def rule(*principals: str, own: Own | None = None) -> Rule:
    return Rule(frozenset(principals), own=own)


PUBLIC = rule(*ALL_PRINCIPALS)
AUTHENTICATED = rule(*(p for p in ALL_PRINCIPALS if p != ANONYMOUS))
STAFF_ONLY = rule(STAFF, ADMIN, STAFF_SYNC)  # "staff" (admin implies staff)
ADMIN_ONLY = rule(ADMIN)
STAFF_OR_SERVICE = rule(STAFF, ADMIN, STAFF_SYNC, SERVICE, SERVICE_SYNC)
PARTICIPANTS_ME = rule(PARTICIPANT, OTHER_PARTICIPANT, own="me")
BOOKING_CALLER = rule(
    PARTICIPANT, OTHER_PARTICIPANT, STAFF, ADMIN, STAFF_SYNC, SERVICE, SERVICE_SYNC
)
BOOKING_OWN_ORDER = rule(*BOOKING_CALLER.allowed, own="order")
# schulconnex-sync: every route needs scope schulconnex.sync with role staff or service (admin
# holds every scope); the framework routers mounted behind it keep their own roles on top.
SYNC_PERMISSION = rule(ADMIN, STAFF_SYNC, SERVICE_SYNC)
SYNC_STAFF = rule(ADMIN, STAFF_SYNC)
SYNC_ADMIN = ADMIN_ONLY
CUSTOMER = Rule(frozenset(), customer=True)


def _health(svc: str) -> dict[str, Rule]:
    base = f"/api/{svc}/health"
    return {
        f"GET {base}/live": PUBLIC,
        f"GET {base}/ready": PUBLIC,
        f"GET {base}/about": AUTHENTICATED,
    }


def _tasks(svc: str, read: Rule = STAFF_ONLY) -> dict[str, Rule]:
    """mesh_common.tasks.task_router: one role for everything (default staff)."""
    base = f"/api/{svc}/tasks"
    return {
        f"GET {base}": read,
        f"GET {base}/executions": read,
        f"GET {base}/executions/{{execution_id}}": read,
        f"GET {base}/executions/{{execution_id}}/items": read,
        f"POST {base}/executions/{{execution_id}}/cancel": read,
        f"POST {base}/executions/{{execution_id}}/retry": read,
        f"PATCH {base}/{{name}}": read,
        f"POST {base}/{{name}}/run": read,
    }


def _outbox(svc: str) -> dict[str, Rule]:
    """mesh_common.mail.mail_router: staff."""
    base = f"/api/{svc}/mail/outbox"
    return {
        f"GET {base}": STAFF_ONLY,
        f"GET {base}/{{mail_id}}": STAFF_ONLY,
        f"POST {base}/{{mail_id}}/retry": STAFF_ONLY,
    }


def _templates(svc: str) -> dict[str, Rule]:
    """mesh_common.mail.template_router: staff read and preview, admin writes."""
    base = f"/api/{svc}/mail/templates"
    return {
        f"GET /api/{svc}/mail/template-audit": STAFF_ONLY,
        f"GET {base}": STAFF_ONLY,
        f"GET {base}/{{name}}": STAFF_ONLY,
        f"GET {base}/{{name}}/audit": STAFF_ONLY,
        f"POST {base}/{{name}}/preview": STAFF_ONLY,
        f"GET {base}/{{name}}/versions": STAFF_ONLY,
        f"GET {base}/{{name}}/versions/{{version}}": STAFF_ONLY,
        f"POST {base}/{{name}}/versions": ADMIN_ONLY,
        f"POST {base}/{{name}}/versions/{{version}}/activate": ADMIN_ONLY,
    }


def _connections(svc: str, read: Rule = STAFF_ONLY, write: Rule = ADMIN_ONLY) -> dict[str, Rule]:
    """mesh_common.connectors.connection_router: staff read, admin write (and test)."""
    base = f"/api/{svc}/connections"
    return {
        f"GET {base}": read,
        f"GET {base}/kinds": read,
        f"GET {base}/{{name}}": read,
        f"POST {base}": write,
        f"PATCH {base}/{{name}}": write,
        f"DELETE {base}/{{name}}": write,
        f"POST {base}/{{name}}/test": write,
    }


def _sync_views(svc: str, prefix: str, read: Rule = STAFF_ONLY) -> dict[str, Rule]:
    """mesh_common.connectors.sync_router: staff."""
    base = f"/api/{svc}{prefix}"
    return {
        f"GET {base}/markers": read,
        f"GET {base}/markers/summary": read,
        f"GET {base}/links": read,
    }


POLICY: dict[str, Rule] = {
    # ------------------------------------------------------------------ gateway itself
    "GET /health/live": PUBLIC,
    "GET /health/ready": PUBLIC,
    "GET /asyncapi.json": PUBLIC,
    "GET /admin/api/tasks": STAFF_ONLY,
    "GET /admin/api/executions": STAFF_ONLY,
    # ------------------------------------------------------------------ booking
    **_health("booking"),
    "POST /api/booking/orders": BOOKING_CALLER,
    "GET /api/booking/orders/{external_order_id}": BOOKING_OWN_ORDER,
    "GET /api/booking/orders/{external_order_id}/documents/{kind}.pdf": BOOKING_OWN_ORDER,
    "GET /api/booking/orders": STAFF_ONLY,
    "GET /api/booking/backlog": STAFF_ONLY,
    "POST /api/booking/orders/{external_order_id}/retry": STAFF_ONLY,
    "POST /api/booking/orders/{external_order_id}/notify": STAFF_ONLY,
    "POST /api/booking/registrations/{registration_id}/{action}": STAFF_ONLY,
    **_outbox("booking"),
    **_templates("booking"),
    # ------------------------------------------------------------------ course-export
    **_health("course-export"),
    "GET /api/course-export/templates": ADMIN_ONLY,
    "POST /api/course-export/templates/{kind}": ADMIN_ONLY,
    "POST /api/course-export/templates/{kind}/preview": ADMIN_ONLY,
    "GET /api/course-export/templates/{kind}/versions": ADMIN_ONLY,
    "POST /api/course-export/templates/{kind}/versions/{version}/activate": ADMIN_ONLY,
    "POST /api/course-export/scheduled-exports": STAFF_ONLY,
    "GET /api/course-export/scheduled-exports": STAFF_ONLY,
    "GET /api/course-export/scheduled-exports/{export_id}": STAFF_ONLY,
    "DELETE /api/course-export/scheduled-exports/{export_id}": STAFF_ONLY,
    **_tasks("course-export"),
    # ------------------------------------------------------------------ profile
    **_health("profile"),
    "GET /api/profile/me": PARTICIPANTS_ME,
    "PATCH /api/profile/me": PARTICIPANTS_ME,
    "GET /api/profile/me/bank-accounts": PARTICIPANTS_ME,
    "POST /api/profile/me/bank-accounts": PARTICIPANTS_ME,
    "GET /api/profile/me/bank-accounts/{account_id}": PARTICIPANTS_ME,
    "DELETE /api/profile/me/bank-accounts/{account_id}": PARTICIPANTS_ME,
    "PUT /api/profile/me/bank-accounts/{account_id}/default": PARTICIPANTS_ME,
    "GET /api/profile/me/orders": PARTICIPANTS_ME,
    "GET /api/profile/participants/{participant_id}": STAFF_ONLY,
    "GET /api/profile/participants/{participant_id}/bank-accounts": STAFF_ONLY,
    "GET /api/profile/participants/{participant_id}/orders": STAFF_ONLY,
    "GET /api/profile/audit": STAFF_ONLY,
    **_connections("profile"),
    "GET /api/profile/mappings": STAFF_ONLY,
    "GET /api/profile/mappings/sources": STAFF_ONLY,
    "POST /api/profile/mappings": ADMIN_ONLY,
    "POST /api/profile/mappings/validate": STAFF_ONLY,
    "GET /api/profile/mappings/{name}": STAFF_ONLY,
    "GET /api/profile/mappings/{name}/versions": STAFF_ONLY,
    "GET /api/profile/mappings/{name}/export": STAFF_ONLY,
    "POST /api/profile/mappings/{name}/preview": STAFF_ONLY,
    "GET /api/profile/notifications": STAFF_ONLY,
    "GET /api/profile/notifications/{task}": STAFF_ONLY,
    "PUT /api/profile/notifications/{task}": ADMIN_ONLY,
    "DELETE /api/profile/notifications/{task}": ADMIN_ONLY,
    **_sync_views("profile", "/sync"),
    **_tasks("profile"),
    **_outbox("profile"),
    "POST /api/profile/imports/participants": STAFF_ONLY,
    # ------------------------------------------------------------------ portal
    **_health("portal"),
    "GET /api/portal/clients": STAFF_ONLY,
    "GET /api/portal/clients/{client_no}": STAFF_ONLY,
    "PUT /api/portal/clients/{client_no}": STAFF_ONLY,
    "PUT /api/portal/clients/{client_no}/contacts/{contact_no}": STAFF_ONLY,
    "DELETE /api/portal/clients/{client_no}/contacts/{contact_no}": STAFF_ONLY,
    "POST /api/portal/jobs": STAFF_OR_SERVICE,  # the agency's job system, or staff
    "GET /api/portal/jobs": STAFF_ONLY,
    "GET /api/portal/jobs/{job_id}": STAFF_ONLY,
    "POST /api/portal/jobs/{job_id}/folders/{folder}/files": STAFF_ONLY,
    "GET /api/portal/jobs/{job_id}/files/{file_id}": STAFF_ONLY,
    "POST /api/portal/jobs/{job_id}/files/{file_id}/move": STAFF_ONLY,
    "DELETE /api/portal/jobs/{job_id}/files/{file_id}": STAFF_ONLY,
    "GET /api/portal/accounts": STAFF_ONLY,
    "POST /api/portal/accounts": STAFF_ONLY,
    "GET /api/portal/accounts/{account_id}": STAFF_ONLY,
    "PATCH /api/portal/accounts/{account_id}": STAFF_ONLY,
    "POST /api/portal/accounts/{account_id}/access-mail": STAFF_ONLY,
    "GET /api/portal/audit": STAFF_ONLY,
    "GET /api/portal/scanner": STAFF_ONLY,
    "POST /api/portal/public/jobs/{job_id}/folders/{folder}/files": CUSTOMER,
    "GET /api/portal/public/jobs/{job_id}/files/{file_id}": CUSTOMER,
    **_outbox("portal"),
    **_templates("portal"),
    **_tasks("portal"),
    # ------------------------------------------------------------------ mailbox-invites
    **_health("mailbox-invites"),
    "GET /api/mailbox-invites/technical-users": ADMIN_ONLY,
    "POST /api/mailbox-invites/technical-users": ADMIN_ONLY,
    "GET /api/mailbox-invites/technical-users/{user_id}": ADMIN_ONLY,
    "PATCH /api/mailbox-invites/technical-users/{user_id}": ADMIN_ONLY,
    "POST /api/mailbox-invites/technical-users/{user_id}/check": ADMIN_ONLY,
    "GET /api/mailbox-invites/technical-users/{user_id}/mail-log": ADMIN_ONLY,
    "GET /api/mailbox-invites/rooms": STAFF_ONLY,
    "PUT /api/mailbox-invites/rooms/{room_id}": ADMIN_ONLY,
    "GET /api/mailbox-invites/room-groups": STAFF_ONLY,
    "GET /api/mailbox-invites/room-groups/{group_id}": STAFF_ONLY,
    "PUT /api/mailbox-invites/room-groups/{group_id}": ADMIN_ONLY,
    "GET /api/mailbox-invites/mailboxes": STAFF_ONLY,
    "POST /api/mailbox-invites/mailboxes": ADMIN_ONLY,
    "GET /api/mailbox-invites/mailboxes/{mailbox_id}": STAFF_ONLY,
    "PATCH /api/mailbox-invites/mailboxes/{mailbox_id}": ADMIN_ONLY,
    "POST /api/mailbox-invites/mailboxes/{mailbox_id}/activate": ADMIN_ONLY,
    "POST /api/mailbox-invites/mailboxes/{mailbox_id}/deactivate": ADMIN_ONLY,
    "POST /api/mailbox-invites/mailboxes/{mailbox_id}/recycle": STAFF_ONLY,
    "GET /api/mailbox-invites/mailboxes/{mailbox_id}/initialisation": STAFF_ONLY,
    "POST /api/mailbox-invites/mailboxes/{mailbox_id}/initialisation": STAFF_ONLY,
    "GET /api/mailbox-invites/events": STAFF_ONLY,
    "GET /api/mailbox-invites/events/{event_id}": STAFF_OR_SERVICE,  # the room-booking system
    "PUT /api/mailbox-invites/events/{event_id}": STAFF_OR_SERVICE,
    "DELETE /api/mailbox-invites/events/{event_id}": STAFF_OR_SERVICE,
    "GET /api/mailbox-invites/invitations": STAFF_ONLY,
    "GET /api/mailbox-invites/invitations/{invitation_id}": STAFF_ONLY,
    "GET /api/mailbox-invites/invitations/{invitation_id}/log": STAFF_ONLY,
    "GET /api/mailbox-invites/invitations/{invitation_id}/ics": STAFF_ONLY,
    "POST /api/mailbox-invites/invitations/{invitation_id}/reset": STAFF_ONLY,
    **_tasks("mailbox-invites"),
    # ------------------------------------------------------------------ schulconnex-sync
    **_health("schulconnex-sync"),
    "POST /api/schulconnex-sync/sync": SYNC_PERMISSION,
    "GET /api/schulconnex-sync/selection": SYNC_PERMISSION,
    "GET /api/schulconnex-sync/runs": SYNC_PERMISSION,
    "GET /api/schulconnex-sync/runs/{execution_id}": SYNC_PERMISSION,
    "GET /api/schulconnex-sync/confirmations": SYNC_PERMISSION,
    "GET /api/schulconnex-sync/confirmations/{confirmation_id}": SYNC_PERMISSION,
    "POST /api/schulconnex-sync/confirmations/{confirmation_id}/accept": SYNC_PERMISSION,
    "POST /api/schulconnex-sync/confirmations/{confirmation_id}/reject": SYNC_PERMISSION,
    "POST /api/schulconnex-sync/confirmations/bulk": SYNC_PERMISSION,
    "POST /api/schulconnex-sync/schuljahrwechsel": SYNC_PERMISSION,
    # The feedback mails' outbox: the mail router's staff rule behind the sync permission.
    **{key: SYNC_STAFF for key in _outbox("schulconnex-sync")},
    **_tasks("schulconnex-sync", SYNC_STAFF),
    **_connections("schulconnex-sync", SYNC_STAFF, SYNC_ADMIN),
    **_sync_views("schulconnex-sync", "/sync-state", SYNC_STAFF),
}
