"""Worker interceptors: bind the run's identity to every log line an activity writes."""

from __future__ import annotations

from typing import Any

import structlog
from temporalio import activity
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

__all__ = ["LoggingInterceptor"]

log = structlog.get_logger("ledgerflow.activity")


class _ActivityInbound(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        # Bound context, not f-strings: every structlog line inside the activity carries these.
        with structlog.contextvars.bound_contextvars(
            workflow_id=info.workflow_id,
            run_id=info.workflow_run_id,
            step=info.activity_type,
            activity_id=info.activity_id,
            attempt=info.attempt,
        ):
            try:
                return await self.next.execute_activity(input)
            except BaseException as exc:
                # One canonical line per failed attempt (the message only: never arguments).
                log.warning("activity attempt failed", error=type(exc).__name__, detail=str(exc))
                raise


class LoggingInterceptor(Interceptor):
    """Binds ``workflow_id``, ``run_id``, ``step`` (activity type) and ``attempt`` to logs."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _ActivityInbound(next)
