"""What the caller of a request may reach, shared by the route modules: an execution by the id
in the path (scoped to the worker's queue when the caller is a worker token), a running one for
a worker, and the vault."""

from __future__ import annotations

import uuid

import asyncpg

from api.errors import ApiError
from api.routing import Call
from controlplane.db import Queryable
from controlplane.errors import not_found
from controlplane.executions.lifecycle import load
from controlplane.vault import Vault, vault_or_error
from workflows.contracts import TERMINAL_STATES


async def execution_for(
    call: Call,
    conn: Queryable | None = None,
    *,
    execution_id: uuid.UUID | None = None,
    lock: bool = False,
) -> asyncpg.Record:
    """The execution named by the path (or `execution_id`): not found unless it is the
    organization's, and, for a worker token, on the worker's own queue."""
    ident = execution_id or call.path_uuid("execution_id", "Execution")
    queue = call.principal.worker_queue_id if call.principal.is_worker_token else None
    row = await load(conn or call.db, call.org, ident, queue_id=queue, lock=lock)
    if row is None:
        raise not_found("Execution", ident)
    return row


async def running_execution_for_worker(call: Call, raw_id: str | None) -> asyncpg.Record:
    """The execution a worker token names by `?execution_id=`, which must be on the worker's own
    queue and not have ended (any other answers 404, as a missing one does)."""
    if raw_id is None:
        raise ApiError(
            400, "A worker token must name the execution that needs it: ?execution_id=<id>"
        )
    try:
        ident = uuid.UUID(raw_id)
    except ValueError:
        raise not_found("Execution", raw_id) from None
    execution = await execution_for(call, execution_id=ident)
    if execution["status"] in TERMINAL_STATES:
        raise not_found("Running execution", execution["id"])
    return execution


def vault_of(call: Call) -> Vault:
    """The vault, or the 503 every route that needs it answers without a key."""
    return vault_or_error(call.state.settings.secret_key)
