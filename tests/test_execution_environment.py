"""Execution environments: the merge across environment → team → agent → run, the resolved
routes, the worker route that hands a running execution its values, and templates."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest
from starlette.applications import Starlette

from controlplane.environments import Layer, merge, token_env_names
from tests.conftest import Tenant, assert_error, client_for
from tests.resource_helpers import MISSING, add_team, assert_all_not_found, create_environment
from tests.test_secrets import (
    SECRET_VALUE,
    VaultTenant,
    audit_rows,
    execute,
    keyless_app,
    make_agent,
    on_vault,
    other_vt,
    put_secret,
    queue_in_new_environment,
    start_worker_token,
    vault_app,
    vt,
)
from workflows.templates import TemplateError, missing, render, render_config, variables

__all__ = ["keyless_app", "other_vt", "vault_app", "vt"]

# --- templates ---------------------------------------------------------------------------------


def test_templates_render_secrets_and_env() -> None:
    env, secrets = {"REGION": "eu-west-1"}, {"TOKEN": "t0k"}
    text = "a={{.secret.TOKEN}} b={{ .env.REGION }} c={{  .secret.TOKEN}} keep={{var}} {{.graph.n}}"
    assert render(text, env, secrets) == "a=t0k b=eu-west-1 c=t0k keep={{var}} {{.graph.n}}"
    assert variables(text) == [("secret", "TOKEN"), ("env", "REGION")]
    # One pass: a value that looks like a template is not rendered again.
    assert render("{{.secret.X}}", {"Y": "no"}, {"X": "{{.env.Y}}"}) == "{{.env.Y}}"
    with pytest.raises(TemplateError) as caught:
        render("{{.secret.NOPE}} {{.env.TOKEN}} {{.secret.TOKEN}}", env, secrets)
    assert caught.value.missing == ["secret.NOPE", "env.TOKEN"]
    assert "t0k" not in str(caught.value)
    assert missing("{{.env.REGION}}{{.env.ZONE}}", env, secrets) == ["env.ZONE"]


def test_render_config_recurses_and_reports_every_missing_name() -> None:
    config = {
        "command": "server",
        "args": ["--token", "{{.secret.TOKEN}}", 3],
        "env": {"REGION": "{{.env.REGION}}"},
        "{{.env.REGION}}": ("{{.secret.TOKEN}}", True),
        "port": 8080,
    }
    out = render_config(config, {"REGION": "eu"}, {"TOKEN": "t"})
    assert out == {
        "command": "server",
        "args": ["--token", "t", 3],
        "env": {"REGION": "eu"},
        "{{.env.REGION}}": ("t", True),  # keys are not rendered
        "port": 8080,
    }
    assert config["args"] == ["--token", "{{.secret.TOKEN}}", 3]  # input untouched
    with pytest.raises(TemplateError) as caught:
        render_config({"a": ["{{.secret.A}}"], "b": {"c": "{{.env.B}}"}}, {}, {})
    assert caught.value.missing == ["secret.A", "env.B"]


# --- merging -----------------------------------------------------------------------------------


def test_layers_merge_later_wins_for_dicts_and_union_for_lists() -> None:
    layers = [
        Layer(
            "environment",
            "e1",
            "base",
            env_vars={"A": "env", "SHARED": "env"},
            secrets=["S1", "S2"],
            integration_ids=["i1"],
            mcp_servers={"fs": {"command": "fs-v1", "args": ["--ro"]}, "git": {"command": "g"}},
        ),
        Layer("team", "t1", "ops", env_vars={"SHARED": "team", "T": "team"}, secrets=["S3"]),
        Layer(
            "agent",
            "a1",
            "bot",
            env_vars={"SHARED": "agent"},
            secrets=["S2", "S4"],
            integration_ids=["i2", "i1"],
            mcp_servers={"fs": {"type": "http", "url": "http://fs"}},
        ),
        Layer("run", env_vars={"RUN": "1", "A": "run"}, secrets=["S1", "S5"]),
    ]
    resolved = merge(layers)
    assert resolved.env_vars == {"A": "run", "SHARED": "agent", "T": "team", "RUN": "1"}
    assert resolved.secrets == ["S1", "S2", "S3", "S4", "S5"]
    assert resolved.integration_ids == ["i1", "i2"]
    # An MCP server's config is replaced whole by the later layer, not merged key by key.
    assert resolved.mcp_servers == {
        "fs": {"type": "http", "url": "http://fs"},
        "git": {"command": "g"},
    }
    assert resolved.sources["env_vars"] == {
        "A": "run",
        "SHARED": "agent:bot",
        "T": "team:ops",
        "RUN": "run",
    }
    assert resolved.sources["secrets"] == {
        "S1": "environment:base",
        "S2": "environment:base",
        "S3": "team:ops",
        "S4": "agent:bot",
        "S5": "run",
    }
    assert resolved.sources["mcp_servers"] == {"fs": "agent:bot", "git": "environment:base"}
    assert merge([]).env_vars == {} and merge([]).secrets == []


def test_integration_types_map_to_env_vars() -> None:
    assert token_env_names("github") == ["GH_TOKEN", "GITHUB_TOKEN"]
    assert token_env_names("GitHub") == ["GH_TOKEN", "GITHUB_TOKEN"]
    assert token_env_names("jira") == ["JIRA_TOKEN"]
    assert token_env_names("slack") == ["SLACK_TOKEN", "SLACK_BOT_TOKEN"]
    assert token_env_names("aws") == []  # its parts come as secrets of their own names
    assert token_env_names("my-crm") == ["MY_CRM_TOKEN"]


# --- the resolved route ------------------------------------------------------------------------


async def test_resolved_for_agent_shows_layers_and_names_only(
    db: asyncpg.Pool[Any], vt: VaultTenant, other_vt: VaultTenant
) -> None:
    await put_secret(vt.admin, "S1")
    base = await create_environment(
        vt.member,
        "base",
        execution_environment={
            "env_vars": {"A": "base", "SHARED": "base"},
            "secrets": ["S1"],
            "mcp_servers": {"fs": {"type": "sse", "url": "http://fs-base/sse"}},
        },
    )
    prod = await create_environment(
        vt.member,
        "prod",
        execution_environment={"env_vars": {"SHARED": "prod", "P": "1"}, "secrets": ["S2", "S1"]},
    )
    agent = await make_agent(
        vt.member,
        environment_ids=[base["id"], prod["id"]],
        execution_environment={
            "env_vars": {"SHARED": "agent"},
            "secrets": ["S3"],
            "mcp_servers": {"fs": {"type": "http", "url": "http://fs.local/mcp"}},
        },
    )
    r = await vt.member.get(f"/api/v1/execution-environment/agents/{agent['id']}/resolved")
    assert r.status_code == 200, r.text
    body = r.json()
    assert SECRET_VALUE not in r.text
    assert body["agent_id"] == agent["id"] and body["agent_name"] == agent["name"]
    assert body["env_vars"] == {"A": "base", "SHARED": "agent", "P": "1"}
    assert body["secrets"] == ["S1", "S2", "S3"]
    assert body["missing_secrets"] == ["S2", "S3"]
    assert body["mcp_servers"]["fs"] == {
        "type": "http",
        "url": "http://fs.local/mcp",
        "args": [],
        "env": {},
        "headers": {},
    }
    assert body["sources"]["env_vars"] == {
        "A": "environment:base",
        "SHARED": f"agent:{agent['name']}",
        "P": "environment:prod",
    }
    assert body["sources"]["secrets"]["S2"] == "environment:prod"
    assert [(layer["source"], layer["name"]) for layer in body["layers"]] == [
        ("environment", "base"),
        ("environment", "prod"),
        ("agent", agent["name"]),
    ]
    assert body["layers"][1]["secrets"] == ["S2", "S1"]

    assert_error(
        await vt.viewer.get(f"/api/v1/execution-environment/agents/{agent['id']}/resolved"), 403
    )
    # An agent naming a team: the team's layer comes before the agent's.
    team_id = await add_team(
        db, vt.id, "crew", execution_environment={"env_vars": {"X": "team", "T": "team"}}
    )
    teamed = await make_agent(
        vt.member, team_id=str(team_id), execution_environment={"env_vars": {"X": "1"}}
    )
    r = await vt.member.get(f"/api/v1/execution-environment/agents/{teamed['id']}/resolved")
    assert [layer["source"] for layer in r.json()["layers"]] == ["team", "agent"]
    assert r.json()["env_vars"] == {"X": "1", "T": "team"}
    theirs = await make_agent(other_vt.member)

    async def resolved(ident: str) -> Any:
        return await vt.member.get(f"/api/v1/execution-environment/agents/{ident}/resolved")

    await assert_all_not_found(resolved, theirs["id"])
    for ident in (MISSING, "x"):
        error = assert_error(
            await vt.member.get(f"/api/v1/execution-environment/teams/{ident}/resolved"), 404
        )
        assert error["message"] == f"Team '{ident}' not found"


# --- the worker route --------------------------------------------------------------------------


async def _integration(vt: VaultTenant, **config: Any) -> str:
    r = await vt.member.post(
        "/api/v1/custom-integrations",
        json={"name": f"gh-{uuid.uuid4().hex[:6]}", "integration_type": "github", "config": config},
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def test_worker_gets_values_for_its_execution(
    db: asyncpg.Pool[Any], vt: VaultTenant, other_vt: VaultTenant
) -> None:
    for name, value in [
        ("API_KEY", "api-key-value"),
        ("DB_PASSWORD", SECRET_VALUE),
        ("GH_SECRET", "ghp_token_value"),
        ("KUBE", "kubeconfig-yaml"),
        ("RUN_ONLY", "run-only-value"),
        ("NOT_USED", "never-read"),
    ]:
        await put_secret(vt.admin, name, value)
    integration_id = await _integration(
        vt,
        env_vars={"GH_HOST": "github.example.com", "GH_URL": "https://{{.env.GH_HOST_BASE}}"},
        secrets=["GH_SECRET"],
        files=[
            {"path": ".kube/config", "secret_ref": "KUBE", "mode": "0600"},
            {"path": "notes.txt", "content": "hello"},
        ],
        context_prompt="Use the gh CLI for GitHub.",
    )
    inactive_id = await _integration(vt, secrets=["NOT_USED"])
    await vt.member.patch(f"/api/v1/custom-integrations/{inactive_id}", json={"status": "inactive"})
    env = await create_environment(
        vt.member,
        "shared",
        execution_environment={
            "env_vars": {"REGION": "us", "GH_HOST_BASE": "api.github.example.com"},
            "secrets": ["DB_PASSWORD", "GONE"],
            "integration_ids": [integration_id, inactive_id, MISSING],
        },
    )
    # A server run on the worker comes from an admin's skill; its config takes templates too.
    local = await vt.admin.post(
        "/api/v1/skills",
        json={
            "name": "local",
            "type": "mcp_server",
            "configuration": {"command": "tool", "env": {"TOKEN": "{{.env.GH_TOKEN}}"}},
        },
    )
    assert local.status_code == 201, local.text
    agent = await make_agent(
        vt.member,
        environment_ids=[env["id"]],
        skill_ids=[local.json()["id"]],
        execution_environment={
            "env_vars": {"DSN": "postgres://app:{{.secret.DB_PASSWORD}}@db/{{.env.REGION}}"},
            "secrets": ["API_KEY"],
            "mcp_servers": {
                "search": {
                    "type": "http",
                    "url": "https://search.example.com/{{ .env.REGION }}",
                    "headers": {"Authorization": "Bearer {{.secret.API_KEY}}"},
                },
            },
        },
    )
    queue_id = await queue_in_new_environment(vt.member)
    # A run's own secrets need an admin key.
    override = {"env_vars": {"REGION": "eu"}, "secrets": ["RUN_ONLY"]}
    refused = await vt.member.post(
        f"/api/v1/agents/{agent['id']}/execute",
        json={"prompt": "Hi", "worker_queue_id": queue_id, "execution_environment": override},
    )
    assert_error(refused, 403, "AUTHORIZATION_ERROR")
    execution_id = await execute(vt.admin, agent["id"], queue_id, execution_environment=override)
    worker_id, token = await start_worker_token(vt.admin, queue_id)
    worker = client_for(vt.app, token)
    r = await worker.get(f"/api/v1/executions/{execution_id}/environment")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["execution_id"] == execution_id and body["agent_id"] == agent["id"]
    assert body["env"] == {
        "REGION": "eu",  # the run's override wins
        "GH_HOST_BASE": "api.github.example.com",
        "DSN": f"postgres://app:{SECRET_VALUE}@db/eu",
    }
    assert body["secrets"] == {
        "DB_PASSWORD": SECRET_VALUE,
        "API_KEY": "api-key-value",
        "RUN_ONLY": "run-only-value",
        "GH_SECRET": "ghp_token_value",
    }
    assert body["integration_env"] == {
        "GH_HOST": "github.example.com",
        "GH_URL": "https://api.github.example.com",
        "GH_TOKEN": "ghp_token_value",
        "GITHUB_TOKEN": "ghp_token_value",
    }
    assert body["mcp_servers"]["search"]["url"] == "https://search.example.com/eu"
    assert body["mcp_servers"]["search"]["headers"] == {"Authorization": "Bearer api-key-value"}
    assert body["mcp_servers"]["local"]["env"] == {"TOKEN": "ghp_token_value"}
    assert body["files"] == [
        {
            "integration_id": integration_id,
            "path": ".kube/config",
            "mode": "0600",
            "content": "kubeconfig-yaml",
        },
        {"integration_id": integration_id, "path": "notes.txt", "mode": "0644", "content": "hello"},
    ]
    assert body["context_prompts"] == [
        {
            "integration_id": integration_id,
            "name": body["context_prompts"][0]["name"],
            "context_prompt": "Use the gh CLI for GitHub.",
        }
    ]
    assert body["missing_secrets"] == ["GONE"]
    assert body["skipped_integrations"] == [
        {"id": inactive_id, "reason": "inactive"},
        {"id": MISSING, "reason": "not found"},
    ]
    assert "never-read" not in r.text
    # Every value read is audited against the execution, by this worker.
    rows = await audit_rows(db, vt.id)
    assert sorted(row["secret_name"] for row in rows) == [
        "API_KEY",
        "DB_PASSWORD",
        "GH_SECRET",
        "KUBE",
        "RUN_ONLY",
    ]
    assert {(row["accessor"], row["execution_id"], row["purpose"]) for row in rows} == {
        (f"worker:{worker_id}", uuid.UUID(execution_id), "execution_environment")
    }

    # Worker tokens only: no API key reads an execution's values, not even an admin's.
    for key in (vt.admin, vt.member, vt.viewer):
        assert_error(await key.get(f"/api/v1/executions/{execution_id}/environment"), 403)

    # A worker of another queue, another tenant's worker: 404 like a missing execution.
    other_queue = await queue_in_new_environment(vt.member)
    _, other_token = await start_worker_token(vt.admin, other_queue)
    other_worker = client_for(vt.app, other_token)
    _, their_token = await start_worker_token(
        other_vt.admin, await queue_in_new_environment(other_vt.member)
    )
    their_worker = client_for(vt.app, their_token)
    before = len(await audit_rows(db, vt.id))

    async def fetch_as_other_worker(ident: str) -> Any:
        return await other_worker.get(f"/api/v1/executions/{ident}/environment")

    async def fetch_as_other_tenant(ident: str) -> Any:
        return await their_worker.get(f"/api/v1/executions/{ident}/environment")

    await assert_all_not_found(fetch_as_other_worker, execution_id)
    await assert_all_not_found(fetch_as_other_tenant, execution_id)
    assert len(await audit_rows(db, vt.id)) == before
    # Once the execution has ended its values are no longer served.
    await db.execute(
        "UPDATE executions SET status = 'failed' WHERE id = $1", uuid.UUID(execution_id)
    )
    assert_error(await worker.get(f"/api/v1/executions/{execution_id}/environment"), 404)
    assert len(await audit_rows(db, vt.id)) == before
    await vt.member.delete(f"/api/v1/executions/{execution_id}")


async def test_unresolvable_environments_fail_clearly(
    db: asyncpg.Pool[Any], vt: VaultTenant
) -> None:
    await put_secret(vt.admin, "PRESENT")
    svc = await vt.admin.post(
        "/api/v1/skills",
        json={
            "name": "svc",
            "type": "mcp_server",
            "configuration": {"command": "svc", "args": ["{{.secret.ABSENT}}"]},
        },
    )
    assert svc.status_code == 201, svc.text
    agent = await make_agent(
        vt.member,
        skill_ids=[svc.json()["id"]],
        execution_environment={"secrets": ["PRESENT"]},
    )
    queue_id = await queue_in_new_environment(vt.member)
    _, token = await start_worker_token(vt.admin, queue_id)
    worker = client_for(vt.app, token)
    execution_id = await execute(vt.member, agent["id"], queue_id)
    error = assert_error(
        await worker.get(f"/api/v1/executions/{execution_id}/environment"), 422, "VALIDATION_ERROR"
    )
    assert error["details"] == {"where": "mcp_servers.svc", "missing": ["secret.ABSENT"]}
    assert SECRET_VALUE not in str(error)
    # A stored run override that is not an execution environment (the execute route refuses
    # one now; rows written before it did are still answered clearly).
    bad_run = await execute(vt.member, agent["id"], queue_id)
    await db.execute(
        "UPDATE executions SET execution_environment = $2 WHERE id = $1",
        uuid.UUID(bad_run),
        {"env_vars": ["not", "a", "map"]},
    )
    error = assert_error(await worker.get(f"/api/v1/executions/{bad_run}/environment"), 422)
    assert error["details"]["layer"] == "run"
    for ident in (execution_id, bad_run):
        await vt.member.delete(f"/api/v1/executions/{ident}")


async def test_no_secrets_no_vault_needed(keyless_app: Starlette, tenant: Tenant) -> None:
    """On an API without a vault key, an execution that names no secret still gets its
    environment, and one that names a secret gets a clear 503."""
    keyless = on_vault(keyless_app, tenant)
    agent = await make_agent(keyless.member, execution_environment={"env_vars": {"A": "1"}})
    queue_id = await queue_in_new_environment(keyless.member)
    execution_id = await execute(keyless.member, agent["id"], queue_id)
    _, token = await start_worker_token(keyless.admin, queue_id)
    worker = client_for(keyless_app, token)
    r = await worker.get(f"/api/v1/executions/{execution_id}/environment")
    assert r.status_code == 200, r.text
    assert r.json()["env"] == {"A": "1"} and r.json()["secrets"] == {}
    needs = await make_agent(keyless.member, execution_environment={"secrets": ["S"]})
    needing = await execute(keyless.member, needs["id"], queue_id)
    error = assert_error(
        await worker.get(f"/api/v1/executions/{needing}/environment"),
        503,
        "CONFIGURATION_ERROR",
    )
    assert "CONTROLPLANE_SECRET_KEY" in error["message"]
    for ident in (execution_id, needing):
        await keyless.member.delete(f"/api/v1/executions/{ident}")
