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

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import openai
import structlog
from temporalio.exceptions import ApplicationError

from ledgerflow.errors import ConfigError, LLMInvalidOutput, LLMRefusal
from ledgerflow.flow.activity import MAX_RETRY_AFTER, to_application_error
from ledgerflow.llm.provider import LLMProvider, make_provider
from ledgerflow.observability import metrics
from ledgerflow.settings import get_settings
from ledgerflow.types import ErrorType

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


def _to_application_error(exc: Exception, redact: Callable[[str], str]) -> ApplicationError | None:
    """The typed failure for ``exc``, or ``None`` for an exception no LLM rule maps (a bug)."""
    if isinstance(exc, ConfigError):
        return ApplicationError(
            redact(str(exc)), type=ErrorType.LLM_CONFIG_ERROR, non_retryable=True
        )
    if not isinstance(exc, LLMRefusal | LLMInvalidOutput | openai.OpenAIError):
        return None
    mapped = to_application_error(exc)
    return ApplicationError(
        redact(mapped.message),
        type=mapped.type,
        non_retryable=mapped.non_retryable,
        next_retry_delay=mapped.next_retry_delay,
    )


def _identity(text: str) -> str:
    return text


async def run_with_provider(decide: Callable[[LLMProvider], Awaitable[T]]) -> T:
    """Run ``decide`` with the worker's provider; map its failures to typed ApplicationErrors.

    Shared by every LLM activity, so each one retries, refuses and scrubs secrets the same way.
    (The run's identity is bound to log lines by the worker's logging interceptor.)
    """
    provider: LLMProvider | None = None
    started = time.monotonic()
    try:
        provider = get_provider()
        result = await decide(provider)
    except Exception as exc:
        # Belt and braces: the provider knows its secret; scrub every message with it.
        redact = getattr(provider, "redact", None) or _identity
        app_error = _to_application_error(exc, redact)
        _record_call(provider, None, (app_error and app_error.type) or "UnexpectedError", started)
        if app_error is None:
            raise
        _logger().warning(
            "llm.activity_failed",
            error_type=app_error.type,
            non_retryable=app_error.non_retryable,
            next_retry_delay=app_error.next_retry_delay,
        )
        raise app_error from None
    _record_call(provider, getattr(result, "meta", None), "ok", started)
    return result


def _record_call(provider: Any, meta: Any, result: str, started: float) -> None:
    """One ``ledgerflow_llm_*`` observation: the call's result class, latency and tokens."""
    usage = getattr(meta, "usage", None)
    metrics.current().llm_call(
        str(getattr(meta, "provider", None) or getattr(provider, "name", None) or "unknown"),
        str(getattr(meta, "model", None) or getattr(provider, "model", None) or "offline"),
        result or "error",
        time.monotonic() - started,
        prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
        completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
    )
