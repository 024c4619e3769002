"""docker-compose.yml and the Dockerfile, checked by reading them: Docker cannot run here, so the
stack has to be right by construction."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RAW = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
# What an operator's .env holds; the file is read as compose would read it with these set.
OPERATOR_ENV = {
    "POSTGRES_PASSWORD": "pw",
    "ANTHROPIC_API_KEY": "sk-ant-test",
    "DEFAULT_WORKER_QUEUE_ID": "11111111-2222-3333-4444-555555555555",
    "CONTROLPLANE_SECRET_KEY": "a" * 64,
}
_VARIABLE = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)


class MissingVariable(Exception):
    pass


def interpolate(node: Any, environ: dict[str, str]) -> Any:
    """Compose's variable syntax: $$, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}."""
    if isinstance(node, dict):
        return {key: interpolate(value, environ) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(item, environ) for item in node]
    if not isinstance(node, str):
        return node

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("name") or match.group("bare")
        op, arg = match.group("op") or "", match.group("arg") or ""
        value = environ.get(name)
        unset = value is None or (op.startswith(":") and value == "")
        if unset and op.endswith("-"):
            return arg
        if unset and op.endswith("?"):
            raise MissingVariable(f"{name}: {arg}")
        return value or ""

    return _VARIABLE.sub(replace, node)


COMPOSE = interpolate(RAW, OPERATOR_ENV)
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
WORKERS = sorted(name for name in SERVICES if name.startswith("worker-"))


def env(service: str) -> dict[str, str | None]:
    raw = SERVICES[service].get("environment", {})
    if isinstance(raw, list):
        pairs = (item.partition("=") for item in raw)
        return {key: value if sep else None for key, sep, value in pairs}
    return {key: None if value is None else str(value) for key, value in raw.items()}


def command(service: str) -> list[str]:
    raw = SERVICES[service].get("command", [])
    return shlex.split(raw) if isinstance(raw, str) else [str(part) for part in raw]


def ports(service: str) -> set[tuple[int, int]]:
    """(published, container) pairs from short-syntax port strings like "127.0.0.1:8233:8080"."""
    found = set()
    for entry in SERVICES[service].get("ports", []):
        published, _, target = str(entry).rpartition(":")
        found.add((int(published.rpartition(":")[2]), int(target.split("/")[0])))
    return found


def healthcheck_test(service: str) -> str:
    check = SERVICES[service].get("healthcheck")
    assert check, f"{service} has no healthcheck"
    test = check["test"]
    assert isinstance(test, list) and test[0] in {"CMD", "CMD-SHELL"}, test
    assert not check.get("disable", False)
    return " ".join(str(part) for part in test[1:])


def depends_on(service: str) -> dict[str, str]:
    raw = SERVICES[service].get("depends_on", {})
    if isinstance(raw, list):
        return dict.fromkeys(raw, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in raw.items()}


def test_the_platform_services_are_present() -> None:
    expected = {"postgres", "certs", "temporal", "temporal-ui", "opa", "migrate", "api"}
    assert expected | {"system-worker"} <= set(SERVICES)
    assert WORKERS, "at least one worker-<queue> service"
    assert SERVICES["postgres"]["image"].startswith("postgres:16")
    assert SERVICES["temporal"]["image"].startswith(
        ("temporalio/auto-setup:", "temporalio/server:")
    )
    assert SERVICES["temporal-ui"]["image"].startswith("temporalio/ui:")
    assert SERVICES["opa"]["image"].startswith("openpolicyagent/opa:")
    for name, service in SERVICES.items():
        assert not str(service.get("image", "")).endswith(":latest"), f"{name}: pin the image"


def test_our_services_run_our_image() -> None:
    ours = ["api", "migrate", "certs", "system-worker", *WORKERS]
    images = {SERVICES[name]["image"] for name in ours}
    assert len(images) == 1, images
    for name in ours:
        build = SERVICES[name]["build"]
        assert (ROOT / build["context"] / build.get("dockerfile", "Dockerfile")).is_file()


@pytest.mark.parametrize(
    ("service", "published", "container"),
    [
        ("api", 8001, 8001),
        ("temporal", 7233, 7233),
        ("temporal-ui", 8233, 8080),
        ("opa", 8181, 8181),
    ],
)
def test_ports(service: str, published: int, container: int) -> None:
    assert (published, container) in ports(service)


def test_postgres_keeps_its_data_in_a_declared_volume() -> None:
    volumes = SERVICES["postgres"]["volumes"]
    names = [v.split(":")[0] for v in volumes if v.endswith(":/var/lib/postgresql/data")]
    assert names and names[0] in (COMPOSE.get("volumes") or {})
    assert "pg_isready" in healthcheck_test("postgres")


def test_healthchecks() -> None:
    assert "pg_isready" in healthcheck_test("postgres")
    assert "temporal" in healthcheck_test("temporal")
    assert "/api/ready" in healthcheck_test("api")
    assert ":8001/" in healthcheck_test("api")
    assert "/health" in healthcheck_test("opa")
    # OPA's image has no shell: the check must exec a binary the image has.
    assert SERVICES["opa"]["healthcheck"]["test"][:2] == ["CMD", "/opa"]


def test_opa_serves_beyond_localhost() -> None:
    cmd = command("opa")
    assert cmd[:2] == ["run", "--server"]
    assert cmd[cmd.index("--addr") + 1] in {"0.0.0.0:8181", ":8181"}


def test_api_configuration() -> None:
    assert command("api") == ["controlplane", "api", "--host", "0.0.0.0", "--port", "8001"]
    variables = env("api")
    expected = {"DATABASE_URL", "TEMPORAL_ADDRESS", "CONTROLPLANE_URL", "OPA_URL"}
    assert expected | {"ANTHROPIC_API_KEY"} <= set(variables)
    assert urlsplit(variables["DATABASE_URL"] or "").hostname == "postgres"
    assert variables["TEMPORAL_ADDRESS"] == "temporal:7233"
    assert urlsplit(variables["OPA_URL"] or "").netloc == "opa:8181"
    assert variables["ANTHROPIC_API_KEY"] == OPERATOR_ENV["ANTHROPIC_API_KEY"]


def test_the_database_password_must_be_set() -> None:
    with pytest.raises(MissingVariable, match="POSTGRES_PASSWORD"):
        interpolate(RAW, {})
    database_url = urlsplit(env("api")["DATABASE_URL"] or "")
    assert database_url.password == OPERATOR_ENV["POSTGRES_PASSWORD"]
    assert database_url.username == env("postgres")["POSTGRES_USER"]
    assert database_url.path == "/" + str(env("postgres")["POSTGRES_DB"])


def test_api_waits_for_healthy_dependencies() -> None:
    needs = depends_on("api")
    for dependency in ("postgres", "temporal", "opa"):
        assert needs[dependency] == "service_healthy"
    assert needs.get("migrate") == "service_completed_successfully"


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_depends_on_names_real_services_with_matching_conditions(service: str) -> None:
    for dependency, condition in depends_on(service).items():
        assert dependency in SERVICES, f"{service} depends on unknown {dependency}"
        assert condition in CONDITIONS
        if condition == "service_healthy":
            healthcheck_test(dependency)
        if condition == "service_completed_successfully":
            assert SERVICES[dependency].get("restart") == "no", f"{dependency} is one-shot"


def test_dependencies_have_no_cycle() -> None:
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        assert state.get(name) != "open", f"cycle: {' -> '.join([*path, name])}"
        if state.get(name) == "done":
            return
        state[name] = "open"
        for dependency in depends_on(name):
            visit(dependency, [*path, name])
        state[name] = "done"

    for name in SERVICES:
        visit(name, [])


def test_migrate_is_a_one_shot_schema_apply() -> None:
    assert command("migrate") == ["controlplane", "migrate"]
    assert SERVICES["migrate"]["restart"] == "no"
    assert "DATABASE_URL" in env("migrate")
    assert depends_on("migrate")["postgres"] == "service_healthy"


def secret_files(service: str) -> dict[str, str]:
    """Where each compose secret of a service is mounted: /run/secrets/<name>."""
    declared = COMPOSE.get("secrets") or {}
    mounted = {}
    for entry in SERVICES[service].get("secrets", []):
        name = entry if isinstance(entry, str) else entry["source"]
        assert name in declared, f"{service} uses undeclared secret {name}"
        target = name if isinstance(entry, str) else entry.get("target", name)
        mounted[name] = f"/run/secrets/{target}"
    return mounted


@pytest.mark.parametrize("worker", WORKERS)
def test_workers_serve_one_queue_without_database_credentials(worker: str) -> None:
    cmd = command(worker)
    assert cmd[:3] == ["controlplane", "worker", "--queue-id"]
    assert cmd[3], "one queue id per worker service"
    assert "${" in str(RAW["services"][worker]["command"]), "the queue id comes from the env"
    # The worker key and the model key are files, never environment variables.
    files = secret_files(worker)
    assert cmd[4:] == ["--api-key-file", cmd[5]] and cmd[5] in files.values()
    variables = env(worker)
    assert "CONTROLPLANE_API_KEY" not in variables and "ANTHROPIC_API_KEY" not in variables
    assert variables["ANTHROPIC_API_KEY_FILE"] in files.values()
    assert urlsplit(variables["CONTROLPLANE_URL"] or "").netloc == "api:8001"
    assert "DATABASE_URL" not in variables
    assert "CONTROLPLANE_SECRET_KEY" not in variables
    for key, value in variables.items():
        assert "POSTGRES" not in key and "postgres" not in str(value).lower(), (key, value)
    assert "env_file" not in SERVICES[worker], "an env file could hand workers DB credentials"
    assert depends_on(worker).get("api") == "service_healthy"


def test_every_worker_serves_its_own_queue() -> None:
    queues = [command(worker)[3] for worker in WORKERS]
    assert len(queues) == len(set(queues))
    keys = [command(worker)[5] for worker in WORKERS]
    assert len(keys) == len(set(keys)), "a worker key per queue"


def test_temporal_authorizes_with_the_control_planes_jwks_over_tls() -> None:
    temporal = env("temporal")
    assert temporal["TEMPORAL_AUTH_AUTHORIZER"] == "default"
    assert temporal["TEMPORAL_AUTH_CLAIM_MAPPER"] == "default"
    assert temporal["TEMPORAL_JWT_PERMISSIONS_CLAIM"] == "permissions"
    jwks = urlsplit(temporal["TEMPORAL_JWT_KEY_SOURCE1"] or "")
    assert (jwks.netloc, jwks.path) == ("api:8001", "/.well-known/jwks.json")
    # Temporal's own worker service needs the unauthenticated internal frontend.
    assert "internal-frontend" in (temporal["SERVICES"] or "").split(":")
    assert temporal["USE_INTERNAL_FRONTEND"] == "true"
    assert (7236, 7236) not in ports("temporal"), "the internal frontend stays inside"
    assert "temporal:7236" in healthcheck_test("temporal")
    # TLS on the public frontend with the certificate the certs service made.
    certs_dir = command("certs")[command("certs").index("--out") + 1]
    assert "temporal" in command("certs")
    mounts = {v.split(":")[0]: v.split(":")[1] for v in SERVICES["temporal"]["volumes"]}
    assert mounts["temporal-tls"] == certs_dir
    assert (temporal["TEMPORAL_TLS_FRONTEND_CERT"] or "").startswith(certs_dir + "/")
    assert (temporal["TEMPORAL_TLS_FRONTEND_KEY"] or "").startswith(certs_dir + "/")
    assert depends_on("temporal")["certs"] == "service_completed_successfully"
    # The API trusts that CA and hands it (and the server name) to workers.
    api = env("api")
    assert api["TEMPORAL_TLS"] == "true" and api["TEMPORAL_TLS_SERVER_NAME"] == "temporal"
    api_mounts = {v.split(":")[0]: v.split(":")[1] for v in SERVICES["api"]["volumes"]}
    assert (api["TEMPORAL_TLS_CA_FILE"] or "").startswith(api_mounts["temporal-tls"] + "/")
    assert "temporal-tls" in (COMPOSE.get("volumes") or {})


# ---- Dockerfile -----------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    result = []
    for entry in logical:
        instruction, _, args = entry.partition(" ")
        result.append((instruction.upper(), args.strip()))
    return result


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (name, _) in enumerate(instructions) if name == "FROM")
    return instructions[last_from:]


def test_dockerfile_builds_on_python_311_slim_with_pip_install() -> None:
    instructions = dockerfile_instructions()
    bases = [args.split()[0] for name, args in instructions if name == "FROM"]
    assert all(base == "python:3.11-slim" for base in bases if ":" in base), bases
    runs = " ".join(args for name, args in instructions if name == "RUN")
    assert re.search(r"pip install (--\S+ )*\.(\s|$)", runs)


def test_every_python_package_is_declared() -> None:
    """The wheel the image installs holds only the declared packages: a subpackage left out
    (controlplane.system once was) is missing from the image alone."""
    declared = set(PYPROJECT["tool"]["setuptools"]["packages"])
    top_level = {package.split(".")[0] for package in declared}
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for package in top_level
        for init in (ROOT / package).rglob("__init__.py")
    }
    assert found == declared, {"undeclared": found - declared, "missing": declared - found}


def test_dockerfile_copies_every_declared_package_and_the_migrations() -> None:
    copied = " ".join(args for name, args in dockerfile_instructions() if name == "COPY")
    top_level = {package.split(".")[0] for package in PYPROJECT["tool"]["setuptools"]["packages"]}
    for package in [*sorted(top_level), "pyproject.toml"]:
        assert re.search(rf"(^|\s){re.escape(package)}(\s|$)", copied), f"{package} not copied"
    # The migrations live in the controlplane package (copied above); the wheel the image
    # installs carries them only as package data.
    migrations = ROOT / "controlplane" / "migrations"
    sql = set(migrations.rglob("*.sql"))
    assert {path.name for path in sql} >= {"0001_initial.sql", "model_catalogue.sql"}
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]["controlplane"]
    shipped = {path for pattern in patterns for path in (ROOT / "controlplane").glob(pattern)}
    assert sql <= shipped, sorted(str(path) for path in sql - shipped)


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = [args for name, args in final_stage() if name == "USER"]
    assert users, "the final stage must switch user"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}


def test_dockerfile_command_is_the_console_script() -> None:
    scripts = PYPROJECT["project"]["scripts"]
    entry = [args for name, args in final_stage() if name in {"CMD", "ENTRYPOINT"}]
    assert entry, "the image needs a CMD or ENTRYPOINT"
    program = json.loads(entry[0])[0]  # exec form, so signals reach the process
    assert program in scripts
    for service in ["api", "migrate", *WORKERS]:
        assert command(service)[0] in scripts, service


def test_the_system_worker_runs_beside_the_api_with_its_credentials() -> None:
    assert command("system-worker") == ["controlplane", "system-worker"]
    variables, api = env("system-worker"), env("api")
    for name in (
        "DATABASE_URL",
        "TEMPORAL_ADDRESS",
        "TEMPORAL_NAMESPACE",
        "CONTROLPLANE_SECRET_KEY",
    ):
        assert variables[name] == api[name], name
    assert variables["TEMPORAL_TLS"] == "true"
    assert depends_on("system-worker")["api"] == "service_healthy"
    # The planner calls the model from the system worker: the key comes as a file.
    assert variables["ANTHROPIC_API_KEY_FILE"] == "/run/secrets/anthropic-api-key"
    assert "anthropic-api-key" in SERVICES["system-worker"]["secrets"]
