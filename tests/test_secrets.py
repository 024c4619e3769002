"""`/api/v1/secrets` (reference §3.12): the vault, its routes, who may read values, the audit,
and values kept out of responses, logs, events and Temporal history."""

from __future__ import annotations

import base64
import dataclasses
import io
import logging
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from starlette.applications import Starlette
from temporalio.client import Client

from api.app import create_app
from controlplane.devtools.stack import DevError, dev_secret_key
from controlplane.logs import JsonFormatter
from controlplane.settings import Settings
from controlplane.vault import Vault, VaultError, VaultKeyError, parse_key
from tests.conftest import Tenant, assert_error, client_for
from tests.resource_helpers import assert_validation, create_environment, create_queue, rows_of

KEY = base64.b64encode(bytes(range(32))).decode()
SECRET_VALUE = "s3cr3t-Value-7f1c2e"


@dataclass
class VaultTenant:
    """A tenant's clients on an API that holds a vault key."""

    id: str
    admin: httpx.AsyncClient
    member: httpx.AsyncClient
    viewer: httpx.AsyncClient
    app: Starlette


@pytest.fixture(scope="module")
async def vault_app(settings: Settings, app: Starlette) -> AsyncIterator[Starlette]:
    """The API with CONTROLPLANE_SECRET_KEY set, on the session's database and Temporal."""
    application = create_app(dataclasses.replace(settings, secret_key=KEY))
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture(scope="module")
async def keyless_app(settings: Settings, app: Starlette) -> AsyncIterator[Starlette]:
    """The API without CONTROLPLANE_SECRET_KEY."""
    application = create_app(dataclasses.replace(settings, secret_key=""))
    async with application.router.lifespan_context(application):
        yield application


def on_vault(vault_app: Starlette, tenant: Tenant) -> VaultTenant:
    return VaultTenant(
        tenant.id,
        client_for(vault_app, tenant.keys["admin"]),
        client_for(vault_app, tenant.keys["member"]),
        client_for(vault_app, tenant.keys["viewer"]),
        vault_app,
    )


@pytest.fixture
def vt(vault_app: Starlette, tenant: Tenant) -> VaultTenant:
    return on_vault(vault_app, tenant)


@pytest.fixture
def other_vt(vault_app: Starlette, other_tenant: Tenant) -> VaultTenant:
    return on_vault(vault_app, other_tenant)


async def put_secret(client: httpx.AsyncClient, name: str, value: str = SECRET_VALUE) -> Any:
    r = await client.post("/api/v1/secrets", json={"name": name, "value": value})
    assert r.status_code == 201, r.text
    return r.json()


async def start_worker_token(client: httpx.AsyncClient, queue_id: str) -> tuple[str, str]:
    """Register a worker on the queue through the API: (worker id, worker token)."""
    r = await client.post(f"/api/v1/worker-queues/{queue_id}/start", json={})
    assert r.status_code == 200, r.text
    return r.json()["worker_id"], r.json()["worker_token"]


async def make_agent(client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    r = await client.post(
        "/api/v1/agents",
        json={
            "name": f"agent-{uuid.uuid4().hex[:6]}",
            "model_id": "anthropic/claude-sonnet-4-5",
            **fields,
        },
    )
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def execute(client: httpx.AsyncClient, agent_id: str, queue_id: str, **fields: Any) -> str:
    """Start an execution on a queue that no worker serves: it stays pending, which is all the
    environment routes need."""
    r = await client.post(
        f"/api/v1/agents/{agent_id}/execute",
        json={"prompt": "Hi", "worker_queue_id": queue_id, **fields},
    )
    assert r.status_code == 200, r.text
    return str(r.json()["execution_id"])


async def queue_in_new_environment(client: httpx.AsyncClient) -> str:
    env = await create_environment(client, f"env-{uuid.uuid4().hex[:6]}")
    return str((await create_queue(client, env["id"], "q"))["id"])


async def audit_rows(db: asyncpg.Pool[Any], org: str) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT secret_name, accessor, execution_id, purpose FROM secret_access_log "
        "WHERE organization_id = $1 ORDER BY id",
        org,
    )
    return [dict(row) for row in rows]


def history_text(node: Any) -> str:
    """A workflow history as text, with every payload's (base64) `data` decoded."""
    if isinstance(node, dict):
        parts = []
        for key, value in node.items():
            if key == "data" and isinstance(value, str):
                parts.append(base64.b64decode(value).decode(errors="replace"))
            else:
                parts.append(history_text(value))
        return "\n".join(parts)
    if isinstance(node, list):
        return "\n".join(history_text(item) for item in node)
    return str(node)


# --- the vault itself --------------------------------------------------------------------------


def test_keys_in_hex_or_base64_and_nothing_else() -> None:
    raw = bytes(range(32))
    assert parse_key(raw.hex()) == raw
    assert parse_key(base64.b64encode(raw).decode()) == raw
    assert parse_key(base64.urlsafe_b64encode(raw).decode().rstrip("=")) == raw
    for bad in ("", "short", raw.hex()[:-2], base64.b64encode(raw[:16]).decode(), "!" * 44):
        with pytest.raises(VaultKeyError, match="256-bit"):
            parse_key(bad)


def test_seal_binds_value_to_org_and_name() -> None:
    vault = Vault(parse_key(KEY))
    sealed = vault.seal("acme", "DB_PASSWORD", SECRET_VALUE)
    assert vault.open("acme", "DB_PASSWORD", sealed.ciphertext, sealed.nonce) == SECRET_VALUE
    assert SECRET_VALUE.encode() not in sealed.ciphertext
    again = vault.seal("acme", "DB_PASSWORD", SECRET_VALUE)
    assert again.nonce != sealed.nonce and again.ciphertext != sealed.ciphertext
    assert len(sealed.nonce) == 12
    # Moved to another row, tampered with, or opened with another key: refused.
    for org, name, ciphertext in [
        ("other-org", "DB_PASSWORD", sealed.ciphertext),
        ("acme", "API_TOKEN", sealed.ciphertext),
        ("acme", "DB_PASSWORD", bytes([sealed.ciphertext[0] ^ 1]) + sealed.ciphertext[1:]),
    ]:
        with pytest.raises(VaultError, match="does not decrypt"):
            vault.open(org, name, ciphertext, sealed.nonce)
    with pytest.raises(VaultError):
        Vault(os.urandom(32)).open("acme", "DB_PASSWORD", sealed.ciphertext, sealed.nonce)


def test_settings_refuse_a_malformed_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTROLPLANE_SECRET_KEY", "not-a-key")
    with pytest.raises(SystemExit, match="CONTROLPLANE_SECRET_KEY must be a 256-bit key"):
        Settings.from_env()
    monkeypatch.setenv("CONTROLPLANE_SECRET_KEY", KEY)
    assert Settings.from_env().secret_key == KEY
    assert KEY not in repr(Settings.from_env())


def test_dev_mode_keeps_one_key_in_its_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CONTROLPLANE_SECRET_KEY", raising=False)
    first = dev_secret_key(tmp_path)
    assert len(parse_key(first)) == 32
    key_file = tmp_path / "secret-key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert dev_secret_key(tmp_path) == first  # kept across restarts
    monkeypatch.setenv("CONTROLPLANE_SECRET_KEY", KEY)
    assert dev_secret_key(tmp_path) == KEY  # the operator's key wins
    monkeypatch.delenv("CONTROLPLANE_SECRET_KEY")
    key_file.write_text("garbage\n")
    with pytest.raises(DevError, match="does not hold a vault key"):
        dev_secret_key(tmp_path)


def test_dev_mode_gives_the_key_to_the_api_only() -> None:
    from controlplane.devtools import stack

    assert "CONTROLPLANE_SECRET_KEY" in stack.WORKER_HIDDEN_ENV
    source = Path(stack.__file__).read_text()
    assert "CONTROLPLANE_SECRET_KEY=dev_secret_key(self.home)" in source


# --- routes ------------------------------------------------------------------------------------


async def test_create_read_update_delete(db: asyncpg.Pool[Any], vt: VaultTenant) -> None:
    r = await vt.admin.post(
        "/api/v1/secrets",
        json={"name": "DB_PASSWORD", "value": SECRET_VALUE, "description": "primary db"},
    )
    assert r.status_code == 201, r.text
    created = r.json()
    assert set(created) == {
        "id",
        "organization_id",
        "name",
        "description",
        "key_version",
        "created_by",
        "updated_by",
        "created_at",
        "updated_at",
    }
    assert (created["name"], created["description"], created["organization_id"]) == (
        "DB_PASSWORD",
        "primary db",
        vt.id,
    )
    assert SECRET_VALUE not in r.text
    # At rest: a ciphertext that is not the value, and opens with the key for this row only.
    row = await db.fetchrow(
        "SELECT ciphertext, nonce FROM secrets WHERE organization_id = $1 AND name = $2",
        vt.id,
        "DB_PASSWORD",
    )
    assert row is not None
    assert SECRET_VALUE.encode() not in row["ciphertext"]
    vault = Vault(parse_key(KEY))
    assert vault.open(vt.id, "DB_PASSWORD", row["ciphertext"], row["nonce"]) == SECRET_VALUE
    with pytest.raises(VaultError):
        vault.open(vt.id, "OTHER_NAME", row["ciphertext"], row["nonce"])

    await put_secret(vt.admin, "API_TOKEN", "another-" + SECRET_VALUE)
    listed = await vt.viewer.get("/api/v1/secrets")
    assert listed.status_code == 200
    body = listed.json()
    assert set(body) == {"items", "total", "limit", "offset"}
    assert [item["name"] for item in body["items"]] == ["API_TOKEN", "DB_PASSWORD"]
    assert SECRET_VALUE not in listed.text and "value" not in body["items"][0]
    got = await vt.viewer.get("/api/v1/secrets/DB_PASSWORD")
    assert got.json()["id"] == created["id"] and SECRET_VALUE not in got.text

    # A description change keeps the ciphertext; a value change seals again.
    r = await vt.admin.patch("/api/v1/secrets/DB_PASSWORD", json={"description": "rotated"})
    assert r.status_code == 200 and r.json()["description"] == "rotated"
    same = await db.fetchrow(
        "SELECT ciphertext, nonce FROM secrets WHERE organization_id = $1 AND name = $2",
        vt.id,
        "DB_PASSWORD",
    )
    assert same is not None and same["ciphertext"] == row["ciphertext"]
    r = await vt.admin.patch("/api/v1/secrets/DB_PASSWORD", json={"value": "new-value-123"})
    assert r.status_code == 200 and "new-value-123" not in r.text
    new = await db.fetchrow(
        "SELECT ciphertext, nonce FROM secrets WHERE organization_id = $1 AND name = $2",
        vt.id,
        "DB_PASSWORD",
    )
    assert new is not None and new["nonce"] != row["nonce"]
    assert vault.open(vt.id, "DB_PASSWORD", new["ciphertext"], new["nonce"]) == "new-value-123"
    value = await vt.admin.get("/api/v1/secrets/value/DB_PASSWORD")
    assert value.json() == {"name": "DB_PASSWORD", "value": "new-value-123"}

    r = await vt.admin.delete("/api/v1/secrets/DB_PASSWORD")
    assert r.status_code == 200
    assert r.json() == {"id": created["id"], "name": "DB_PASSWORD", "deleted": True}
    assert_error(await vt.viewer.get("/api/v1/secrets/DB_PASSWORD"), 404, "RESOURCE_NOT_FOUND")
    assert_error(await vt.admin.delete("/api/v1/secrets/DB_PASSWORD"), 404)


async def test_bad_input_writes_nothing(db: asyncpg.Pool[Any], vt: VaultTenant) -> None:
    await put_secret(vt.admin, "TAKEN")
    before = await rows_of(db, "secrets", vt.id)
    for body, field in [
        ({"name": "1ABC", "value": "x"}, "name"),
        ({"name": "has-dash", "value": "x"}, "name"),
        ({"name": "with space", "value": "x"}, "name"),
        ({"name": "", "value": "x"}, "name"),
        ({"name": "OK_NAME"}, "value"),
        ({"name": "OK_NAME", "value": ""}, "value"),
        ({"name": "OK_NAME", "value": 42}, "value"),
    ]:
        assert_validation(await vt.admin.post("/api/v1/secrets", json=body), field)
    error = assert_error(
        await vt.admin.post("/api/v1/secrets", json={"name": "TAKEN", "value": "y"}),
        409,
        "RESOURCE_CONFLICT",
    )
    assert "TAKEN" in error["message"]
    r = await vt.admin.post(
        "/api/v1/secrets", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert_error(r, 400, "BAD_REQUEST")
    r = await vt.admin.patch("/api/v1/secrets/TAKEN", json={"value": None})
    errors = assert_error(r, 422, "VALIDATION_ERROR")["details"]["validation_errors"]
    assert [(e["field"], e["message"]) for e in errors] == [
        ("value", "Value error, cannot be null")
    ]
    assert_validation(await vt.admin.patch("/api/v1/secrets/TAKEN", json={"value": ""}), "value")
    assert await rows_of(db, "secrets", vt.id) == before


async def test_only_admins_write(db: asyncpg.Pool[Any], vt: VaultTenant) -> None:
    await put_secret(vt.admin, "KEEP")
    before = await rows_of(db, "secrets", vt.id)
    for client in (vt.member, vt.viewer):
        body = {"name": "NEW", "value": "x"}
        assert_error(await client.post("/api/v1/secrets", json=body), 403, "AUTHORIZATION_ERROR")
        assert_error(await client.patch("/api/v1/secrets/KEEP", json={"value": "y"}), 403)
        assert_error(await client.delete("/api/v1/secrets/KEEP"), 403)
    assert await rows_of(db, "secrets", vt.id) == before


async def test_another_tenants_secret_is_not_found(
    db: asyncpg.Pool[Any], vt: VaultTenant, other_vt: VaultTenant
) -> None:
    await put_secret(other_vt.admin, "THEIRS")
    before = await rows_of(db, "secrets", other_vt.id)
    messages = set()
    for name in ("THEIRS", "MISSING", "not-a-name"):
        for response in (
            await vt.admin.get(f"/api/v1/secrets/{name}"),
            await vt.admin.patch(f"/api/v1/secrets/{name}", json={"description": "x"}),
            await vt.admin.delete(f"/api/v1/secrets/{name}"),
            await vt.admin.get(f"/api/v1/secrets/value/{name}"),
        ):
            error = assert_error(response, 404, "RESOURCE_NOT_FOUND")
            messages.add(error["message"].replace(name, "<name>"))
    assert messages == {"Secret '<name>' not found"}
    assert (await vt.admin.get("/api/v1/secrets")).json()["total"] == 0
    assert await rows_of(db, "secrets", other_vt.id) == before
    assert await audit_rows(db, other_vt.id) == []


async def test_without_a_key_secrets_answer_503_and_the_rest_works(
    keyless_app: Starlette, tenant: Tenant
) -> None:
    keyless = on_vault(keyless_app, tenant)
    error = assert_error(
        await keyless.admin.post("/api/v1/secrets", json={"name": "X", "value": "y"}),
        503,
        "CONFIGURATION_ERROR",
    )
    assert "CONTROLPLANE_SECRET_KEY" in error["message"]
    assert_error(await keyless.admin.get("/api/v1/secrets/value/X"), 503, "CONFIGURATION_ERROR")
    assert (await keyless.viewer.get("/api/v1/secrets")).status_code == 200
    assert (await keyless.viewer.get("/api/v1/projects")).status_code == 200


async def test_admins_read_values_and_every_read_is_audited(
    db: asyncpg.Pool[Any], vt: VaultTenant
) -> None:
    await put_secret(vt.admin, "DB_PASSWORD")
    r = await vt.admin.get("/api/v1/secrets/value/DB_PASSWORD")
    assert r.status_code == 200
    assert r.json() == {"name": "DB_PASSWORD", "value": SECRET_VALUE}
    for client in (vt.member, vt.viewer):
        assert_error(await client.get("/api/v1/secrets/value/DB_PASSWORD"), 403)
    admin_key_id = await db.fetchval(
        "SELECT id FROM api_keys WHERE organization_id = $1 AND role = 'admin'", vt.id
    )
    assert await audit_rows(db, vt.id) == [
        {
            "secret_name": "DB_PASSWORD",
            "accessor": f"api_key:{admin_key_id}",
            "execution_id": None,
            "purpose": "admin_read",
        }
    ]
    log = await vt.admin.get("/api/v1/secrets/access-log")
    assert log.status_code == 200
    entries = log.json()["items"]
    assert [(e["secret_name"], e["purpose"]) for e in entries] == [("DB_PASSWORD", "admin_read")]
    assert SECRET_VALUE not in log.text
    filtered = await vt.admin.get("/api/v1/secrets/access-log?secret_name=OTHER")
    assert filtered.json()["total"] == 0
    assert_error(await vt.member.get("/api/v1/secrets/access-log"), 403)


async def test_a_worker_reads_only_what_its_execution_references(
    db: asyncpg.Pool[Any], vt: VaultTenant, other_vt: VaultTenant
) -> None:
    await put_secret(vt.admin, "DB_PASSWORD")
    await put_secret(vt.admin, "UNRELATED", "unrelated-value")
    agent = await make_agent(vt.member, execution_environment={"secrets": ["DB_PASSWORD"]})
    queue_id = await queue_in_new_environment(vt.member)
    execution_id = await execute(vt.member, agent["id"], queue_id)
    worker_id, token = await start_worker_token(vt.admin, queue_id)
    worker = client_for(vt.app, token)

    path = "/api/v1/secrets/value/DB_PASSWORD"
    r = await worker.get(f"{path}?execution_id={execution_id}")
    assert r.status_code == 200, r.text
    assert r.json() == {"name": "DB_PASSWORD", "value": SECRET_VALUE}
    assert await audit_rows(db, vt.id) == [
        {
            "secret_name": "DB_PASSWORD",
            "accessor": f"worker:{worker_id}",
            "execution_id": uuid.UUID(execution_id),
            "purpose": "worker_read",
        }
    ]

    # Not referenced by the execution; no execution named; a run's own override counts.
    r = await worker.get(f"/api/v1/secrets/value/UNRELATED?execution_id={execution_id}")
    assert "does not reference secret 'UNRELATED'" in assert_error(r, 403)["message"]
    assert_error(await worker.get(path), 400)
    with_override = await execute(
        vt.admin, agent["id"], queue_id, execution_environment={"secrets": ["UNRELATED"]}
    )
    r = await worker.get(f"/api/v1/secrets/value/UNRELATED?execution_id={with_override}")
    assert r.json()["value"] == "unrelated-value"

    # Another queue's execution, another tenant's, a missing one: all 404 like missing.
    other_queue = await queue_in_new_environment(vt.member)
    elsewhere = await execute(vt.member, agent["id"], other_queue)
    other_agent = await make_agent(
        other_vt.member, execution_environment={"secrets": ["DB_PASSWORD"]}
    )
    theirs = await execute(
        other_vt.member, other_agent["id"], await queue_in_new_environment(other_vt.member)
    )
    for ident in (elsewhere, theirs, str(uuid.uuid4()), "nope"):
        error = assert_error(await worker.get(f"{path}?execution_id={ident}"), 404)
        assert error["message"] == f"Execution '{ident}' not found"
    # Only the two granted reads were recorded.
    assert [row["secret_name"] for row in await audit_rows(db, vt.id)] == [
        "DB_PASSWORD",
        "UNRELATED",
    ]
    for ident in (execution_id, with_override, elsewhere):
        assert (await vt.member.delete(f"/api/v1/executions/{ident}")).status_code == 200
    await other_vt.member.delete(f"/api/v1/executions/{theirs}")


async def test_values_stay_out_of_logs_events_and_history(
    db: asyncpg.Pool[Any], vt: VaultTenant, temporal_address: str
) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        await put_secret(vt.admin, "DB_PASSWORD")
        await vt.admin.patch("/api/v1/secrets/DB_PASSWORD", json={"value": SECRET_VALUE + "2"})
        await vt.admin.post("/api/v1/secrets", json={"name": "DB_PASSWORD", "value": "dup-val"})
        await vt.admin.get("/api/v1/secrets/value/DB_PASSWORD")
        agent = await make_agent(
            vt.member,
            system_prompt="Use {{.secret.DB_PASSWORD}}",
            execution_environment={"secrets": ["DB_PASSWORD"], "env_vars": {"MODE": "x"}},
        )
        queue_id = await queue_in_new_environment(vt.member)
        execution_id = await execute(vt.member, agent["id"], queue_id)
        _, token = await start_worker_token(vt.admin, queue_id)
        environment = await client_for(vt.app, token).get(
            f"/api/v1/executions/{execution_id}/environment"
        )
        assert environment.json()["secrets"] == {"DB_PASSWORD": SECRET_VALUE + "2"}
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    logged = stream.getvalue()
    assert '"path": "/api/v1/secrets/value/DB_PASSWORD"' in logged  # the log did record
    for value in (SECRET_VALUE, "dup-val"):
        assert value not in logged
    events = await db.fetch(
        "SELECT data::text AS data FROM execution_events WHERE execution_id = $1",
        uuid.UUID(execution_id),
    )
    assert all(SECRET_VALUE not in row["data"] for row in events)
    client = await Client.connect(temporal_address, namespace=Settings().namespace_for(vt.id))
    history = await client.get_workflow_handle(f"agent-execution-{execution_id}").fetch_history()
    text = history_text(history.to_json_dict())
    assert "DB_PASSWORD" in text  # the template name travels, the value does not
    assert SECRET_VALUE not in text
    await vt.member.delete(f"/api/v1/executions/{execution_id}")
