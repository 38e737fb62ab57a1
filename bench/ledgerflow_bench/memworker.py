"""A worker process of its own for the bench's memory section (``python -m
ledgerflow_bench.memworker STATUS_FILE``).

It runs the product's worker (:func:`ledgerflow.worker.runner.build_worker`, the heap frozen at
start-up as ``ledgerflow worker`` does) with ``BenchWorkflow`` on the task queue and store of the
environment (``LEDGERFLOW_*``, from the bench), and writes the number of ``bench.step``
activities it has run to ``STATUS_FILE`` twice a second, so that the bench knows when all its
runs are waiting. Runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from pathlib import Path

from temporalio import activity

from ledgerflow_bench.activities import STEP_ACTIVITY, BenchStepInput, BenchStepOutput, bench_step

_steps = 0


@activity.defn(name=STEP_ACTIVITY)
async def counted_step(arg: BenchStepInput) -> BenchStepOutput:
    """``bench.step``, counted."""
    global _steps
    out = await bench_step(arg)
    _steps += 1
    return out


async def _main(status: Path) -> None:
    from ledgerflow.runtime import Runtime
    from ledgerflow.settings import Settings
    from ledgerflow.temporal import connect
    from ledgerflow.worker.runner import (
        activity_functions,
        build_worker,
        freeze_startup_heap,
        workflow_classes,
    )
    from ledgerflow_bench.workflow import BenchWorkflow

    settings = Settings()
    runtime = Runtime(settings)
    client = await connect(settings.temporal_address, settings.namespace, timeout=60)
    worker = build_worker(
        client,
        runtime,
        task_queue=settings.task_queue,
        workflows=[*workflow_classes(), BenchWorkflow],
        activities=[*activity_functions(runtime), counted_step],
    )
    freeze_startup_heap()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    running = asyncio.create_task(worker.run())
    while not stop.is_set():
        status.write_text(f"{_steps}\n")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)
    await worker.shutdown()
    with contextlib.suppress(asyncio.CancelledError):
        await running
    await runtime.aclose()


if __name__ == "__main__":
    asyncio.run(_main(Path(sys.argv[1])))
