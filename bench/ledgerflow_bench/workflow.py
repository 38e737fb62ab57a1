"""BenchWorkflow: the reference K-step workflow that ``ledgerflow bench`` measures.

K plain activities (``bench.step``) run one after the other, each fed the previous output. With
``mode="none"`` there is no Ledger at all (plain Temporal: the baseline); with ``batched`` or
``per-step`` every step is checkpointed exactly like a product workflow's steps.
"""

from __future__ import annotations

import functools
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from ledgerflow.flow.ledger import Ledger
    from ledgerflow_bench.activities import (
        STEP_ACTIVITY,
        BenchInput,
        BenchResult,
        BenchStepInput,
        BenchStepOutput,
    )

__all__ = ["BenchWorkflow"]

STEP_START_TO_CLOSE_TIMEOUT = timedelta(seconds=30)
STEP_RETRY_POLICY = RetryPolicy(maximum_interval=timedelta(seconds=5))


@workflow.defn(name="BenchWorkflow")
class BenchWorkflow:
    def __init__(self) -> None:
        self._released = False

    @workflow.signal
    def release(self) -> None:
        """End a run that waits (``wait=True``) after its steps."""
        self._released = True

    @workflow.run
    async def run(self, request: BenchInput) -> BenchResult:
        ledger = (
            None
            if request.mode == "none"
            else Ledger(request.mode, wait_for_anchor=request.wait_for_anchor, spec=2)
        )
        if ledger is not None:
            await ledger.open()  # checkpoint spec v2: salted commitments, outcome step, seal
        digest = request.seed or workflow.info().workflow_id
        for index in range(request.steps):
            arg = BenchStepInput(index=index, digest=digest)
            if ledger is None:
                out = await self._step(arg)
            else:
                run = functools.partial(self._step, arg)
                out = await ledger.step("activity", STEP_ACTIVITY, arg, run)
            digest = out.digest
        if request.wait:
            # Like a product workflow waiting for a person: flush first, then wait.
            if ledger is not None:
                await ledger.flush()
            await workflow.wait_condition(lambda: self._released)
        if ledger is None:
            return BenchResult(mode="none", steps=request.steps, digest=digest)
        await ledger.finish("completed")
        return BenchResult(
            mode=request.mode,
            steps=request.steps,
            records=ledger.steps,  # the activity steps and the run's outcome step
            digest=digest,
            head=ledger.head,
            anchored=ledger.anchored,
        )

    @staticmethod
    async def _step(arg: BenchStepInput) -> BenchStepOutput:
        return await workflow.execute_activity(
            STEP_ACTIVITY,
            arg,
            result_type=BenchStepOutput,
            start_to_close_timeout=STEP_START_TO_CLOSE_TIMEOUT,
            retry_policy=STEP_RETRY_POLICY,
        )
