"""`/api/v1/skills` and `/api/v1/toolsets` (reference §3.10): the catalogue, CRUD, associations,
resolution along environments → team environments → team → agent, and the tool specs an
execution offers (controlplane/tool_catalogue.py, controlplane/skills.py)."""

from __future__ import annotations

import re
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from controlplane.errors import NotFound, Refused
from controlplane.skills import resolve_agent_skills, tools_for_agent
from controlplane.tool_catalogue import (
    SKILL_TYPES,
    effective_config,
    slug,
    tool_specs,
    tools_for_skills,
    validate_config,
)
from tests.conftest import Tenant, assert_error
from tests.resource_helpers import (
    add_team,
    assert_all_not_found,
    assert_validation,
    check_pagination,
    create_environment,
    ordered_ids,
    rows_of,
)

SKILL_FIELDS = {
    "id",
    "organization_id",
    "name",
    "type",
    "description",
    "icon",
    "enabled",
    "configuration",
    "created_at",
    "updated_at",
}
BUILTIN = ("shell", "file_system", "python", "http", "sleep")
# Types that give no built-in tools of their own.
TOOLLESS = ("mcp_server", "custom")
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


async def create_skill(
    client: httpx.AsyncClient, name: str, skill_type: str, **fields: Any
) -> dict[str, Any]:
    r = await client.post("/api/v1/skills", json={"name": name, "type": skill_type, **fields})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def create_agent(client: httpx.AsyncClient, name: str, **fields: Any) -> dict[str, Any]:
    r = await client.post("/api/v1/agents", json={"name": name, **fields})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def associate(
    client: httpx.AsyncClient,
    entity_type: str,
    entity_id: str,
    skill_id: str,
    override: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"skill_id": skill_id}
    if override is not None:
        body["configuration_override"] = override
    r = await client.post(
        f"/api/v1/skills/associations/{entity_type}/{entity_id}/skills", json=body
    )
    assert r.status_code == 201, r.text
    result: dict[str, Any] = r.json()
    return result


async def resolved(client: httpx.AsyncClient, agent_id: str) -> list[dict[str, Any]]:
    r = await client.get(f"/api/v1/skills/associations/agents/{agent_id}/skills/resolved")
    assert r.status_code == 200, r.text
    body: list[dict[str, Any]] = r.json()
    return body


async def skill_rows(db: asyncpg.Pool[Any], org: str) -> list[Any]:
    return [await rows_of(db, "skills", org), await rows_of(db, "skill_associations", org)]


# --- the catalogue ------------------------------------------------------------------------------


async def test_types_and_definitions(tenant: Tenant) -> None:
    for prefix in ("skills", "toolsets"):
        types = (await tenant.viewer.get(f"/api/v1/{prefix}/types")).json()
        assert [t["type"] for t in types] == [*BUILTIN, *TOOLLESS]
        tools = {t["type"]: t["tools"] for t in types}
        assert tools == {
            "shell": ["shell"],
            "file_system": ["read_file", "write_file", "list_files", "search_files"],
            "python": ["run_python"],
            "http": ["http_request"],
            "sleep": ["sleep"],
            "mcp_server": [],
            "custom": [],
        }
        risk = {t["type"]: t["risk_level"] for t in types}
        assert [risk[t] for t in BUILTIN] == ["critical", "high", "high", "medium", "low"]

    definitions = (await tenant.viewer.get("/api/v1/skills/definitions")).json()
    assert [d["type"] for d in definitions] == [*BUILTIN, *TOOLLESS]
    shell = (await tenant.viewer.get("/api/v1/skills/definitions/shell")).json()
    assert shell["default_configuration"] == {
        "allowed_commands": [],
        "blocked_commands": [],
        "working_dir": None,
        "timeout": 30,
        "max_output_bytes": 65536,
    }
    assert shell["tools"][0]["input_schema"]["required"] == ["command"]
    assert set(shell["config_schema"]["properties"]) >= {"allowed_commands", "timeout"}
    files = (await tenant.viewer.get("/api/v1/toolsets/definitions/file_system")).json()
    assert [t["name"] for t in files["tools"]] == [
        "read_file",
        "write_file",
        "list_files",
        "search_files",
    ]
    assert files["default_configuration"]["base_dir"] is None
    assert files["default_configuration"]["max_file_bytes"] == 1048576
    python = (await tenant.viewer.get("/api/v1/skills/definitions/python")).json()
    assert python["default_configuration"]["blocked_imports"] == ["subprocess", "socket", "ctypes"]
    http = (await tenant.viewer.get("/api/v1/skills/definitions/http")).json()
    assert http["default_configuration"]["allowed_hosts"] == []
    assert http["default_configuration"]["allowed_methods"] == [
        "GET",
        "POST",
        "PUT",
        "PATCH",
        "DELETE",
    ]
    sleep = (await tenant.viewer.get("/api/v1/skills/definitions/sleep")).json()
    assert sleep["default_configuration"] == {"max_seconds": 60}

    variants = (await tenant.viewer.get("/api/v1/skills/definitions/shell/variants")).json()
    assert "shell_read_only" in [v["id"] for v in variants]
    assert all(v["type"] == "shell" for v in variants)
    templates = (await tenant.viewer.get("/api/v1/skills/templates")).json()
    assert {t["type"] for t in templates} == {*BUILTIN, *TOOLLESS}
    # Every template is a valid configuration of its type.
    for template in templates:
        assert validate_config(template["type"], template["configuration"]) == [], template

    for path in ("/api/v1/skills/definitions/docker", "/api/v1/skills/definitions/x/variants"):
        assert_error(await tenant.viewer.get(path), 404, "RESOURCE_NOT_FOUND")


async def test_validate_routes(tenant: Tenant) -> None:
    ok = await tenant.viewer.post(
        "/api/v1/skills/validate", json={"type": "shell", "configuration": {"timeout": 5}}
    )
    assert ok.status_code == 200, ok.text
    assert ok.json() == {"valid": True, "errors": []}
    bad = await tenant.viewer.post(
        "/api/v1/toolsets/validate",
        json={"type": "shell", "configuration": {"timeout": -1, "blocked_commands": [""]}},
    )
    errors = bad.json()["errors"]
    assert bad.json()["valid"] is False and len(errors) == 2
    assert any(e.startswith("timeout:") for e in errors)
    unknown = await tenant.viewer.post("/api/v1/skills/validate", json={"type": "docker"})
    assert unknown.json()["valid"] is False and "docker" in unknown.json()["errors"][0]
    assert_validation(await tenant.viewer.post("/api/v1/skills/validate", json={}), "type")

    url = "/api/v1/skills/definitions/http/validate"
    raw = await tenant.viewer.post(url, json={"allowed_hosts": ["https://example.com/x"]})
    assert raw.json()["valid"] is False and "allowed_hosts" in raw.json()["errors"][0]
    wrapped = await tenant.viewer.post(
        url, json={"configuration": {"allowed_hosts": ["example.com"], "allowed_methods": ["get"]}}
    )
    assert wrapped.json() == {"valid": True, "errors": []}
    methods = await tenant.viewer.post(url, json={"allowed_methods": ["FETCH"]})
    assert methods.json()["valid"] is False
    assert_error(await tenant.viewer.post("/api/v1/skills/definitions/nope/validate", json={}), 404)


# --- CRUD -----------------------------------------------------------------------------------------


async def test_create_get_patch_delete(db: asyncpg.Pool[Any], tenant: Tenant) -> None:
    skill = await create_skill(
        tenant.admin,
        "Ops shell",
        "shell",
        description="For ops",
        configuration={"timeout": "12", "blocked_commands": [" rm "], "note": "kept"},
    )
    assert set(skill) == SKILL_FIELDS
    assert skill["organization_id"] == tenant.id
    assert (skill["icon"], skill["enabled"], skill["description"]) == ("Wrench", True, "For ops")
    # Stored as sent, coerced and cleaned, without defaults; unknown keys are kept.
    assert skill["configuration"] == {"timeout": 12.0, "blocked_commands": ["rm"], "note": "kept"}
    stored = await db.fetchrow(
        "SELECT skill_type, configuration FROM skills WHERE id = $1", uuid.UUID(skill["id"])
    )
    assert stored is not None and stored["skill_type"] == "shell"
    assert stored["configuration"] == skill["configuration"]
    assert (await tenant.viewer.get(f"/api/v1/skills/{skill['id']}")).json() == skill
    assert (await tenant.viewer.get(f"/api/v1/toolsets/{skill['id']}")).json() == skill

    url = f"/api/v1/skills/{skill['id']}"
    r = await tenant.admin.patch(url, json={"enabled": False, "icon": "Terminal"})
    assert r.status_code == 200, r.text
    patched = r.json()
    assert (patched["enabled"], patched["icon"]) == (False, "Terminal")
    assert patched["configuration"] == skill["configuration"]
    r = await tenant.admin.patch(url, json={"type": "sleep", "configuration": {"max_seconds": 5}})
    assert r.status_code == 200, r.text
    assert (r.json()["type"], r.json()["configuration"]) == ("sleep", {"max_seconds": 5.0})
    r = await tenant.admin.patch(url, json={"skill_type": "custom"})
    assert r.status_code == 200, r.text
    assert (r.json()["type"], r.json()["configuration"]) == ("custom", {"max_seconds": 5.0})

    r = await tenant.admin.delete(url)
    assert r.status_code == 200, r.text
    assert r.json() == {"id": skill["id"], "deleted": True}
    assert_error(await tenant.viewer.get(url), 404, "RESOURCE_NOT_FOUND")
    assert_error(await tenant.admin.delete(url), 404, "RESOURCE_NOT_FOUND")


async def test_toolsets_is_the_same_resource(tenant: Tenant) -> None:
    r = await tenant.admin.post(
        "/api/v1/toolsets", json={"name": "fs", "skill_type": "file_system"}
    )
    assert r.status_code == 201, r.text
    toolset = r.json()
    assert toolset["type"] == "file_system"
    assert (await tenant.viewer.get(f"/api/v1/skills/{toolset['id']}")).json() == toolset
    r = await tenant.admin.patch(f"/api/v1/toolsets/{toolset['id']}", json={"name": "files"})
    assert r.json()["name"] == "files"
    listed = (await tenant.viewer.get("/api/v1/skills")).json()
    assert [s["name"] for s in listed["items"]] == ["files"]
    assert (await tenant.viewer.get("/api/v1/toolsets")).json() == listed
    r = await tenant.admin.delete(f"/api/v1/toolsets/{toolset['id']}")
    assert r.json() == {"id": toolset["id"], "deleted": True}
    assert (await tenant.viewer.get("/api/v1/skills")).json()["total"] == 0


async def test_list_paginates_and_filters(db: asyncpg.Pool[Any], tenant: Tenant) -> None:
    await create_skill(tenant.admin, "s1", "shell")
    await create_skill(tenant.admin, "s2", "sleep", enabled=False)
    await create_skill(tenant.admin, "s3", "shell", enabled=False)
    await create_skill(tenant.admin, "s4", "python")
    expected = await ordered_ids(db, "skills", "organization_id = $1", tenant.id)
    await check_pagination(tenant.viewer, "/api/v1/skills", expected)
    await check_pagination(tenant.viewer, "/api/v1/toolsets", expected)
    shells = (await tenant.viewer.get("/api/v1/skills?type=shell")).json()
    assert [s["name"] for s in shells["items"]] == ["s1", "s3"] and shells["total"] == 2
    off = (await tenant.viewer.get("/api/v1/skills?enabled=false")).json()
    assert [s["name"] for s in off["items"]] == ["s2", "s3"]
    both = (await tenant.viewer.get("/api/v1/skills?enabled=true&type=shell")).json()
    assert [s["name"] for s in both["items"]] == ["s1"]
    assert_validation(await tenant.viewer.get("/api/v1/skills?enabled=maybe"), "enabled")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"type": "shell"}, "name"),
        ({"name": "", "type": "shell"}, "name"),
        ({"name": "n"}, "type"),
        ({"name": "n", "type": "docker"}, "type"),
        ({"name": "n", "type": "shell", "enabled": "maybe"}, "enabled"),
        ({"name": "n", "type": "shell", "configuration": []}, "configuration"),
        ({"name": "n", "type": "shell", "configuration": {"timeout": 0}}, "configuration.timeout"),
        (
            {"name": "n", "type": "shell", "configuration": {"allowed_commands": "ls"}},
            "configuration.allowed_commands",
        ),
        (
            {"name": "n", "type": "file_system", "configuration": {"enable_save_file": "x"}},
            "configuration.enable_save_file",
        ),
        (
            {"name": "n", "type": "http", "configuration": {"allowed_hosts": ["a b"]}},
            "configuration.allowed_hosts",
        ),
        (
            {"name": "n", "type": "sleep", "configuration": {"max_seconds": -1}},
            "configuration.max_seconds",
        ),
        (["n"], "body"),
    ],
)
async def test_create_rejects_bad_input(
    db: asyncpg.Pool[Any], tenant: Tenant, body: Any, field: str
) -> None:
    assert_validation(await tenant.admin.post("/api/v1/skills", json=body), field)
    assert await skill_rows(db, tenant.id) == [[], []]


async def test_malformed_json_is_400(db: asyncpg.Pool[Any], tenant: Tenant) -> None:
    skill = await create_skill(tenant.admin, "s", "shell")
    before = await skill_rows(db, tenant.id)
    for method, path in [
        ("POST", "/api/v1/skills"),
        ("PATCH", f"/api/v1/skills/{skill['id']}"),
        ("POST", f"/api/v1/skills/associations/agent/{uuid.uuid4()}/skills"),
    ]:
        r = await tenant.admin.request(method, path, content=b"{not json")
        assert_error(r, 400, "BAD_REQUEST")
    assert await skill_rows(db, tenant.id) == before


async def test_name_is_unique_per_org(
    db: asyncpg.Pool[Any], tenant: Tenant, other_tenant: Tenant
) -> None:
    await create_skill(tenant.admin, "dup", "shell")
    other = await create_skill(tenant.admin, "other", "sleep")
    before = await skill_rows(db, tenant.id)
    r = await tenant.admin.post("/api/v1/skills", json={"name": "dup", "type": "python"})
    assert_error(r, 409, "RESOURCE_CONFLICT")
    r = await tenant.admin.patch(f"/api/v1/skills/{other['id']}", json={"name": "dup"})
    assert_error(r, 409, "RESOURCE_CONFLICT")
    assert await skill_rows(db, tenant.id) == before
    await create_skill(other_tenant.admin, "dup", "shell")


async def test_patch_refusals_change_nothing(db: asyncpg.Pool[Any], tenant: Tenant) -> None:
    skill = await create_skill(tenant.admin, "p", "sleep", configuration={"max_seconds": 3000})
    before = await skill_rows(db, tenant.id)
    url = f"/api/v1/skills/{skill['id']}"
    for body, field in [
        ({"name": None}, "name"),
        ({"enabled": None}, "enabled"),
        ({"type": "docker"}, "type"),
        ({"configuration": {"max_seconds": 0}}, "configuration.max_seconds"),
        ({"configuration": "x"}, "configuration"),
        # A new type is checked against the stored configuration too.
        ({"type": "http", "configuration": {"timeout": 601}}, "configuration.timeout"),
    ]:
        assert_validation(await tenant.admin.patch(url, json=body), field)
    assert await skill_rows(db, tenant.id) == before


async def test_other_tenants_skill_is_not_found(
    db: asyncpg.Pool[Any], tenant: Tenant, other_tenant: Tenant
) -> None:
    theirs = await create_skill(other_tenant.admin, "theirs", "shell")
    their_agent = await create_agent(other_tenant.member, "their-agent")
    mine = await create_agent(tenant.member, "mine")
    before = await skill_rows(db, other_tenant.id)

    async def get(ident: str) -> httpx.Response:
        return await tenant.admin.get(f"/api/v1/skills/{ident}")

    async def patch(ident: str) -> httpx.Response:
        return await tenant.admin.patch(f"/api/v1/toolsets/{ident}", json={"name": "x"})

    async def delete(ident: str) -> httpx.Response:
        return await tenant.admin.delete(f"/api/v1/skills/{ident}")

    async def attach_theirs(ident: str) -> httpx.Response:
        url = f"/api/v1/skills/associations/agent/{mine['id']}/skills"
        return await tenant.admin.post(url, json={"skill_id": ident})

    for request in (get, patch, delete):
        await assert_all_not_found(request, theirs["id"])
    for bad in (theirs["id"], str(uuid.uuid4())):
        assert_error(await attach_theirs(bad), 404, "RESOURCE_NOT_FOUND")

    my_skill = await create_skill(tenant.admin, "my-skill", "shell")

    async def attach_to(ident: str) -> httpx.Response:
        url = f"/api/v1/skills/associations/agent/{ident}/skills"
        return await tenant.admin.post(url, json={"skill_id": my_skill["id"]})

    async def list_of(ident: str) -> httpx.Response:
        return await tenant.admin.get(f"/api/v1/skills/associations/agent/{ident}/skills")

    async def resolved_of(ident: str) -> httpx.Response:
        return await tenant.admin.get(f"/api/v1/skills/associations/agents/{ident}/skills/resolved")

    for request in (attach_to, list_of, resolved_of):
        await assert_all_not_found(request, their_agent["id"])
    assert await skill_rows(db, other_tenant.id) == before
    assert await rows_of(db, "skill_associations", tenant.id) == []
    assert (await tenant.viewer.get("/api/v1/skills")).json()["total"] == 1


async def test_viewer_cannot_write(db: asyncpg.Pool[Any], tenant: Tenant) -> None:
    skill = await create_skill(tenant.admin, "guarded", "shell")
    agent = await create_agent(tenant.member, "a")
    await associate(tenant.member, "agent", agent["id"], skill["id"])
    before = await skill_rows(db, tenant.id)
    assoc = f"/api/v1/skills/associations/agent/{agent['id']}/skills"
    for response in [
        await tenant.viewer.post("/api/v1/skills", json={"name": "v", "type": "shell"}),
        await tenant.viewer.post("/api/v1/toolsets", json={"name": "v", "type": "shell"}),
        await tenant.viewer.patch(f"/api/v1/skills/{skill['id']}", json={"name": "v"}),
        await tenant.viewer.delete(f"/api/v1/skills/{skill['id']}"),
        await tenant.viewer.post(assoc, json={"skill_id": skill["id"]}),
        await tenant.viewer.delete(f"{assoc}/{skill['id']}"),
        await tenant.viewer.post(
            "/api/v1/skills/associate",
            json={"skill_id": skill["id"], "entity_type": "agent", "entity_id": agent["id"]},
        ),
    ]:
        assert_error(response, 403, "AUTHORIZATION_ERROR")
    assert await skill_rows(db, tenant.id) == before


async def test_only_admins_write_skills(db: asyncpg.Pool[Any], tenant: Tenant) -> None:
    """A skill decides what runs on the workers (commands, an MCP server's program): members
    attach skills but do not write them."""
    skill = await create_skill(tenant.admin, "guarded", "shell")
    before = await skill_rows(db, tenant.id)
    for response in [
        await tenant.member.post("/api/v1/skills", json={"name": "m", "type": "shell"}),
        await tenant.member.post(
            "/api/v1/skills",
            json={"name": "m", "type": "mcp_server", "configuration": {"command": "sh"}},
        ),
        await tenant.member.post("/api/v1/toolsets", json={"name": "m", "type": "shell"}),
        await tenant.member.patch(
            f"/api/v1/skills/{skill['id']}", json={"configuration": {"allowed_commands": []}}
        ),
        await tenant.member.delete(f"/api/v1/skills/{skill['id']}"),
    ]:
        assert_error(response, 403, "AUTHORIZATION_ERROR")
    assert await skill_rows(db, tenant.id) == before


# --- associations ---------------------------------------------------------------------------------


async def test_associations(db: asyncpg.Pool[Any], tenant: Tenant) -> None:
    shell = await create_skill(tenant.admin, "shell", "shell", configuration={"timeout": 20})
    files = await create_skill(tenant.admin, "files", "file_system")
    agent = await create_agent(tenant.member, "agent")
    env = await create_environment(tenant.member, "prod")

    made = await associate(tenant.member, "agent", agent["id"], shell["id"], {"timeout": 5})
    assert made["skill_id"] == shell["id"] and made["entity_type"] == "agent"
    assert made["entity_id"] == agent["id"] and made["organization_id"] == tenant.id
    assert made["configuration_override"] == {"timeout": 5}
    assert made["configuration"] == {"timeout": 5}
    assert made["skill"] == shell
    r = await tenant.member.post(
        "/api/v1/skills/associate",
        json={"skill_id": files["id"], "entity_type": "agent", "entity_id": agent["id"]},
    )
    assert r.status_code == 201, r.text
    assert r.json()["configuration_override"] == {}
    via_alias = await tenant.member.post(
        f"/api/v1/toolsets/associations/environment/{env['id']}/toolsets",
        json={"skill_id": shell["id"]},
    )
    assert via_alias.status_code == 201, via_alias.text

    listed = await tenant.viewer.get(f"/api/v1/skills/associations/agent/{agent['id']}/skills")
    page = listed.json()
    assert set(page) == {"items", "total", "limit", "offset"}
    assert [a["skill_id"] for a in page["items"]] == [shell["id"], files["id"]]
    assert page["items"][0] == made
    env_page = (
        await tenant.viewer.get(f"/api/v1/toolsets/associations/environment/{env['id']}/toolsets")
    ).json()
    assert [a["skill_id"] for a in env_page["items"]] == [shell["id"]]

    before = await skill_rows(db, tenant.id)
    url = f"/api/v1/skills/associations/agent/{agent['id']}/skills"
    assert_error(await tenant.member.post(url, json={"skill_id": shell["id"]}), 409)
    bad_override = await tenant.member.post(
        url.replace(agent["id"], env["id"]).replace("/agent/", "/environment/"),
        json={"skill_id": files["id"], "configuration_override": {"max_file_bytes": 0}},
    )
    assert_validation(bad_override, "configuration_override.max_file_bytes")
    assert_validation(await tenant.member.post(url, json={"skill_id": "nope"}), "skill_id")
    assert_validation(await tenant.member.post(url, json={}), "skill_id")
    for entity_type in ("agents", "project", "widget"):
        r = await tenant.member.post(
            f"/api/v1/skills/associations/{entity_type}/{agent['id']}/skills",
            json={"skill_id": shell["id"]},
        )
        assert_error(r, 400, "BAD_REQUEST")
    assert_error(
        await tenant.viewer.get(f"/api/v1/skills/associations/widget/{agent['id']}/skills"), 400
    )
    # No teams table yet: a team is never found.
    team_id = str(uuid.uuid4())
    assert_error(
        await tenant.member.post(
            f"/api/v1/skills/associations/team/{team_id}/skills", json={"skill_id": shell["id"]}
        ),
        404,
    )
    assert_error(
        await tenant.viewer.get(f"/api/v1/skills/associations/teams/{team_id}/skills/resolved"),
        404,
    )
    assert await skill_rows(db, tenant.id) == before

    r = await tenant.member.delete(f"{url}/{shell['id']}")
    assert r.status_code == 200, r.text
    assert r.json() == {"id": made["id"], "deleted": True}
    assert_error(await tenant.member.delete(f"{url}/{shell['id']}"), 404)
    remaining = (await tenant.viewer.get(url)).json()
    assert [a["skill_id"] for a in remaining["items"]] == [files["id"]]
    # Deleting a skill removes its associations.
    await tenant.admin.delete(f"/api/v1/skills/{files['id']}")
    assert (await tenant.viewer.get(url)).json()["total"] == 0
    assert (
        await db.fetchval(
            "SELECT count(*) FROM skill_associations WHERE skill_id = $1", uuid.UUID(files["id"])
        )
        == 0
    )


# --- resolution -----------------------------------------------------------------------------------


def brief(items: list[dict[str, Any]]) -> list[tuple[str, str, bool, dict[str, Any]]]:
    return [(i["name"], i["source"], i["inherited"], i["configuration"]) for i in items]


async def test_resolution_table(tenant: Tenant, other_tenant: Tenant) -> None:
    member = tenant.member
    e1 = await create_environment(member, "e1")
    e2 = await create_environment(member, "e2")
    shell = await create_skill(tenant.admin, "shell", "shell", configuration={"timeout": 20})
    files = await create_skill(tenant.admin, "files", "file_system")
    web = await create_skill(
        tenant.admin, "web", "http", configuration={"allowed_hosts": ["a.test"]}
    )
    off = await create_skill(tenant.admin, "off", "sleep", enabled=False)
    theirs = await create_skill(other_tenant.admin, "theirs", "sleep")

    # Nothing attached.
    bare = await create_agent(member, "bare")
    assert await resolved(tenant.viewer, bare["id"]) == []

    # Environment only: inherited, with the environment's override.
    await associate(member, "environment", e1["id"], shell["id"], {"blocked_commands": ["rm"]})
    await associate(member, "environment", e1["id"], off["id"])
    await associate(member, "environment", e2["id"], web["id"])
    env_only = await create_agent(member, "env-only", environment_ids=[e1["id"], e2["id"]])
    items = await resolved(tenant.viewer, env_only["id"])
    assert brief(items) == [
        ("shell", "environment", True, {"timeout": 20, "blocked_commands": ["rm"]}),
        ("web", "environment", True, {"allowed_hosts": ["a.test"]}),
    ]
    assert [i["source_id"] for i in items] == [e1["id"], e2["id"]]
    assert set(items[0]) == SKILL_FIELDS | {
        "source",
        "source_id",
        "inherited",
        "configuration_override",
    }

    # Agent only: its own associations and its skill_ids (with skill_configurations), not
    # inherited; another organization's skill and unknown ids in skill_ids are ignored.
    agent_only = await create_agent(
        member,
        "agent-only",
        skill_ids=[files["id"], theirs["id"], str(uuid.uuid4())],
        skill_configurations={files["id"]: {"enable_save_file": False}},
    )
    await associate(member, "agent", agent_only["id"], web["id"], {"timeout": 3})
    assert brief(await resolved(tenant.viewer, agent_only["id"])) == [
        ("files", "agent", False, {"enable_save_file": False}),
        ("web", "agent", False, {"allowed_hosts": ["a.test"], "timeout": 3}),
    ]

    # Both, with overrides: the agent's layer wins the position and overrides only the keys it
    # sets; the environment's other keys stay.
    both = await create_agent(member, "both", environment_ids=[e1["id"], e2["id"]])
    await associate(member, "agent", both["id"], shell["id"], {"timeout": 5})
    items = await resolved(tenant.viewer, both["id"])
    assert brief(items) == [
        ("web", "environment", True, {"allowed_hosts": ["a.test"]}),
        ("shell", "agent", False, {"timeout": 5, "blocked_commands": ["rm"]}),
    ]
    assert items[1]["configuration_override"] == {"blocked_commands": ["rm"], "timeout": 5}

    # A disabled skill is left out wherever it is attached; enabling it brings it back.
    await associate(member, "agent", both["id"], off["id"])
    assert "off" not in [i["name"] for i in await resolved(tenant.viewer, both["id"])]
    await tenant.admin.patch(f"/api/v1/skills/{off['id']}", json={"enabled": True})
    assert [i["name"] for i in await resolved(tenant.viewer, both["id"])] == [
        "web",
        "shell",
        "off",
    ]

    # An environment the agent lists but that was deleted contributes nothing.
    await member.delete(f"/api/v1/environments/{e2['id']}")
    assert [i["name"] for i in await resolved(tenant.viewer, env_only["id"])] == ["shell", "off"]
    # The toolsets path answers the same.
    r = await tenant.viewer.get(
        f"/api/v1/toolsets/associations/agents/{both['id']}/toolsets/resolved"
    )
    assert r.json() == await resolved(tenant.viewer, both["id"])


async def test_team_layers(db: asyncpg.Pool[Any], tenant: Tenant) -> None:
    """With a team (a row of `teams`, which has no routes yet), the chain is environments →
    team environments → team → agent."""
    member = tenant.member
    own_env = await create_environment(member, "own")
    team_env = await create_environment(member, "team-env")
    a = await create_skill(tenant.admin, "a", "sleep")
    b = await create_skill(tenant.admin, "b", "sleep")
    c = await create_skill(tenant.admin, "c", "sleep")
    d = await create_skill(tenant.admin, "d", "sleep")
    team_id = await add_team(
        db, tenant.id, "crew", environment_ids=[team_env["id"], own_env["id"]], skill_ids=[b["id"]]
    )
    agent = await create_agent(member, "teamed", environment_ids=[own_env["id"]])
    await associate(member, "environment", own_env["id"], a["id"], {"max_seconds": 1})
    await associate(member, "environment", team_env["id"], b["id"])
    await associate(member, "environment", team_env["id"], a["id"], {"max_seconds": 2})
    await associate(member, "agent", agent["id"], d["id"])
    # Without a team, the team layers are empty.
    names = [s.name for s in await resolve_agent_skills(db, tenant.id, uuid.UUID(agent["id"]))]
    assert names == ["a", "d"]
    # Associations with a team are stored as any other.
    await db.execute(
        "INSERT INTO skill_associations (id, organization_id, skill_id, entity_type, entity_id, "
        "configuration_override) VALUES ($1, $2, $3, 'team', $4, $5)",
        uuid.uuid4(),
        tenant.id,
        uuid.UUID(c["id"]),
        team_id,
        {"max_seconds": 3},
    )
    r = await member.patch(f"/api/v1/agents/{agent['id']}", json={"team_id": str(team_id)})
    assert r.status_code == 200, r.text
    skills = await resolve_agent_skills(db, tenant.id, uuid.UUID(agent["id"]))
    assert [(s.name, s.source, s.inherited, s.configuration) for s in skills] == [
        ("a", "environment", True, {"max_seconds": 2}),
        ("b", "team", True, {}),
        ("c", "team", True, {"max_seconds": 3}),
        ("d", "agent", False, {}),
    ]
    assert [s.source_id for s in skills] == [
        uuid.UUID(team_env["id"]),
        team_id,
        team_id,
        uuid.UUID(agent["id"]),
    ]


# --- tool specs -----------------------------------------------------------------------------------


async def test_tools_for_agent(db: asyncpg.Pool[Any], tenant: Tenant) -> None:
    member = tenant.member
    env = await create_environment(member, "env")
    shell = await create_skill(tenant.admin, "Ops Shell", "shell", configuration={"timeout": 7})
    second = await create_skill(
        tenant.admin, "Prod shell #2!", "shell", configuration={"timeout": 9}
    )
    files = await create_skill(
        tenant.admin, "ro files", "file_system", configuration={"enable_save_file": False}
    )
    web = await create_skill(
        tenant.admin,
        "web",
        "http",
        configuration={"allowed_hosts": ["api.test"], "allowed_methods": ["GET"]},
    )
    await create_skill(tenant.admin, "custom", "custom", configuration={"anything": 1})
    long_name = "x" * 200
    third = await create_skill(tenant.admin, long_name, "shell")
    await associate(member, "environment", env["id"], shell["id"])
    agent = await create_agent(
        member,
        "tooled",
        environment_ids=[env["id"]],
        skill_ids=[second["id"], files["id"], web["id"], third["id"]],
    )
    tools = await tools_for_agent(db, tenant.id, uuid.UUID(agent["id"]))
    names = [t.name for t in tools]
    assert names[:6] == [
        "shell",
        "shell__prod_shell_2",
        "read_file",
        "list_files",
        "search_files",
        "http_request",
    ]
    assert names[6].startswith("shell__xxx") and len(names[6]) == 64
    assert len(set(names)) == len(names) and all(TOOL_NAME.match(n) for n in names)

    first = tools[0]
    assert (first.source, first.category, first.risk_level) == ("builtin", "shell", "critical")
    assert first.skill_id == shell["id"]
    assert first.configuration == effective_config("shell", {"timeout": 7})
    assert first.configuration["timeout"] == 7 and first.configuration["max_output_bytes"] == 65536
    assert first.input_schema == {
        "type": "object",
        "properties": {"command": {"type": "string", "description": "The command line"}},
        "required": ["command"],
    }
    assert tools[1].configuration["timeout"] == 9 and tools[1].skill_id == second["id"]
    read = tools[2]
    assert (read.category, read.risk_level) == ("file_system", "medium")
    assert read.input_schema["required"] == ["path"]
    assert read.configuration["base_dir"] is None
    assert tools[4].input_schema["required"] == ["pattern"]
    http = tools[5]
    assert http.input_schema["properties"]["method"]["enum"] == ["GET"]
    assert set(http.input_schema["required"]) == {"method", "url"}
    assert http.risk_level == "medium" and "api.test" in http.description
    assert first.model_definition() == {
        "name": "shell",
        "description": first.description,
        "input_schema": first.input_schema,
    }

    none = await create_agent(member, "toolless")
    assert await tools_for_agent(db, tenant.id, uuid.UUID(none["id"])) == []
    with pytest.raises(NotFound):
        await tools_for_agent(db, tenant.id, uuid.uuid4())

    # A stored override that no longer fits its skill (say, written before a rule changed) is
    # a 400 that names the skill, not a crash.
    await db.execute(
        "UPDATE skill_associations SET configuration_override = $1 WHERE skill_id = $2",
        {"timeout": -5},
        uuid.UUID(shell["id"]),
    )
    with pytest.raises(Refused) as invalid:
        await tools_for_agent(db, tenant.id, uuid.UUID(agent["id"]))
    assert "Ops Shell" in invalid.value.message


def test_tool_specs_per_type() -> None:
    def names(skill_type: str, configuration: dict[str, Any]) -> list[str]:
        return [s.name for s in tool_specs("id", "n", skill_type, configuration)]

    assert names("shell", {}) == ["shell"]
    assert names("file_system", {}) == ["read_file", "write_file", "list_files", "search_files"]
    assert names("file_system", {"enable_read_file": False, "enable_search_files": False}) == [
        "write_file",
        "list_files",
    ]
    assert names("python", {}) == ["run_python"]
    assert names("http", {}) == ["http_request"]
    assert names("sleep", {}) == ["sleep"]
    assert names("custom", {"x": 1}) == []
    specs = {s.name: s for t in BUILTIN for s in tool_specs("id", "n", t, {})}
    assert specs["write_file"].input_schema["required"] == ["path", "content"]
    assert specs["list_files"].input_schema["properties"]["path"]["default"] == "."
    assert specs["search_files"].input_schema["properties"]["path"]["default"] == "."
    assert specs["run_python"].input_schema["required"] == ["code"]
    assert specs["sleep"].input_schema["properties"]["seconds"]["type"] == "number"
    assert specs["sleep"].input_schema["properties"]["seconds"]["maximum"] == 60
    assert {n: s.risk_level for n, s in specs.items()} == {
        "shell": "critical",
        "read_file": "high",
        "write_file": "high",
        "list_files": "high",
        "search_files": "high",
        "run_python": "high",
        "http_request": "medium",
        "sleep": "low",
    }
    assert all(s.source == "builtin" and s.skill_id == "id" for s in specs.values())
    assert specs["run_python"].configuration["blocked_imports"] == [
        "subprocess",
        "socket",
        "ctypes",
    ]
    assert set(SKILL_TYPES) == {*BUILTIN, *TOOLLESS}


def test_unique_names_and_validation() -> None:
    tools = tools_for_skills(
        [
            ("1", "A", "sleep", {}),
            ("2", "Nap Time", "sleep", {}),
            ("3", "nap-time", "sleep", {}),
            ("4", "!!!", "sleep", {}),
        ]
    )
    assert [t.name for t in tools] == [
        "sleep",
        "sleep__nap_time",
        "sleep__nap_time_2",
        "sleep__skill",
    ]
    assert slug("Prod Shell #2!") == "prod_shell_2"
    assert validate_config("shell", {}) == []
    assert validate_config("shell", {"timeout": "soon"})[0].startswith("timeout:")
    assert validate_config("shell", []) == ["The configuration must be an object"]
    assert "Unknown skill type" in validate_config("docker", {})[0]
    assert validate_config("http", {"allowed_methods": ["get", "GET"]}) == []
    assert effective_config("http", {"allowed_methods": ["get", "GET"]})["allowed_methods"] == [
        "GET"
    ]
