"""Streamed, virus-scanned uploads into a job folder, and storing the files that passed.

:func:`receive` parses a ``multipart/form-data`` request body as it arrives (python-multipart's
streaming parser; nothing is buffered beyond one network chunk). Each file part is, at the same
time, written to a private temporary file (mode 0600, in the storage's ``.tmp`` directory),
hashed (SHA-256) and streamed to clamd over INSTREAM. When the part ends, clamd's verdict
decides: clean files are kept for :func:`store`; an infected file rejects the whole request and
nothing of it is stored. Every refusal is a :class:`~mesh_common.errors.DomainError` that becomes
problem+json:

- 400 ``bad-upload`` / ``no-file`` / ``invalid-file-name`` / ``too-many-files``: not a usable
  multipart body, no file in it, a refused name (``..``, absolute, NUL, reserved), too many
  files;
- 403 ``csrf-failed``: a form without the right CSRF token before its first file;
- 413 ``upload-too-large`` / ``too-large-for-scanner``: more file data than
  ``PORTAL_UPLOAD_MAX_BYTES``, or more than clamd's ``StreamMaxLength``;
- 422 ``virus-found``: clamd found something (the signature is named);
- 503 ``scanner-unavailable`` / ``scanner-not-configured``: clamd cannot be reached or gives no
  verdict, or none is configured (fail closed).

Temporary files are removed in every case. After a refusal the rest of the body is read and
thrown away (up to 16 MiB) so the client gets to read the answer.

:func:`store` gives each file a name no file in the folder has yet (`` (2)``, `` (3)`` ...),
places its bytes under a new file id (``os.link`` from the spool file), then records the files,
the audit entry and a ``portal.files_uploaded.v1`` event in one transaction.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

from mesh_common.errors import DomainError, Forbidden
from mesh_contracts.portal import FileInfo, FilesUploaded
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from portal_service import models
from portal_service.clamd import InStream, ScannerLimit, ScannerUnavailable
from portal_service.core import Portal, log, record_audit
from portal_service.names import numbered, safe_file_name
from portal_service.security import same
from portal_service.settings import DRAIN_LIMIT, MULTIPART_SLACK

MAX_FIELD_BYTES = 4096


class UploadRefused(DomainError):
    status, code, title = 400, "bad-upload", "The upload was refused"


class UploadTooLarge(DomainError):
    status, code, title = 413, "upload-too-large", "The upload is too large"


class VirusFound(DomainError):
    status, code, title = 422, "virus-found", "A virus was found"


class ScannerDown(DomainError):
    status, code, title = 503, "scanner-unavailable", "The virus scanner is unavailable"


@dataclass
class Spooled:
    """A file that arrived completely and was scanned clean, waiting in a temporary file."""

    name: str
    tmp: Path
    size: int
    sha256: str
    verdict: str


@dataclass
class _Part:
    headers: dict[str, str] = field(default_factory=dict)
    field_name: str | None = None
    file_name: str | None = None
    value: bytearray = field(default_factory=bytearray)
    # file parts
    spooled: Spooled | None = None
    out: BinaryIO | None = None
    hasher: Any = None
    scan: InStream | None = None
    skip: bool = False


class _Receiver:
    def __init__(self, portal: Portal, *, csrf_expected: str | None, csrf_ok: bool) -> None:
        self.portal = portal
        self.settings = portal.settings
        self.csrf_expected = csrf_expected
        self.csrf_ok = csrf_ok
        self.files: list[Spooled] = []
        self.file_bytes = 0
        self.part: _Part | None = None
        self._field: bytearray = bytearray()
        self._value: bytearray = bytearray()
        self.events: list[tuple[str, Any]] = []

    # python-multipart calls these synchronously; they only record, :meth:`process` acts.
    def callbacks(self) -> dict[str, Any]:
        ev = self.events

        def data_cb(kind: str) -> Any:
            return lambda d, s, e: ev.append((kind, memoryview(d)[s:e]))

        return {
            "on_part_begin": lambda: ev.append(("begin", None)),
            "on_header_field": data_cb("hfield"),
            "on_header_value": data_cb("hvalue"),
            "on_header_end": lambda: ev.append(("hend", None)),
            "on_headers_finished": lambda: ev.append(("hdone", None)),
            "on_part_data": data_cb("data"),
            "on_part_end": lambda: ev.append(("end", None)),
        }

    async def process(self) -> None:
        events, self.events[:] = list(self.events), []
        for kind, data in events:
            if kind == "begin":
                self.part = _Part()
            elif kind == "hfield":
                self._field += data
            elif kind == "hvalue":
                self._value += data
            elif kind == "hend":
                assert self.part is not None
                name = bytes(self._field).decode("latin-1").strip().lower()
                self.part.headers[name] = _decode(bytes(self._value))
                self._field, self._value = bytearray(), bytearray()
            elif kind == "hdone":
                await self._headers_done()
            elif kind == "data":
                await self._data(data)
            elif kind == "end":
                await self._part_end()

    async def _headers_done(self) -> None:
        part = self.part
        assert part is not None
        kind, params = disposition(part.headers.get("content-disposition", ""))
        if kind != "form-data":
            raise UploadRefused("every part of the upload must be form-data")
        part.field_name = params.get("name", "")
        if "filename" not in params:
            return
        raw_name = params["filename"]
        if raw_name == "":
            part.skip = True  # an empty file input of a browser form
            return
        if not self.csrf_ok:
            raise Forbidden(
                "The form is missing its security token (CSRF); reload the page and try again.",
                code="csrf-failed",
            )
        if len(self.files) >= self.settings.portal_upload_max_files:
            raise UploadRefused(
                f"at most {self.settings.portal_upload_max_files} files per upload",
                code="too-many-files",
            )
        name = safe_file_name(raw_name)
        scanner = self.portal.scanner
        if scanner is None:
            raise ScannerDown(
                "Uploads are disabled: no virus scanner is configured for this portal "
                "(CLAMD_HOST or CLAMD_SOCKET). Nothing was stored.",
                code="scanner-not-configured",
            )
        try:
            part.scan = await scanner.instream()
        except ScannerUnavailable as exc:
            log.error("upload refused, virus scanner unreachable: %s", exc)
            raise ScannerDown(
                "The virus scanner cannot be reached, so uploads are refused for now. "
                "Nothing was stored; please try again later."
            ) from exc
        tmp = self.portal.storage.tmp_dir / f"{uuid.uuid4().hex}.part"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        part.out = os.fdopen(fd, "wb")
        part.hasher = hashlib.sha256()
        part.spooled = Spooled(name=name, tmp=tmp, size=0, sha256="", verdict="")

    async def _data(self, data: memoryview) -> None:
        part = self.part
        if part is None or part.skip:
            return
        if part.spooled is None:
            if len(part.value) + len(data) > MAX_FIELD_BYTES:
                raise UploadRefused("a form field of the upload is too long")
            part.value += data
            return
        self.file_bytes += len(data)
        part.spooled.size += len(data)
        if self.file_bytes > self.settings.portal_upload_max_bytes:
            raise UploadTooLarge(
                f"The upload is larger than the allowed "
                f"{_mib(self.settings.portal_upload_max_bytes)}. Nothing was stored.",
                extra={"max_bytes": self.settings.portal_upload_max_bytes},
            )
        assert part.out is not None and part.scan is not None
        part.out.write(data)
        part.hasher.update(data)
        await _scan_write(part.scan, data)

    async def _part_end(self) -> None:
        part, self.part = self.part, None
        if part is None or part.skip:
            return
        if part.spooled is None:
            if part.field_name == "csrf" and not self.csrf_ok:
                value = part.value.decode("ascii", "replace").strip()
                if self.csrf_expected is None or not same(value, self.csrf_expected):
                    raise Forbidden(
                        "The form's security token (CSRF) is wrong; reload the page and try again.",
                        code="csrf-failed",
                    )
                self.csrf_ok = True
            return
        assert part.out is not None and part.scan is not None
        part.out.close()
        spooled = part.spooled
        self.files.append(spooled)  # cleaned up with the others from now on
        try:
            result = await part.scan.finish()
        except ScannerLimit as exc:
            raise UploadTooLarge(
                f"{spooled.name}: larger than the virus scanner accepts; nothing was stored.",
                code="too-large-for-scanner",
            ) from exc
        except ScannerUnavailable as exc:
            log.error("upload refused, no verdict from the virus scanner: %s", exc)
            raise ScannerDown(
                "The virus scanner did not give a verdict, so the upload is refused. "
                "Nothing was stored; please try again later."
            ) from exc
        if not result.clean:
            raise VirusFound(
                f"{spooled.name}: the virus scanner found {result.signature}. The upload was "
                "rejected and nothing was stored.",
                extra={"file": spooled.name, "signature": result.signature},
            )
        spooled.sha256 = part.hasher.hexdigest()
        spooled.verdict = result.reply[:100]

    def abort(self) -> None:
        """Close the open part (file, scanner connection) and remove every temporary file."""
        part, self.part = self.part, None
        if part is not None:
            if part.out is not None:
                part.out.close()
            if part.scan is not None:
                part.scan.writer.close()
            if part.spooled is not None and part.spooled not in self.files:
                self.files.append(part.spooled)
        discard(self.files)


async def _scan_write(scan: InStream, data: memoryview) -> None:
    try:
        await scan.write(data)
    except ScannerLimit as exc:
        raise UploadTooLarge(
            "The file is larger than the virus scanner accepts; nothing was stored.",
            code="too-large-for-scanner",
        ) from exc
    except ScannerUnavailable as exc:
        log.error("upload refused, virus scanner failed while streaming: %s", exc)
        raise ScannerDown(
            "The connection to the virus scanner failed, so the upload is refused. "
            "Nothing was stored; please try again later."
        ) from exc


_PARAM = re.compile(r';\s*([A-Za-z0-9_*.-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


def disposition(value: str) -> tuple[str, dict[str, str]]:
    """``form-data; name="files"; filename="a.pdf"`` -> ``("form-data", {...})``.

    File names are taken exactly as sent (the HTML form encoding escapes only ``"``, CR and LF,
    as ``%22``, ``%0D``, ``%0A``); in particular a path is not cut down to its last component
    here, so absolute names can be refused rather than silently accepted. The RFC 2231
    ``filename*`` form is ignored, as RFC 7578 requires.
    """
    kind, _, rest = value.partition(";")
    params: dict[str, str] = {}
    for match in _PARAM.finditer(";" + rest):
        key, raw = match.group(1).lower(), match.group(2).strip()
        if "*" in key:
            continue
        if len(raw) >= 2 and raw[0] == raw[-1] == '"':
            raw = raw[1:-1].replace('\\"', '"')
        for code, char in (("%22", '"'), ("%0D", "\r"), ("%0A", "\n")):
            raw = raw.replace(code, char).replace(code.lower(), char)
        params.setdefault(key, raw)
    return kind.strip().lower(), params


def _decode(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):g} MiB"


def discard(files: list[Spooled]) -> None:
    for spooled in files:
        with contextlib.suppress(FileNotFoundError):
            spooled.tmp.unlink()


async def drain(stream: AsyncIterator[bytes], limit: int = DRAIN_LIMIT) -> None:
    """Read and drop what is left of a refused request body (bounded)."""
    seen = 0
    try:
        async for chunk in stream:
            seen += len(chunk)
            if seen > limit:
                return
    except Exception:  # the client went away, or the body limit ended the body
        return


async def receive(
    portal: Portal,
    headers: Any,
    stream: AsyncIterator[bytes],
    *,
    csrf_expected: str | None,
    csrf_ok: bool,
) -> list[Spooled]:
    """Parse, spool and scan the files of one upload (see the module docstring). The caller
    must :func:`store` or :func:`discard` the result."""
    settings = portal.settings
    ctype, params = parse_options_header(headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        await drain(stream)
        raise UploadRefused("send the files as multipart/form-data", code="bad-upload")
    length = headers.get("content-length")
    limit = settings.portal_upload_max_bytes + MULTIPART_SLACK
    if length is not None and length.isdigit() and int(length) > limit:
        await drain(stream)
        raise UploadTooLarge(
            f"The upload is larger than the allowed {_mib(settings.portal_upload_max_bytes)}. "
            "Nothing was stored.",
            extra={"max_bytes": settings.portal_upload_max_bytes},
        )
    receiver = _Receiver(portal, csrf_expected=csrf_expected, csrf_ok=csrf_ok)
    parser = MultipartParser(boundary, cast(Any, receiver.callbacks()))
    body = 0
    try:
        async for chunk in stream:
            body += len(chunk)
            if body > limit:
                raise UploadTooLarge(
                    f"The upload is larger than the allowed "
                    f"{_mib(settings.portal_upload_max_bytes)}. Nothing was stored.",
                    extra={"max_bytes": settings.portal_upload_max_bytes},
                )
            try:
                parser.write(chunk)
            except MultipartParseError as exc:
                raise UploadRefused(f"the multipart body is malformed: {exc}") from exc
            await receiver.process()
        parser.finalize()
        await receiver.process()
        if receiver.part is not None:
            raise UploadRefused("the multipart body ended in the middle of a part")
    except Exception:
        receiver.abort()
        await drain(stream)
        raise
    except BaseException:  # cancelled: clean up, nothing else
        receiver.abort()
        raise
    if not receiver.files:
        raise UploadRefused("the upload contains no file", code="no-file")
    return receiver.files


async def free_names(
    session: AsyncSession, job_id: str, folder: str, wanted: list[str]
) -> list[str]:
    """Names for ``wanted`` in ``folder`` that no file there has (``x.pdf`` -> ``x (2).pdf``)."""
    f = models.files
    taken = set(
        (
            await session.execute(
                select(f.c.name).where(f.c.job_id == job_id, f.c.folder == folder)
            )
        ).scalars()
    )
    result = []
    for name in wanted:
        n = 1
        while numbered(name, n) in taken:
            n += 1
        taken.add(numbered(name, n))
        result.append(numbered(name, n))
    return result


async def store(
    portal: Portal,
    job: Any,
    client_no: str,
    folder: str,
    files: list[Spooled],
    *,
    uploaded_by: str,
    ip: str | None,
) -> list[dict[str, Any]]:
    """Move spooled files into ``folder`` of ``job`` and record them (one transaction)."""
    placed: list[Path] = []
    now = portal.now()
    try:
        for attempt in range(3):
            try:
                async with portal.db.unit_of_work() as session:
                    names = await free_names(session, job.id, folder, [s.name for s in files])
                    rows = []
                    for spooled, name in zip(files, names, strict=True):
                        file_id = str(uuid.uuid4())
                        target = portal.storage.blob(job.id, file_id)
                        os.link(spooled.tmp, target)
                        placed.append(target)
                        rows.append(
                            {
                                "id": file_id,
                                "job_id": job.id,
                                "folder": folder,
                                "name": name,
                                "size": spooled.size,
                                "sha256": spooled.sha256,
                                "scanner": spooled.verdict,
                                "uploaded_by": uploaded_by[:200],
                                "uploaded_at": now,
                                "pulled_at": None,
                            }
                        )
                    await session.execute(models.files.insert(), rows)
                    await _announce(portal, session, job, client_no, rows, uploaded_by, ip)
                portal.metrics.uploads.labels("stored").inc()
                portal.metrics.upload_bytes.inc(sum(r["size"] for r in rows))
                return rows
            except IntegrityError:
                # Another upload took one of the names meanwhile: choose again.
                _unlink(placed)
                placed.clear()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")
    except BaseException:
        _unlink(placed)
        raise
    finally:
        discard(files)


def _unlink(paths: list[Path]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


async def _announce(
    portal: Portal,
    session: AsyncSession,
    job: Any,
    client_no: str,
    rows: list[dict[str, Any]],
    uploaded_by: str,
    ip: str | None,
) -> None:
    infos = [
        FileInfo(name=r["name"], size=r["size"], sha256=r["sha256"], folder=r["folder"])
        for r in rows
    ]
    await record_audit(
        session,
        portal.now(),
        actor=uploaded_by,
        action="upload-stored",
        job_id=job.id,
        ip=ip,
        detail={"files": [i.model_dump() for i in infos]},
    )
    if portal.outbox is not None:
        await portal.outbox.add(
            session,
            FilesUploaded(
                job_id=job.id,
                project_no=job.project_no,
                client_no=client_no,
                uploaded_by=uploaded_by,
                files=infos,
                at=portal.now_dt(),
            ),
        )
