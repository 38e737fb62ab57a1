"""The activity side of the authoring API: ``@step_activity`` and the mapping of failures.

``@step_activity`` is ``@activity.defn`` plus what every checkpointed step needs:

* its **metadata** (step kind, name, timeouts, retry policy, heartbeat timeout, summary), read by
  :meth:`ledgerflow.flow.Run.step` so a workflow calls ``await run.step(open_escrow, req)`` and
  never repeats the activity's name, its result type or its policy;
* **typed failures**: every exception leaves the activity as an ``ApplicationError`` whose ``type``
  is an :class:`~ledgerflow.types.ErrorType`, retryable or not by the table in
  :func:`to_application_error`, with a short message and without the original traceback chained
  (infrastructure errors would otherwise reach Temporal with SQL, parameters or credentials in
  them, and the UI would show "Failure exceeds size limit.");
* **heartbeats**: while the activity runs, a background task heartbeats at a third of the
  heartbeat timeout, so a worker that dies inside a step is noticed in seconds, not when the
  start-to-close timeout runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, ParamSpec, TypeVar

from temporalio import activity
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

from ledgerflow.checkpoint.records import StepKind
from ledgerflow.errors import (
    ConfigError,
    ContractRevert,
    LedgerflowError,
    LLMInvalidOutput,
    LLMRefusal,
    infrastructure_error,
)
from ledgerflow.log import scrub
from ledgerflow.types import ErrorType

__all__ = [
    "MAX_RETRY_AFTER",
    "StepMeta",
    "StepPolicy",
    "step_activity",
    "step_meta",
    "to_application_error",
]

P = ParamSpec("P")
R = TypeVar("R")

#: Upper bound on a server-requested retry delay, so one odd header cannot park a run for days.
MAX_RETRY_AFTER = timedelta(minutes=10)
#: Messages that reach Temporal are cut to this many characters.
_MESSAGE_CHARS = 500


@dataclass(frozen=True)
class StepPolicy:
    """How a step's activity is scheduled: its timeouts and retries, in one named bundle.

    Attributes:
        start_to_close: the longest one attempt may take.
        retry: Temporal's retry policy (non-retryable types are :class:`ErrorType` members).
        heartbeat: the heartbeat timeout; ``None`` for steps too short to need one.
        local: run as a local activity (in the workflow worker, recorded as a marker).
    """

    start_to_close: timedelta
    retry: RetryPolicy
    heartbeat: timedelta | None = None
    local: bool = False


@dataclass(frozen=True)
class StepMeta:
    """What ``@step_activity`` records on an activity for :meth:`ledgerflow.flow.Run.step`."""

    name: str
    kind: StepKind
    policy: StepPolicy
    summary: str | None
    fn: Callable[..., Any] | None = field(default=None, repr=False)
    returns: Any = None

    @functools.cached_property
    def result_type(self) -> Any:
        """The activity's declared return type (what the workflow decodes its result into)."""
        if self.returns is not None:
            return self.returns
        if self.fn is None:
            raise TypeError(f"step {self.name} declares no result type")
        hints = typing.get_type_hints(self.fn)
        ret = hints.get("return")
        if ret is None:
            raise TypeError(f"activity {self.name} must annotate its return type")
        return ret  # type: ignore[no-any-return]


_META_ATTR = "__ledgerflow_step__"


def step_meta(fn: Any) -> StepMeta:
    """The :class:`StepMeta` of an activity decorated with :func:`step_activity`.

    Raises:
        TypeError: ``fn`` is not a step activity.
    """
    if isinstance(fn, StepMeta):
        return fn
    meta = getattr(fn, _META_ATTR, None)
    if not isinstance(meta, StepMeta):
        name = getattr(fn, "__qualname__", repr(fn))
        raise TypeError(f"{name} is not decorated with @step_activity")
    return meta


def step_activity(
    name: str,
    *,
    kind: StepKind,
    policy: StepPolicy,
    summary: str | None = None,
) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Declare an async activity as a checkpointed step.

    Args:
        name: the activity's (and the step's) name, e.g. ``escrow.open``; stable across versions.
        kind: the step kind recorded in the ledger (``chain``, ``llm``, ``activity``, ...).
        policy: its timeouts and retries.
        summary: a short text the Temporal UI shows for the scheduled activity.

    The function (or method) takes exactly one pydantic model and returns one.
    """

    def decorate(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            beat = _start_heartbeats()
            try:
                return await fn(*args, **kwargs)
            except (ApplicationError, asyncio.CancelledError):
                raise
            except Exception as exc:
                raise to_application_error(exc) from None
            finally:
                if beat is not None:
                    beat.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await beat

        defined = activity.defn(name=name)(wrapper)
        setattr(defined, _META_ATTR, StepMeta(name, kind, policy, summary, fn))
        if "." not in fn.__qualname__:  # a module-level function: served by every worker
            from ledgerflow.flow.registry import register_activity_function

            register_activity_function(defined)
        return defined

    return decorate


def _start_heartbeats() -> asyncio.Task[None] | None:
    """A task heartbeating at a third of the activity's heartbeat timeout (None if it has none)."""
    try:
        info = activity.info()
    except RuntimeError:  # called outside an activity (unit tests call the function directly)
        return None
    timeout = info.heartbeat_timeout
    if info.is_local or not timeout:
        return None
    period = max(timeout.total_seconds() / 3, 0.1)

    async def beat() -> None:
        while True:
            activity.heartbeat()
            await asyncio.sleep(period)

    return asyncio.create_task(beat(), name=f"heartbeat:{info.activity_type}")


# ---- the failure table ------------------------------------------------------------------------


def _message(text: str) -> str:
    text = scrub(text)
    return text if len(text) <= _MESSAGE_CHARS else text[: _MESSAGE_CHARS - 1] + "…"


def to_application_error(exc: Exception) -> ApplicationError:
    """The typed, bounded failure that leaves an activity for ``exc``.

    ========================= ==================== =========
    exception                 type                 retryable
    ========================= ==================== =========
    ContractRevert            ContractRevert       no
    ConfigError               ConfigError          no
    other ledgerflow errors   their class name     as their ``retryable`` says (ChainError,
                                                   StoreError, TxVoided, FeeTooHigh, ...)
    SQLAlchemy, drivers       StoreUnavailable     yes, unless the failure is permanent
    LLMRefusal                LLMRefusal           no
    LLMInvalidOutput          LLMInvalidOutput     yes
    openai: 429               LLMRateLimited       yes (after Retry-After)
    openai: 401/403           LLMAuthError         no
    openai: 408/409/5xx, I/O  LLMUnavailable       yes
    openai: other 4xx         LLMRequestRejected   no
    aiohttp, httpx, web3      RPCUnavailable or ChainError  yes (web3 validation: no)
    anything else             UnexpectedError      yes
    ========================= ==================== =========

    Messages are written from public values only (secrets and URL credentials scrubbed, SQL and
    its parameters never included) and cut to a bounded length.
    """
    if isinstance(exc, ContractRevert):
        return ApplicationError(
            _message(str(exc)),
            {"error": exc.error, "args": {k: str(v) for k, v in exc.error_args.items()}},
            type=ErrorType.CONTRACT_REVERT,
            non_retryable=True,
        )
    if isinstance(exc, ConfigError):
        return ApplicationError(_message(str(exc)), type=ErrorType.CONFIG_ERROR, non_retryable=True)
    if isinstance(exc, LLMRefusal):
        return ApplicationError(_message(str(exc)), type=ErrorType.LLM_REFUSAL, non_retryable=True)
    if isinstance(exc, LLMInvalidOutput):
        return ApplicationError(_message(str(exc)), type=ErrorType.LLM_INVALID_OUTPUT)
    if isinstance(exc, LedgerflowError):
        return _typed(exc)
    mapped = _openai_error(exc)
    if mapped is not None:
        return mapped
    stand_in = infrastructure_error(exc)
    if stand_in is not None:
        return _typed(stand_in)
    return ApplicationError(
        _message(f"{type(exc).__name__}: {exc}"), type=ErrorType.UNEXPECTED_ERROR
    )


def _typed(exc: LedgerflowError) -> ApplicationError:
    """A ledgerflow error by its own type name (an ErrorType), retryable as it says."""
    kind = type(exc).__name__
    if kind not in ErrorType._value2member_map_:
        # Subclasses without a wire name of their own travel as their documented parent.
        kind = next(
            (k.__name__ for k in type(exc).__mro__ if k.__name__ in ErrorType._value2member_map_),
            ErrorType.UNEXPECTED_ERROR,
        )
    return ApplicationError(_message(str(exc)), type=kind, non_retryable=not exc.retryable)


def _openai_error(exc: Exception) -> ApplicationError | None:
    import openai

    non_retryable = False
    delay: timedelta | None = None
    if isinstance(exc, openai.RateLimitError):
        kind, message = ErrorType.LLM_RATE_LIMITED, _status_message(exc)
        delay = _retry_after(exc.response.headers)
    elif isinstance(exc, openai.APIStatusError):
        message = _status_message(exc)
        status = exc.status_code
        if status in (401, 403):
            kind, non_retryable = ErrorType.LLM_AUTH_ERROR, True
        elif status in (408, 409) or status >= 500:
            kind = ErrorType.LLM_UNAVAILABLE
            delay = _retry_after(exc.response.headers)
        else:
            kind, non_retryable = ErrorType.LLM_REQUEST_REJECTED, True
    elif isinstance(exc, openai.APITimeoutError):
        kind, message = ErrorType.LLM_UNAVAILABLE, "LLM endpoint timed out"
    elif isinstance(exc, openai.APIConnectionError):
        kind, message = ErrorType.LLM_UNAVAILABLE, "could not connect to the LLM endpoint"
    elif isinstance(exc, openai.APIResponseValidationError):
        kind = ErrorType.LLM_INVALID_OUTPUT
        message = "LLM endpoint returned a response the SDK cannot read"
    else:
        return None
    return ApplicationError(
        _message(message), type=kind, non_retryable=non_retryable, next_retry_delay=delay
    )


def _status_message(exc: Any) -> str:
    parts = [f"LLM endpoint answered HTTP {exc.status_code}"]
    body = exc.body
    if isinstance(body, dict):
        for key in ("type", "code"):
            value = body.get(key)
            # Short machine codes only (e.g. "rate_limit_exceeded"); free text stays out.
            if isinstance(value, str) and value.replace("_", "").isalnum() and len(value) <= 64:
                parts.append(f"{key}={value}")
    if exc.request_id:
        parts.append(f"request_id={exc.request_id}")
    return " ".join(parts)


def _retry_after(headers: object) -> timedelta | None:
    """The delay a response asks for: ``retry-after-ms``, else ``retry-after`` (seconds or date)."""
    import math

    get = getattr(headers, "get", None)
    if get is None:
        return None
    seconds: float | None = None
    raw_ms = get("retry-after-ms")
    if raw_ms is not None:
        try:
            seconds = float(raw_ms) / 1000
        except ValueError:
            seconds = None
    if seconds is None and (raw := get("retry-after")) is not None:
        try:
            seconds = float(raw)
        except ValueError:
            try:
                when = parsedate_to_datetime(raw)
            except (TypeError, ValueError):
                when = None
            if when is not None:
                if when.tzinfo is None:
                    when = when.replace(tzinfo=UTC)
                seconds = (when - datetime.now(UTC)).total_seconds()
    if seconds is None or not math.isfinite(seconds):
        return None
    return min(timedelta(seconds=max(seconds, 0.0)), MAX_RETRY_AFTER)
