"""Reports from a worker to the control plane over the worker protocol. Every report carries a
key or version, so a retried activity stores its report once."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.tools import nul_free
from workflows.contracts import (
    CREATE_MEMBER_EXECUTION,
    PERSIST_CONVERSATION,
    PUBLISH_EVENT,
    REPORT_BATCH,
    UPDATE_EXECUTION_STATUS,
    ConversationSnapshot,
    EventReport,
    MemberExecutionRequest,
    ReportBatch,
    ReportItem,
    StatusUpdate,
)


def without_nul(value: Any) -> Any:
    """`value` with every NUL character in its strings (keys too) shown as `\\x00`."""
    if isinstance(value, str):
        return nul_free(value)
    if isinstance(value, dict):
        return {without_nul(k): without_nul(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [without_nul(item) for item in value]
    return value


class ControlPlane:
    """An HTTP client authenticated with this worker's token."""

    def __init__(self, base_url: str, worker_token: str) -> None:
        self.http = httpx.AsyncClient(
            base_url=base_url,
            headers={"Authorization": f"Bearer {worker_token}"},
            timeout=15,
        )

    async def get(self, path: str) -> dict[str, Any]:
        return await self.send("GET", path, None)

    async def send(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        # The API refuses NUL characters (Postgres text cannot hold them); a model or tool that
        # printed one must not turn a report into a refusal that fails the run.
        response = await self.http.request(method, path, json=without_nul(body))
        if response.status_code in (404, 401, 403, 400, 422):
            # The execution is gone or the report is malformed: retrying cannot help.
            raise ApplicationError(
                f"control plane refused {method} {path}: "
                f"{response.status_code} {response.text[:300]}",
                non_retryable=True,
            )
        response.raise_for_status()  # 5xx and 429 raise, and Temporal retries
        result: dict[str, Any] = response.json()
        return result

    async def publish(
        self, execution_id: str, event_type: str, data: dict[str, Any], key: str
    ) -> None:
        await self.send(
            "POST",
            f"/api/v1/executions/{execution_id}/events",
            {"event_type": event_type, "data": data, "event_key": key},
        )

    async def send_reports(self, execution_id: str, items: list[ReportItem]) -> None:
        """Several reports in one request, applied in order in one transaction."""
        if items:
            await self.send(
                "POST",
                f"/api/v1/executions/{execution_id}/reports",
                {"reports": [report_body(item) for item in items]},
            )

    async def aclose(self) -> None:
        await self.http.aclose()


def report_body(item: ReportItem) -> dict[str, Any]:
    """A report as the control plane's `/reports` takes it."""
    if item.status is not None:
        status = asdict(item.status)
        del status["execution_id"]
        return {"status": status}
    if item.event is not None:
        event = item.event
        body = {"event_type": event.event_type, "data": event.data, "event_key": event.event_key}
        return {"event": body}
    assert item.session is not None
    return {"session": session_body(item.session)}


def session_body(snapshot: ConversationSnapshot) -> dict[str, Any]:
    return {
        "session_id": snapshot.execution_id,
        "messages": [asdict(m) for m in snapshot.messages],
        "metadata": snapshot.metadata,
    }


class ReportingActivities:
    def __init__(self, control_plane: ControlPlane) -> None:
        self.control_plane = control_plane

    @activity.defn(name=UPDATE_EXECUTION_STATUS)
    async def update_execution_status(self, update: StatusUpdate) -> None:
        body = asdict(update)
        execution_id = body.pop("execution_id")
        await self.control_plane.send("PATCH", f"/api/v1/executions/{execution_id}", body)

    @activity.defn(name=PUBLISH_EVENT)
    async def publish_event(self, event: EventReport) -> None:
        await self.control_plane.publish(
            event.execution_id, event.event_type, event.data, event.event_key
        )

    @activity.defn(name=CREATE_MEMBER_EXECUTION)
    async def create_member_execution(self, request: MemberExecutionRequest) -> dict[str, Any]:
        """The control plane records the member's run (or answers the one this key recorded)
        and returns it with its workflow's input (a MemberExecution)."""
        body = asdict(request)
        execution_id = body.pop("team_execution_id")
        return await self.control_plane.send(
            "POST", f"/api/v1/executions/{execution_id}/members", body
        )

    @activity.defn(name=PERSIST_CONVERSATION)
    async def persist_conversation_history(self, snapshot: ConversationSnapshot) -> None:
        await self.control_plane.send(
            "POST", f"/api/v1/executions/{snapshot.execution_id}/session", session_body(snapshot)
        )

    @activity.defn(name=REPORT_BATCH)
    async def report_batch(self, batch: ReportBatch) -> None:
        await self.control_plane.send_reports(batch.execution_id, batch.items)
