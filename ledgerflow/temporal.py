"""Connecting to Temporal with ledgerflow's data converter."""

from __future__ import annotations

import asyncio
import time

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from ledgerflow.errors import StackError

__all__ = ["connect"]


async def connect(address: str, namespace: str = "default", *, timeout: float = 30.0) -> Client:
    """Connect with the pydantic data converter, retrying while the server is still starting.

    Raises:
        StackError: no Temporal server answered at ``address`` within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            client = await Client.connect(
                address, namespace=namespace, data_converter=pydantic_data_converter
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
