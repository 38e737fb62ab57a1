"""What every LLM activity shares: the worker's provider and the mapping of its failures.

The provider (and with it the API key) lives in the worker process: it is built lazily, once,
from :func:`ledgerflow.settings.get_settings`. Neither the activity's input nor its output carries
a secret, so none reaches workflow history.

Errors become :class:`~temporalio.exceptions.ApplicationError` with a stable ``type``:

==================== ============= ==========================================================
type                 retryable     cause
==================== ============= ==========================================================
LLMRefusal           no            the model refused (or the offline rules found no offer)
LLMInvalidOutput     yes           malformed, truncated, off-schema or invalid decision
LLMRateLimited       yes           HTTP 429; ``next_retry_delay`` honours ``Retry-After``
LLMAuthError         no            HTTP 401 / 403
LLMUnavailable       yes           HTTP 408 / 409 / 5xx, connection error, timeout
LLMRequestRejected   no            any other HTTP 4xx (bad request, unknown model, ...)
LLMConfigError       no            the worker's LLM settings are unusable
==================== ============= ==========================================================

The SDK's retries are off (``max_retries=0``): each attempt is one HTTP request and one
activity attempt in history. Messages are written from public values only (status code, error
code, request id); the endpoint's free-text error message is left out.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import openai
import structlog
from temporalio.exceptions import ApplicationError

from ledgerflow.errors import ConfigError, LLMInvalidOutput, LLMRefusal
from ledgerflow.llm.provider import LLMProvider, make_provider
from ledgerflow.settings import get_settings

T = TypeVar("T")

__all__ = [
    "MAX_RETRY_AFTER",
    "get_provider",
    "run_with_provider",
    "set_provider",
]


def _logger() -> Any:
    # A fresh proxy per call: with ``cache_logger_on_first_use`` a module-level logger would pin
    # the configuration of its first use (and ``structlog.testing.capture_logs`` could not see it).
    return structlog.get_logger(__name__)


#: Upper bound on a server-requested delay, so one odd header cannot park a workflow for days.
MAX_RETRY_AFTER = timedelta(minutes=10)

_provider: LLMProvider | None = None


def set_provider(provider: LLMProvider | None) -> None:
    """Use ``provider`` for later calls in this process (tests); ``None`` goes back to settings."""
    global _provider
    _provider = provider


def get_provider() -> LLMProvider:
    """The process-wide provider, built from the settings on first use.

    Raises:
        ConfigError: the settings select a provider that cannot be built.
    """
    global _provider
    if _provider is None:
        _provider = make_provider(get_settings())
    return _provider


def _retry_after(headers: object) -> timedelta | None:
    """The delay a response asks for: ``retry-after-ms``, else ``retry-after`` (seconds or date)."""
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


def _status_message(exc: openai.APIStatusError) -> str:
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


def _to_application_error(exc: Exception, redact: Callable[[str], str]) -> ApplicationError | None:
    """The typed failure for ``exc``, or ``None`` for an unexpected exception (a bug)."""
    non_retryable = False
    delay: timedelta | None = None
    if isinstance(exc, LLMRefusal):
        kind, message, non_retryable = "LLMRefusal", str(exc), True
    elif isinstance(exc, LLMInvalidOutput):
        kind, message = "LLMInvalidOutput", str(exc)
    elif isinstance(exc, ConfigError):
        kind, message, non_retryable = "LLMConfigError", str(exc), True
    elif isinstance(exc, openai.RateLimitError):
        kind, message = "LLMRateLimited", _status_message(exc)
        delay = _retry_after(exc.response.headers)
    elif isinstance(exc, openai.APIStatusError):
        message = _status_message(exc)
        status = exc.status_code
        if status in (401, 403):
            kind, non_retryable = "LLMAuthError", True
        elif status in (408, 409) or status >= 500:
            kind = "LLMUnavailable"
            delay = _retry_after(exc.response.headers)
        else:
            kind, non_retryable = "LLMRequestRejected", True
    elif isinstance(exc, openai.APITimeoutError):
        kind, message = "LLMUnavailable", "LLM endpoint timed out"
    elif isinstance(exc, openai.APIConnectionError):
        kind, message = "LLMUnavailable", "could not connect to the LLM endpoint"
    elif isinstance(exc, openai.APIResponseValidationError):
        kind, message = "LLMInvalidOutput", "LLM endpoint returned a response the SDK cannot read"
    else:
        return None
    return ApplicationError(
        redact(message), type=kind, non_retryable=non_retryable, next_retry_delay=delay
    )


def _identity(text: str) -> str:
    return text


async def run_with_provider(decide: Callable[[LLMProvider], Awaitable[T]]) -> T:
    """Run ``decide`` with the worker's provider; map its failures to typed ApplicationErrors.

    Shared by every LLM activity, so each one retries, refuses and scrubs secrets the same way.
    (The run's identity is bound to log lines by the worker's logging interceptor.)
    """
    provider: LLMProvider | None = None
    try:
        provider = get_provider()
        return await decide(provider)
    except Exception as exc:
        # Belt and braces: the provider knows its secret; scrub every message with it.
        redact = getattr(provider, "redact", None) or _identity
        app_error = _to_application_error(exc, redact)
        if app_error is None:
            raise
        _logger().warning(
            "llm.activity_failed",
            error_type=app_error.type,
            non_retryable=app_error.non_retryable,
            next_retry_delay=app_error.next_retry_delay,
        )
        raise app_error from None
