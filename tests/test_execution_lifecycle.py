"""Execution lifecycle through the API and a real worker: pause/resume, cancel mid-stream,
a worker killed mid-call, and the access rules of every execution route."""

from __future__ import annotations

import asyncio
import signal
import uuid
from typing import Any

from starlette.applications import Starlette

from api.event_stream import stream_events
from controlplane.devtools.fake_anthropic import (
    AsyncFakeAnthropicClient,
    FakeAnthropicServer,
    text_reply,
)
from tests.conftest import Tenant, as_worker, assert_error, temporal_for, worker_key_for
from tests.execution_helpers import (
    events_of,
    execute,
    make_agent,
    make_queue,
    read_stream,
    record_history,
    start_worker_process,
    wait_answer,
    wait_status,
)
from workflows.agent_execution import MAX_TURNS_PER_RUN

LONG_TEXT = " ".join(f"word{i}" for i in range(120))  # ~60 chunks from the fake


def joined_under_reset(events: list[dict[str, Any]]) -> str:
    """The answer as a client builds it from the stream (README, "Streams"): chunks appended,
    and a message_reset drops what it has of that message."""
    text = ""
    for event in events:
        if event["event_type"] == "message_reset":
            text = ""
        elif event["event_type"] == "message_chunk":
            text += event["data"]["content"]
    return text


async def wait_for_event(db: Any, execution_id: str, event_type: str, timeout: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not any(e["event_type"] == event_type for e in await events_of(db, execution_id)):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"no {event_type} event")
        await asyncio.sleep(0.05)


async def test_pause_holds_the_next_turn_until_resume(
    tenant: Tenant,
    running_queue: dict[str, Any],
    fake_llm: FakeAnthropicServer,
    db: Any,
    temporal_address: str,
) -> None:
    token = uuid.uuid4().hex
    fake = AsyncFakeAnthropicClient(fake_llm.base_url)
    await fake.script(token, [text_reply("First."), text_reply("Second.")])
    execution_id = await execute(tenant, await make_agent(tenant, token), running_queue["id"])
    await wait_status(tenant, execution_id, "waiting_for_input")
    base = f"/api/v1/executions/{execution_id}"

    paused = await tenant.member.post(f"{base}/pause")
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    await wait_status(tenant, execution_id, "paused")
    error = assert_error(await tenant.member.post(f"{base}/pause"), 409, "RESOURCE_CONFLICT")
    assert error["details"]["status"] == "paused"

    assert (
        await tenant.member.post(f"{base}/message", json={"message": "More"})
    ).status_code == 202
    await asyncio.sleep(1.0)
    assert (await tenant.viewer.get(base)).json()["status"] == "paused"
    assert len(await fake.bodies(token)) == 1  # the model was not called while paused

    assert (await tenant.member.post(f"{base}/resume")).status_code == 200
    await wait_answer(tenant, execution_id, "Second.")
    assert_error(await tenant.member.post(f"{base}/resume"), 409)
    transitions = (await tenant.viewer.get(f"{base}/transitions")).json()["transitions"]
    assert all(t["created_at"] for t in transitions)
    path = [t["to_state"] for t in transitions]
    assert path[:4] == ["pending", "running", "waiting_for_input", "paused"]
    assert path[-1] == "waiting_for_input"
    statuses = [
        e["data"]["status"]
        for e in await events_of(db, execution_id)
        if e["event_type"] == "status"
    ]
    assert "paused" in statuses
    await record_history(tenant, temporal_address, execution_id, "pause_resume")


async def test_cancel_mid_stream(
    tenant: Tenant,
    running_queue: dict[str, Any],
    fake_llm: FakeAnthropicServer,
    db: Any,
    temporal_address: str,
) -> None:
    token = uuid.uuid4().hex
    await AsyncFakeAnthropicClient(fake_llm.base_url).script(
        token, [text_reply(LONG_TEXT, delay_per_chunk_ms=100)]
    )
    execution_id = await execute(tenant, await make_agent(tenant, token), running_queue["id"])
    await wait_for_event(db, execution_id, "message_chunk")
    cancelled = await tenant.member.post(f"/api/v1/executions/{execution_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    final = await wait_status(tenant, execution_id, "cancelled")
    assert final["completed_at"] is not None
    # The model call itself stops: no chunk arrives once cancellation has reached it.
    await asyncio.sleep(4)
    settled = len(await events_of(db, execution_id))
    await asyncio.sleep(2)
    assert len(await events_of(db, execution_id)) == settled
    events = await read_stream(tenant.viewer, execution_id)
    error_events = [data for _, kind, data in events if kind == "error"]
    assert error_events and error_events[-1]["error_type"] == "cancelled"
    assert not any(kind == "done" for _, kind, _ in events)
    assert_error(await tenant.member.post(f"/api/v1/executions/{execution_id}/cancel"), 409)
    await record_history(tenant, temporal_address, execution_id, "cancel_mid_stream")


async def test_worker_killed_mid_call_is_finished_by_another(
    tenant: Tenant,
    running_queue: dict[str, Any],
    fake_llm: FakeAnthropicServer,
    live_api: str,
    db: Any,
    temporal_address: str,
) -> None:
    token = uuid.uuid4().hex
    reply = text_reply(LONG_TEXT, delay_per_chunk_ms=60)
    await AsyncFakeAnthropicClient(fake_llm.base_url).script(token, [reply, reply])
    execution_id = await execute(
        tenant, await make_agent(tenant, token, one_shot=True), running_queue["id"]
    )
    await wait_for_event(db, execution_id, "message_chunk")
    running_queue["process"].send_signal(signal.SIGKILL)
    await asyncio.to_thread(running_queue["process"].wait, 10)
    survivor = start_worker_process(
        running_queue["id"], running_queue["worker_key"], live_api, fake_llm
    )
    try:
        # The model call is retried once its heartbeat times out (20 s).
        final = await wait_status(tenant, execution_id, "completed", "failed", timeout=90)
    finally:
        survivor.send_signal(signal.SIGTERM)
        await asyncio.to_thread(survivor.wait, 30)
    assert final["status"] == "completed", final
    assert final["response"] == LONG_TEXT
    events = await events_of(db, execution_id)
    messages = [e for e in events if e["event_type"] == "message"]
    assert [m["data"]["role"] for m in messages] == ["user", "assistant"]
    assert [e["event_type"] for e in events].count("done") == 1
    chunks = [e["data"] for e in events if e["event_type"] == "message_chunk"]
    last_attempt = max(c["attempt"] for c in chunks)
    assert last_attempt >= 2
    assert "".join(c["content"] for c in chunks if c["attempt"] == last_attempt) == LONG_TEXT
    # The call started again: one message_reset before the new attempt's chunks, and a client
    # that drops what it has of the message on it ends up with the answer.
    resets = [e for e in events if e["event_type"] == "message_reset"]
    assert [r["data"]["attempt"] for r in resets] == [last_attempt]
    assert joined_under_reset(events) == LONG_TEXT
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(seqs) + 1))
    session = (await tenant.viewer.get(f"/api/v1/executions/{execution_id}/session")).json()
    assert [m["role"] for m in session["messages"]] == ["user", "assistant"]
    await record_history(tenant, temporal_address, execution_id, "worker_killed_mid_call")


async def test_execution_routes_refuse_other_tenants_viewers_and_bad_input(
    app: Starlette,
    tenant: Tenant,
    other_tenant: Tenant,
    running_queue: dict[str, Any],
    fake_llm: FakeAnthropicServer,
    db: Any,
) -> None:
    token = uuid.uuid4().hex
    execution_id = await execute(
        tenant, await make_agent(tenant, token, one_shot=True), running_queue["id"]
    )
    await wait_status(tenant, execution_id, "completed")
    base = f"/api/v1/executions/{execution_id}"
    before = await events_of(db, execution_id)

    reads = ["", "/session", "/stream"]
    writes: list[tuple[str, str, dict[str, Any] | None]] = [
        ("POST", "/message", {"message": "x"}),
        ("POST", "/pause", None),
        ("POST", "/resume", None),
        ("POST", "/cancel", None),
        ("POST", "/mark-done", None),
        ("DELETE", "", None),
    ]
    # The worker protocol: worker tokens only. No API key may forge a transcript or a status.
    reports: list[tuple[str, str, dict[str, Any] | None]] = [
        ("PATCH", "", {"status": "running"}),
        ("POST", "/events", {"event_type": "message", "data": {}}),
        ("POST", "/session", {"session_id": "s", "messages": []}),
        ("GET", "/environment", None),
    ]
    for suffix in reads:
        assert_error(await other_tenant.admin.get(base + suffix), 404, "RESOURCE_NOT_FOUND")
    for method, suffix, body in writes:
        response = await other_tenant.admin.request(method, base + suffix, json=body)
        assert_error(response, 404, "RESOURCE_NOT_FOUND")
        response = await tenant.viewer.request(method, base + suffix, json=body)
        assert_error(response, 403, "AUTHORIZATION_ERROR")
    other_worker = await as_worker(other_tenant, (await make_queue(other_tenant, "o"))["id"])
    for method, suffix, body in reports:
        for client in (tenant.admin, tenant.member, tenant.viewer):
            response = await client.request(method, base + suffix, json=body)
            assert_error(response, 403, "AUTHORIZATION_ERROR")
        response = await other_worker.request(method, base + suffix, json=body)
        assert_error(response, 404, "RESOURCE_NOT_FOUND")
    assert_error(await tenant.viewer.get("/api/v1/executions/not-a-uuid"), 404)

    own_worker = await as_worker(tenant, running_queue["id"])
    assert_error(await tenant.member.post(f"{base}/message", json={}), 422, "VALIDATION_ERROR")
    assert_error(await own_worker.post(f"{base}/events", json={"event_type": "Bad Type"}), 422)
    assert_error(await own_worker.patch(base, json={"status": "bogus"}), 422)
    assert_error(await tenant.viewer.get(f"{base}/stream?last_event_id=-1"), 422)
    assert_error(await tenant.viewer.get(f"{base}/stream", headers={"Last-Event-ID": "abc"}), 400)
    assert_error(await tenant.viewer.get("/api/v1/executions?status_filter=bogus"), 422)
    assert await events_of(db, execution_id) == before

    # A worker token reaches only the executions of its own queue.
    other_queue = await make_queue(tenant, "other")
    stranger = await as_worker(tenant, other_queue["id"])
    assert_error(await stranger.patch(base, json={"status": "failed"}), 404)
    assert_error(await stranger.get(base), 403)

    listed = (await tenant.viewer.get("/api/v1/executions?status_filter=completed")).json()
    assert [item["id"] for item in listed["items"]] == [execution_id]
    assert (await other_tenant.viewer.get("/api/v1/executions")).json()["total"] == 0

    deleted = await tenant.member.delete(base)
    assert deleted.json() == {"id": execution_id, "deleted": True}
    assert_error(await tenant.viewer.get(base), 404)
    assert await events_of(db, execution_id) == []


async def test_execute_with_stream_answers_with_the_sse_stream(
    tenant: Tenant, running_queue: dict[str, Any], fake_llm: FakeAnthropicServer
) -> None:
    token = uuid.uuid4().hex
    await AsyncFakeAnthropicClient(fake_llm.base_url).script(token, [text_reply("Streamed reply.")])
    agent_id = await make_agent(tenant, token, one_shot=True)
    kinds: list[str] = []
    async with tenant.member.stream(
        "POST",
        f"/api/v1/agents/{agent_id}/execute",
        json={"prompt": "Hi", "worker_queue_id": running_queue["id"], "stream": True},
        headers={"Accept": "text/event-stream", "Idempotency-Key": token},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                kinds.append(line[7:])
        location = response.headers["content-location"]
    assert kinds[0] == "connected" and kinds[-1] == "done"
    assert "message_chunk" in kinds and "history_complete" in kinds
    # A retry with the same key starts nothing and says where the stream is.
    again = await tenant.member.post(
        f"/api/v1/agents/{agent_id}/execute",
        json={"prompt": "Hi", "worker_queue_id": running_queue["id"], "stream": True},
        headers={"Accept": "text/event-stream", "Idempotency-Key": token},
    )
    assert again.status_code == 200
    assert again.json()["location"] == location
    listed = (await tenant.viewer.get(f"/api/v1/executions?entity_id={agent_id}")).json()
    assert listed["total"] == 1


async def test_live_stream_resumes_after_a_disconnect_without_gap_or_duplicate(
    tenant: Tenant, running_queue: dict[str, Any], fake_llm: FakeAnthropicServer, db: Any
) -> None:
    token = uuid.uuid4().hex
    await AsyncFakeAnthropicClient(fake_llm.base_url).script(
        token, [text_reply(LONG_TEXT, delay_per_chunk_ms=40)]
    )
    execution_id = await execute(
        tenant, await make_agent(tenant, token, one_shot=True), running_queue["id"]
    )
    seen: list[int] = []
    async with tenant.viewer.stream(
        "GET", f"/api/v1/executions/{execution_id}/stream", timeout=30
    ) as response:
        async for line in response.aiter_lines():
            if line.startswith("id: "):
                seen.append(int(line[4:]))
            if len(seen) >= 5:
                break  # the client drops mid-stream
    rest = await read_stream(tenant.viewer, execution_id, **{"Last-Event-ID": str(seen[-1])})
    seen += [event_id for event_id, _, _ in rest if event_id is not None]
    all_seqs = [e["seq"] for e in await events_of(db, execution_id)]
    assert seen == all_seqs
    assert rest[-1][1] == "done"


async def test_without_an_api_key_the_execution_fails_at_once(
    tenant: Tenant, live_api: str, fake_llm: FakeAnthropicServer
) -> None:
    queue = await make_queue(tenant, "e")
    worker = start_worker_process(
        queue["id"],
        await worker_key_for(tenant, queue["id"]),
        live_api,
        fake_llm,
        anthropic_api_key=None,
    )
    try:
        execution_id = await execute(tenant, await make_agent(tenant, "nokey"), queue["id"])
        final = await wait_status(tenant, execution_id, "failed", "completed")
    finally:
        worker.send_signal(signal.SIGTERM)
        await asyncio.to_thread(worker.wait, 30)
    assert final["status"] == "failed"
    assert "ANTHROPIC_API_KEY is not set" in final["error_message"]


async def test_long_conversation_continues_as_new_and_keeps_its_history(
    tenant: Tenant, running_queue: dict[str, Any], temporal_address: str
) -> None:
    turns = MAX_TURNS_PER_RUN + 2
    execution_id = await execute(
        tenant, await make_agent(tenant, "long"), running_queue["id"], "m0"
    )
    await wait_answer(tenant, execution_id, "Fake reply to: m0")
    for n in range(1, turns):
        sent = await tenant.member.post(
            f"/api/v1/executions/{execution_id}/message", json={"message": f"m{n}"}
        )
        assert sent.status_code == 202
        body = await wait_answer(tenant, execution_id, f"Fake reply to: m{n}")
    assert body["usage"]["turns"] == turns
    client = await temporal_for(temporal_address, tenant)
    runs = [
        run async for run in client.list_workflows(f"WorkflowId = 'agent-execution-{execution_id}'")
    ]
    assert len(runs) >= 2  # continued as new, history bounded
    handle = client.get_workflow_handle(f"agent-execution-{execution_id}")
    state = await handle.query("get_state")
    assert len(state["messages"]) == 2 * turns  # nothing lost across runs
    assert (
        await tenant.member.post(f"/api/v1/executions/{execution_id}/mark-done")
    ).status_code == 202
    await wait_status(tenant, execution_id, "completed")
    await record_history(tenant, temporal_address, execution_id, "continue_as_new")


async def test_sigterm_lets_the_running_model_call_finish(
    tenant: Tenant,
    running_queue: dict[str, Any],
    fake_llm: FakeAnthropicServer,
    live_api: str,
    db: Any,
) -> None:
    token = uuid.uuid4().hex
    await AsyncFakeAnthropicClient(fake_llm.base_url).script(
        token, [text_reply(LONG_TEXT, delay_per_chunk_ms=40)]
    )
    execution_id = await execute(
        tenant, await make_agent(tenant, token, one_shot=True), running_queue["id"]
    )
    await wait_for_event(db, execution_id, "message_chunk")
    running_queue["process"].send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(running_queue["process"].wait, 40) == 0
    # The call in flight was drained, not cut: its one attempt streamed the whole answer.
    chunks = [
        e["data"] for e in await events_of(db, execution_id) if e["event_type"] == "message_chunk"
    ]
    assert {c["attempt"] for c in chunks} == {1}
    assert "".join(c["content"] for c in chunks) == LONG_TEXT
    successor = start_worker_process(
        running_queue["id"], running_queue["worker_key"], live_api, fake_llm
    )
    try:
        final = await wait_status(tenant, execution_id, "completed", "failed", timeout=60)
    finally:
        successor.send_signal(signal.SIGTERM)
        await asyncio.to_thread(successor.wait, 30)
    assert final["status"] == "completed" and final["response"] == LONG_TEXT
    assert len(await AsyncFakeAnthropicClient(fake_llm.base_url).bodies(token)) == 1


async def test_quiet_stream_sends_keepalive_comments(
    app: Starlette, tenant: Tenant, db: Any
) -> None:
    queue = await make_queue(tenant, "k")
    # No worker serves this queue, so the execution stays pending and its stream stays quiet.
    execution_id = await execute(tenant, await make_agent(tenant, "quiet"), queue["id"])
    row = await db.fetchrow("SELECT * FROM executions WHERE id = $1", uuid.UUID(execution_id))
    stream = stream_events(db, app.state.cp.events, row, None, keepalive_seconds=0.2)
    received = [await anext(stream) for _ in range(4)]
    await stream.aclose()
    assert received[0].startswith("event: connected")
    assert received[1].startswith("event: history_complete")
    assert received[2:] == [": keepalive\n\n", ": keepalive\n\n"]


async def test_retried_reports_are_stored_once(
    tenant: Tenant, running_queue: dict[str, Any], db: Any
) -> None:
    """Workers report from activities, which Temporal may retry: a repeated event key lands
    once, and a status report older than the last one applied changes nothing."""
    execution_id = await execute(
        tenant, await make_agent(tenant, "reports", one_shot=True), running_queue["id"]
    )
    await wait_status(tenant, execution_id, "completed")
    base = f"/api/v1/executions/{execution_id}"
    worker = await as_worker(tenant, running_queue["id"])
    event = {"event_type": "tool_started", "data": {"tool_name": "t"}, "event_key": "tool:1"}
    first = await worker.post(f"{base}/events", json=event)
    again = await worker.post(f"{base}/events", json=event)
    assert first.status_code == again.status_code == 202
    assert first.json()["seq"] is not None and again.json()["seq"] is None
    keys = [e["event_key"] for e in await events_of(db, execution_id)]
    assert keys.count("tool:1") == 1

    ended = await worker.patch(base, json={"status": "running", "version": 10**6})
    assert ended.status_code == 200 and ended.json()["status"] == "completed"  # ended stays ended

    # On a queue no worker serves, we play the worker: an older report is ignored.
    idle = await make_queue(tenant, "r")
    pending = await execute(tenant, await make_agent(tenant, "reports2"), idle["id"])
    url = f"/api/v1/executions/{pending}"
    idle_worker = await as_worker(tenant, idle["id"])
    newer = await idle_worker.patch(url, json={"status": "running", "version": 5})
    older = await idle_worker.patch(url, json={"status": "waiting_for_input", "version": 3})
    assert newer.json()["status"] == older.json()["status"] == "running"


async def test_outbox_announces_each_lifecycle_change_once(
    tenant: Tenant,
    running_queue: dict[str, Any],
    fake_llm: FakeAnthropicServer,
    db: Any,
) -> None:
    """The outbox rows webhooks will deliver: written with the status change, once per change,
    in order, for this organization only."""
    token = uuid.uuid4().hex
    fake = AsyncFakeAnthropicClient(fake_llm.base_url)
    await fake.script(token, [text_reply("Done here.")])
    agent_id = await make_agent(tenant, token, one_shot=True)
    execution_id = await execute(tenant, agent_id, running_queue["id"])
    await wait_status(tenant, execution_id, "completed")

    rows = await db.fetch(
        "SELECT organization_id, event_type, payload FROM outbox_events "
        "WHERE payload->'data'->>'execution_id' = $1 ORDER BY id",
        execution_id,
    )
    assert [row["event_type"] for row in rows] == ["execution.started", "execution.completed"]
    assert {row["organization_id"] for row in rows} == {tenant.id}
    completed = rows[-1]["payload"]
    assert completed["type"] == "execution.completed"
    assert completed["data"]["response"] == "Done here."
    assert completed["data"]["previous_status"] == "running"
    assert completed["data"]["entity_id"] == agent_id
    assert uuid.UUID(completed["id"]) and completed["timestamp"]
