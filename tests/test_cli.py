"""The `controlplane` command's organization and key subcommands, against the session Postgres."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.applications import Starlette
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client

from api.app import create_app
from controlplane.cli import main
from controlplane.settings import Settings
from tests.conftest import assert_error, client_for


@pytest.fixture
def cli_env(database_url: str, temporal_address: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("TEMPORAL_ADDRESS", temporal_address)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def new_slug() -> str:
    return f"cli-{uuid.uuid4().hex[:10]}"


@pytest.mark.usefixtures("cli_env")
def test_orgs(capsys: pytest.CaptureFixture[str], temporal_address: str) -> None:
    slug = new_slug()
    code, out, _ = run(capsys, "orgs", "create", slug, "--name", "CLI Org", "--rate-limit", "7")
    assert code == 0
    assert slug in out
    # The organization's Temporal namespace is registered with it.
    assert f"Temporal namespace org-{slug} is ready" in out

    async def described() -> str:
        client = await Client.connect(temporal_address)
        answer = await client.workflow_service.describe_namespace(
            DescribeNamespaceRequest(namespace=f"org-{slug}")
        )
        return str(answer.namespace_info.name)

    assert asyncio.run(described()) == f"org-{slug}"

    code, _, err = run(capsys, "orgs", "create", slug)
    assert code == 1
    assert "already exists" in one_line(err)

    code, _, err = run(capsys, "orgs", "create", "Not_A_Slug")
    assert code == 1
    assert "slug" in one_line(err)

    code, out, _ = run(capsys, "orgs", "list")
    assert code == 0
    (line,) = [line for line in out.splitlines() if line.startswith(slug + " ")]
    assert "CLI Org" in line
    assert " 7 " in line

    assert run(capsys, "orgs", "update", slug, "--rate-limit", "250")[0] == 0
    _, out, _ = run(capsys, "orgs", "list")
    (line,) = [line for line in out.splitlines() if line.startswith(slug + " ")]
    assert " 250 " in line

    code, _, err = run(capsys, "orgs", "update", new_slug(), "--rate-limit", "5")
    assert code == 1
    assert "unknown organization" in one_line(err)

    code, _, err = run(capsys, "orgs", "update", slug, "--rate-limit", "0")
    assert code == 1
    one_line(err)


@pytest.mark.usefixtures("cli_env")
def test_migrate(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "migrate")
    assert code == 0
    assert out.splitlines()[-1].startswith("schema at version ")


def test_no_database_url_and_no_dev_stack(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The error names both ways to get a database. (With a running dev stack, see
    tests/devtools/test_stack.py.)"""
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("CONTROLPLANE_HOME", str(tmp_path / "home"))
    for command in (["orgs", "list"], ["migrate"], ["keys", "list", "--org", "default"]):
        code, _, err = run(capsys, *command)
        assert code == 1
        line = one_line(err)
        assert "DATABASE_URL is not set" in line
        assert f"no dev stack is running in {tmp_path / 'home'}" in line
        assert "`controlplane dev`" in line


def test_a_dev_stack_that_was_killed_is_not_used(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    record = {
        "pid": gone.pid,
        "database_url": "postgresql://nobody@127.0.0.1:1/none",
        "temporal_address": "127.0.0.1:1",
        "api_url": "http://127.0.0.1:1",
    }
    (tmp_path / "dev.json").write_text(json.dumps(record))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("CONTROLPLANE_HOME", str(tmp_path))
    code, _, err = run(capsys, "orgs", "create", new_slug())
    assert code == 1
    line = one_line(err)
    assert f"the dev stack in {tmp_path} (pid {gone.pid}) is not running" in line
    assert "left from a run that was killed" in line
    assert "set DATABASE_URL" in line
    (tmp_path / "dev.json").write_text("{not json")
    code, _, err = run(capsys, "orgs", "list")
    assert code == 1
    assert "is not a dev stack record" in one_line(err)


async def test_keys(
    app: Starlette, settings: Settings, capsys: pytest.CaptureFixture[str], cli_env: None
) -> None:
    async def cli(*args: str) -> tuple[int, str, str]:
        # main() runs its own event loop, so it runs in a thread beside the test's loop.
        code = await asyncio.to_thread(main, list(args))
        out, err = capsys.readouterr()
        return code, out, err

    slug = new_slug()
    assert (await cli("orgs", "create", slug))[0] == 0
    code, out, err = await cli("keys", "create", "--org", slug, "--role", "member", "--name", "ci")
    assert code == 0
    key = out.strip()
    assert key.startswith("cpk_")
    assert "shown only this once" in err

    # A running API process reads the key again once what it read is AUTH_CACHE_SECONDS old.
    window = 0.3
    api = create_app(dataclasses.replace(settings, auth_cache_seconds=window))
    async with api.router.lifespan_context(api), client_for(api, key) as http:
        response = await http.get("/api/v1/environments")
        assert response.status_code == 200, response.text

        code, out, _ = await cli("keys", "list", "--org", slug)
        assert code == 0
        (line,) = [line for line in out.splitlines() if key[:12] in line]
        key_id = line.split()[0]
        assert " member " in line
        assert " ci " in line
        assert line.rstrip().endswith("-")  # not revoked

        code, out, err = await cli("keys", "revoke", "--org", slug, key_id)
        assert code == 0
        assert key_id in out
        assert "within their AUTH_CACHE_SECONDS" in err
        await asyncio.sleep(window)
        assert_error(await http.get("/api/v1/environments"), 401, "AUTHENTICATION_ERROR")

    _, out, _ = await cli("keys", "list", "--org", slug)
    (line,) = [line for line in out.splitlines() if key[:12] in line]
    assert not line.rstrip().endswith("-")  # revoked, with its time

    code, _, err = await cli("keys", "revoke", "--org", slug, str(uuid.uuid4()))
    assert code == 1
    assert "no API key" in one_line(err)
    code, _, err = await cli("keys", "revoke", "--org", new_slug(), key_id)
    assert code == 1
    assert "unknown organization" in one_line(err)
    code, _, err = await cli("keys", "revoke", "--org", slug, "not-an-id")
    assert code == 1
    one_line(err)
    code, _, err = await cli("keys", "list", "--org", new_slug())
    assert code == 1
    assert "unknown organization" in one_line(err)
    code, _, err = await cli("keys", "create", "--org", new_slug(), "--role", "admin")
    assert code == 1
    assert "unknown organization" in one_line(err)

    # A worker key is bound to a queue of the organization.
    admin = (await cli("keys", "create", "--org", slug, "--role", "admin"))[1].strip()
    async with client_for(app, admin) as http:
        env = (await http.post("/api/v1/environments", json={"name": "e"})).json()
        queue = (
            await http.post(f"/api/v1/environments/{env['id']}/worker-queues", json={"name": "q"})
        ).json()
    code, out, _ = await cli(
        "keys", "create", "--org", slug, "--role", "worker", "--queue", queue["id"]
    )
    assert code == 0
    async with client_for(app, out.strip()) as worker_key:
        started = await worker_key.post(f"/api/v1/worker-queues/{queue['id']}/start", json={})
        assert started.status_code == 200, started.text
    for args, message in [
        (("--role", "worker"), "--queue"),
        (("--role", "member", "--queue", queue["id"]), "--queue"),
        (("--role", "worker", "--queue", "nope"), "not a worker queue id"),
        (("--role", "worker", "--queue", str(uuid.uuid4())), "has no worker queue"),
    ]:
        code, _, err = await cli("keys", "create", "--org", slug, *args)
        assert code == 1
        assert message in one_line(err)


def test_tls_certs_make_a_ca_and_a_server_certificate_once(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, _ = run(capsys, "tls-certs", "--out", str(tmp_path), "--host", "temporal")
    assert code == 0 and out.startswith("created")
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    server = x509.load_pem_x509_certificate((tmp_path / "temporal.pem").read_bytes())
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["temporal"]
    key = serialization.load_pem_private_key((tmp_path / "temporal.key").read_bytes(), None)
    public = server.public_key()
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert key.public_key().public_numbers() == public.public_numbers()
    before = (tmp_path / "ca.pem").read_bytes()
    code, out, _ = run(capsys, "tls-certs", "--out", str(tmp_path), "--host", "temporal")
    assert code == 0 and out.startswith("kept")
    assert (tmp_path / "ca.pem").read_bytes() == before


def test_console_errors_are_one_line() -> None:
    """As a process: an unreachable database is one line on stderr and exit 1."""
    env = dict(os.environ, DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")
    result = subprocess.run(
        [sys.executable, "-m", "controlplane.cli", "orgs", "list"],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "cannot connect to Postgres" in one_line(result.stderr.decode())
