"""Excel import: rows of an .xlsx sheet → mapping definition → pydantic validation → one
transaction, with every problem reported by row number and column.

The sheet is read with openpyxl in read-only mode (streamed row by row, values not formulas).
A column the filter or a ``required`` field reads must be in the header row; others may be
missing from a file (their fields stay empty and the report says so in ``warnings``).
The first row (``header_row``) names the columns; a header becomes a source field name with
runs of whitespace turned into ``_`` ("Geburts datum" → ``Geburts_datum``), so a mapping reads
``source: E-Mail`` or ``source: Straße``. Each data row is mapped with the import's mapping
definition (rename, transforms, constants, filter: a filtered row is *skipped*, not an error),
validated with the import's pydantic model, and checked for duplicates (``unique_by``).

Errors name the spreadsheet row (1-based, as Excel shows it) and the column header
(``Zeile 7, Spalte "E-Mail" (C): value is not a valid email address``). Mode
``all_or_nothing`` writes nothing when any row is bad; ``valid_rows_only`` writes the good rows
and reports the bad ones. Either way the writer runs in **one transaction**: if it fails on a
row (:class:`RowRejected`) or at all, the transaction is rolled back and nothing is written.

:func:`excel_import_router` exposes an import as a multipart upload endpoint with a size limit.
This module must not know what is imported (participants, contacts): the service gives the
mapping, the model and the writer.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
from collections.abc import Awaitable, Callable, Hashable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, time
from enum import Enum
from pathlib import Path
from typing import IO, Any, Generic, Literal, TypeVar

from fastapi import APIRouter, Depends, File, Query, Request, UploadFile
from openpyxl import load_workbook
from openpyxl.utils import get_column_letter
from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mesh_common.auth import require
from mesh_common.errors import DomainError, Invalid
from mesh_common.mapping import (
    CompiledMapping,
    MappingDefinition,
    SourceSchema,
    check_sources,
    compile_mapping,
)
from mesh_common.mapping.sources import source_refs

log = logging.getLogger("mesh.connectors.excel")

Mode = Literal["all_or_nothing", "valid_rows_only"]
T = TypeVar("T", bound=BaseModel)
XLSX_MAGIC = b"PK\x03\x04"


@dataclass(frozen=True)
class Column:
    key: str  # the source field name the mapping uses
    header: str  # the header text as written
    letter: str  # A, B, ... AA


@dataclass(frozen=True)
class RowError:
    row: int  # spreadsheet row number (1-based); 0 for errors about the file as a whole
    column: str | None  # header text
    letter: str | None  # column letter
    message: str

    def __str__(self) -> str:
        where = f"row {self.row}" if self.row else "file"
        if self.column:
            where += f', column "{self.column}"' + (f" ({self.letter})" if self.letter else "")
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class ImportedRow(Generic[T]):
    row: int
    record: T


@dataclass
class ImportReport:
    mode: Mode
    dry_run: bool
    rows_read: int = 0
    valid: int = 0
    skipped: int = 0  # excluded by the mapping's filter
    imported: int = 0
    written: bool = False
    errors: list[RowError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


class ExcelError(Invalid):
    """The file cannot be imported at all (not an .xlsx, no header row, missing columns)."""

    code = "excel-invalid"
    title = "Spreadsheet cannot be imported"


class ImportRejected(Invalid):
    """``all_or_nothing`` and at least one bad row: nothing was written."""

    code = "excel-rows-invalid"
    title = "Spreadsheet rows are invalid"

    def __init__(self, report: ImportReport) -> None:
        self.report = report
        first = "; ".join(str(e) for e in report.errors[:3])
        more = f" (and {len(report.errors) - 3} more)" if len(report.errors) > 3 else ""
        super().__init__(
            f"{len(report.errors)} error(s), nothing was imported: {first}{more}",
            extra={"report": report_json(report)},
        )


class RowRejected(Exception):
    """Raised by a writer for one row (e.g. a database constraint): rolls everything back."""

    def __init__(self, row: int, message: str, column: str | None = None) -> None:
        super().__init__(message)
        self.row, self.message, self.column = row, message, column


def _key(header: str) -> str:
    return re.sub(r"[\s.]+", "_", header.strip()).strip("_")


def _cell(value: Any) -> Any:
    if isinstance(value, str):
        value = value.strip()
        return value or None
    if isinstance(value, datetime) and value.time() == time(0):
        return value.date()  # Excel has no date type: a date cell reads as midnight
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class Sheet:
    """A streamed worksheet: ``columns`` from the header row, ``rows()`` yields the data."""

    def __init__(
        self,
        source: bytes | IO[bytes] | Path,
        *,
        sheet: str | None = None,
        header_row: int = 1,
    ) -> None:
        data = io.BytesIO(source) if isinstance(source, bytes) else source
        try:
            self._wb = load_workbook(data, read_only=True, data_only=True)
        except Exception as exc:  # zipfile.BadZipFile, KeyError, InvalidFileException ...
            raise ExcelError(f"not a readable .xlsx file ({type(exc).__name__})") from None
        try:
            if sheet is not None and sheet not in self._wb.sheetnames:
                raise ExcelError(
                    f"no sheet named {sheet!r} (sheets: {', '.join(self._wb.sheetnames)})"
                )
            self._ws = self._wb[sheet] if sheet is not None else self._wb.worksheets[0]
            self.header_row = header_row
            header = next(
                self._ws.iter_rows(min_row=header_row, max_row=header_row, values_only=True), ()
            )
            self.columns: list[Column | None] = []
            seen: dict[str, str] = {}
            for i, value in enumerate(header, start=1):
                text = str(value).strip() if value is not None else ""
                if not text:
                    self.columns.append(None)
                    continue
                key = _key(text)
                if key in seen:
                    raise ExcelError(
                        f'column "{text}" ({get_column_letter(i)}) appears twice in the '
                        f"header row (also column {seen[key]})"
                    )
                seen[key] = get_column_letter(i)
                self.columns.append(Column(key, text, get_column_letter(i)))
            if not seen:
                raise ExcelError(f"row {header_row} (the header row) is empty")
        except BaseException:
            self._wb.close()
            raise

    def by_key(self) -> dict[str, Column]:
        return {c.key: c for c in self.columns if c is not None}

    def rows(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """``(row number, {column key: value})`` for every non-empty data row."""
        number = self.header_row
        for values in self._ws.iter_rows(min_row=self.header_row + 1, values_only=True):
            number += 1
            record: dict[str, Any] = {}
            for col, value in zip(self.columns, values, strict=False):
                if col is not None:
                    record[col.key] = _cell(value)
            if any(v is not None for v in record.values()):
                yield number, record

    def close(self) -> None:
        self._wb.close()


Writer = Callable[[AsyncConnection, list[ImportedRow[T]]], Awaitable[None]]


class ExcelImport(Generic[T]):
    """One kind of import: a mapping (header row → fields), a model, a writer and its engine.

    ``writer(conn, rows)`` writes the validated rows on ``conn`` (one transaction opened on
    ``engine``; do not commit). ``unique_by`` gives a key whose repetition inside one file is an
    error ("same as row 4")."""

    def __init__(
        self,
        mapping: CompiledMapping | MappingDefinition,
        model: type[T],
        writer: Writer[T],
        engine: AsyncEngine,
        *,
        unique_by: Callable[[T], Hashable] | None = None,
        unique_label: str = "record",
        max_rows: int = 20_000,
        sheet: str | None = None,
        header_row: int = 1,
    ) -> None:
        self.mapping = mapping if isinstance(mapping, CompiledMapping) else compile_mapping(mapping)
        self.model = model
        self.writer = writer
        self.engine = engine
        self.unique_by = unique_by
        self.unique_label = unique_label
        self.max_rows = max_rows
        self.sheet = sheet
        self.header_row = header_row
        # target field → the source column it comes from (for error messages)
        self._source_of: dict[str, str] = {}
        for loc, path in source_refs(self.mapping.definition):
            m = re.match(r"fields\[(\d+)\]", loc)
            if m:
                target = self.mapping.definition.fields[int(m.group(1))].target
                self._source_of.setdefault(target, path.split(".")[0])

    def _needed(self, loc: str) -> bool:
        """A column is needed when the filter reads it or a ``required`` field does; the others
        may be absent from a file (their fields stay empty, with a warning)."""
        m = re.match(r"fields\[(\d+)\]", loc)
        return m is None or self.mapping.definition.fields[int(m.group(1))].required

    def _column(self, target: str, columns: dict[str, Column]) -> Column | None:
        source = self._source_of.get(target.split(".")[0], target)
        return columns.get(source)

    def validate(
        self, source: bytes | IO[bytes] | Path, mode: Mode = "all_or_nothing"
    ) -> tuple[ImportReport, list[ImportedRow[T]]]:
        """Read, map and validate every row (synchronous; the endpoint runs it in a thread)."""
        report = ImportReport(mode=mode, dry_run=True)
        sheet = Sheet(source, sheet=self.sheet, header_row=self.header_row)
        try:
            columns = sheet.by_key()
            missing = check_sources(self.mapping.definition, SourceSchema.from_paths(columns))
            needed = [msg for loc, msg in missing if self._needed(loc)]
            if needed:
                raise ExcelError(
                    "the header row lacks columns the import needs: "
                    + "; ".join(
                        msg.replace("unknown source field", "missing column") for msg in needed
                    ),
                    extra={"columns": [c.header for c in columns.values()]},
                )
            for loc, msg in missing:
                target = self.mapping.definition.fields[int(loc[7 : loc.index("]")])].target
                report.warnings.append(
                    msg.replace("unknown source field", "no column") + f": {target} stays empty"
                )
            good: list[ImportedRow[T]] = []
            seen: dict[Hashable, int] = {}
            for number, values in sheet.rows():
                report.rows_read += 1
                if report.rows_read > self.max_rows:
                    raise ExcelError(f"the file has more than {self.max_rows} data rows")
                errors = self._row(number, values, columns, good, seen)
                if errors is None:
                    report.skipped += 1
                else:
                    report.errors.extend(errors)
        finally:
            sheet.close()
        report.valid = len(good)
        return report, good

    def _row(
        self,
        number: int,
        values: dict[str, Any],
        columns: dict[str, Column],
        good: list[ImportedRow[T]],
        seen: dict[Hashable, int],
    ) -> list[RowError] | None:
        result = self.mapping.apply(values)
        if result.skipped:
            return None
        out: list[RowError] = []
        for e in result.errors:
            col = self._column(e.field, columns) if e.field != "filter" else None
            out.append(
                RowError(
                    number, col.header if col else None, col.letter if col else None, e.message
                )
            )
        mapped = result.record if result.record is not None else (result.partial or {})
        failed = {e.field.split(".")[0] for e in result.errors}
        try:
            record = self.model.model_validate(mapped)
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                target = ".".join(str(p) for p in err["loc"])
                if target.split(".")[0] in failed:
                    continue  # already reported by the mapping
                col = self._column(target, columns)
                message = err["msg"].removeprefix("Value error, ")
                if err["type"] == "missing" or err.get("input", ...) is None:
                    message = "a value is required"  # an empty cell, not a "wrong type"
                if col is None and target:
                    message = f"{target}: {message}"
                out.append(
                    RowError(
                        number, col.header if col else None, col.letter if col else None, message
                    )
                )
            return out
        if out:
            return out
        if self.unique_by is not None:
            key = self.unique_by(record)
            if key in seen:
                return [
                    RowError(number, None, None, f"same {self.unique_label} as row {seen[key]}")
                ]
            seen[key] = number
        good.append(ImportedRow(number, record))
        return []

    async def run(
        self,
        source: bytes | IO[bytes] | Path,
        *,
        mode: Mode = "all_or_nothing",
        dry_run: bool = False,
    ) -> ImportReport:
        """Validate, then (unless ``dry_run``) write in one transaction. Raises
        :class:`ImportRejected` for ``all_or_nothing`` with bad rows (nothing written),
        :class:`ExcelError` for a file that cannot be imported at all."""
        report, good = await asyncio.to_thread(self.validate, source, mode)
        report.dry_run = dry_run
        if report.errors and mode == "all_or_nothing":
            raise ImportRejected(report)
        if dry_run or not good:
            return report
        try:
            async with self.engine.begin() as conn:
                await self.writer(conn, good)
        except RowRejected as exc:
            report.errors.append(RowError(exc.row, exc.column, None, exc.message))
            raise ImportRejected(report) from None
        except DomainError:
            raise
        except Exception as exc:
            log.exception("excel import: writing failed, rolled back")
            report.errors.append(
                RowError(
                    0, None, None, f"writing failed, nothing was imported: {type(exc).__name__}"
                )
            )
            raise ImportRejected(report) from None
        report.imported = len(good)
        report.written = True
        return report


def report_json(report: ImportReport) -> dict[str, Any]:
    return {
        "mode": report.mode,
        "dry_run": report.dry_run,
        "rows_read": report.rows_read,
        "valid": report.valid,
        "skipped": report.skipped,
        "imported": report.imported,
        "written": report.written,
        "errors": [
            {"row": e.row, "column": e.column, "letter": e.letter, "message": e.message}
            for e in report.errors
        ],
        "warnings": list(report.warnings),
    }


class RowErrorOut(BaseModel):
    row: int
    column: str | None
    letter: str | None
    message: str


class ImportReportOut(BaseModel):
    mode: Mode
    dry_run: bool
    rows_read: int
    valid: int
    skipped: int
    imported: int
    written: bool
    errors: list[RowErrorOut]
    warnings: list[str]


class TooLarge(DomainError):
    status, code, title = 413, "upload-too-large", "Upload too large"


ImportFactory = Callable[[Request], Awaitable[ExcelImport[Any]]]


def excel_import_router(
    path: str,
    get_import: ImportFactory,
    *,
    role: str = "staff",
    max_bytes: int = 5 * 1024 * 1024,
    tags: list[str | Enum] | None = None,
    summary: str = "Import rows from an Excel file",
) -> APIRouter:
    """``POST {path}`` (multipart ``file``; ``mode``, ``dry_run`` as query parameters) running
    the import ``get_import(request)`` returns. 422 problem+json with every row error when
    ``all_or_nothing`` finds bad rows; 413 above ``max_bytes``."""
    router = APIRouter(
        tags=tags or list[str | Enum](["imports"]), dependencies=[Depends(require(role))]
    )

    @router.post(path, response_model=ImportReportOut, summary=summary)
    async def upload(
        request: Request,
        file: UploadFile = File(description=".xlsx file, header in the first row"),
        mode: Mode = Query("all_or_nothing"),
        dry_run: bool = Query(False, description="validate only, write nothing"),
    ) -> ImportReportOut:
        chunks: list[bytes] = []
        size = 0
        while chunk := await file.read(256 * 1024):
            size += len(chunk)
            if size > max_bytes:
                raise TooLarge(f"the file is larger than {max_bytes // 1024} KiB")
            chunks.append(chunk)
        data = b"".join(chunks)
        if not data.startswith(XLSX_MAGIC):
            raise ExcelError("not an .xlsx file (Excel 2007 or later); .xls and .csv are not read")
        importer = await get_import(request)
        report = await importer.run(data, mode=mode, dry_run=dry_run)
        return ImportReportOut.model_validate(report_json(report))

    return router
