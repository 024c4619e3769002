"""The `controlplane` console command: the API server, a worker, the schema, organizations and
API keys, and `dev` (the whole platform on one machine).

The database commands (migrate, orgs, keys) work on DATABASE_URL or, when it is not set, on the
database of the `controlplane dev` running in CONTROLPLANE_HOME.

Expected failures (no database, a port in use, an unknown organization) print one line on
stderr and exit 1; tracebacks are for bugs.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import os
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Literal, NoReturn, TypeVar

import asyncpg

from controlplane import VERSION

if TYPE_CHECKING:
    from controlplane.schema import Outcome

T = TypeVar("T")
CliRole = Literal["viewer", "member", "admin", "worker"]
ROLES: tuple[CliRole, ...] = ("admin", "member", "viewer", "worker")


class CliError(Exception):
    """A one-line reason the command failed."""


def _fail(message: str) -> int:
    print(f"controlplane: {message}", file=sys.stderr)
    return 1


def exit_hard(code: int) -> NoReturn:
    """Exit without interpreter finalization, after the atexit handlers ran and output was
    flushed: a process that made a Temporal client can crash while finalizing (sdk-python
    issue 300, exit 134/139). Only for commands that own the whole process."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


# ---- database commands -------------------------------------------------------------------


DATABASE_URL_EXAMPLE = "postgresql://user:pass@host:5432/db"


def database_url() -> str:
    url = os.environ.get("DATABASE_URL", "")
    if not url:
        raise CliError(f"DATABASE_URL is not set (e.g. {DATABASE_URL_EXAMPLE})")
    return url


@dataclass(frozen=True)
class Database:
    """The database a command works on: DATABASE_URL's, or a running dev stack's."""

    url: str
    source: str  # for messages: "DATABASE_URL" or "the dev stack in .controlplane"
    temporal_address: str | None = None  # the dev stack's; None: TEMPORAL_ADDRESS or default


def find_database() -> Database:
    """DATABASE_URL if set; else the database of the `controlplane dev` running in
    CONTROLPLANE_HOME (default .controlplane), which it records in its dev.json. Says on stderr
    when it uses the dev stack's."""
    url = os.environ.get("DATABASE_URL", "")
    if url:
        return Database(url, "DATABASE_URL")
    from controlplane.devtools.record import DevRecordError, read_record

    home = os.environ.get("CONTROLPLANE_HOME") or ".controlplane"
    try:
        record = read_record(Path(home))
    except DevRecordError as exc:
        raise CliError(
            f"DATABASE_URL is not set, and {exc}; start the dev stack with `controlplane dev` "
            "(`make dev`) or set DATABASE_URL"
        ) from None
    if record is None:
        raise CliError(
            f"DATABASE_URL is not set and no dev stack is running in {home}: set DATABASE_URL "
            f"(e.g. {DATABASE_URL_EXAMPLE}) or start one with `controlplane dev` (`make dev`)"
        )
    print(
        f"controlplane: using the dev stack's database in {home} (pid {record.pid})",
        file=sys.stderr,
    )
    return Database(record.database_url, f"the dev stack in {home}", record.temporal_address)


def _on_connection(
    work: Callable[[asyncpg.Connection[Any]], Awaitable[T]], database: Database | None = None
) -> T:
    """Run `work` on one connection to the database (by default `find_database()`'s)."""
    target = database or find_database()

    async def run() -> T:
        try:
            conn = await asyncpg.connect(target.url, timeout=10)
        except Exception as exc:  # bad DSN, refused, auth: all one message
            raise CliError(f"cannot connect to Postgres at {target.source}: {exc}") from None
        try:
            return await work(conn)
        finally:
            await conn.close()

    return asyncio.run(run())


async def _apply_schema(conn: asyncpg.Connection[Any]) -> Outcome:
    from controlplane.schema import MigrationError, apply_schema

    try:
        return await apply_schema(conn)
    except MigrationError as exc:
        raise CliError(str(exc)) from None


def _with_connection(
    work: Callable[[asyncpg.Connection[Any]], Awaitable[T]], database: Database | None = None
) -> T:
    """Migrate the schema, then run `work` on one connection to the database (by default
    `find_database()`'s)."""

    async def migrated(conn: asyncpg.Connection[Any]) -> T:
        await _apply_schema(conn)
        return await work(conn)

    return _on_connection(migrated, database)


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(h) for h in headers]] + [
        ["-" if v is None else str(v) for v in row] for row in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def _when(value: object) -> object:
    return value.isoformat(timespec="seconds") if hasattr(value, "isoformat") else value


async def _require_org(conn: asyncpg.Connection[Any], slug: str) -> None:
    if await conn.fetchval("SELECT 1 FROM organizations WHERE id = $1", slug) is None:
        raise CliError(f"unknown organization '{slug}'")


def cmd_migrate(args: argparse.Namespace) -> int:
    outcome = _on_connection(_apply_schema)
    for migration in outcome.applied:
        print(f"applied {migration.file_name}")
    print(f"schema at version {outcome.version}")
    return 0


def cmd_orgs_create(args: argparse.Namespace) -> int:
    from controlplane.tenancy import OrgExists, create_org

    database = find_database()

    async def work(conn: asyncpg.Connection[Any]) -> str:
        try:
            await create_org(conn, args.slug, name=args.name, rate_limit_per_minute=args.rate_limit)
        except OrgExists:
            raise CliError(f"organization '{args.slug}' already exists") from None
        except ValueError as exc:
            raise CliError(str(exc)) from None
        return await _register_namespace(conn, args.slug, database.temporal_address)

    namespace_note = _with_connection(work, database)
    print(f"created organization {args.slug} ({args.rate_limit} requests/min per key)")
    print(namespace_note)
    return 0


async def _register_namespace(
    conn: asyncpg.Connection[Any], organization_id: str, temporal_address: str | None
) -> str:
    """The organization's Temporal namespace, registered now when Temporal (at
    `temporal_address`, by default TEMPORAL_ADDRESS's) answers, else the API registers it when
    it starts or first needs it; returns a line saying which."""
    from controlplane.errors import Unavailable
    from controlplane.settings import Settings
    from controlplane.temporal import TemporalGateway
    from controlplane.temporal_auth import CONTROL_PLANE_PERMISSIONS, load_signing_key, mint
    from controlplane.vault import vault_from_key

    settings = (
        Settings.from_env()
        if temporal_address is None
        else Settings.from_env(temporal_address=temporal_address)
    )
    namespace = settings.namespace_for(organization_id)
    vault = vault_from_key(settings.secret_key) if settings.secret_key else None
    key = await load_signing_key(conn, vault)
    gateway = TemporalGateway(settings)
    gateway.token_source = lambda: mint(
        key,
        subject="controlplane-cli",
        permissions=CONTROL_PLANE_PERMISSIONS,
        ttl_seconds=settings.temporal_token_ttl_seconds,
        issuer=settings.public_url,
    )
    try:
        await gateway.client(organization_id)
    except Unavailable as exc:
        return (
            f"Temporal namespace {namespace} not registered yet ({exc.message}); the API "
            "registers it when it starts or first needs it"
        )
    return f"Temporal namespace {namespace} is ready"


def cmd_orgs_list(args: argparse.Namespace) -> int:
    from controlplane.tenancy import list_orgs

    rows = _with_connection(list_orgs)
    _table(
        ["ID", "NAME", "RATE LIMIT/MIN", "CREATED"],
        [(r["id"], r["name"], r["rate_limit_per_minute"], _when(r["created_at"])) for r in rows],
    )
    return 0


def cmd_orgs_update(args: argparse.Namespace) -> int:
    from controlplane.tenancy import UnknownOrg, set_rate_limit

    async def work(conn: asyncpg.Connection[Any]) -> None:
        try:
            await set_rate_limit(conn, args.slug, args.rate_limit)
        except UnknownOrg:
            raise CliError(f"unknown organization '{args.slug}'") from None
        except ValueError as exc:
            raise CliError(str(exc)) from None

    _with_connection(work)
    print(f"organization {args.slug}: {args.rate_limit} requests/min per key")
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    from controlplane.tenancy import UnknownOrg, UnknownQueue, create_key

    role: CliRole = args.role
    name: str = args.name or f"{role} key"
    if (role == "worker") != (args.queue is not None):
        raise CliError("--role worker needs --queue QUEUE_ID, and only a worker key takes one")
    try:
        queue = uuid.UUID(args.queue) if args.queue else None
    except ValueError:
        raise CliError(f"'{args.queue}' is not a worker queue id") from None

    async def work(conn: asyncpg.Connection[Any]) -> Any:
        try:
            return await create_key(
                conn, args.org, role=role, name=name, created_by="cli", worker_queue_id=queue
            )
        except UnknownOrg:
            raise CliError(f"unknown organization '{args.org}'") from None
        except UnknownQueue:
            raise CliError(f"organization '{args.org}' has no worker queue {queue}") from None

    new = _with_connection(work)
    # The key alone on stdout, so `KEY=$(controlplane keys create ...)` works.
    print(new.key)
    print(
        f"created {role} key {new.id} ({new.prefix}...) for {args.org}; it is shown only this once",
        file=sys.stderr,
    )
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    from controlplane.tenancy import KEY_COLUMNS

    async def work(conn: asyncpg.Connection[Any]) -> list[asyncpg.Record]:
        await _require_org(conn, args.org)
        return await conn.fetch(
            f"SELECT {KEY_COLUMNS} FROM api_keys WHERE organization_id = $1 "
            "ORDER BY created_at, id",
            args.org,
        )

    rows = _with_connection(work)
    _table(
        ["ID", "PREFIX", "ROLE", "NAME", "CREATED", "REVOKED"],
        [
            (
                r["id"],
                r["prefix"],
                r["role"],
                r["name"],
                _when(r["created_at"]),
                _when(r["revoked_at"]),
            )
            for r in rows
        ],
    )
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from controlplane.tenancy import revoke_key

    try:
        key_id = uuid.UUID(args.key_id)
    except ValueError:
        raise CliError(f"'{args.key_id}' is not a key id (see `controlplane keys list`)") from None

    async def work(conn: asyncpg.Connection[Any]) -> asyncpg.Record:
        await _require_org(conn, args.org)
        row = await revoke_key(conn, args.org, key_id)
        if row is None:
            raise CliError(f"no API key {key_id} in organization '{args.org}'")
        return row

    row = _with_connection(work)
    print(f"revoked key {key_id} ({row['prefix']}...) at {_when(row['revoked_at'])}")
    print(
        "running API processes refuse it within their AUTH_CACHE_SECONDS (5 s by default)",
        file=sys.stderr,
    )
    return 0


# ---- servers ------------------------------------------------------------------------------


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from controlplane.logs import configure_logging
    from controlplane.services import port_is_free

    database_url()
    if not port_is_free(args.port, args.host):
        raise CliError(
            f"port {args.port} on {args.host} is already in use; pick another with --port"
        )
    local_host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
    os.environ.setdefault("CONTROLPLANE_URL", f"http://{local_host}:{args.port}")
    configure_logging()
    # uvicorn re-raises the signal that stopped it once it has shut down; a handler that does
    # nothing turns that into a normal return, so a SIGTERM ends in exit code 0.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _ignore_signal)
    config = uvicorn.Config(
        "api.asgi:app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        log_config=None,
        lifespan="on",
        # uvicorn[standard]: the C HTTP parser and event loop, named so that a missing one fails
        # here instead of silently costing about a quarter of the API's CPU (docs/PERFORMANCE.md).
        http="httptools",
        loop="uvloop",
    )
    server = uvicorn.Server(config)
    try:
        server.run()
    except SystemExit as exc:  # raised by the factory, e.g. bad settings
        if isinstance(exc.code, str):
            raise CliError(exc.code) from None
        return 1
    if not server.started:
        raise CliError("the API did not start (see the log lines above)")
    return 0


def _ignore_signal(signum: int, frame: FrameType | None) -> None:
    return None


def cmd_worker(args: argparse.Namespace, rest: list[str]) -> int:
    try:
        from worker.main import main as worker_main
    except ImportError as exc:
        raise CliError(f"the worker is not available: {exc}") from None
    return worker_main(rest)


def cmd_system_worker(args: argparse.Namespace) -> int:
    from controlplane.logs import configure_logging
    from controlplane.system.worker import main as system_worker_main

    database_url()
    configure_logging()
    return system_worker_main()


def cmd_tls_certs(args: argparse.Namespace) -> int:
    from controlplane.tls_certs import generate

    certs = generate(Path(args.out), args.host)
    state = "created" if certs.created else "kept the existing"
    print(f"{state} CA {certs.ca} and certificate {certs.certificate} for {', '.join(args.host)}")
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from controlplane.devtools.stack import DevOptions, run_dev

    return run_dev(
        DevOptions.from_env(
            host=args.host,
            port=args.port,
            temporal_port=args.temporal_port,
            ui_port=args.ui_port,
            fake_llm=args.fake_llm,
            fake_llm_port=args.fake_llm_port,
        )
    )


# ---- argument parsing -----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="controlplane", description="Self-hostable control plane for AI agents."
    )
    parser.add_argument("--version", action="version", version=f"controlplane {VERSION}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    api = commands.add_parser("api", help="run the API server (needs DATABASE_URL)")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8001)

    # Everything after `worker` goes to the worker's own parser (see `controlplane worker -h`).
    commands.add_parser(
        "worker",
        help="run a worker on a queue: --queue-id ID [--control-plane-url URL] "
        "[--api-key-file FILE | --api-key-stdin]",
        add_help=False,
    )

    commands.add_parser(
        "system-worker",
        help="run the control plane's own Temporal worker (needs DATABASE_URL)",
    )

    commands.add_parser(
        "migrate",
        help="apply the schema migrations to DATABASE_URL (or the running dev stack's database)",
    )

    orgs = commands.add_parser("orgs", help="organizations").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    create = orgs.add_parser("create", help="create an organization")
    create.add_argument("slug")
    create.add_argument("--name")
    create.add_argument("--rate-limit", type=int, default=100, help="requests/min per key")
    orgs.add_parser("list", help="list organizations")
    update = orgs.add_parser("update", help="change an organization's rate limit")
    update.add_argument("slug")
    update.add_argument("--rate-limit", type=int, required=True, help="requests/min per key")

    keys = commands.add_parser("keys", help="API keys").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    kcreate = keys.add_parser("create", help="create a key (printed once)")
    kcreate.add_argument("--org", required=True)
    kcreate.add_argument("--role", required=True, choices=ROLES)
    kcreate.add_argument(
        "--queue", help="for --role worker: the worker queue the key may start workers on"
    )
    kcreate.add_argument("--name")
    klist = keys.add_parser("list", help="list an organization's keys")
    klist.add_argument("--org", required=True)
    krevoke = keys.add_parser("revoke", help="revoke a key")
    krevoke.add_argument("--org", required=True)
    krevoke.add_argument("key_id")

    certs = commands.add_parser(
        "tls-certs", help="a private CA and a server certificate for Temporal's frontend"
    )
    certs.add_argument("--out", required=True, help="directory for ca.pem, temporal.pem/.key")
    certs.add_argument(
        "--host", action="append", required=True, help="a name or IP the certificate is for"
    )

    dev = commands.add_parser("dev", help="run everything locally on embedded defaults")
    dev.add_argument("--host", default="127.0.0.1", help="address the API listens on")
    dev.add_argument("--port", type=int, default=8001, help="API port")
    dev.add_argument("--temporal-port", type=int, default=7233)
    dev.add_argument("--ui-port", type=int, default=8233, help="Temporal Web UI port")
    dev.add_argument(
        "--fake-llm",
        action="store_true",
        help="run the fake Anthropic server and point the worker at it (no API key needed)",
    )
    dev.add_argument(
        "--fake-llm-port", type=int, default=8099, help="fake Anthropic server port (--fake-llm)"
    )
    return parser


HANDLERS: dict[tuple[str, str | None], Callable[[argparse.Namespace], int]] = {
    ("api", None): cmd_api,
    ("migrate", None): cmd_migrate,
    ("orgs", "create"): cmd_orgs_create,
    ("orgs", "list"): cmd_orgs_list,
    ("orgs", "update"): cmd_orgs_update,
    ("keys", "create"): cmd_keys_create,
    ("keys", "list"): cmd_keys_list,
    ("keys", "revoke"): cmd_keys_revoke,
    ("dev", None): cmd_dev,
    ("tls-certs", None): cmd_tls_certs,
    ("system-worker", None): cmd_system_worker,
}
# Long-running commands that own their process and may have made a Temporal client.
HARD_EXIT = {"api", "worker", "dev", "orgs", "system-worker"}


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code. `api`, `worker` and `dev` end the process
    themselves (see `exit_hard`) when run as the console script."""
    args_in = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args, rest = parser.parse_known_args(args_in)
    if rest and args.command != "worker":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if args.command == "worker":
            code = cmd_worker(args, rest)
        else:
            code = HANDLERS[(args.command, getattr(args, "action", None))](args)
    except CliError as exc:
        code = _fail(str(exc))
    except KeyboardInterrupt:
        code = 130
    if argv is None and args.command in HARD_EXIT:
        exit_hard(code)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
