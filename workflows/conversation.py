"""What every execution workflow shares, agent or team: the conversation with its user (human in
the loop), the signals and the query of reference §5.1, and how it reports to the control plane.

A subclass answers one turn (`_run_turn`); this class runs the turns: after each, the execution
waits for input (`add_message`, `mark_as_done`) unless it is one-shot; `pause_execution` holds
the next turn until `resume_execution`. History stays bounded: after MAX_TURNS_PER_RUN turns,
or when Temporal suggests it, the workflow continues as new carrying its state.

Reports (status, stream events, the conversation) are queued and sent together: those due
before a model call ride on the model call itself (`_hand_over`), the rest go as one
`report_batch` at the end of a turn. So a one-shot execution is three workflow tasks and two
activities: the model call, then one batch (the answer, the conversation, `completed`).
Executions started before BATCHED_REPORTS_PATCH keep sending each report as its own activity
when they replay, in the order they did.

Workflow code only: no I/O, clocks or randomness outside `workflow.*`.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from datetime import timedelta
from typing import Any, Protocol

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

with workflow.unsafe.imports_passed_through():
    from workflows.contracts import (
        ADD_MESSAGE,
        BATCHED_REPORTS_PATCH,
        GET_STATE,
        MARK_AS_DONE,
        PAUSE_EXECUTION,
        PERSIST_CONVERSATION,
        PUBLISH_EVENT,
        REPORT_BATCH,
        RESUME_EXECUTION,
        UPDATE_EXECUTION_STATUS,
        ChatMessage,
        ConversationSnapshot,
        EventReport,
        ExecutionState,
        ReportBatch,
        ReportItem,
        StatusUpdate,
        Usage,
    )

MAX_TURNS_PER_RUN = 25
# A model answering with tools loops model -> tools -> model; this caps one turn's loop.
MAX_STEPS_PER_TURN = 20

REPORT_OPTIONS: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=30),
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30)
    ),
}
MODEL_CALL_OPTIONS: dict[str, Any] = {
    "start_to_close_timeout": timedelta(minutes=15),
    # The activity heartbeats every few seconds while the model streams; a dead worker is
    # noticed within this and the call is retried elsewhere.
    "heartbeat_timeout": timedelta(seconds=20),
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(seconds=1),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=30),
        maximum_attempts=6,
    ),
}


def root_message(error: BaseException) -> str:
    """The innermost message of an activity or child workflow failure."""
    cause: BaseException | None = error
    message = str(error)
    while cause is not None:
        if isinstance(cause, ApplicationError) or not isinstance(cause, ActivityError):
            message = str(cause) or message
        cause = cause.__cause__
    return message


class ConversationInput(Protocol):
    """What a conversation's input carries: who it is for, and its state across
    continue-as-new (empty on the first run)."""

    execution_id: str
    prompt: str
    one_shot: bool
    user_metadata: dict[str, Any]
    idle_timeout_seconds: int
    messages: list[ChatMessage]
    model_messages: list[dict[str, Any]]
    usage: Usage
    turn: int
    pending: list[ChatMessage]
    reports: int


class ConversationWorkflow:
    """The shared half of an execution workflow; see the module docstring."""

    def __init__(self) -> None:
        self._status = "pending"
        self._messages: list[ChatMessage] = []
        self._model_messages: list[dict[str, Any]] = []
        self._pending: list[ChatMessage] = []
        self._usage = Usage()
        self._turn = 0
        self._response = ""
        self._error: str | None = None
        self._done = False
        self._paused = False
        self._reports = 0
        self._execution_id = ""
        # Reports not sent yet, in order, and whether they go in batches (see the docstring).
        self._outbox: list[ReportItem] = []
        self._batched = False

    # --- signals and query -------------------------------------------------------------------

    @workflow.signal(name=ADD_MESSAGE)
    def add_message(self, message: ChatMessage) -> None:
        self._pending.append(message)

    @workflow.signal(name=MARK_AS_DONE)
    def mark_as_done(self) -> None:
        self._done = True

    @workflow.signal(name=PAUSE_EXECUTION)
    async def pause_execution(self) -> None:
        if self._paused or self._status in ("completed", "failed", "cancelled"):
            return
        self._paused = True
        await self._report(reason="paused by user")
        await self._on_pause_changed()

    @workflow.signal(name=RESUME_EXECUTION)
    async def resume_execution(self) -> None:
        if not self._paused:
            return
        self._paused = False
        await self._report(reason="resumed by user")
        await self._on_pause_changed()

    @workflow.query(name=GET_STATE)
    def get_state(self) -> ExecutionState:
        return ExecutionState(
            status=self._effective_status(),
            messages=self._messages,
            current_response=self._response,
            error_message=self._error,
            usage=self._usage,
            is_waiting_for_input=self._status == "waiting_for_input",
            should_complete=self._done,
            turn=self._turn,
        )

    # --- what a subclass provides -------------------------------------------------------------

    async def _run_turn(self) -> None:
        """Answer the conversation's latest message (ending with `_answer`)."""
        raise NotImplementedError

    async def _on_pause_changed(self) -> None:
        """Pause or resume reached this execution; a team passes it on to its members."""

    def _usage_report(self) -> dict[str, Any]:
        return asdict(self._usage)

    def _carry(self) -> ConversationInput:
        """The input to continue as new with: the original, carrying the state."""
        raise NotImplementedError

    # --- the run -----------------------------------------------------------------------------

    def _restore(self, inp: ConversationInput) -> None:
        self._batched = workflow.patched(BATCHED_REPORTS_PATCH)
        self._execution_id = inp.execution_id
        self._messages = list(inp.messages)
        self._model_messages = list(inp.model_messages)
        self._pending = list(inp.pending)
        self._usage = inp.usage
        self._turn = inp.turn
        self._reports = inp.reports

    def _carry_into(self, inp: ConversationInput) -> None:
        inp.messages = self._messages
        inp.model_messages = self._model_messages
        inp.usage = self._usage
        inp.turn = self._turn
        inp.pending = self._pending
        inp.reports = self._reports

    async def _converse(self, inp: ConversationInput) -> dict[str, Any]:
        """Run the turns until the conversation is over, then report how it ended; returns the
        workflow's result."""
        try:
            if inp.turn == 0 and not inp.messages:
                await self._start(inp)
            else:
                self._status = "running"
            turns_this_run = 0
            while True:
                await workflow.wait_condition(lambda: not self._paused or self._done)
                if self._done and not self._model_messages_need_answer():
                    break
                await self._run_turn()
                turns_this_run += 1
                if inp.one_shot or self._done:
                    break
                await self._set_status("waiting_for_input")
                await self._persist()
                await self._flush()
                try:
                    await workflow.wait_condition(
                        lambda: bool(self._pending) or self._done,
                        timeout=timedelta(seconds=inp.idle_timeout_seconds),
                    )
                except TimeoutError:
                    break  # nobody came back: the conversation is over
                if not self._pending:
                    break  # marked done while waiting
                await workflow.wait_condition(lambda: not self._paused or self._done)
                self._take_pending()
                await self._set_status("running")
                if turns_this_run >= MAX_TURNS_PER_RUN or (
                    workflow.info().is_continue_as_new_suggested()
                ):
                    await self._flush()  # the next run starts with nothing queued
                    workflow.continue_as_new(self._carry())
            await self._finish("completed")
        except asyncio.CancelledError:
            await self._finish("cancelled", error="Execution cancelled")
            raise
        except ActivityError as error:
            if isinstance(error.cause, CancelledError):
                # Cancelled while a model call ran: the call was cancelled with the workflow.
                await self._finish("cancelled", error="Execution cancelled")
                raise asyncio.CancelledError() from error
            await self._finish("failed", error=root_message(error))
        except TurnFailed as error:
            await self._finish("failed", error=str(error))
        return {
            "success": self._status == "completed",
            "status": self._status,
            "response": self._response,
            "usage": self._usage_report(),
            "error_message": self._error,
        }

    async def _start(self, inp: ConversationInput) -> None:
        user = inp.user_metadata
        first = ChatMessage(
            role="user",
            content=inp.prompt,
            timestamp=workflow.now().isoformat(),
            message_id=f"{inp.execution_id}_user_1",
            user_id=user.get("user_id"),
            user_name=user.get("user_name"),
            user_email=user.get("user_email"),
            user_avatar=user.get("user_avatar"),
        )
        self._messages.append(first)
        self._model_messages.append({"role": "user", "content": inp.prompt})
        await self._set_status("running", mark_started=True)
        await self._publish("message", asdict(first), key=f"message:{first.message_id}")

    def _model_messages_need_answer(self) -> bool:
        return bool(self._model_messages) and self._model_messages[-1]["role"] == "user"

    def _take_pending(self) -> None:
        for message in self._pending:
            self._messages.append(message)
            self._model_messages.append({"role": "user", "content": message.content})
        self._pending = []

    async def _answer(self, text: str) -> None:
        self._response = text
        message = ChatMessage(
            role="assistant",
            content=text,
            timestamp=workflow.now().isoformat(),
            message_id=f"{self._execution_id}_assistant_{self._turn}",
        )
        self._messages.append(message)
        await self._publish("message", asdict(message), key=f"message:{message.message_id}")

    async def _persist(self) -> None:
        await self._queue(
            ReportItem(
                session=ConversationSnapshot(
                    self._execution_id, self._messages, {"turn": self._turn}
                )
            )
        )

    async def _finish(self, status: str, error: str | None = None) -> None:
        self._status = status
        self._error = error
        self._paused = False
        await self._persist()
        await self._report(mark_completed=True)

    # --- reporting ---------------------------------------------------------------------------

    def _effective_status(self) -> str:
        if self._paused and self._status not in ("completed", "failed", "cancelled"):
            return "paused"
        return self._status

    async def _set_status(self, status: str, *, mark_started: bool = False) -> None:
        self._status = status
        await self._queue(self._status_update(mark_started=mark_started))

    async def _report(
        self, *, reason: str | None = None, mark_started: bool = False, mark_completed: bool = False
    ) -> None:
        """Report the status now, with whatever is queued before it."""
        update = self._status_update(
            reason=reason, mark_started=mark_started, mark_completed=mark_completed
        )
        await self._queue(update)
        await self._flush()

    def _status_update(
        self, *, reason: str | None = None, mark_started: bool = False, mark_completed: bool = False
    ) -> ReportItem:
        self._reports += 1
        return ReportItem(
            status=StatusUpdate(
                execution_id=self._execution_id,
                status=self._effective_status(),
                response=self._response or None,
                error_message=self._error,
                usage=self._usage_report(),
                reason=reason,
                mark_started=mark_started,
                mark_completed=mark_completed,
                # Reports may arrive out of order (a signal's report races the main loop's);
                # the version lets the control plane keep only the newest.
                version=self._reports,
            )
        )

    async def _publish(self, event_type: str, data: dict[str, Any], *, key: str) -> None:
        await self._queue(ReportItem(event=EventReport(self._execution_id, event_type, data, key)))

    async def _queue(self, item: ReportItem) -> None:
        """Queue a report; before BATCHED_REPORTS_PATCH each one was sent at once."""
        self._outbox.append(item)
        if not self._batched:
            await self._flush()

    async def _flush(self) -> None:
        """Send what is queued: one batch, or (before the patch) one activity per report."""
        items, self._outbox = self._outbox, []
        if not items:
            return
        if self._batched:
            await workflow.execute_activity(
                REPORT_BATCH, ReportBatch(self._execution_id, items), **REPORT_OPTIONS
            )
            return
        for item in items:
            await _send_alone(item)

    def _hand_over(self) -> list[ReportItem]:
        """The queued reports, for the activity about to run to send first (a model call);
        the caller makes that activity the next command."""
        items, self._outbox = self._outbox, []
        return items


async def _send_alone(item: ReportItem) -> None:
    """A report as its own activity: how executions before BATCHED_REPORTS_PATCH report."""
    if item.status is not None:
        await workflow.execute_activity(UPDATE_EXECUTION_STATUS, item.status, **REPORT_OPTIONS)
    elif item.event is not None:
        await workflow.execute_activity(PUBLISH_EVENT, item.event, **REPORT_OPTIONS)
    elif item.session is not None:
        await workflow.execute_activity(PERSIST_CONVERSATION, item.session, **REPORT_OPTIONS)


class TurnFailed(Exception):
    """A turn that cannot give an answer (e.g. every member of a team failed): the execution
    fails with this message."""
