"""The authoring API end to end: the 60-line example of docs/authoring.md and the generic steps
(LLM decision into any schema, contract call and read, HTTP request) on the real stack."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from temporalio import workflow
from temporalio.client import WorkflowFailureError

from ledgerflow.activities.llm import set_provider
from ledgerflow.dev.stack import free_port
from ledgerflow.flow import register
from ledgerflow.flow.steps import Approval
from ledgerflow.llm.provider import OpenAIProvider
from ledgerflow.runtime import Runtime
from ledgerflow.worker.runner import activity_functions, build_worker
from tests.conftest import Stack
from tests.support.chain import ChainAdmin
from tests.support.openai_stub import OpenAIStub
from tests.support.probe_workflow import GenericProbeWorkflow, ProbeRequest
from tests.support.steps import business_steps

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "workflows" / "vendor_payment.py"
NORTHWIND = "0x976EA74026E726554dB657fA54763abd0C3a0aa9"
TUSD = 1_000_000


@pytest.fixture(scope="module")
def admin(stack: Stack) -> ChainAdmin:
    return ChainAdmin(stack.settings.rpc_url, stack.deployment)


async def _wait_awaiting(stack: Stack, wf_id: str, what: str, timeout: float = 60) -> None:
    handle = stack.client.temporal.get_workflow_handle(wf_id)
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        state = await handle.query("state")
        if state.get("awaiting") == what:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{wf_id} never waited for {what}")


def _steps(stack: Stack, wf_id: str) -> list[tuple[str, str, str]]:
    return [(s.kind, s.name, s.status) for s in business_steps(stack.runtime.store, wf_id)]


# ---- the example ------------------------------------------------------------------------------


def test_the_example_is_at_most_60_lines_and_is_the_docs_block() -> None:
    source = EXAMPLE.read_text()
    assert len(source.splitlines()) <= 60
    doc = (ROOT / "docs" / "authoring.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, flags=re.S)
    assert source in blocks, "docs/authoring.md must carry workflows/vendor_payment.py verbatim"


async def test_example_pays_after_a_human_approves(stack: Stack, admin: ChainAdmin) -> None:
    before = admin.balance(NORTHWIND)
    wf_id = f"vendor-pay-{uuid.uuid4().hex[:8]}"
    await stack.client.start("VendorPaymentWorkflow", {}, workflow_id=wf_id)
    await _wait_awaiting(stack, wf_id, "approval")
    handle = stack.client.temporal.get_workflow_handle(wf_id)
    answer = await handle.execute_update("approve", Approval(approver="cfo@example.com"))
    assert answer == "recorded"
    result = (await stack.client.result(wf_id)).model_dump(mode="json")
    assert result["outcome"] == "completed"
    assert result["amount"] == 1_440 * TUSD and result["approved_by"] == "cfo@example.com"
    assert admin.balance(NORTHWIND) - before == 1_440 * TUSD
    names = [name for _, name, _ in _steps(stack, wf_id)]
    assert names == [
        "llm.decide.PaymentDecision",
        "approval.approved",
        "Escrow.open",
        "Escrow.release",
    ]
    report = await stack.client.verify(wf_id)
    assert report.ok, report.problems


async def test_example_below_the_threshold_needs_no_human(stack: Stack) -> None:
    wf_id = f"vendor-pay-{uuid.uuid4().hex[:8]}"
    await stack.client.start("VendorPaymentWorkflow", {"max_amount": 20 * TUSD}, workflow_id=wf_id)
    result = (await stack.client.result(wf_id)).model_dump(mode="json")
    assert result["outcome"] == "completed" and result["approved_by"] is None
    assert "approval.approved" not in [n for _, n, _ in _steps(stack, wf_id)]


async def test_example_rejected_by_the_human_pays_nothing(stack: Stack, admin: ChainAdmin) -> None:
    before = admin.balance(NORTHWIND)
    wf_id = f"vendor-pay-{uuid.uuid4().hex[:8]}"
    await stack.client.start("VendorPaymentWorkflow", {}, workflow_id=wf_id)
    await _wait_awaiting(stack, wf_id, "approval")
    handle = stack.client.temporal.get_workflow_handle(wf_id)
    await handle.execute_update("approve", Approval(approved=False, approver="cfo"))
    result = (await stack.client.result(wf_id)).model_dump(mode="json")
    assert result["outcome"] == "rejected" and result["reason"] == "no approval"
    assert admin.balance(NORTHWIND) == before
    assert ("update", "approval.rejected", "ok") in _steps(stack, wf_id)


async def test_example_is_rejected_when_the_contract_refuses(
    stack: Stack, admin: ChainAdmin
) -> None:
    # An address the policy does not allow-list: Escrow.open reverts inside the saga. The
    # contract refused, so nothing was paid: the refund registered for that step is dropped and
    # the run ends rejected with the rule, not compensated.
    stranger = admin.address("0x" + "77" * 32)
    wf_id = f"vendor-pay-{uuid.uuid4().hex[:8]}"
    before = admin.balance(stranger)
    await stack.client.start(
        "VendorPaymentWorkflow",
        {"vendor": stranger, "max_amount": 10 * TUSD},
        workflow_id=wf_id,
    )
    result = (await stack.client.result(wf_id)).model_dump(mode="json")
    assert result["outcome"] == "rejected", result
    assert "PolicyCounterpartyNotAllowed" in result["reason"]
    steps = _steps(stack, wf_id)
    assert ("chain", "Escrow.open", "failed") in steps
    assert not [s for s in steps if s[0] == "compensation"], steps
    assert admin.balance(stranger) == before
    report = await stack.client.verify(wf_id)
    assert report.ok, report.problems


async def test_a_hostile_model_cannot_pay_more_than_the_invoice(stack: Stack) -> None:
    stub = OpenAIStub().start()
    provider = OpenAIProvider("k", stub.base_url, "gpt-test", 10, 200)
    set_provider(provider)
    try:
        stub.push_completion(json.dumps({"pay": True, "amount": 10**12, "reason": "pay all"}))
        wf_id = f"vendor-pay-{uuid.uuid4().hex[:8]}"
        await stack.client.start(
            "VendorPaymentWorkflow", {"max_amount": 10 * TUSD}, workflow_id=wf_id
        )
        result = (await stack.client.result(wf_id)).model_dump(mode="json")
    finally:
        set_provider(None)
        await provider.aclose()
        stub.stop()
    assert result["outcome"] == "rejected"
    assert [n for _, n, _ in _steps(stack, wf_id)] == ["llm.decide.PaymentDecision"]


async def test_registry_serves_the_example_everywhere(stack: Stack) -> None:
    from ledgerflow.api.webhooks import create_app
    from ledgerflow.flow import registry

    reg = registry.get("VendorPaymentWorkflow")
    assert reg.updates == {"approve": Approval}
    paths = create_app(stack.settings, stack.client).openapi()["paths"]
    assert "/webhooks/VendorPaymentWorkflow" in paths
    assert "/webhooks/VendorPaymentWorkflow/{workflow_id}/update/approve" in paths


@workflow.defn(name="NoModelWorkflow")
class _NoModelWorkflow:
    @workflow.run
    async def run(self, a: int, b: int) -> None:
        return None


def test_register_refuses_a_workflow_without_one_model() -> None:
    with pytest.raises(TypeError, match="exactly one pydantic model"):
        register(_NoModelWorkflow)


# ---- generic steps: contract read and HTTP ----------------------------------------------------


class _Erp:
    """A tiny enterprise API: records the Idempotency-Key of every request it gets."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.auth: list[str | None] = []
        app = FastAPI()

        @app.post("/invoices")
        async def post(request: Request) -> JSONResponse:
            body = await request.json()
            key = request.headers.get("idempotency-key", "")
            self.keys.append(key)
            self.auth.append(request.headers.get("authorization"))
            if body.get("fail"):
                return JSONResponse({"detail": "invalid invoice"}, status_code=422)
            return JSONResponse({"key": key, "ok": True}, status_code=201)

        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/invoices"


@pytest.fixture
async def erp() -> AsyncIterator[_Erp]:
    server = _Erp()
    task = asyncio.create_task(server.server.serve())
    while not server.server.started:
        await asyncio.sleep(0.02)
    yield server
    server.server.should_exit = True
    await task


@pytest.fixture
async def probe_queue(stack: Stack) -> AsyncIterator[str]:
    settings = stack.settings.model_copy(
        update={
            "http_allowed_hosts": ["127.0.0.1"],
            "http_credentials": {"erp": "Bearer erp-secret-canary"},
        }
    )
    runtime = Runtime(settings, store=stack.runtime.store)
    task_queue = f"probe-{uuid.uuid4().hex[:8]}"
    worker = build_worker(
        stack.client.temporal,
        runtime,
        task_queue=task_queue,
        workflows=[GenericProbeWorkflow],
        activities=activity_functions(runtime),
    )
    async with worker:
        yield task_queue
    await runtime.aclose()


async def _probe(stack: Stack, task_queue: str, req: ProbeRequest) -> tuple[str, Any]:
    wf_id = f"probe-{uuid.uuid4().hex[:8]}"
    handle = await stack.client.temporal.start_workflow(
        "GenericProbeWorkflow", req, id=wf_id, task_queue=task_queue
    )
    return wf_id, await handle.result()


async def test_http_step_sends_an_idempotency_key_and_hashes_the_response(
    stack: Stack, erp: _Erp, probe_queue: str
) -> None:
    wf_id, result = await _probe(stack, probe_queue, ProbeRequest(url=erp.url))
    assert result["outcome"] == "completed" and result["status"] == 201
    assert result["budget"] > 0
    assert erp.keys == [result["key"]] and result["key"].startswith(f"{wf_id}/")
    assert erp.auth == [None]  # no credential asked for: none sent
    run = stack.runtime.store.get_run(wf_id)
    step = next(
        s for s in stack.runtime.store.get_steps(wf_id, run.run_id) if s.name == "erp.post_invoice"
    )
    output = json.loads(step.output_preimage or "{}")
    assert output["status"] == 201 and output["body_hash"].startswith("0x")


async def test_http_step_refused_by_the_api_fails_the_run_without_retrying(
    stack: Stack, erp: _Erp, probe_queue: str
) -> None:
    with pytest.raises(WorkflowFailureError):
        await _probe(stack, probe_queue, ProbeRequest(url=erp.url, fail=True))
    assert len(erp.keys) == 1  # HTTPRejected is not retried


async def test_http_step_to_a_host_not_allowed_is_a_config_error(
    stack: Stack, probe_queue: str
) -> None:
    with pytest.raises(WorkflowFailureError) as failed:
        await _probe(stack, probe_queue, ProbeRequest(url="http://example.com/x"))
    assert "LEDGERFLOW_HTTP_ALLOWED_HOSTS" in str(failed.value.cause.cause)
