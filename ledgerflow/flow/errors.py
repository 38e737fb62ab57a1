"""``@mapped_errors``: typed, bounded failures for plain activities that are not steps.

Step activities get this through :func:`ledgerflow.flow.activity.step_activity`; the internal
activities of the checkpoint ledger and the trigger workflows use this decorator directly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import ParamSpec, TypeVar

from temporalio.exceptions import ApplicationError

from ledgerflow.flow.activity import to_application_error

__all__ = ["mapped_errors"]

P = ParamSpec("P")
R = TypeVar("R")


def mapped_errors(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Decorator: every failure leaves as an ApplicationError of the right retry class."""

    @wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except (ApplicationError, asyncio.CancelledError):
            raise
        except Exception as exc:
            raise to_application_error(exc) from None

    return wrapper
