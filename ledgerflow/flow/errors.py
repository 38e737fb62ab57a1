"""Mapping ledgerflow errors to Temporal's ApplicationError (retryable or not)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps
from typing import ParamSpec, TypeVar

from temporalio.exceptions import ApplicationError

from ledgerflow.errors import ChainError, ConfigError, ContractRevert, StoreError

P = ParamSpec("P")
R = TypeVar("R")


def as_application_error(exc: Exception) -> ApplicationError:
    """Business failures (reverts, bad config) are non-retryable; infrastructure ones retry."""
    if isinstance(exc, ContractRevert):
        return ApplicationError(
            str(exc),
            {"error": exc.error, "args": {k: str(v) for k, v in exc.error_args.items()}},
            type="ContractRevert",
            non_retryable=True,
        )
    if isinstance(exc, ConfigError):
        return ApplicationError(str(exc), type="ConfigError", non_retryable=True)
    if isinstance(exc, StoreError):
        return ApplicationError(str(exc), type="StoreError")
    return ApplicationError(str(exc), type="ChainError")


def mapped_errors(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Decorator: re-raise ledgerflow errors as ApplicationErrors with the right retry class."""

    @wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except (ChainError, ConfigError, StoreError) as exc:
            raise as_application_error(exc) from None

    return wrapper
