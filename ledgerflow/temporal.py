"""Connecting to Temporal with ledgerflow's data converter, on the process's Temporal runtime."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import Runtime

from ledgerflow.errors import StackError
from ledgerflow.observability.telemetry import process_runtime

__all__ = ["connect"]


async def connect(
    address: str,
    namespace: str = "default",
    *,
    timeout: float = 30.0,
    runtime: Runtime | None = None,
    interceptors: Sequence[Any] = (),
) -> Client:
    """Connect with the pydantic data converter, retrying while the server is still starting.

    Args:
        address: ``host:port`` of the Temporal frontend.
        namespace: the namespace.
        timeout: how long to keep retrying while nothing answers.
        runtime: the Temporal runtime (default: the process's, which forwards the SDK core's logs
            into Python logging; see :mod:`ledgerflow.observability.telemetry`).
        interceptors: client interceptors (tracing); a worker built on the client uses them too.

    Raises:
        StackError: no Temporal server answered at ``address`` within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            client = await Client.connect(
                address,
                namespace=namespace,
                data_converter=pydantic_data_converter,
                runtime=runtime or process_runtime(),
                interceptors=list(interceptors),
            )
            # The port opens before the namespace is ready; a cheap call proves readiness.
            await client.count_workflows()
            return client
        except Exception as exc:
            last = exc
            await asyncio.sleep(0.25)
    raise StackError(
        f"no Temporal server at {address} (namespace {namespace!r}): {last}. "
        "Start the stack with `make run` (or `ledgerflow up`), or set LEDGERFLOW_TEMPORAL_ADDRESS."
    )
