"""The migration runner against fresh databases on the session Postgres: a new database, one set
up by the previous release's schema.sql (which is 0001 plus the model catalogue seed), one set
up by an earlier release's, and one set up by the last schema.sql before migrations
(tests/schemas/schema_sql_54e6cec.sql, a copy of that file, so no test needs git) all end at
the same schema, rows kept; an edited migration, a failed one and a database newer than the code
are refused; concurrent runners apply each migration once."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from controlplane.cli import main
from controlplane.schema import MIGRATION_LOCK_ID, MigrationError, Outcome, load_migrations, migrate
from controlplane.settings import MIGRATIONS_DIR
from tests.conftest import _with_database

NewDatabase = Callable[[], Awaitable[str]]
VERSIONS = [m.version for m in load_migrations(MIGRATIONS_DIR)]
LATEST = VERSIONS[-1]
PREVIOUS_RELEASE = (MIGRATIONS_DIR / "0001_initial.sql").read_text() + (
    MIGRATIONS_DIR / "repeatable" / "model_catalogue.sql"
).read_text()
LAST_SCHEMA_SQL = (Path(__file__).parent / "schemas" / "schema_sql_54e6cec.sql").read_text()

# Rows as the previous release wrote them, and references to nothing that 0008 must clean up.
QUEUE_ID = "b0000000-0000-4000-8000-000000000001"
AGENT_ID = "d0000000-0000-4000-8000-000000000001"
PROJECT_ID = "f0000000-0000-4000-8000-000000000001"
OLD_ROWS = f"""
INSERT INTO organizations (id, name) VALUES ('acme', 'Acme');
INSERT INTO api_keys (id, organization_id, name, prefix, key_hash, role) VALUES
    (gen_random_uuid(), 'acme', 'admin key', 'cp_a', 'hash-a', 'admin'),
    (gen_random_uuid(), 'acme', 'viewer key', 'cp_v', 'hash-v', 'viewer');
INSERT INTO environments (id, organization_id, name, worker_token) VALUES
    ('e0000000-0000-4000-8000-000000000001', 'acme', 'prod', gen_random_uuid());
INSERT INTO worker_queues (id, organization_id, environment_id, name) VALUES
    ('{QUEUE_ID}', 'acme', 'e0000000-0000-4000-8000-000000000001', 'q');
INSERT INTO executions (id, organization_id, prompt, status, worker_queue_id) VALUES
    (gen_random_uuid(), 'acme', 'hello', 'completed', '{QUEUE_ID}');
INSERT INTO idempotency_keys (organization_id, idempotency_key, request_hash, status_code)
    VALUES ('acme', 'retry-1', 'hash', 201);
INSERT INTO agents (id, organization_id, name, team_id) VALUES
    ('{AGENT_ID}', 'acme', 'coder', gen_random_uuid());
INSERT INTO projects (id, organization_id, name, key) VALUES
    ('{PROJECT_ID}', 'acme', 'Default', 'DEFAULT');
INSERT INTO project_agents (id, project_id, agent_id) VALUES
    (gen_random_uuid(), '{PROJECT_ID}', '{AGENT_ID}'),
    (gen_random_uuid(), '{PROJECT_ID}', gen_random_uuid());
INSERT INTO project_teams (id, project_id, team_id) VALUES
    (gen_random_uuid(), '{PROJECT_ID}', gen_random_uuid());
"""


@pytest.fixture
async def new_database(database_url: str) -> AsyncIterator[NewDatabase]:
    """Makes empty databases on the session's Postgres server; drops them after the test."""
    admin = await asyncpg.connect(database_url)
    names: list[str] = []

    async def make() -> str:
        names.append(f"cp_migrations_{uuid.uuid4().hex[:8]}")
        await admin.execute(f'CREATE DATABASE "{names[-1]}"')
        return _with_database(database_url, names[-1])

    try:
        yield make
    finally:
        for name in names:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def run(url: str, directory: Path = MIGRATIONS_DIR) -> Outcome:
    conn = await asyncpg.connect(url)
    try:
        return await migrate(conn, directory)
    finally:
        await conn.close()


async def execute(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def fetch(url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def shape(url: str) -> set[str]:
    """Tables, columns, constraints and indexes, as text: equal sets are the same schema (column
    order aside, which differs where a column was added later)."""
    rows = await fetch(
        url,
        """
        SELECT format('%s %s%s', relname, relkind, relpersistence) FROM pg_class
            WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'S')
        UNION ALL
        SELECT format('%s.%s %s %s %s', table_name, column_name, data_type, is_nullable,
                      column_default)
            FROM information_schema.columns WHERE table_schema = 'public'
        UNION ALL
        SELECT format('%s %s %s', conrelid::regclass, conname, pg_get_constraintdef(oid))
            FROM pg_constraint WHERE connamespace = 'public'::regnamespace
        UNION ALL
        SELECT indexdef FROM pg_indexes WHERE schemaname = 'public'
        """,
    )
    return {row[0] for row in rows}


async def recorded(url: str) -> list[tuple[int, str, str, Any]]:
    rows = await fetch(url, "SELECT * FROM schema_migrations ORDER BY version")
    return [(r["version"], r["name"], r["checksum"], r["applied_at"]) for r in rows]


async def test_a_new_database_gets_every_migration_once(new_database: NewDatabase) -> None:
    url = await new_database()
    outcome = await run(url)
    assert [m.version for m in outcome.applied] == VERSIONS
    assert VERSIONS[:10] == list(range(1, 11))
    assert outcome.version == LATEST
    first = await recorded(url)
    assert [(v, name, checksum) for v, name, checksum, _ in first] == [
        (m.version, m.name, m.checksum) for m in load_migrations(MIGRATIONS_DIR)
    ]
    # The repeatable step seeded the model catalogue.
    models = await fetch(url, "SELECT value FROM llm_models WHERE organization_id IS NULL")
    assert "anthropic/claude-sonnet-4-5" in {row["value"] for row in models}

    again = await run(url)
    assert (again.applied, again.version) == ([], LATEST)
    assert await recorded(url) == first


async def test_upgrade_from_the_previous_release(new_database: NewDatabase) -> None:
    old, fresh = await new_database(), await new_database()
    await execute(old, PREVIOUS_RELEASE)
    await execute(old, OLD_ROWS)
    before = await fetch(old, "SELECT id, role FROM api_keys ORDER BY id")

    # 0001 runs too, a no-op on the schema it is.
    outcome = await run(old)
    assert [m.version for m in outcome.applied] == VERSIONS

    # The new columns, tables and constraints are there, and the schema is a new database's.
    await run(fresh)
    assert await shape(old) == await shape(fresh)
    columns = {
        (row["table_name"], row["column_name"])
        for row in await fetch(
            old, "SELECT table_name, column_name FROM information_schema.columns"
        )
    }
    assert {
        ("organizations", "temporal_namespace"),
        ("api_keys", "worker_queue_id"),
        ("idempotency_keys", "credential"),
        ("idempotency_keys", "replayable"),
        ("executions", "tools"),
        ("executions", "user_role"),
        ("executions", "parent_execution_id"),
        ("signing_keys", "kid"),
        ("teams", "coordination_type"),
    } <= columns
    constraints = {
        row["conname"]: row["def"]
        for row in await fetch(
            old,
            "SELECT conname, pg_get_constraintdef(oid) AS def FROM pg_constraint "
            "WHERE connamespace = 'public'::regnamespace",
        )
    }
    assert "api_keys_role_check" not in constraints
    assert "worker_queue_id IS NOT NULL" in constraints["api_keys_role_scope"]
    assert constraints["idempotency_keys_pkey"] == (
        "PRIMARY KEY (organization_id, credential, idempotency_key)"
    )
    assert constraints["agents_team_id_fkey"].endswith("ON DELETE SET NULL")
    assert constraints["project_teams_team_id_fkey"].endswith("ON DELETE CASCADE")
    assert constraints["project_agents_agent_id_fkey"].endswith("ON DELETE CASCADE")

    # The old rows survived, with the new columns' defaults.
    assert await fetch(old, "SELECT id, role FROM api_keys ORDER BY id") == before
    (execution,) = await fetch(
        old, "SELECT prompt, tools, user_role, worker_queue_id FROM executions"
    )
    assert tuple(execution) == ("hello", "[]", None, uuid.UUID(QUEUE_ID))
    (idempotency,) = await fetch(old, "SELECT credential, replayable FROM idempotency_keys")
    assert tuple(idempotency) == ("", True)
    queues = await fetch(old, "SELECT id FROM worker_queues WHERE organization_id = 'acme'")
    assert [row["id"] for row in queues] == [uuid.UUID(QUEUE_ID)]
    # References to nothing were removed; the agent itself stays.
    (agent,) = await fetch(old, "SELECT id, team_id FROM agents")
    assert tuple(agent) == (uuid.UUID(AGENT_ID), None)
    members = await fetch(old, "SELECT agent_id FROM project_agents")
    assert [row["agent_id"] for row in members] == [uuid.UUID(AGENT_ID)]
    assert await fetch(old, "SELECT * FROM project_teams") == []
    # 0016 counted the rows there were, for list totals and projects' member counts.
    counts = await fetch(
        old, "SELECT resource, n FROM row_counts WHERE organization_id = 'acme' ORDER BY 1"
    )
    assert [tuple(row) for row in counts] == [
        ("agents", 1),
        ("environments", 1),
        ("executions", 1),
        ("projects", 1),
        ("worker_queues", 1),
    ]
    (project,) = await fetch(old, "SELECT agent_count, team_count FROM projects")
    assert tuple(project) == (1, 0)

    # Worker keys now work, bound to a queue, and only so.
    await execute(
        old,
        "INSERT INTO api_keys (id, organization_id, name, prefix, key_hash, role, "
        f"worker_queue_id) VALUES (gen_random_uuid(), 'acme', 'w', 'cp_w', 'hash-w', 'worker', "
        f"'{QUEUE_ID}')",
    )
    with pytest.raises(asyncpg.CheckViolationError):
        await execute(
            old,
            "INSERT INTO api_keys (id, organization_id, name, prefix, key_hash, role) "
            "VALUES (gen_random_uuid(), 'acme', 'w2', 'cp_w', 'hash-w2', 'worker')",
        )

    # Running again is a no-op.
    first = await recorded(old)
    assert (await run(old)).applied == []
    assert await recorded(old) == first


async def test_upgrade_from_the_last_schema_sql(new_database: NewDatabase) -> None:
    """0002-0006 find the changes the last schema.sql had made already."""
    old, fresh = await new_database(), await new_database()
    await execute(old, LAST_SCHEMA_SQL)
    await execute(
        old,
        OLD_ROWS + "INSERT INTO api_keys (id, organization_id, name, prefix, key_hash, role, "
        f"worker_queue_id) VALUES (gen_random_uuid(), 'acme', 'w', 'cp_w', 'hash-w', 'worker', "
        f"'{QUEUE_ID}');"
        "INSERT INTO idempotency_keys (organization_id, credential, idempotency_key, "
        "request_hash, replayable) VALUES ('acme', 'api_key:x', 'retry-1', 'hash', false);",
    )
    assert [m.version for m in (await run(old)).applied] == VERSIONS
    await run(fresh)
    assert await shape(old) == await shape(fresh)
    roles = await fetch(old, "SELECT role FROM api_keys ORDER BY role")
    assert [row["role"] for row in roles] == ["admin", "viewer", "worker"]
    keys = await fetch(old, "SELECT credential, replayable FROM idempotency_keys ORDER BY 1")
    assert [tuple(row) for row in keys] == [("", True), ("api_key:x", False)]
    assert (await run(old)).applied == []


async def test_upgrade_from_an_earlier_release(new_database: NewDatabase) -> None:
    """A schema.sql from before the vault (147b404) lacked these; 0001 creates them as that
    file's next start-up would have."""
    old, fresh = await new_database(), await new_database()
    await execute(old, PREVIOUS_RELEASE)
    await execute(
        old,
        "DROP TABLE secrets, secret_access_log, custom_integrations; "
        "ALTER TABLE executions DROP COLUMN execution_environment;",
    )
    await run(old)
    await run(fresh)
    assert await shape(old) == await shape(fresh)


def copy_migrations(tmp_path: Path) -> Path:
    directory = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, directory)
    return directory


async def test_an_edited_migration_is_refused(new_database: NewDatabase, tmp_path: Path) -> None:
    directory = copy_migrations(tmp_path)
    url = await new_database()
    await run(url, directory)
    edited = directory / "0002_organization_temporal_namespace.sql"
    # Line endings are not a change (a checkout may convert them).
    edited.write_bytes(edited.read_bytes().replace(b"\n", b"\r\n"))
    assert (await run(url, directory)).applied == []

    edited.write_text(edited.read_text() + "ALTER TABLE organizations ADD COLUMN x text;\n")
    with pytest.raises(
        MigrationError, match=r"0002_organization_temporal_namespace\.sql was changed"
    ):
        await run(url, directory)
    columns = await fetch(
        url,
        "SELECT 1 FROM information_schema.columns WHERE table_name = 'organizations' "
        "AND column_name = 'x'",
    )
    assert columns == []


async def test_a_failed_migration_rolls_back_and_is_not_recorded(
    new_database: NewDatabase, tmp_path: Path
) -> None:
    (tmp_path / "0001_first.sql").write_text("CREATE TABLE first (id int);")
    second = tmp_path / "0002_second.sql"
    second.write_text("CREATE TABLE second (id int);\nSELECT 1 / 0;")
    url = await new_database()
    with pytest.raises(MigrationError, match=r"0002_second\.sql failed: division by zero"):
        await run(url, tmp_path)
    assert [row[0] for row in await recorded(url)] == [1]
    assert (await fetch(url, "SELECT to_regclass('second') IS NULL AS gone"))[0]["gone"]

    # Never recorded, so it may be fixed in place.
    second.write_text("CREATE TABLE second (id int);")
    assert [m.file_name for m in (await run(url, tmp_path)).applied] == ["0002_second.sql"]


async def test_a_database_newer_than_the_code_is_refused(
    new_database: NewDatabase, tmp_path: Path
) -> None:
    (tmp_path / "0001_first.sql").write_text("CREATE TABLE first (id int);")
    (tmp_path / "0002_second.sql").write_text("CREATE TABLE second (id int);")
    url = await new_database()
    await run(url, tmp_path)
    (tmp_path / "0002_second.sql").unlink()
    with pytest.raises(MigrationError, match=r"has migration 0002.*newer release"):
        await run(url, tmp_path)


async def test_a_reserved_number_that_lands_later_is_applied_then(
    new_database: NewDatabase, tmp_path: Path
) -> None:
    """Branches reserve numbers: 0003 may land before 0002. A database that ran 0001 and 0003
    applies 0002 when it arrives."""
    (tmp_path / "0001_first.sql").write_text("CREATE TABLE first (id int);")
    (tmp_path / "0003_third.sql").write_text("CREATE TABLE third (id int);")
    url = await new_database()
    outcome = await run(url, tmp_path)
    assert ([m.version for m in outcome.applied], outcome.version) == ([1, 3], 3)
    (tmp_path / "0002_second.sql").write_text("CREATE TABLE second (id int);")
    outcome = await run(url, tmp_path)
    assert ([m.file_name for m in outcome.applied], outcome.version) == (["0002_second.sql"], 3)
    assert [row[0] for row in await recorded(url)] == [1, 2, 3]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ([], "no migrations"),
        (["0001_a.sql", "2_b.sql"], "2_b.sql: migration files are named"),
        (["0001_a.sql", "0002-b.sql"], "0002-b.sql: migration files are named"),
        (["0002_b.sql", "0003_c.sql"], "expected migration 0001, found 0002_b.sql"),
        (["0001_a.sql", "0001_b.sql"], "two migrations numbered 0001: 0001_a.sql and 0001_b.sql"),
    ],
)
def test_migration_files_are_numbered_once_each(
    tmp_path: Path, files: list[str], message: str
) -> None:
    for name in files:
        (tmp_path / name).write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=message.replace(".", r"\.")):
        load_migrations(tmp_path)


async def test_concurrent_runners_apply_each_migration_once(new_database: NewDatabase) -> None:
    url = await new_database()
    holder = await asyncpg.connect(url)
    runners = [await asyncpg.connect(url) for _ in range(2)]
    try:
        # Both runners start while the lock is held, so they really do start together.
        await holder.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
        tasks = [asyncio.create_task(migrate(conn, MIGRATIONS_DIR)) for conn in runners]
        async with asyncio.timeout(30):
            while await holder.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                "AND objid = $1 AND database = (SELECT oid FROM pg_database "
                "WHERE datname = current_database())",
                MIGRATION_LOCK_ID,
            ) < len(runners):
                assert not any(task.done() for task in tasks)
        await holder.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
        outcomes = await asyncio.gather(*tasks)
    finally:
        for conn in (holder, *runners):
            await conn.close()
    assert sorted(len(outcome.applied) for outcome in outcomes) == [0, len(VERSIONS)]
    assert [row[0] for row in await recorded(url)] == VERSIONS


async def test_cli_migrate_reports_and_refuses_in_one_line(
    new_database: NewDatabase,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    old = await new_database()
    await execute(old, PREVIOUS_RELEASE)
    monkeypatch.setenv("DATABASE_URL", old)
    # main() runs its own event loop, so it runs in a thread beside the test's loop.
    assert await asyncio.to_thread(main, ["migrate"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == [
        "applied 0001_initial.sql",
        "applied 0002_organization_temporal_namespace.sql",
    ]
    assert out[-1] == f"schema at version {LATEST}"
    assert await asyncio.to_thread(main, ["migrate"]) == 0
    assert capsys.readouterr().out == f"schema at version {LATEST}\n"

    await execute(old, "INSERT INTO schema_migrations VALUES (9999, 'future', 'x')")
    assert await asyncio.to_thread(main, ["migrate"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "9999" in err and "newer release" in err
