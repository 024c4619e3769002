"""Schema migrations: numbered SQL files applied once, in order, and recorded.

The schema used to be one idempotent schema.sql re-run at every start-up, which could only grow
by IF NOT EXISTS tricks and could not say what a database had been through. Now each change is a
file `NNNN_name.sql` in controlplane/migrations, applied in its own transaction and recorded in
`schema_migrations` with its checksum, so a migration edited after it ran is refused rather than
silently diverging between databases. A migration runs inside that transaction, so it holds no
BEGIN/COMMIT and nothing that refuses a transaction (CREATE INDEX CONCURRENTLY). The files in
`repeatable/` (the model catalogue) are data: idempotent, never recorded, run after the
migrations at every start-up.

Several API processes may start at once: an advisory lock serialises the runners, and whoever
waited finds the work recorded.

A database set up by the old schema.sql has tables but no `schema_migrations`, and needs no
special case: 0001 is that file's schema, idempotent, so it runs there as a no-op (or fills in
what an older release's file had not created yet), and the migrations after it tolerate the
changes the last schema.sql had already made.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from controlplane.settings import MIGRATIONS_DIR

# The lock the old schema.sql start-up took too, so an old and a new process never overlap.
MIGRATION_LOCK_ID = 7_233_001
_FILE_NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")

_CREATE_TABLE = """
CREATE TABLE schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""


class MigrationError(Exception):
    """The migrations cannot run: a bad file, an edited or unknown migration, or a failed one."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str = field(repr=False)

    @property
    def file_name(self) -> str:
        return f"{self.version:04d}_{self.name}.sql"

    @property
    def checksum(self) -> str:
        # Line endings normalised: a checkout that converts them has not changed the migration.
        return hashlib.sha256(self.sql.replace("\r\n", "\n").encode()).hexdigest()


@dataclass(frozen=True)
class Outcome:
    """The version the database is at, and the migrations this run applied."""

    version: int
    applied: list[Migration]


def load_migrations(directory: Path) -> list[Migration]:
    """The numbered migrations in `directory`, in order, starting at 0001; a number used twice
    is refused (two branches that both added 0010 conflict here, not in production).

    Numbers may skip: branches developed side by side reserve their numbers, and one may land
    before the others (0015 before 0011-0014). A database then applies the lower numbers when
    they arrive, after the higher one, so a migration must not depend on one numbered above it
    that has not landed."""
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.fullmatch(path.name)
        if match is None:
            raise MigrationError(f"{path}: migration files are named NNNN_lowercase_name.sql")
        migrations.append(Migration(int(match[1]), match[2], path.read_text()))
    if not migrations:
        raise MigrationError(f"{directory}: no migrations")
    if migrations[0].version != 1:
        first = migrations[0].file_name
        raise MigrationError(f"{directory}: expected migration 0001, found {first}")
    for before, migration in itertools.pairwise(migrations):
        if migration.version == before.version:
            raise MigrationError(
                f"{directory}: two migrations numbered {migration.version:04d}: "
                f"{before.file_name} and {migration.file_name}"
            )
    return migrations


def load_repeatable(directory: Path) -> list[tuple[str, str]]:
    """(file name, SQL) of the repeatable steps in `directory`/repeatable, in name order."""
    return [(p.name, p.read_text()) for p in sorted((directory / "repeatable").glob("*.sql"))]


@contextlib.asynccontextmanager
async def _locked(conn: asyncpg.Connection[Any]) -> AsyncIterator[None]:
    # A session lock, since every migration commits on its own; closing the connection frees it.
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
    try:
        yield
    finally:
        if not conn.is_closed():
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)


async def _recorded(conn: asyncpg.Connection[Any]) -> dict[int, str]:
    """The recorded checksums by version, creating the table on first use."""
    async with conn.transaction():
        if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
            await conn.execute(_CREATE_TABLE)
        rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
    return {row["version"]: row["checksum"] for row in rows}


def _check(recorded: dict[int, str], migrations: list[Migration]) -> None:
    known = {m.version: m for m in migrations}
    newer = sorted(set(recorded) - set(known))
    if newer:
        raise MigrationError(
            f"the database has migration {newer[0]:04d}, which this release does not have: "
            "it was migrated by a newer release"
        )
    for version, checksum in sorted(recorded.items()):
        if known[version].checksum != checksum:
            raise MigrationError(
                f"migration {known[version].file_name} was changed after it was applied to "
                "this database; restore the file and put the change in a new migration"
            )


async def migrate(conn: asyncpg.Connection[Any], directory: Path) -> Outcome:
    """Apply the migrations of `directory` the database has not recorded, then its repeatable
    steps. Raises MigrationError, with the database left at the last migration that committed."""
    migrations = await asyncio.to_thread(load_migrations, directory)
    repeatable = await asyncio.to_thread(load_repeatable, directory)
    applied = []
    async with _locked(conn):
        recorded = await _recorded(conn)
        _check(recorded, migrations)
        for migration in migrations:
            if migration.version in recorded:
                continue
            try:
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) "
                        "VALUES ($1, $2, $3)",
                        migration.version,
                        migration.name,
                        migration.checksum,
                    )
            except asyncpg.PostgresError as exc:
                raise MigrationError(f"migration {migration.file_name} failed: {exc}") from exc
            applied.append(migration)
        for name, sql in repeatable:
            try:
                async with conn.transaction():
                    await conn.execute(sql)
            except asyncpg.PostgresError as exc:
                raise MigrationError(f"repeatable step {name} failed: {exc}") from exc
    return Outcome(migrations[-1].version, applied)


async def apply_schema(
    conn: asyncpg.Connection[Any], migrations_dir: Path = MIGRATIONS_DIR
) -> Outcome:
    """Bring the database to this release's schema: the migrations it has not recorded, then
    the repeatable steps. Any process may call it at start-up."""
    return await migrate(conn, migrations_dir)


async def apply_schema_at(dsn: str) -> Outcome:
    conn = await asyncpg.connect(dsn)
    try:
        return await apply_schema(conn)
    finally:
        await conn.close()
