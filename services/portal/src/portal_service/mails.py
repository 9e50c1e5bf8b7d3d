"""The portal's e-mails: default templates, the data they see, who receives them, queueing.

Templates live in the shared mail template store (``/mail/templates``: versions, validation,
preview, audit; admins edit them). Each mail is wrapped in the layout part ``signature``: the
agency's head and foot, as text and as HTML. The placeholders are those of the original
product, so existing templates carry over::

    {{ data_project["project_no"] }}                    project (job) number
    {{ ticketdata_project["job_description"] }}         job (or ticket) description
    {{ ticketdata_project["due_date"] }}                due date (dd.mm.yyyy)
    {{ data_project["portal_client_username"] }}        portal user name
    {{ data_project["portal_first_activation_link"] }}  first activation link (access mail only)
    {{ data_project["portal_activation_link"] }}        link to set a new password: in the
        "new link" mail the fresh 30-minute link; in every other mail the page where a new
        link can be requested (activation links expire, so reminders carry none)

plus ``ticketdata_project["ticket_no"]``, ``client`` (client_no, name), ``recipient`` (name,
email), ``portal_url`` (the login page), ``link_valid_minutes``, and for the internal hotfolder
mail ``files`` and ``hotfolder``. Every name is always present (``None`` when it does not apply,
printed as nothing), so any template can use any of them.

Recipient choice (automatic mails about a job): the contact explicitly chosen for the job, else
the client's favourite contact, else the client's e-mail address. Mails about the account itself
(a new activation link) go to the account's address, which is set from that choice when the
account is created and can be changed by staff.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from mesh_common.mail import OutgoingMail, TemplateDefault, enqueue
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from portal_service import models
from portal_service.core import Portal

ACCESS = "portal-access"
NEW_LINK = "portal-activation-link"
UPLOAD_REQUEST = "portal-upload-request"
HOTFOLDER = "hotfolder-internal"
SIGNATURE = "signature"


@dataclass(frozen=True)
class Recipient:
    email: str
    name: str | None
    source: str  # explicit-contact / favourite-contact / client


def due_text(value: dt.date | None) -> str | None:
    return value.strftime("%d.%m.%Y") if value else None


async def choose_recipient(
    session: AsyncSession, client: Any, *, contact_id: int | None = None
) -> Recipient | None:
    """Explicitly chosen contact -> favourite contact -> client e-mail (None: no address)."""
    c = models.contacts
    if contact_id is not None:
        row = (
            await session.execute(select(c.c.email, c.c.name).where(c.c.id == contact_id))
        ).first()
        if row is not None:
            return Recipient(row.email, row.name, "explicit-contact")
    favourite = (
        await session.execute(
            select(c.c.email, c.c.name)
            .where(c.c.client_id == client.id, c.c.favourite.is_(True))
            .order_by(c.c.id)
        )
    ).first()
    if favourite is not None:
        return Recipient(favourite.email, favourite.name, "favourite-contact")
    if client.email:
        return Recipient(client.email, client.name, "client")
    return None


def context(
    portal: Portal,
    *,
    client: Any,
    username: str | None,
    recipient: Recipient | None,
    job: Any = None,
    ticket: Any = None,
    first_link: str | None = None,
    new_link: str | None = None,
    files: list[dict[str, Any]] | None = None,
    hotfolder: str | None = None,
) -> dict[str, Any]:
    """The data every portal template sees (see the module docstring)."""
    source = ticket if ticket is not None else job
    renew = new_link or (
        portal.link("request-link", username=username) if username else portal.link("request-link")
    )
    return {
        "data_project": {
            "project_no": job.project_no if job is not None else None,
            "portal_client_username": username,
            "portal_first_activation_link": first_link,
            "portal_activation_link": renew,
        },
        "ticketdata_project": {
            "job_description": (source.description or None) if source is not None else None,
            "due_date": due_text(source.due_date) if source is not None else None,
            "ticket_no": ticket.ticket_no if ticket is not None else None,
        },
        "client": {"client_no": client.client_no, "name": client.name},
        "recipient": {
            "name": recipient.name if recipient else None,
            "email": recipient.email if recipient else None,
        },
        "portal_url": portal.link("login"),
        "link_valid_minutes": portal.settings.portal_activation_minutes,
        "files": files or [],
        "hotfolder": hotfolder,
    }


async def queue(
    portal: Portal,
    session: AsyncSession,
    template: str,
    data: dict[str, Any],
    **fields: Any,
) -> str:
    """Render ``template`` with ``data`` and queue it in ``session``'s transaction.

    ``sensitive=(raw_token,)`` (the access and new-link mails) keeps the token out of the
    queue: stored and shown to staff as ``[redacted]``, the real mail sealed with the portal's
    SecretBox until it is sent (``mesh_common.mail.sealing``)."""
    rendered = await portal.store.render(template, data, session=session)
    mail: OutgoingMail = rendered.mail(category=template, **fields)
    return await enqueue(session, portal.mail, mail, box=portal.box)


# ---------------------------------------------------------------------- default templates

_SAMPLE: dict[str, Any] = {
    "data_project": {
        "project_no": "P-2026-0815",
        "portal_client_username": "k-10023",
        "portal_first_activation_link": "https://portal.example/api/portal/public/activate?token=x",
        "portal_activation_link": "https://portal.example/api/portal/public/request-link",
    },
    "ticketdata_project": {
        "job_description": "Übersetzung Handbuch DE-EN, 120 Seiten",
        "due_date": "15.12.2026",
        "ticket_no": "2",
    },
    "client": {"client_no": "K-10023", "name": "Muster & Söhne GmbH"},
    "recipient": {"name": "Erika Mustermann", "email": "erika@muster.example"},
    "portal_url": "https://portal.example/api/portal/public/login",
    "link_valid_minutes": 30,
    "files": [{"name": "Handbuch.docx", "size": 48213, "folder": "incoming"}],
    "hotfolder": "/srv/hotfolder/K-10023/P-2026-0815",
}

_GREETING = "Guten Tag{% if recipient.name %} {{ recipient.name }}{% endif %},"
_GREETING_HTML = "<p>Guten Tag{% if recipient.name %} {{ recipient.name }}{% endif %},</p>"
_JOB_LINES = (
    '{% if data_project["project_no"] %}Vorgang: {{ data_project["project_no"] }}'
    '{% if ticketdata_project["ticket_no"] %}/{{ ticketdata_project["ticket_no"] }}{% endif %}\n'
    '{% if ticketdata_project["job_description"] %}Auftrag: '
    '{{ ticketdata_project["job_description"] }}\n{% endif %}'
    '{% if ticketdata_project["due_date"] %}Termin: {{ ticketdata_project["due_date"] }}\n'
    "{% endif %}{% endif %}"
)
_JOB_HTML = (
    '{% if data_project["project_no"] %}<table>'
    '<tr><th align="left">Vorgang</th><td>{{ data_project["project_no"] }}'
    '{% if ticketdata_project["ticket_no"] %}/{{ ticketdata_project["ticket_no"] }}{% endif %}'
    "</td></tr>"
    '{% if ticketdata_project["job_description"] %}<tr><th align="left">Auftrag</th>'
    '<td>{{ ticketdata_project["job_description"] }}</td></tr>{% endif %}'
    '{% if ticketdata_project["due_date"] %}<tr><th align="left">Termin</th>'
    '<td>{{ ticketdata_project["due_date"] }}</td></tr>{% endif %}'
    "</table>{% endif %}"
)

DEFAULT_TEMPLATES: dict[str, TemplateDefault] = {
    SIGNATURE: TemplateDefault(
        kind="part",
        description=(
            "E-mail signature (Emailsignatur): head and foot around every customer mail, "
            "as text (HeadText/FootText) and HTML (HeadHtml/FootHtml)"
        ),
        text=(
            "Kundenportal der Agentur\n"
            "========================\n\n"
            "{{ content }}\n\n"
            "-- \n"
            "Mit freundlichen Grüßen\n"
            "Ihre Agentur\n"
            "Kundenportal: {{ portal_url }}\n"
        ),
        html=(
            '<!DOCTYPE html><html lang="de"><head><meta charset="utf-8"></head>'
            '<body style="font-family:Arial,sans-serif;color:#222">'
            '<div style="border-bottom:2px solid #1f5f8b;padding-bottom:6px;margin-bottom:12px">'
            "<strong>Kundenportal der Agentur</strong></div>"
            "{{ content }}"
            '<div style="border-top:1px solid #ccc;margin-top:18px;padding-top:6px;'
            'font-size:12px;color:#555">Mit freundlichen Grüßen<br>Ihre Agentur<br>'
            'Kundenportal: <a href="{{ portal_url }}">{{ portal_url }}</a></div>'
            "</body></html>"
        ),
        sample=_SAMPLE,
    ),
    ACCESS: TemplateDefault(
        description=(
            "Hotfolder Portalzugang: the first mail of a new portal access, with the user "
            "name and the first activation link"
        ),
        subject=(
            "Ihr Zugang zum Kundenportal"
            '{% if data_project["project_no"] %} (Vorgang {{ data_project["project_no"] }})'
            "{% endif %}"
        ),
        text=(
            _GREETING + "\n\n"
            "für den Austausch von Dateien zu Ihren Aufträgen steht Ihnen unser Kundenportal "
            "zur Verfügung.\n\n" + _JOB_LINES + "\n"
            'Ihr Benutzername: {{ data_project["portal_client_username"] }}\n\n'
            "Bitte aktivieren Sie Ihren Zugang und vergeben Sie Ihr Passwort über diesen Link "
            "(gültig für {{ link_valid_minutes }} Minuten):\n"
            '{{ data_project["portal_first_activation_link"] }}\n\n'
            "Ist der Link abgelaufen, fordern Sie hier einen neuen an:\n"
            '{{ data_project["portal_activation_link"] }}\n'
        ),
        html=(
            _GREETING_HTML + "<p>für den Austausch von Dateien zu Ihren Aufträgen steht Ihnen "
            "unser Kundenportal zur Verfügung.</p>" + _JOB_HTML + "<p>Ihr Benutzername: "
            '<strong>{{ data_project["portal_client_username"] }}</strong></p>'
            '<p><a href="{{ data_project["portal_first_activation_link"] }}">Zugang aktivieren '
            "und Passwort vergeben</a> (gültig für {{ link_valid_minutes }} Minuten)</p>"
            '<p>Ist der Link abgelaufen, <a href="{{ data_project["portal_activation_link"] }}">'
            "fordern Sie hier einen neuen an</a>.</p>"
        ),
        layout=SIGNATURE,
        sample=_SAMPLE,
    ),
    NEW_LINK: TemplateDefault(
        description="A new activation link (requested on the portal, or sent by staff)",
        subject=(
            "Neuer Aktivierungslink für Ihren Portalzugang "
            '{{ data_project["portal_client_username"] }}'
        ),
        text=(
            _GREETING + "\n\n"
            "über diesen Link vergeben Sie ein neues Passwort für Ihren Portalzugang "
            '{{ data_project["portal_client_username"] }} '
            "(gültig für {{ link_valid_minutes }} Minuten, nur einmal verwendbar):\n"
            '{{ data_project["portal_activation_link"] }}\n\n'
            "Haben Sie keinen neuen Link angefordert, können Sie diese E-Mail ignorieren.\n"
        ),
        html=(
            _GREETING_HTML + "<p>über diesen Link vergeben Sie ein neues Passwort für Ihren "
            'Portalzugang <strong>{{ data_project["portal_client_username"] }}</strong> '
            "(gültig für {{ link_valid_minutes }} Minuten, nur einmal verwendbar):</p>"
            '<p><a href="{{ data_project["portal_activation_link"] }}">Passwort vergeben</a></p>'
            "<p>Haben Sie keinen neuen Link angefordert, können Sie diese E-Mail ignorieren.</p>"
        ),
        layout=SIGNATURE,
        sample=_SAMPLE,
    ),
    UPLOAD_REQUEST: TemplateDefault(
        description=(
            "Upload request (reminder) for a new job or ticket, per the client's "
            "portal_reminder_email_automatically"
        ),
        subject=(
            'Bitte laden Sie Ihre Daten hoch: Vorgang {{ data_project["project_no"] }}'
            '{% if ticketdata_project["ticket_no"] %}/{{ ticketdata_project["ticket_no"] }}'
            "{% endif %}"
        ),
        text=(
            _GREETING + "\n\n"
            "für den folgenden Auftrag erwarten wir Ihre Daten im Kundenportal "
            "(Ordner „Incoming“):\n\n" + _JOB_LINES + "\n"
            "Anmelden: {{ portal_url }}\n"
            'Benutzername: {{ data_project["portal_client_username"] }}\n'
            "Passwort vergessen oder Zugang noch nicht aktiviert? Neuen Link anfordern:\n"
            '{{ data_project["portal_activation_link"] }}\n'
        ),
        html=(
            _GREETING_HTML + "<p>für den folgenden Auftrag erwarten wir Ihre Daten im "
            "Kundenportal (Ordner „Incoming“):</p>" + _JOB_HTML + '<p><a href="{{ portal_url }}">'
            "Zum Kundenportal</a> (Benutzername "
            '<strong>{{ data_project["portal_client_username"] }}</strong>)</p>'
            "<p>Passwort vergessen oder Zugang noch nicht aktiviert? "
            '<a href="{{ data_project["portal_activation_link"] }}">Neuen Link anfordern</a></p>'
        ),
        layout=SIGNATURE,
        sample=_SAMPLE,
    ),
    HOTFOLDER: TemplateDefault(
        description="Internal mail after a hotfolder pull; the job data is attached as XML",
        subject=(
            'Hotfolder: {{ data_project["project_no"] }}, {{ files | length }} neue Datei(en) '
            "von {{ client.name }}"
        ),
        text=(
            'Vorgang {{ data_project["project_no"] }} ({{ client.client_no }} '
            "{{ client.name }})\n" + _JOB_LINES + "\n"
            "Neue Dateien im Hotfolder {{ hotfolder }}:\n"
            "{% for f in files %}- {{ f.name }} ({{ f.size }} Bytes)\n{% endfor %}\n"
            "Die Auftragsdaten liegen als XML-Datei bei.\n"
        ),
        sample=_SAMPLE,
    ),
}


def attachment_name(project_no: str) -> str:
    return f"{project_no}.xml"
