"""`{items, total, limit, offset}` pages; `skip` is accepted as an alias of `offset`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Generic, TypeVar

import asyncpg
from pydantic import BaseModel, Field

from controlplane import crud

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


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
    counted: str | None = None,
    joins: str = "",
) -> tuple[list[asyncpg.Record], int]:
    """One page as `query` asks (see controlplane.crud.fetch_page)."""
    return await crud.fetch_page(
        db,
        table=table,
        columns=columns,
        where=where,
        args=args,
        limit=query.limit,
        offset=query.start,
        order=order,
        filters=filters,
        counted=counted,
        joins=joins,
    )


def page_of(model: type[M], items: list[dict[str, Any]], total: int, query: ListQuery) -> Page[M]:
    """A page whose items are validated from their fields in one call: pydantic-core loops over
    the rows instead of Python building one model at a time (about half the cost)."""
    page: type[Page[M]] = Page[model]  # type: ignore[valid-type]
    return page.model_validate(
        {"items": items, "total": total, "limit": query.limit, "offset": query.start}
    )
