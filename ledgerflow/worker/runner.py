"""The worker: Temporal workflows and activities, plus the batch anchorer, in one process."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Callable, Sequence
from typing import Any

import structlog
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from ledgerflow import jsonsafe
from ledgerflow.checkpoint.anchorer import Anchorer
from ledgerflow.errors import StackError
from ledgerflow.flow import registry
from ledgerflow.flow.search import SEARCH_ATTRIBUTES
from ledgerflow.observability import tracing
from ledgerflow.observability.telemetry import configure_runtime, metrics_address
from ledgerflow.runtime import Runtime
from ledgerflow.settings import Settings
from ledgerflow.temporal import connect
from ledgerflow.worker.interceptors import LoggingInterceptor
from ledgerflow.worker.sampler import MetricsSampler

__all__ = [
    "build_worker",
    "ensure_search_attributes",
    "freeze_startup_heap",
    "run_worker",
    "workflow_classes",
]

log = structlog.get_logger(__name__)


def workflow_classes() -> list[type]:
    """Every registered workflow (the built-in ones and LEDGERFLOW_WORKFLOW_MODULES')."""
    return registry.workflow_classes()


def activity_functions(runtime: Runtime) -> list[Callable[..., Any]]:
    """Every registered activity, bound to this process's runtime."""
    return registry.activity_functions(runtime)


async def ensure_search_attributes(client: Client, namespace: str) -> None:
    """Register ledgerflow's search attributes if the namespace lacks them (dev server)."""
    try:
        resp = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=namespace)
        )
        missing = {k: v for k, v in SEARCH_ATTRIBUTES.items() if k not in resp.custom_attributes}
        if not missing:
            return
        kinds = {
            "Keyword": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
            "Int": IndexedValueType.INDEXED_VALUE_TYPE_INT,
        }
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=namespace, search_attributes={k: kinds[v] for k, v in missing.items()}
            )
        )
    except RPCError as exc:
        # A secured cluster or Temporal Cloud may not let a worker's credentials administer the
        # namespace: the attributes are then registered once by an operator (docs/operations.md).
        if exc.status not in (RPCStatusCode.PERMISSION_DENIED, RPCStatusCode.UNIMPLEMENTED):
            raise
        log.warning(
            "cannot register search attributes; register them once as an operator",
            namespace=namespace,
            names=sorted(SEARCH_ATTRIBUTES),
            status=exc.status.name,
        )
        return
    log.info("search attributes registered", names=sorted(missing))


def build_worker(
    client: Client,
    runtime: Runtime,
    *,
    task_queue: str,
    workflows: Sequence[type] | None = None,
    activities: Sequence[Callable[..., Any]] | None = None,
) -> Worker:
    # py_ecc (through web3) raises the recursion limit to 100,000 on import: deep recursion would
    # then overflow the C stack (a segfault) instead of raising RecursionError.
    jsonsafe.restore_recursion_limit()
    return Worker(
        client,
        task_queue=task_queue,
        workflows=list(workflows if workflows is not None else workflow_classes()),
        activities=list(activities if activities is not None else activity_functions(runtime)),
        max_concurrent_activities=200,
        interceptors=[LoggingInterceptor()],
    )


def freeze_startup_heap() -> int:
    """Move everything allocated so far (modules, ABIs, the sandbox's pass-through modules, the
    store's and the converter's caches) out of the garbage collector's reach; returns how many
    objects that is.

    The cyclic collector otherwise walks that whole long-lived heap on every full collection:
    measured in ``ledgerflow bench``, one full collection per hundred batched runs cost 3-6 ms of
    worker CPU per run, about 1 ms after this (``gc.freeze``, the standard remedy for a
    long-running server; objects allocated later are collected as usual).
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


async def run_worker(settings: Settings, stop: asyncio.Event, *, anchorer: bool = True) -> None:
    """Run the worker (and the anchorer) until ``stop`` is set.

    The process serves Prometheus metrics at ``http://<metrics_host>:<metrics_port>/metrics``
    (Temporal's SDK series and ledgerflow's) and, with ``otlp_endpoint`` set, exports traces.
    """
    address = metrics_address(settings.metrics_host, settings.metrics_port)
    temporal_runtime = configure_runtime(
        core_level=settings.temporal_core_log_level, metrics_address=address
    )
    tracer = tracing.configure_tracing(settings.otlp_endpoint, "ledgerflow-worker")
    try:
        await _run_worker(settings, stop, anchorer, temporal_runtime, tracer, address)
    finally:
        tracing.shutdown()


async def _run_worker(
    settings: Settings,
    stop: asyncio.Event,
    anchorer: bool,
    temporal_runtime: Any,
    tracer: Any,
    address: str | None,
) -> None:
    runtime = Runtime(settings)
    await asyncio.to_thread(runtime.store.migrate)
    await runtime.claim_store()  # SQLite: one worker per store, and it says who has it
    client = await connect(
        settings, runtime=temporal_runtime, interceptors=tracing.client_interceptors(tracer)
    )
    await ensure_search_attributes(client, client.namespace)
    worker = build_worker(client, runtime, task_queue=settings.task_queue)
    freeze_startup_heap()
    tasks = [
        asyncio.create_task(worker.run(), name="worker"),
        # lost blocks, nonce gaps and orphaned sends: at start, then periodically
        asyncio.create_task(runtime.serve(stop), name="chain-check"),
    ]
    if address is not None:
        sampler = MetricsSampler(runtime, every=settings.metrics_sample_seconds)
        tasks.append(asyncio.create_task(sampler.run(stop), name="metrics sampler"))
    if anchorer:
        batcher = Anchorer(
            runtime,
            batch_size=settings.anchor_batch_size,
            max_wait=settings.anchor_max_wait_seconds,
        )
        tasks.append(asyncio.create_task(batcher.run(stop), name="anchorer"))
    log.info(
        "worker started",
        task_queue=settings.task_queue,
        anchorer=anchorer,
        metrics=f"http://{address}/metrics" if address else None,
        tracing=settings.otlp_endpoint is not None,
    )
    stopping = asyncio.create_task(stop.wait(), name="stop")
    done, _ = await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
    # A worker whose poller or anchorer ended on its own must not keep looking alive: stop the
    # rest and leave with the failure, so a supervisor (ledgerflow up, systemd, Kubernetes)
    # notices and restarts it.
    failed = None if stop.is_set() else next((t for t in tasks if t in done), None)
    stopping.cancel()
    stop.set()
    if worker.is_running:
        await worker.shutdown()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await t
    await runtime.aclose()
    if failed is not None:
        error = failed.exception() if not failed.cancelled() else None
        raise StackError(
            f"the {failed.get_name()} stopped unexpectedly"
            + (f": {type(error).__name__}: {error}" if error else "")
        )
