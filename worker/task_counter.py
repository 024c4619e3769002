"""Counts the activities this worker runs, for its heartbeats: how many finished, and whether
one is running now (busy) or not (idle)."""

from __future__ import annotations

from typing import Any

from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)


class TaskCounter(Interceptor):
    def __init__(self) -> None:
        self.finished = 0
        self.running = 0

    @property
    def status(self) -> str:
        return "busy" if self.running else "idle"

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _Counting(next, self)


class _Counting(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, counter: TaskCounter) -> None:
        super().__init__(next)
        self._counter = counter

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        self._counter.running += 1
        try:
            return await super().execute_activity(input)
        finally:
            self._counter.running -= 1
            self._counter.finished += 1
