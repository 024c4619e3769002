"""Integrations (reference §3.13, §10): custom integrations CRUD, the 0.3 listing, the type to
env var mapping and the token routes."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from tests.conftest import assert_error, client_for
from tests.resource_helpers import (
    MISSING,
    assert_all_not_found,
    assert_validation,
    check_pagination,
    ordered_ids,
    rows_of,
)
from tests.test_secrets import (
    VaultTenant,
    audit_rows,
    execute,
    make_agent,
    other_vt,
    put_secret,
    queue_in_new_environment,
    start_worker_token,
    vault_app,
    vt,
)

__all__ = ["other_vt", "vault_app", "vt"]

FIELDS = {
    "id",
    "organization_id",
    "name",
    "integration_type",
    "description",
    "status",
    "connected",
    "config",
    "tags",
    "token_env_vars",
    "last_test",
    "created_by",
    "created_at",
    "updated_at",
}
FULL_CONFIG = {
    "env_vars": {"GH_HOST": "github.example.com"},
    "secrets": ["GH_PAT", "GH_WEBHOOK"],
    "files": [{"path": "~/.config/gh/hosts.yml", "content": "github.com: {}"}],
    "context_prompt": "The repo is acme/app.",
    "connection_test": {"enabled": True, "command": "gh auth status"},
}


async def create(client: httpx.AsyncClient, name: str, **fields: Any) -> dict[str, Any]:
    body = {"name": name, "integration_type": "github", **fields}
    r = await client.post("/api/v1/custom-integrations", json=body)
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


async def test_create_get_update(vt: VaultTenant) -> None:
    created = await create(
        vt.member, "GitHub", description="org repos", config=FULL_CONFIG, tags=["scm"]
    )
    assert set(created) == FIELDS
    assert created["status"] == "active" and created["organization_id"] == vt.id
    assert created["token_env_vars"] == ["GH_TOKEN", "GITHUB_TOKEN"]
    assert created["config"] == {
        **FULL_CONFIG,
        "files": [{"path": "~/.config/gh/hosts.yml", "content": "github.com: {}", "mode": "0644"}],
        "connection_test": {"enabled": True, "command": "gh auth status", "timeout": 5},
    }
    assert created["connected"] is False  # its secrets are not in the vault yet
    got = await vt.viewer.get(f"/api/v1/custom-integrations/{created['id']}")
    assert got.json() == created

    r = await vt.member.patch(
        f"/api/v1/custom-integrations/{created['id']}",
        json={"integration_type": "gitlab", "config": {"secrets": ["GL"]}, "status": "inactive"},
    )
    assert r.status_code == 200, r.text
    updated = r.json()
    assert updated["integration_type"] == "gitlab" and updated["status"] == "inactive"
    assert updated["token_env_vars"] == ["GITLAB_TOKEN"]
    assert updated["config"] == {"env_vars": {}, "secrets": ["GL"], "files": []}
    assert updated["description"] == "org repos" and updated["tags"] == ["scm"]


async def test_list_filters_and_pages(db: asyncpg.Pool[Any], vt: VaultTenant) -> None:
    for name, kind in [("a", "github"), ("b", "jira"), ("c", "github")]:
        await create(vt.member, name, integration_type=kind)
    expected = await ordered_ids(db, "custom_integrations", "organization_id = $1", vt.id)
    await check_pagination(vt.viewer, "/api/v1/custom-integrations", expected)
    r = await vt.viewer.get("/api/v1/custom-integrations?integration_type=jira")
    assert [item["name"] for item in r.json()["items"]] == ["b"]
    assert_validation(await vt.viewer.get("/api/v1/custom-integrations?status=gone"), "status")


async def test_soft_and_hard_delete(db: asyncpg.Pool[Any], vt: VaultTenant) -> None:
    first = await create(vt.member, "Slack", integration_type="slack")
    r = await vt.member.delete(f"/api/v1/custom-integrations/{first['id']}")
    assert r.status_code == 200 and r.json() == {"id": first["id"], "deleted": True}
    gone = await vt.viewer.get(f"/api/v1/custom-integrations/{first['id']}")
    assert gone.json()["status"] == "deleted"
    assert (await vt.viewer.get("/api/v1/custom-integrations")).json()["total"] == 0
    listed = await vt.viewer.get("/api/v1/custom-integrations?include_deleted=true")
    assert [item["id"] for item in listed.json()["items"]] == [first["id"]]
    # Its name is free again; a deleted one takes no change and is not listed in 0.3.
    second = await create(vt.member, "Slack", integration_type="slack")
    assert_error(
        await vt.member.patch(
            f"/api/v1/custom-integrations/{first['id']}", json={"description": "x"}
        ),
        404,
    )
    assert_error(await vt.member.delete(f"/api/v1/custom-integrations/{first['id']}"), 404)
    assert_error(await vt.viewer.get(f"/api/v1/integrations/{first['id']}"), 404)
    r = await vt.member.delete(f"/api/v1/custom-integrations/{second['id']}?hard_delete=true")
    assert r.status_code == 200
    rows = await db.fetch("SELECT id FROM custom_integrations WHERE organization_id = $1", vt.id)
    assert [str(row["id"]) for row in rows] == [first["id"]]
    assert_error(await vt.viewer.get(f"/api/v1/custom-integrations/{second['id']}"), 404)


async def test_bad_input_writes_nothing(db: asyncpg.Pool[Any], vt: VaultTenant) -> None:
    existing = await create(vt.member, "Taken")
    before = await rows_of(db, "custom_integrations", vt.id)
    post = "/api/v1/custom-integrations"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"name": "x", "integration_type": "Git Hub"}, "integration_type"),
        ({"name": "", "integration_type": "github"}, "name"),
        ({"name": "x"}, "integration_type"),
        ({"name": "x", "integration_type": "github", "status": "deleted"}, "status"),
        (
            {"name": "x", "integration_type": "github", "config": {"env_vars": {"1BAD": "v"}}},
            "config.env_vars.1BAD.[key]",
        ),
        (
            {"name": "x", "integration_type": "github", "config": {"secrets": ["no-dash"]}},
            "config.secrets.0",
        ),
    ]
    for path, problem in [
        ("../../etc/passwd", "path"),
        ("/etc/passwd", "path"),
        ("~/../x", "path"),
        ("a/../../b", "path"),
    ]:
        file = {"path": path, "content": "x"}
        body = {"name": "x", "integration_type": "github", "config": {"files": [file]}}
        cases.append((body, f"config.files.0.{problem}"))
    for file in (
        {"path": "f", "content": "x", "secret_ref": "S"},
        {"path": "f"},
        {"path": "f", "content": "x", "mode": "999"},
    ):
        cases.append(({"name": "x", "integration_type": "github", "config": {"files": [file]}}, ""))
    for body, field in cases:
        r = await vt.member.post(post, json=body)
        if field:
            assert_validation(r, field)
        else:
            assert_error(r, 422, "VALIDATION_ERROR")
    assert_error(
        await vt.member.post(post, json={"name": "Taken", "integration_type": "jira"}),
        409,
        "RESOURCE_CONFLICT",
    )
    patch = f"/api/v1/custom-integrations/{existing['id']}"
    assert_error(await vt.member.patch(patch, json={"config": None}), 422)
    assert_error(await vt.member.patch(patch, json={"status": "deleted"}), 422)
    for client in (vt.viewer,):
        assert_error(await client.post(post, json={"name": "v", "integration_type": "x"}), 403)
        assert_error(await client.patch(patch, json={"description": "v"}), 403)
        assert_error(await client.delete(patch), 403)
        assert_error(await client.post(f"{patch}/test"), 403)
    assert await rows_of(db, "custom_integrations", vt.id) == before


async def test_another_tenants_integration_is_not_found(
    db: asyncpg.Pool[Any], vt: VaultTenant, other_vt: VaultTenant
) -> None:
    theirs = await create(other_vt.member, "Theirs", config={"secrets": ["T"]})
    await put_secret(other_vt.admin, "T")
    before = await rows_of(db, "custom_integrations", other_vt.id)
    base = "/api/v1/custom-integrations"

    async def each(ident: str) -> list[httpx.Response]:
        return [
            await vt.admin.get(f"{base}/{ident}"),
            await vt.admin.patch(f"{base}/{ident}", json={"description": "x"}),
            await vt.admin.delete(f"{base}/{ident}?hard_delete=true"),
            await vt.admin.post(f"{base}/{ident}/test"),
            await vt.admin.get(f"/api/v1/integrations/{ident}"),
            await vt.admin.get(f"/api/v1/integrations/github/{ident}/token"),
            await vt.admin.get(f"/api/v1/integrations/github/creds/{ident}"),
        ]

    for position in range(7):

        async def request(ident: str, position: int = position) -> httpx.Response:
            return (await each(ident))[position]

        await assert_all_not_found(request, theirs["id"])
    assert await rows_of(db, "custom_integrations", other_vt.id) == before
    assert await audit_rows(db, other_vt.id) == []


async def test_the_03_listing_and_connected_only(vt: VaultTenant) -> None:
    await put_secret(vt.admin, "JIRA_API")
    ready = await create(
        vt.member, "Jira", integration_type="jira", config={"secrets": ["JIRA_API"]}
    )
    no_secret = await create(
        vt.member, "Slack", integration_type="slack", config={"secrets": ["X"]}
    )
    plain = await create(vt.member, "Docs", integration_type="notion")
    paused = await create(vt.member, "Paused", integration_type="jira", status="inactive")
    r = await vt.viewer.get("/api/v1/integrations")
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"items", "total", "limit", "offset"} and body["total"] == 4
    by_id = {item["id"]: item for item in body["items"]}
    assert by_id[ready["id"]] | {"created_at": None, "updated_at": None} == {
        "id": ready["id"],
        "name": "Jira",
        "integration_type": "jira",
        "vendor": "jira",
        "description": None,
        "status": "active",
        "connected": True,
        "source": "custom",
        "tags": [],
        "env_vars": {},
        "secrets": ["JIRA_API"],
        "token_env_vars": ["JIRA_TOKEN"],
        "created_at": None,
        "updated_at": None,
    }
    assert not by_id[no_secret["id"]]["connected"] and not by_id[paused["id"]]["connected"]
    assert by_id[plain["id"]]["connected"]  # nothing to miss
    connected = (await vt.viewer.get("/api/v1/integrations?connected_only=true")).json()
    assert [item["id"] for item in connected["items"]] == [ready["id"], plain["id"]]
    one = await vt.viewer.get(f"/api/v1/integrations/{no_secret['id']}")
    assert one.json()["token_env_vars"] == ["SLACK_TOKEN", "SLACK_BOT_TOKEN"]
    types = (await vt.viewer.get("/api/v1/integrations/types")).json()
    table = {t["integration_type"]: t["token_env_vars"] for t in types["types"]}
    assert table["github"] == ["GH_TOKEN", "GITHUB_TOKEN"] and table["jira"] == ["JIRA_TOKEN"]
    assert types["fallback"] == "{TYPE}_TOKEN"


async def test_tokens_for_admins_and_the_executions_that_use_them(
    db: asyncpg.Pool[Any], vt: VaultTenant
) -> None:
    await put_secret(vt.admin, "GH_PAT", "ghp_abc123")
    gh = await create(vt.member, "GH", config={"secrets": ["GH_PAT", "OTHER"]})
    unused = await create(vt.member, "Unused", config={"secrets": ["GH_PAT"]})
    empty = await create(vt.member, "Empty")
    for path in (
        f"/api/v1/integrations/github/{gh['id']}/token",
        f"/api/v1/integrations/github/creds/{gh['id']}",
    ):
        r = await vt.admin.get(path)
        assert r.status_code == 200, r.text
        assert r.json() == {
            "token": "ghp_abc123",
            "integration_id": gh["id"],
            "integration_type": "github",
            "secret_name": "GH_PAT",
            "env_vars": ["GH_TOKEN", "GITHUB_TOKEN"],
        }
        assert_error(await vt.member.get(path), 403)
        assert_error(await vt.viewer.get(path), 403)
    assert_error(await vt.admin.get(f"/api/v1/integrations/jira/{gh['id']}/token"), 404)
    error = assert_error(
        await vt.admin.get(f"/api/v1/integrations/github/{empty['id']}/token"), 404
    )
    assert "has no token" in error["message"]
    assert [(row["secret_name"], row["purpose"]) for row in await audit_rows(db, vt.id)] == [
        ("GH_PAT", "integration_token"),
        ("GH_PAT", "integration_token"),
    ]

    agent = await make_agent(vt.member, execution_environment={"integration_ids": [gh["id"]]})
    queue_id = await queue_in_new_environment(vt.member)
    execution_id = await execute(vt.member, agent["id"], queue_id)
    worker_id, token = await start_worker_token(vt.admin, queue_id)
    worker = client_for(vt.app, token)
    path = f"/api/v1/integrations/github/creds/{gh['id']}?execution_id={execution_id}"
    r = await worker.get(path)
    assert r.status_code == 200 and r.json()["token"] == "ghp_abc123"
    last = (await audit_rows(db, vt.id))[-1]
    assert last == {
        "secret_name": "GH_PAT",
        "accessor": f"worker:{worker_id}",
        "execution_id": uuid.UUID(execution_id),
        "purpose": "integration_token",
    }
    error = assert_error(
        await worker.get(
            f"/api/v1/integrations/github/{unused['id']}/token?execution_id={execution_id}"
        ),
        403,
    )
    assert "does not use integration" in error["message"]
    assert_error(await worker.get(f"/api/v1/integrations/github/creds/{gh['id']}"), 400)
    other_queue = await queue_in_new_environment(vt.member)
    elsewhere = await execute(vt.member, agent["id"], other_queue)
    r = await worker.get(f"/api/v1/integrations/github/creds/{gh['id']}?execution_id={elsewhere}")
    assert_error(r, 404)
    for ident in (execution_id, elsewhere):
        await vt.member.delete(f"/api/v1/executions/{ident}")


async def test_connection_test_checks_without_running_the_command(
    vt: VaultTenant, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    integration = await create(
        vt.member,
        "Risky",
        config={
            "secrets": ["PRESENT", "ABSENT"],
            "files": [{"path": "k", "secret_ref": "KUBE"}],
            "connection_test": {"enabled": True, "command": f"touch {marker}", "timeout": 2},
        },
    )
    await put_secret(vt.admin, "PRESENT")
    r = await vt.member.post(f"/api/v1/custom-integrations/{integration['id']}/test")
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["success"] is False and result["command_run"] is False
    assert result["missing_secrets"] == ["ABSENT", "KUBE"]
    assert result["command"] == f"touch {marker}" and result["timeout"] == 2
    assert "not run on the API host" in result["reason"]
    assert not marker.exists()
    stored = (await vt.viewer.get(f"/api/v1/custom-integrations/{integration['id']}")).json()
    assert stored["last_test"] == result
    await put_secret(vt.admin, "ABSENT")
    await put_secret(vt.admin, "KUBE")
    again = (await vt.member.post(f"/api/v1/custom-integrations/{integration['id']}/test")).json()
    assert again["success"] is True and again["missing_secrets"] == []
    assert_error(await vt.member.post(f"/api/v1/custom-integrations/{MISSING}/test"), 404)
