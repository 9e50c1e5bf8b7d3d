"""Dry-run diffs: what a sync would create, update, leave alone or delete, field by field.

``diff_records(desired, current=..., hashes=...)`` compares the records a sync wants the target
to hold (keyed by local key) with what the target holds now: either the current remote records
(field-level differences) or only the content hashes the sync markers kept from the last
successful sync (record-level: changed or not). A task in dry-run mode reports the result as
items instead of writing (:func:`report_dry_run`); a real run uses the same diff to touch only
what changed.

Field paths of nested records are dotted (``attributes.FIRSTNAME``). Values are compared after
a JSON round trip (``Decimal('1.50')`` equals ``"1.50"`` only if the sync sends it as such: the
comparison is on what would be sent). This module must not do IO besides the item log.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from mesh_common.tasks import TaskContext

Action = Literal["create", "update", "unchanged", "delete"]


def _canonical(record: Any) -> str:
    return json.dumps(
        record, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False
    )


def content_hash(record: Mapping[str, Any]) -> str:
    """A stable SHA-256 of a record's content (key order and number/str types normalised the
    way JSON renders them)."""
    return hashlib.sha256(_canonical(record).encode()).hexdigest()


def _flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in record.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, path))
        else:
            out[path] = value
    return out


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


@dataclass(frozen=True)
class FieldChange:
    old: Any
    new: Any

    @property
    def kind(self) -> str:
        if self.old is None:
            return "added"
        if self.new is None:
            return "removed"
        return "changed"


@dataclass
class Change:
    key: str
    action: Action
    fields: dict[str, FieldChange] = field(default_factory=dict)
    record: dict[str, Any] | None = None  # the desired record (None for deletes)
    hash: str | None = None  # content hash of the desired record

    def detail(self, *, redact: bool = False) -> dict[str, Any]:
        """JSON-ready description for the item log. ``redact``: name the changed fields
        (``added`` / ``removed`` / ``changed``) without their values, for personal data."""
        out: dict[str, Any] = {"action": self.action}
        if self.fields and redact:
            out["changes"] = {path: c.kind for path, c in self.fields.items()}
        elif self.fields:
            out["changes"] = {
                path: {"old": _jsonable(c.old), "new": _jsonable(c.new)}
                for path, c in self.fields.items()
            }
        return out


@dataclass
class Diff:
    changes: list[Change]

    def by_action(self, action: Action) -> list[Change]:
        return [c for c in self.changes if c.action == action]

    @property
    def creates(self) -> list[Change]:
        return self.by_action("create")

    @property
    def updates(self) -> list[Change]:
        return self.by_action("update")

    @property
    def unchanged(self) -> list[Change]:
        return self.by_action("unchanged")

    @property
    def deletes(self) -> list[Change]:
        return self.by_action("delete")

    def counts(self) -> dict[str, int]:
        out = {"create": 0, "update": 0, "unchanged": 0, "delete": 0}
        for c in self.changes:
            out[c.action] += 1
        return out

    def pending(self) -> list[Change]:
        """What a real run has to do (everything but ``unchanged``)."""
        return [c for c in self.changes if c.action != "unchanged"]


def field_changes(
    old: Mapping[str, Any], new: Mapping[str, Any], ignore: Iterable[str] = ()
) -> dict[str, FieldChange]:
    """Dotted path → (old, new) for every leaf that differs (after a JSON round trip)."""
    skip = set(ignore)
    a, b = _flatten(_jsonable(old)), _flatten(_jsonable(new))
    changes = {}
    for path in sorted(set(a) | set(b)):
        if path in skip or any(path.startswith(s + ".") for s in skip):
            continue
        if a.get(path) != b.get(path):
            changes[path] = FieldChange(a.get(path), b.get(path))
    return changes


def diff_records(
    desired: Mapping[str, Mapping[str, Any]],
    *,
    current: Mapping[str, Mapping[str, Any]] | None = None,
    hashes: Mapping[str, str] | None = None,
    delete_missing: bool = False,
    ignore: Iterable[str] = (),
) -> Diff:
    """Compare ``desired`` with ``current`` records (field-level) or with the ``hashes`` of
    the last successful sync (record-level). Keys of ``current``/``hashes`` that ``desired``
    lacks become deletes only with ``delete_missing``. ``ignore`` names fields (dotted) the
    comparison skips, e.g. remote timestamps."""
    if current is None and hashes is None:
        raise ValueError("give the current records, their content hashes, or both")
    ignore = tuple(ignore)
    changes: list[Change] = []
    for key, record in desired.items():
        key = str(key)
        digest = content_hash(record)
        rec = dict(record)
        if current is not None and key in current:
            diffs = field_changes(current[key], record, ignore)
            action: Action = "update" if diffs else "unchanged"
            changes.append(Change(key, action, diffs, rec, digest))
        elif current is None and hashes is not None and key in hashes:
            action = "unchanged" if hashes[key] == digest else "update"
            changes.append(Change(key, action, {}, rec, digest))
        else:
            new = field_changes({}, record, ignore)
            changes.append(Change(key, "create", new, rec, digest))
    if delete_missing:
        known = set(current or {}) | set(hashes or {})
        wanted = {str(k) for k in desired}
        for key in sorted(known - wanted):
            old = (current or {}).get(key)
            gone = field_changes(old, {}, ignore) if old is not None else {}
            changes.append(Change(key, "delete", gone, None, None))
    return Diff(changes)


async def report_dry_run(
    ctx: TaskContext, diff: Diff, *, only_pending: bool = False, redact: bool = False
) -> None:
    """Write the diff as the run's items: ``unchanged`` records with outcome ``unchanged``,
    the rest with outcome ``skipped`` (nothing was written) and their field changes in the
    detail (only the field names with ``redact``: the item log is no place for personal data).
    Retry-failed runs see only their keys (``ctx.wanted``)."""
    for change in diff.changes:
        if not ctx.wanted(change.key):
            continue
        if only_pending and change.action == "unchanged":
            continue
        outcome = "unchanged" if change.action == "unchanged" else "skipped"
        detail = {"dry_run": True, **change.detail(redact=redact)}
        await ctx.item(change.key, change.action, outcome, detail=detail)  # type: ignore[arg-type]
