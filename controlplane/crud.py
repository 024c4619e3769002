"""The shape every organization-owned resource shares, written once: a page of rows with
filters, one row or not found, a PATCH applied under the row's lock, and an owned delete.

A resource declares its table, its columns and its name; its route module then holds only what
is its own (request and response models, checks between fields).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from controlplane.db import Conn, Queryable, conflict_on_duplicate, patch_assignments
from controlplane.errors import not_found


@dataclass(frozen=True)
class Table:
    name: str  # the SQL table (code, never input)
    kind: str  # how a missing one is named: "Team '…' not found"
    columns: str  # the select list (code, never input)
    order: str = "created_at, id"

    async def get(self, db: Queryable, org: str, ident: uuid.UUID) -> asyncpg.Record:
        """The organization's row, or not found (another tenant's id looks the same)."""
        row: asyncpg.Record | None = await db.fetchrow(
            f"SELECT {self.columns} FROM {self.name} WHERE id = $1 AND organization_id = $2",
            ident,
            org,
        )
        if row is None:
            raise not_found(self.kind, ident)
        return row

    async def page(
        self,
        db: asyncpg.Pool[Any],
        org: str,
        *,
        limit: int,
        offset: int,
        filters: Mapping[str, object] | None = None,
    ) -> tuple[list[asyncpg.Record], int]:
        """One page of the organization's rows, oldest first, narrowed by `column = value` for
        every filter that is not None."""
        return await fetch_page(
            db,
            table=self.name,
            columns=self.columns,
            where="organization_id = $1",
            args=[org],
            limit=limit,
            offset=offset,
            order=self.order,
            filters=filters,
        )

    async def patch(
        self,
        conn: Conn,
        org: str,
        ident: uuid.UUID,
        changes: dict[str, Any],
        allowed: Sequence[str],
        *,
        duplicate: str,
        check: Callable[[asyncpg.Record, dict[str, Any]], Awaitable[None]] | None = None,
    ) -> asyncpg.Record:
        """Apply the fields a PATCH sent, under the row's lock, so `check` (which sees the row
        as it is and the changes) and the update cannot race another writer. Run it in a
        transaction. A unique violation is a conflict named by `duplicate`."""
        current = await conn.fetchrow(
            f"SELECT {self.columns} FROM {self.name} WHERE id = $1 AND organization_id = $2 "
            "FOR UPDATE",
            ident,
            org,
        )
        if current is None:
            raise not_found(self.kind, ident)
        if check is not None:
            await check(current, changes)
        assignments, values = patch_assignments(changes, allowed, first_param=3)
        with conflict_on_duplicate(duplicate):
            row: asyncpg.Record | None = await conn.fetchrow(
                f"UPDATE {self.name} SET {assignments} WHERE id = $1 AND organization_id = $2 "
                f"RETURNING {self.columns}",
                ident,
                org,
                *values,
            )
        assert row is not None
        return row

    async def delete(self, db: Queryable, org: str, ident: uuid.UUID) -> None:
        deleted = await db.fetchval(
            f"DELETE FROM {self.name} WHERE id = $1 AND organization_id = $2 RETURNING id",
            ident,
            org,
        )
        if deleted is None:
            raise not_found(self.kind, ident)


# A plain table name: its page is read first, then its columns computed for that page only.
_TABLE_NAME = re.compile(r"[a-z_]+")


async def fetch_page(
    db: asyncpg.Pool[Any],
    *,
    table: str,
    columns: str,
    where: str,
    args: Sequence[Any],
    limit: int,
    offset: int,
    order: str = "created_at, id",
    filters: Mapping[str, object] | None = None,
    counted: str | None = None,
    joins: str = "",
) -> tuple[list[asyncpg.Record], int]:
    """One page of rows and the total that matches `where`, in a stable order, in one query.

    `filters` narrows by `column = value` for each value that is not None (a filter the
    client did not send). `table`, `columns`, `where`, `order` and the filter columns are
    code, never user input; values go in `args`.

    Reading the page costs `offset + limit` index entries when an index has the `where` and the
    order (migration 0016 adds them). From a plain table the page is picked first and `columns`
    (correlated subqueries among them) computed for its rows only; `joins` (a plain table only)
    joins more to the page's rows, under the table's name. The total is counted with
    the same `where`, unless `counted` names the resource whose row count in `row_counts` is
    that total (kept by triggers, for `organization_id = $1` alone) and no filter is set."""
    args = list(args)
    filtered = False
    for column, value in (filters or {}).items():
        if value is not None:
            args.append(value)
            where += f" AND {column} = ${len(args)}"
            filtered = True
    n = len(args)
    if counted is not None and not filtered:
        total = (
            "(SELECT coalesce(sum(n), 0) FROM row_counts WHERE organization_id = $1 "
            f"AND resource = '{counted}')"
        )
    else:
        total = f"(SELECT count(*) FROM {table} WHERE {where})"
    page = f"WHERE {where} ORDER BY {order} LIMIT ${n + 1} OFFSET ${n + 2}"
    if _TABLE_NAME.fullmatch(table):
        query = (
            f"SELECT {columns}, {total} AS total_rows "
            f"FROM (SELECT * FROM {table} {page}) AS {table} {joins} ORDER BY {order}"
        )
    else:
        assert not joins, "joins need a plain table"
        query = f"SELECT {columns}, {total} AS total_rows FROM {table} {page}"
    rows = await db.fetch(query, *args, limit, offset)
    if rows:
        return list(rows), int(rows[0]["total_rows"])
    # An offset past the end returns no row to carry the total.
    total_rows = await db.fetchval(f"SELECT {total}", *args)
    return [], int(total_rows)
