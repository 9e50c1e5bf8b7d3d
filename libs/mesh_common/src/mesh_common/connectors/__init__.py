"""The connector framework: connections, stored mapping definitions, sync markers, links,
dry-run diffs, the Brevo client and the Excel import, on top of :mod:`mesh_common.tasks`.

A service that hosts connectors adds ``connector_tables(metadata)`` (and ``task_tables``) to its
metadata, ``upgrade_v1()`` of :mod:`mesh_common.connectors.migrations` to its alembic history,
``connector_hooks(tables)`` to its startup hooks and ``connector_routers()`` to its routers.
Inside a task::

    hub: Connectors = runtime.extras["connectors"]
    settings = await hub.connections.resolve("brevo", kind="brevo")
    mapping = await hub.mappings.compiled("brevo-contacts")
    changed = diff_records(desired, hashes=await hub.markers.hashes("brevo", "contact"))
    if ctx.dry_run:
        await report_dry_run(ctx, changed)
    ...
    await hub.markers.mark("brevo", "contact", key, "ok", content_hash=change.hash)
    await hub.links.link("brevo", "contact", key, str(contact_id))

See docs/connector-framework.md. This package must not know any particular service.
"""

from mesh_common.connectors.api import (
    Connectors,
    build_connectors,
    connection_router,
    connector_hooks,
    connector_routers,
    get_connectors,
    mapping_router,
    sync_router,
)
from mesh_common.connectors.connections import (
    BrevoSettings,
    CheckResult,
    ConnectionSettings,
    ConnectionStore,
    ConnectionView,
    ImapSettings,
    KindRegistry,
    SchulconnexSettings,
    SmtpSettings,
    default_kinds,
    secret_fields,
)
from mesh_common.connectors.diff import (
    Change,
    Diff,
    FieldChange,
    content_hash,
    diff_records,
    report_dry_run,
)
from mesh_common.connectors.mappings import MappingStore, SaveResult, StoredMapping
from mesh_common.connectors.notify import (
    NotificationRule,
    TaskNotifications,
    TaskNotifier,
    mail_delivery,
    notification_router,
    render_notification,
)
from mesh_common.connectors.sync import Link, Links, Marker, MarkerUpdate, SyncMarkers
from mesh_common.connectors.tables import ConnectorTables, connector_tables

__all__ = [
    "BrevoSettings",
    "Change",
    "CheckResult",
    "ConnectionSettings",
    "ConnectionStore",
    "ConnectionView",
    "ConnectorTables",
    "Connectors",
    "Diff",
    "FieldChange",
    "ImapSettings",
    "KindRegistry",
    "Link",
    "Links",
    "MappingStore",
    "Marker",
    "MarkerUpdate",
    "NotificationRule",
    "SaveResult",
    "SchulconnexSettings",
    "SmtpSettings",
    "StoredMapping",
    "SyncMarkers",
    "TaskNotifications",
    "TaskNotifier",
    "build_connectors",
    "connection_router",
    "connector_hooks",
    "connector_routers",
    "connector_tables",
    "content_hash",
    "default_kinds",
    "diff_records",
    "get_connectors",
    "mail_delivery",
    "mapping_router",
    "notification_router",
    "render_notification",
    "report_dry_run",
    "secret_fields",
    "sync_router",
]
