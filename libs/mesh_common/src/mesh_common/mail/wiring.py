"""Wiring of the mail sender and the template store into a service built with
``create_service_app``.

``mail_hooks(tables)`` returns the startup and shutdown hooks that create, start and stop the
service's :class:`MailSender` on the runtime's database and metrics registry and keep it in
``runtime.extras["mail_sender"]``, where :func:`~mesh_common.mail.api.mail_router` finds it.
``template_hooks(store)`` binds a :class:`TemplateStore` to the runtime's database and seeds the
service's default templates. Settings come from the service's own settings (which mix in
:class:`MailSettings`) unless given. A service that queues mail with sensitive values passes
``box`` (its SecretBox, or a factory such as ``SecretBox.from_env``): it is resolved when the
service starts, so a missing ``MESH_SECRET_KEY`` stops the start instead of surfacing later as
failed mail. This module must not create tables.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from mesh_common.db import Database
from mesh_common.mail.queue import MailOutbox
from mesh_common.mail.sender import MailSender
from mesh_common.mail.settings import MailSettings
from mesh_common.mail.tables import MailTables
from mesh_common.mail.templates import TemplateStore
from mesh_common.secrets import SecretBox

SENDER_KEY = "mail_sender"
OUTBOX_KEY = "mail_outbox"
TEMPLATES_KEY = "mail_templates"


class RuntimeLike(Protocol):
    """The parts of ``mesh_common.app.ServiceRuntime`` the hooks use."""

    db: Database
    settings: Any
    extras: dict[str, Any]


RuntimeHook = Callable[[Any], Awaitable[None]]


def _settings_of(runtime: RuntimeLike, settings: MailSettings | None) -> MailSettings:
    if settings is not None:
        return settings
    if isinstance(runtime.settings, MailSettings):
        return runtime.settings
    raise RuntimeError(
        "mail_hooks: the service settings do not include MailSettings; declare "
        "`class Settings(ServiceSettings, MailSettings)` or pass settings=MailSettings(...)"
    )


def mail_hooks(
    tables: MailTables,
    *,
    settings: MailSettings | None = None,
    box: SecretBox | Callable[[], SecretBox] | None = None,
    **sender_options: Any,
) -> tuple[RuntimeHook, RuntimeHook]:
    """``(on_startup, on_shutdown)`` hooks for ``create_service_app``; ``sender_options`` go to
    :class:`MailSender` (holder, stop_grace_seconds, ...). With ``MAIL_SENDER_ENABLED=false``
    the replica only queues mail (and serves the outbox API); another one sends. ``box`` (or a
    factory, called at startup; ``SecretKeyMissing`` there fails the start) opens sealed mail."""

    async def start(runtime: RuntimeLike) -> None:
        mail_settings = _settings_of(runtime, settings)
        registry = getattr(getattr(runtime, "metrics", None), "registry", None)
        secret_box = box if box is None or isinstance(box, SecretBox) else box()
        sender = MailSender(
            runtime.db,
            tables,
            mail_settings,
            registry=registry,
            box=secret_box,
            **sender_options,
        )
        runtime.extras[OUTBOX_KEY] = sender.outbox
        if mail_settings.mail_sender_enabled:
            await sender.start()
            runtime.extras[SENDER_KEY] = sender

    async def stop(runtime: RuntimeLike) -> None:
        runtime.extras.pop(OUTBOX_KEY, None)
        sender = runtime.extras.pop(SENDER_KEY, None)
        if isinstance(sender, MailSender):
            await sender.stop()

    return start, stop


def template_hooks(store: TemplateStore) -> tuple[RuntimeHook, RuntimeHook]:
    """``(on_startup, on_shutdown)`` hooks: bind ``store`` to the service database and seed its
    default templates (only names that have none yet)."""

    async def start(runtime: RuntimeLike) -> None:
        store.bind(runtime.db)
        await store.ensure_defaults()
        runtime.extras[TEMPLATES_KEY] = store

    async def stop(runtime: RuntimeLike) -> None:
        runtime.extras.pop(TEMPLATES_KEY, None)

    return start, stop


def outbox_of(runtime: RuntimeLike) -> MailOutbox:
    """The running service's mail outbox (after ``mail_hooks`` started)."""
    outbox = runtime.extras.get(OUTBOX_KEY)
    if not isinstance(outbox, MailOutbox):
        raise RuntimeError("no mail outbox: add mail_hooks(...) to the service's startup hooks")
    return outbox
