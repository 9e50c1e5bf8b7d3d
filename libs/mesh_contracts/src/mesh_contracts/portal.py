"""Contracts owned by the portal: jobs from the agency's job system, and what the portal reports.

The agency's job system (PTworkflow) is outside the mesh, so the message it sends when a job (a
"Vorgang", or a new ticket of one) is created is a command addressed to the portal, which owns it:

- ``RegisterJob`` (``portal.register_job.v1``): a new job or a new ticket of a job. It carries the
  client (created or updated by ``client_no``; settings left out keep their stored value, or the
  portal's defaults for a new client), optionally the client's contacts (PTcontact) and the
  contact explicitly chosen for this job. Registering the same job or ticket again is harmless:
  jobs are keyed by ``project_no``, tickets by ``(project_no, ticket_no)``. The same body is
  accepted by ``POST /api/portal/jobs``.

The portal announces (events, through its outbox):

- ``FilesUploaded`` (``portal.files_uploaded.v1``): a customer (or staff) stored virus-scanned
  files in a job folder.
- ``FilesPulled`` (``portal.files_pulled.v1``): the hotfolder task copied a job's new files into
  the internal hotfolder, with the job data as XML next to them.

Delivery is at-least-once; consumers must treat a repeated message as a no-op.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, ClassVar, Literal

from pydantic import AwareDatetime, Field, StringConstraints, model_validator

from mesh_contracts.base import Command, Event
from mesh_contracts.common import Value

# Keys of the job system. Also used as directory names of the hotfolder, hence the strict pattern
# (letters, digits, dot, underscore, hyphen; no leading dot; at most 50 characters).
Key = Annotated[
    str,
    StringConstraints(strip_whitespace=True, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,49}$"),
]
Text200 = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
# A plain address (local@domain.tld): no display name, no list, no line breaks.
_ATOM = r"[^@\s<>\"',;]+"
EmailText = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, max_length=320, pattern=rf"^{_ATOM}@{_ATOM}\.{_ATOM}$"
    ),
]
Folder = Literal["incoming", "in_progress", "final"]


class ContactData(Value):
    """A contact person of the client (PTcontact); ``favourite`` marks the preferred one."""

    contact_no: Key
    name: Text200
    email: EmailText
    favourite: bool = False


class ClientData(Value):
    """The client (Kunde) with its portal settings. ``None`` means "keep as stored" (or the
    portal's configured default for a client it does not know yet).

    - ``create_hotfolder``: the hotfolder task copies uploads of this client's jobs into the
      internal hotfolder (and mails the job XML);
    - ``hotfolder_delete_days``: a job's hotfolder is deleted this many days after its last
      pull (0: never);
    - ``portal_create_uplogin_automatically``: 1 creates the client's portal access (uplogin)
      with its first job, 0 leaves that to staff;
    - ``portal_send_uplogin_email_automatically``: 1 mails the user name and activation link
      when the access is created automatically, 0 leaves that to staff;
    - ``portal_reminder_email_automatically``: 0 no upload reminders, 1 one per new job,
      2 one per new job ticket.
    """

    client_no: Key
    name: Text200 | None = None
    email: EmailText | None = None
    create_hotfolder: bool | None = None
    hotfolder_delete_days: Annotated[int, Field(ge=0, le=3650)] | None = None
    portal_create_uplogin_automatically: Literal[0, 1] | None = None
    portal_send_uplogin_email_automatically: Literal[0, 1] | None = None
    portal_reminder_email_automatically: Literal[0, 1, 2] | None = None
    # When given, the client's contacts are exactly these (others are removed).
    contacts: list[ContactData] | None = None

    @model_validator(mode="after")
    def _one_favourite(self) -> ClientData:
        if self.contacts is not None:
            if sum(1 for c in self.contacts if c.favourite) > 1:
                raise ValueError("at most one contact can be the favourite")
            numbers = [c.contact_no for c in self.contacts]
            if len(numbers) != len(set(numbers)):
                raise ValueError("contact_no must be unique within a client")
        return self


class RegisterJob(Command):
    """A new job (Vorgang) or a new ticket of one, from the agency's job system."""

    __message_type__: ClassVar[str] = "portal.register_job.v1"

    project_no: Key
    # The ticket (Teilnummer) of the job; None for the job itself.
    ticket_no: Key | None = None
    client: ClientData
    description: Annotated[str, StringConstraints(strip_whitespace=True, max_length=5000)] = ""
    due_date: dt.date | None = None
    # The contact explicitly chosen for this job; must be one of the client's contacts.
    contact_no: Key | None = None


class FileInfo(Value):
    name: str
    size: int
    sha256: str
    folder: Folder


class FilesUploaded(Event):
    """Virus-scanned files were stored in a job folder."""

    __message_type__: ClassVar[str] = "portal.files_uploaded.v1"

    job_id: str
    project_no: str
    client_no: str
    uploaded_by: str
    files: list[FileInfo]
    at: AwareDatetime


class FilesPulled(Event):
    """The hotfolder task copied a job's new files into the internal hotfolder."""

    __message_type__: ClassVar[str] = "portal.files_pulled.v1"

    job_id: str
    project_no: str
    client_no: str
    hotfolder: str
    xml_file: str
    files: list[FileInfo]
    at: AwareDatetime
