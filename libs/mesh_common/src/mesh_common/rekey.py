"""Step 3 of a ``MESH_SECRET_KEY`` rotation: re-encrypt stored tokens with the first key.

:func:`rekey_column` walks one table in keyset-paged batches (one transaction each, so it can
run while the service works and can be resumed or repeated) and replaces every SecretBox token
that was not made with the primary key by one that is, decrypting with whichever listed key made
it. :class:`RekeyTarget` names one encrypted column and how its context is derived from the row;
services list theirs and ``python -m <service> rekey [--dry-run]`` runs them
(:func:`mesh_common.runner.main`). A token that no listed key opens stops the pass with
``DecryptionError`` naming the missing key id; rows already done stay done.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, select, update

from mesh_common.db import Database
from mesh_common.secrets import SecretBox


@dataclass(frozen=True)
class RekeyTarget:
    """One encrypted column: ``context(row)`` gives the SecretBox context of the row's token;
    ``key`` is a unique, sortable column (the primary key)."""

    name: str
    table: Table
    column: str
    key: str
    context: Callable[[Any], str]


async def rekey_column(
    db: Database, target: RekeyTarget, box: SecretBox, *, batch: int = 500, dry_run: bool = False
) -> dict[str, int]:
    """Re-encrypt ``target``'s tokens with ``box``'s primary key; ``{"checked", "rekeyed"}``
    (rows with a token, tokens not made with the primary key). ``dry_run`` only counts."""
    t = target.table
    key, column = t.c[target.key], t.c[target.column]
    checked = rekeyed = 0
    after: Any = None
    while True:
        query = select(t).where(column.is_not(None)).order_by(key).limit(batch)
        if after is not None:
            query = query.where(key > after)
        async with db.engine.begin() as conn:
            rows = (await conn.execute(query)).all()
            for row in rows:
                checked += 1
                token = row._mapping[target.column]
                if not box.needs_rotation(token):
                    continue
                rekeyed += 1
                if dry_run:
                    box.decrypt(token, context=target.context(row))  # it must still open
                    continue
                new = box.rotate(token, context=target.context(row))
                await conn.execute(
                    update(t).where(key == row._mapping[target.key]).values({target.column: new})
                )
        if len(rows) < batch:
            return {"checked": checked, "rekeyed": rekeyed}
        after = rows[-1]._mapping[target.key]


async def rekey_all(
    db: Database,
    targets: list[RekeyTarget],
    box: SecretBox,
    *,
    batch: int = 500,
    dry_run: bool = False,
) -> dict[str, dict[str, int]]:
    """:func:`rekey_column` for each target, in order; results by target name."""
    return {t.name: await rekey_column(db, t, box, batch=batch, dry_run=dry_run) for t in targets}
