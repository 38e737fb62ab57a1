"""A test workflow that uses the generic contract-read and HTTP steps (served by a test worker)."""

from __future__ import annotations

from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from ledgerflow.flow import CheckpointedWorkflow, RunResult
    from ledgerflow.flow.steps import HttpRequest
    from ledgerflow.types import StrictModel


class ProbeRequest(StrictModel):
    url: str
    fail: bool = False
    credential: str | None = None


class ProbeResult(RunResult):
    status: int | None = None
    budget: Any = None
    key: str | None = None


@workflow.defn(name="GenericProbeWorkflow")
class GenericProbeWorkflow(CheckpointedWorkflow):
    @workflow.run
    async def run(self, req: ProbeRequest) -> ProbeResult:
        async with self.checkpointed(req) as run:
            read = await run.read("TestUSD", "totalSupply")
            run.fields["budget"] = read.value
            resp = await run.http(
                HttpRequest(
                    method="POST",
                    url=req.url,
                    json_body={"fail": req.fail},
                    credential=req.credential,
                ),
                name="erp.post_invoice",
            )
            run.fields["status"] = resp.status
            run.fields["key"] = (resp.json_body or {}).get("key")
        return run.result(ProbeResult)
