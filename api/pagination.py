"""`{items, total, limit, offset}` pages; `skip` is accepted as an alias of `offset`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Generic, TypeVar

import asyncpg
from pydantic import BaseModel, Field

T = TypeVar("T")


class ListQuery(BaseModel):
    limit: int = Field(50, ge=1, le=1000, description="Page size, 1..1000")
    offset: int = Field(0, ge=0, le=1_000_000_000, description="Rows to skip")
    skip: int | None = Field(None, ge=0, le=1_000_000_000, description="Alias of offset")

    @property
    def start(self) -> int:
        return self.skip if self.skip is not None and self.offset == 0 else self.offset


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


async def fetch_page(
    db: asyncpg.Pool[Any],
    *,
    table: str,
    columns: str,
    where: str,
    args: Sequence[Any],
    query: ListQuery,
    order: str = "created_at, id",
    filters: Mapping[str, object] | None = None,
) -> tuple[list[asyncpg.Record], int]:
    """One page of rows and the total that matches `where`, in a stable order.

    `filters` narrows by `column = value` for each value that is not None (a filter the
    client did not send). `table`, `columns`, `where`, `order` and the filter columns are
    code, never user input; values go in `args`."""
    args = list(args)
    for column, value in (filters or {}).items():
        if value is not None:
            args.append(value)
            where += f" AND {column} = ${len(args)}"
    n = len(args)
    rows = await db.fetch(
        f"SELECT {columns}, count(*) OVER () AS total_rows FROM {table} WHERE {where} "
        f"ORDER BY {order} LIMIT ${n + 1} OFFSET ${n + 2}",
        *args,
        query.limit,
        query.start,
    )
    if rows:
        return list(rows), int(rows[0]["total_rows"])
    # An offset past the end returns no row to carry the window count.
    total = await db.fetchval(f"SELECT count(*) FROM {table} WHERE {where}", *args)
    return [], int(total)
