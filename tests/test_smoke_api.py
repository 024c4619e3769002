import httpx

from tests.conftest import Tenant, assert_error


async def test_projects_roundtrip(tenant: Tenant, anonymous: httpx.AsyncClient) -> None:
    r = await tenant.member.post("/api/v1/projects", json={"name": "P1", "key": "p1"})
    assert r.status_code == 201, r.text
    assert r.json()["key"] == "P1"
    assert r.headers["x-ratelimit-limit"] == "10000"
    r = await tenant.viewer.get("/api/v1/projects")
    assert r.json()["total"] == 1
    assert_error(await anonymous.get("/api/v1/projects"), 401, "AUTHENTICATION_ERROR")
    r = await anonymous.get("/api/ready")
    assert r.status_code == 200, r.text
