"""`execute_with_runtime`: one model call of an agent turn, streamed. The `claude_code` runtime
runs the whole turn through the Claude Code CLI instead (activities/claude_code.py).

The model's text deltas go out as `message_chunk` events while the call runs. Retryable model
errors (429, 5xx, overload, timeouts, connection errors) raise and Temporal retries the call
with backoff; other errors (400, 401, 403, 404: bad request, bad key, unknown model) fail the
execution at once with a clear message. The SDK's own retries are off so Temporal owns them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import replace
from typing import Any

import anthropic
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.execution_environment import Redactor, fetch_execution_environment
from activities.report_buffer import ReportBuffer
from activities.reporting import ControlPlane
from workflows.contracts import (
    EXECUTE_WITH_RUNTIME,
    EventReport,
    ReportItem,
    RuntimeTurnInput,
    RuntimeTurnResult,
    Usage,
)
from workflows.templates import TemplateError, render, variables

HEARTBEAT_SECONDS = 1
# Chunks are batched to at most one event per this many characters or per flush interval.
FLUSH_SECONDS = 0.05


def _fatal(message: str) -> ApplicationError:
    return ApplicationError(message, non_retryable=True)


def cost_of(usage: Usage, input_per_million: float, output_per_million: float) -> float:
    return round(
        usage.input_tokens * input_per_million / 1e6
        + usage.output_tokens * output_per_million / 1e6,
        8,
    )


class RuntimeActivities:
    def __init__(self, control_plane: ControlPlane, api_key: str | None = None) -> None:
        self.control_plane = control_plane
        # The worker hands its model key over in memory (worker/credentials.py); a process
        # that constructs this without one (tests, benches) may use its environment's.
        self.api_key = api_key or os.environ.get("ANTHROPIC_API_KEY") or None
        self._anthropic: anthropic.AsyncAnthropic | None = None

    @property
    def anthropic(self) -> anthropic.AsyncAnthropic:
        """One client per worker: building one costs ~40 ms of CPU (TLS context), which
        halved throughput when done per call (bench/execution_latency.py)."""
        if self._anthropic is None:
            self._anthropic = anthropic.AsyncAnthropic(
                api_key=self.api_key, max_retries=0, timeout=120
            )
        return self._anthropic

    @activity.defn(name=EXECUTE_WITH_RUNTIME)
    async def execute_with_runtime(self, turn: RuntimeTurnInput) -> RuntimeTurnResult:
        if not self.api_key:
            raise _fatal(
                "ANTHROPIC_API_KEY is not set on the worker: the model cannot be called "
                "(set it, or run `controlplane dev --fake-llm`)"
            )
        if turn.runtime_type not in ("default", "claude_code"):
            raise _fatal(f"Unknown runtime '{turn.runtime_type}'")
        beating = asyncio.create_task(self._heartbeat_forever())
        control_plane: TurnControlPlane | None = None
        try:
            turn, redactor = await self._render_templates(turn)
            control_plane = TurnControlPlane(self.control_plane, redactor, turn.execution_id)
            # The reports due before this call (`running`, the user's message) go first, while
            # the model starts.
            control_plane.send_first(turn.reports)
            attempt = activity.info().attempt
            if attempt > 1:
                # The call starts again: what an earlier attempt streamed of this message is to
                # be dropped (README, "Streams").
                await control_plane.publish(
                    turn.execution_id,
                    "message_reset",
                    {
                        "message_id": message_id_of(turn),
                        "attempt": attempt,
                        "turn": turn.turn,
                        "step": turn.step,
                    },
                    key=f"reset:{turn.turn}:{turn.step}:{attempt}",
                )
            if turn.runtime_type == "claude_code":
                # Imported on first use: the SDK takes about a second to import, and most
                # workers only ever run the default runtime.
                from activities.claude_code import run_claude_code_turn

                result = await run_claude_code_turn(control_plane, turn, self.api_key)
            else:
                result = await self._call_model(control_plane, turn)
            # What returns lands in Temporal history: no secret value may be in it.
            result.text = redactor.text(result.text)
            result.content = redactor.value(result.content)
            await control_plane.sent()
            return result
        except anthropic.APIStatusError as error:
            if error.status_code in (408, 409, 429) or error.status_code >= 500:
                raise  # retryable: Temporal retries with backoff
            raise _fatal(f"Model call failed ({error.status_code}): {_message_of(error)}") from None
        finally:
            if control_plane is not None:
                # On a failing call too: the execution's start is recorded before its failure.
                with contextlib.suppress(Exception):
                    await control_plane.sent()
                await control_plane.close()
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating

    @staticmethod
    async def _heartbeat_forever() -> None:
        while True:
            activity.heartbeat()
            await asyncio.sleep(HEARTBEAT_SECONDS)

    async def _render_templates(self, turn: RuntimeTurnInput) -> tuple[RuntimeTurnInput, Redactor]:
        """`{{.secret.X}}` / `{{.env.X}}` in the system prompt are rendered here, at run time,
        so the values never enter Temporal history; the values are redacted from what the
        model's answer streams and returns."""
        prompt = turn.system_prompt
        if not prompt or not variables(prompt):
            return turn, Redactor(())
        environment = await fetch_execution_environment(self.control_plane, turn.execution_id)
        try:
            rendered = render(prompt, environment.process_env(), environment.secrets)
        except TemplateError as error:
            raise _fatal(f"The system prompt names unknown values: {error}") from None
        return replace(turn, system_prompt=rendered), Redactor(environment.secret_values())

    async def _call_model(
        self, control_plane: ControlPlane, turn: RuntimeTurnInput
    ) -> RuntimeTurnResult:
        attempt = activity.info().attempt
        message_id = message_id_of(turn)
        chunk_index = 0
        buffered: list[str] = []
        loop = asyncio.get_running_loop()
        last_flush = loop.time()

        async def flush(final: bool) -> None:
            nonlocal chunk_index, last_flush
            if not buffered and not final:
                return
            text = "".join(buffered)
            buffered.clear()
            last_flush = loop.time()
            chunk_index += 1
            await control_plane.publish(
                turn.execution_id,
                "message_chunk",
                {
                    "content": text,
                    "message_id": message_id,
                    "is_final": final,
                    "turn": turn.turn,
                    "step": turn.step,
                    "attempt": attempt,
                },
                # A retried attempt streams afresh under its own keys; clients reset on a new
                # attempt number. A retried report of the same chunk lands once.
                key=f"chunk:{turn.turn}:{turn.step}:{attempt}:{chunk_index}",
            )

        request: dict[str, Any] = {
            "model": turn.model.api_model,
            "max_tokens": turn.max_tokens,
            "messages": turn.model_messages,
        }
        if turn.system_prompt:
            request["system"] = turn.system_prompt
        if turn.tools:
            request["tools"] = turn.tools
        async with self.anthropic.messages.stream(**request) as stream:
            async for event in stream:
                if event.type == "text":
                    buffered.append(event.text)
                    if loop.time() - last_flush >= FLUSH_SECONDS:
                        await flush(final=False)
            final = await stream.get_final_message()
        await flush(final=True)
        usage = Usage(
            input_tokens=final.usage.input_tokens,
            output_tokens=final.usage.output_tokens,
            turns=1 if turn.step == 0 else 0,
        )
        usage.cost_usd = cost_of(usage, turn.model.input_per_million, turn.model.output_per_million)
        content = [block.model_dump(mode="json", exclude_none=True) for block in final.content]
        text = "".join(block.text for block in final.content if block.type == "text")
        return RuntimeTurnResult(
            content=content, stop_reason=final.stop_reason or "end_turn", usage=usage, text=text
        )


def message_id_of(turn: RuntimeTurnInput) -> str:
    return f"{turn.execution_id}_assistant_{turn.turn}"


class TurnControlPlane(ControlPlane):
    """The worker's control-plane client for one model call: what the call publishes is redacted
    of secret values and goes through a ReportBuffer, in order after the reports sent first, so
    the model streams on through an outage of the control plane."""

    def __init__(self, inner: ControlPlane, redactor: Redactor, execution_id: str) -> None:
        self.http = inner.http
        self._redactor = redactor
        self._buffer = ReportBuffer(inner, execution_id)

    def send_first(self, items: list[ReportItem]) -> None:
        for item in items:
            self._buffer.add(item)

    async def sent(self) -> None:
        """Once everything published has landed (raises a refusal, or an outage too long)."""
        await self._buffer.drain()

    async def close(self) -> None:
        await self._buffer.close()

    async def publish(
        self, execution_id: str, event_type: str, data: dict[str, Any], key: str
    ) -> None:
        event = EventReport(execution_id, event_type, self._redactor.value(data), key)
        self._buffer.add(ReportItem(event=event))


def _message_of(error: anthropic.APIStatusError) -> str:
    body = error.body
    if isinstance(body, dict):
        inner = body.get("error")
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return str(error.message)
