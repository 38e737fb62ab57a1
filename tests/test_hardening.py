"""Hostile input (issue 11): the cases an attacker found, each against the real stack.

A deeply nested body that segfaulted the API and the worker, a model that over-buys, unbounded
timeouts that hung runs with money in escrow, bad input started around ledgerflow's own
validation (the temporalio client, the ``temporal`` CLI) that retried forever, a refused signed
signal replayed against another run, lax types, duplicate keys, huge integers, lone surrogates,
a slow body, and a second invoice for a paid order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.client import WorkflowFailureError, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError

from ledgerflow import jsonsafe
from ledgerflow.activities.llm import set_provider
from ledgerflow.activities.procurement import (
    DecisionRequest,
    DecisionResult,
    Offer,
    SupplierDecision,
    decision_problem,
    validate_decision,
)
from ledgerflow.chain.deploy import DEV_KEYS, sku_to_bytes32
from ledgerflow.dev.stack import find_temporal, free_port
from ledgerflow.errors import LLMInvalidOutput, StoreError
from ledgerflow.llm.provider import OpenAIProvider, offline_meta
from ledgerflow.workflows.procurement import ProcurementRequest
from tests.conftest import Stack
from tests.support.chain import ChainAdmin
from tests.support.openai_stub import OpenAIStub, completion_body
from tests.support.steps import business_steps
from tests.test_api import SECRET, delivery_rows, post_signed, run_exists, sign, wait_phase
from tests.test_invoice import invoice, procure, run_invoice

WF = "ProcurementWorkflow"
SUPPLIER_KEY = DEV_KEYS[9]
#: About 140 KB: under the 256 KB body cap, and deep enough to overflow the C stack of a
#: stdlib JSON parser running under py_ecc's recursion limit of 100,000.
DEEP = 70_000


def deep_json(depth: int = DEEP) -> str:
    return '{"sku": ' + "[" * depth + "]" * depth + "}"


@pytest.fixture(scope="module")
def admin(stack: Stack) -> ChainAdmin:
    return ChainAdmin(stack.settings.rpc_url, stack.deployment)


# ---- the API as its own process -----------------------------------------------------------------


@dataclass
class ApiProcess:
    url: str
    port: int
    proc: subprocess.Popen[bytes]


@pytest.fixture
def api_process(stack: Stack, tmp_path: Path) -> Iterator[ApiProcess]:
    """``ledgerflow api`` in a process of its own (a real uvicorn server) on the test stack."""
    port = free_port()
    s = stack.settings
    env = {
        **os.environ,
        "LEDGERFLOW_HOME": str(tmp_path),
        "LEDGERFLOW_TEMPORAL_ADDRESS": s.temporal_address,
        "LEDGERFLOW_TASK_QUEUE": s.task_queue,
        "LEDGERFLOW_DATABASE_URL": s.database_url,
        "LEDGERFLOW_DEPLOYMENTS_FILE": str(s.deployments_path),
        "LEDGERFLOW_RPC_URL": s.rpc_url,
        "LEDGERFLOW_WEBHOOK_SECRET": SECRET,
        "LEDGERFLOW_API_PORT": str(port),
        "LEDGERFLOW_WEBHOOK_READ_TIMEOUT_SECONDS": "1",
        "LEDGERFLOW_LOG_FORMAT": "json",
    }
    exe = Path(sys.executable).with_name("ledgerflow")
    proc = subprocess.Popen(
        [str(exe), "api"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "api.log").open("wb"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "api.log").read_text()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "ledgerflow api did not start"
            time.sleep(0.2)
        yield ApiProcess(url, port, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---- 1. no input crashes a process ------------------------------------------------------------


def test_the_crash_is_real_and_restoring_the_recursion_limit_removes_it(tmp_path: Path) -> None:
    """The stdlib parser really dies (SIGSEGV) under py_ecc's limit; with the limit restored it
    raises RecursionError instead. (This is why every entry point restores it.)"""
    path = tmp_path / "deep.json"
    path.write_text("[" * DEEP + "]" * DEEP)
    crash = (
        "import json, sys, web3; assert sys.getrecursionlimit() >= 100000; "
        f"json.loads(open({str(path)!r}).read())"
    )
    done = subprocess.run([sys.executable, "-c", crash], capture_output=True, timeout=120)
    assert done.returncode == -signal.SIGSEGV, done
    safe = (
        "import json, web3; from ledgerflow import jsonsafe; jsonsafe.restore_recursion_limit()\n"
        "try:\n"
        f"    json.loads(open({str(path)!r}).read())\n"
        "except RecursionError:\n"
        "    print('RecursionError')\n"
    )
    done = subprocess.run([sys.executable, "-c", safe], capture_output=True, timeout=120, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "RecursionError", done


def test_jsonsafe_refuses_what_it_must() -> None:
    assert jsonsafe.loads('{"a": [1, {"b": null}]}', max_bytes=100) == {"a": [1, {"b": None}]}
    refused = {
        deep_json(): "nested deeper",
        "[" * 40 + "]" * 40: "nested deeper than 32",
        '{"q": 10, "q": 416}': "names the key 'q' twice",
        '[{"a": {"x": 1, "x": 2}}]': "names the key 'x' twice",
        '"\\ud800"': "not valid JSON",
        "1" * 5000: "not valid JSON",
        "NaN": "not valid JSON",
        "[1e400]": "not finite",
        '{"a": 1': "not valid JSON",
        b"\xff\xfe": "not valid JSON",
    }
    for text, message in refused.items():
        with pytest.raises(jsonsafe.UnsafeJSON, match=message):
            jsonsafe.loads(text, max_bytes=1_000_000, max_depth=32)
    with pytest.raises(jsonsafe.UnsafeJSON, match="larger than 10 bytes"):
        jsonsafe.loads("[" + "1," * 10 + "1]", max_bytes=10)
    assert jsonsafe.loads('{"q": 1, "q": 2}', max_bytes=100, duplicates="last") == {"q": 2}


async def test_deeply_nested_webhooks_are_422_and_the_api_keeps_serving(
    stack: Stack, api_process: ApiProcess
) -> None:
    body = deep_json()
    assert len(body) < stack.settings.webhook_max_body_bytes
    async with httpx.AsyncClient(base_url=api_process.url, timeout=30) as api:
        for path in (
            f"/webhooks/{WF}",
            f"/webhooks/{WF}/proc-{uuid.uuid4().hex[:8]}/signal/confirm_delivery",
        ):
            msg_id = f"msg_{uuid.uuid4().hex}"
            resp = await api.post(path, content=body, headers=sign(body, msg_id=msg_id))
            assert resp.status_code == 422, resp.text
            assert "nested deeper than" in resp.json()["detail"]
            assert api_process.proc.poll() is None  # still alive
            assert (await api.get("/health")).status_code == 200
        assert not await run_exists(stack, f"proc-wh-{msg_id}")


async def test_a_deeply_nested_model_answer_is_a_typed_failed_step(
    stack: Stack, admin: ChainAdmin
) -> None:
    """The worker (this process) survives an endpoint whose body would crash the SDK's parser:
    the decision is a failed, typed step and the run ends rejected before any payment."""
    sku = f"DEEP-{uuid.uuid4().hex[:6]}"
    admin.new_sku(sku, stock=0, threshold=5, target=10)
    admin.post_offer(SUPPLIER_KEY, sku, 1, 2, 100, "plain offer")
    with OpenAIStub() as stub:
        for _ in range(3):  # LLMInvalidOutput is retried: three attempts, three bodies
            stub.push_text(
                '{"choices": ' + "[" * DEEP + "]" * DEEP + "}", content_type="application/json"
            )
        set_provider(OpenAIProvider("sk-test-deep", stub.base_url, "gpt-test", 10, 200))
        try:
            wf_id = f"proc-deep-{uuid.uuid4().hex[:8]}"
            await stack.client.start(WF, ProcurementRequest(sku=sku), workflow_id=wf_id)
            res = (await stack.client.result(wf_id)).model_dump(mode="json")
        finally:
            set_provider(None)
        assert len(stub.requests) == 3
    assert res["outcome"] == "rejected", res
    assert "LLMInvalidOutput" in res["reason"] and "nested deeper than" in res["reason"]
    steps = business_steps(stack.runtime.store, wf_id)
    llm = [st for st in steps if st.name == "llm.choose_supplier"]
    assert [st.status for st in llm] == ["failed"]
    assert json.loads(llm[0].output_preimage)["error"]["type"] == "LLMInvalidOutput"
    assert "escrow.open" not in [st.name for st in steps]


# ---- 4. the model cannot buy more than is needed ---------------------------------------------


@pytest.mark.parametrize("requested", [10, None], ids=["requested", "shortfall"])
async def test_a_hostile_model_cannot_buy_more_than_is_needed(
    stack: Stack, admin: ChainAdmin, requested: int | None
) -> None:
    """Asked for 10 (or a shortfall of 10), the model orders 416 at the offer's real price from
    an allow-listed supplier, under the cap: refused in the activity, nothing paid."""
    sku = f"OVER-{uuid.uuid4().hex[:6]}"
    admin.new_sku(sku, stock=0, threshold=5, target=10)  # shortfall 10
    admin.allow(SUPPLIER_KEY)
    admin.post_offer(SUPPLIER_KEY, sku, 12, 2, 1000, "bulk widgets")
    offers = admin.c("Marketplace").functions.offersFor(sku_to_bytes32(sku), 0, 50).call()
    answer = {"offer_id": offers[0][0], "quantity": 416, "unit_price": 12_000_000, "rationale": "x"}
    before = admin.balance(stack.deployment.agent)
    with OpenAIStub() as stub:
        for _ in range(3):
            stub.push_json(completion_body(json.dumps(answer)))
        set_provider(OpenAIProvider("sk-test-overbuy", stub.base_url, "gpt-test", 10, 200))
        try:
            wf_id = f"proc-over-{uuid.uuid4().hex[:8]}"
            request = ProcurementRequest(sku=sku, quantity=requested)
            await stack.client.start(WF, request, workflow_id=wf_id)
            res = (await stack.client.result(wf_id)).model_dump(mode="json")
        finally:
            set_provider(None)
    assert res["outcome"] == "rejected", res
    assert "exceeds quantity_needed 10" in res["reason"]
    assert "escrow.open" not in [st.name for st in business_steps(stack.runtime.store, wf_id)]
    assert admin.balance(stack.deployment.agent) == before


def _decision_request() -> DecisionRequest:
    offer = Offer(
        offer_id=1,
        supplier="0x976EA74026E726554dB657fA54763abd0C3a0aa9",
        sku="W",
        unit_price=5,
        lead_time_days=1,
        max_quantity=100,
        description="",
        allow_listed=True,
    )
    return DecisionRequest(sku="W", quantity_needed=10, max_lead_time_days=3, offers=[offer])


def test_the_workflow_check_refuses_forged_decision_results() -> None:
    req = _decision_request()
    good = SupplierDecision(offer_id=1, quantity=10, unit_price=5, rationale="r")
    supplier, total = validate_decision(req, good)
    meta = offline_meta("rules", req, good)
    ok = DecisionResult(decision=good, supplier=supplier, total=total, meta=meta)
    assert decision_problem(req, ok) is None
    over = good.model_copy(update={"quantity": 11})
    with pytest.raises(LLMInvalidOutput, match="exceeds quantity_needed"):
        validate_decision(req, over)
    forged = [
        ok.model_copy(update={"decision": over, "total": 55}),  # more than needed
        ok.model_copy(update={"total": 1}),  # a total that is not quantity x price
        ok.model_copy(update={"supplier": "0x" + "11" * 20}),  # another payee
    ]
    problems = [decision_problem(req, f) for f in forged]
    assert "exceeds quantity_needed" in (problems[0] or "")
    assert "total 1 is not" in (problems[1] or "")
    assert "is not offer 1's" in (problems[2] or "")


# ---- 2 and 3. strict, bounded input, however a run is started ---------------------------------


BAD_BODIES = {
    "string": ('{"quantity": "10"}', "quantity"),
    "boolean": ('{"quantity": true}', "quantity"),
    "float": ('{"quantity": 10.0}', "quantity"),
    "exponent": ('{"quantity": 1e1}', "quantity"),
    "duplicate": ('{"quantity": 3, "quantity": 400}', "twice"),
    "huge": ('{"quantity": ' + "9" * 5000 + "}", "not valid JSON"),
    "big": ('{"quantity": ' + "9" * 300 + "}", "quantity"),
    "timeout": ('{"approval_timeout_seconds": 100000000000000000000}', "approval_timeout_seconds"),
    "deadline": ('{"delivery_deadline_seconds": 4611686018427387904}', "delivery_deadline"),
    "nul-sku": ('{"sku": "A\\u0000B"}', "sku"),
    "unknown": ('{"bogus": 1}', "bogus"),
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES), ids=str)
async def test_bad_start_bodies_are_422_with_nothing_half_recorded(
    stack: Stack, api: httpx.AsyncClient, case: str
) -> None:
    body, expect = BAD_BODIES[case]
    msg_id = f"msg_{uuid.uuid4().hex}"
    resp = await api.post(f"/webhooks/{WF}", content=body, headers=sign(body, msg_id=msg_id))
    assert resp.status_code == 422, resp.text
    assert expect in resp.json()["detail"]
    from ledgerflow.api.webhooks import webhook_workflow_id

    assert not await run_exists(stack, webhook_workflow_id(WF, msg_id))
    [row] = delivery_rows(stack, msg_id)
    assert (row.status, row.run_id) == ("refused", None)


@pytest.fixture
async def api(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    from tests.test_api import http

    async with http(stack) as client:
        yield client


async def test_invoice_bodies_with_lone_surrogates_or_huge_amounts_are_422(
    stack: Stack, api: httpx.AsyncClient
) -> None:
    for body, expect in (
        ('{"notes": "paid \\ud800 in full"}', "not valid JSON"),
        ('{"lines": [{"quantity": 1, "unit_price": ' + "7" * 5000 + "}]}", "not valid JSON"),
        ('{"lines": [{"quantity": 1, "unit_price": ' + "7" * 80 + "}]}", "unit_price"),
        ('{"review_timeout_seconds": 100000000000000000000}', "review_timeout_seconds"),
    ):
        msg_id = f"msg_{uuid.uuid4().hex}"
        resp = await api.post(
            "/webhooks/InvoiceReconciliationWorkflow",
            content=body,
            headers=sign(body, msg_id=msg_id),
        )
        assert resp.status_code == 422, resp.text
        assert expect in resp.json()["detail"]
        [row] = delivery_rows(stack, msg_id)
        assert (row.status, row.run_id) == ("refused", None)


async def _fails_fast(stack: Stack, wf_id: str, field: str) -> ApplicationError:
    handle = stack.client.temporal.get_workflow_handle(wf_id)
    started = time.monotonic()
    with pytest.raises(WorkflowFailureError) as failure:
        await asyncio.wait_for(handle.result(), 20)
    assert time.monotonic() - started < 20
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError), cause
    assert cause.type == "InvalidInput" and cause.non_retryable
    assert field in cause.message
    with pytest.raises(StoreError):  # nothing recorded: the run failed before its first step
        stack.runtime.store.get_run(wf_id)
    return cause


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"approval_timeout_seconds": 10**20}, "approval_timeout_seconds"),
        ({"delivery_deadline_seconds": 2**62}, "delivery_deadline_seconds"),
        ({"quantity": "10"}, "quantity"),
        ({"quantity": -5}, "quantity"),
        ({"quantity": 0}, "quantity"),
        ({"sku": "A\x00B"}, "sku"),
        ({"bogus": True}, "bogus"),
    ],
    ids=["timeout", "deadline", "string", "negative", "zero", "nul", "unknown"],
)
async def test_bad_input_from_the_temporalio_client_fails_at_once(
    stack: Stack, data: dict[str, Any], field: str
) -> None:
    """Around ledgerflow's validation, straight through temporalio with a plain dict."""
    wf_id = f"proc-raw-{uuid.uuid4().hex[:8]}"
    await stack.client.temporal.start_workflow(
        WF, data, id=wf_id, task_queue=stack.settings.task_queue
    )
    await _fails_fast(stack, wf_id, field)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('{"quantity": "10"}', "quantity"),
        ('{"approval_timeout_seconds": 100000000000000000000}', "approval_timeout_seconds"),
        ('{"quantity": 3, "quantity": 400}', "twice"),
        ("[1, 2]", "ProcurementRequest"),
    ],
    ids=["string", "timeout", "duplicate", "array"],
)
async def test_bad_input_from_the_temporal_cli_fails_within_seconds(
    stack: Stack, text: str, field: str
) -> None:
    wf_id = f"proc-cli-{uuid.uuid4().hex[:8]}"
    argv = [str(find_temporal()), "workflow", "start", "--address", stack.settings.temporal_address]
    argv += ["--task-queue", stack.settings.task_queue, "--type", WF]
    argv += ["--workflow-id", wf_id, "--input", text]
    done = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    await _fails_fast(stack, wf_id, field)


async def test_an_update_with_an_invalid_argument_is_rejected_typed(stack: Stack) -> None:
    wf_id = f"proc-upd-{uuid.uuid4().hex[:8]}"
    # 500 units at 12 tUSD is over the per-transaction cap: the run escalates to a human.
    await stack.client.start(WF, {"quantity": 500}, workflow_id=wf_id)
    await wait_phase(stack, wf_id, "awaiting-approval")
    handle = stack.client.temporal.get_workflow_handle(wf_id)
    for arg, expect in (({"approver": 5}, "approver"), ({"approver": "x" * 500}, "approver")):
        with pytest.raises(WorkflowUpdateFailedError) as failure:
            await handle.execute_update("approve", arg)
        cause = failure.value.cause
        assert isinstance(cause, ApplicationError)
        assert (cause.type, cause.non_retryable) == ("InvalidInput", True)
        assert expect in cause.message
    assert await stack.client.reject(wf_id, approver="ops", reason="test") == "rejected"
    res = (await stack.client.result(wf_id)).model_dump(mode="json")
    assert res["outcome"] == "rejected"


async def test_the_published_schema_states_the_bounds(api: httpx.AsyncClient) -> None:
    spec = (await api.get("/openapi.json")).json()
    props = spec["components"]["schemas"]["ProcurementRequest"]["properties"]
    assert props["approval_timeout_seconds"]["maximum"] == 366 * 86_400
    assert props["delivery_deadline_seconds"]["maximum"] == 366 * 86_400
    quantity = next(v for v in props["quantity"]["anyOf"] if v.get("type") == "integer")
    assert quantity["maximum"] == 1_000_000_000 and quantity["exclusiveMinimum"] == 0
    assert props["sku"]["maxLength"] == 32 and "pattern" in props["sku"]


# ---- 5. steering is bound to its target --------------------------------------------------------


async def test_a_refused_signal_cannot_be_replayed_against_another_run(
    stack: Stack, api: httpx.AsyncClient, admin: ChainAdmin
) -> None:
    """The v1 attack: a signed confirm_delivery refused (409) for a finished run, replayed
    verbatim against another run, released that run's escrow."""
    finished = f"proc-done-{uuid.uuid4().hex[:8]}"
    await stack.client.start(WF, {"quantity": 2}, workflow_id=finished)
    await wait_phase(stack, finished, "awaiting-delivery")
    await stack.client.confirm_delivery(finished, reference="pod-1")
    assert (await stack.client.result(finished)).outcome == "completed"

    victim = f"proc-victim-{uuid.uuid4().hex[:8]}"
    await stack.client.start(WF, {"quantity": 2}, workflow_id=victim)
    await wait_phase(stack, victim, "awaiting-delivery")

    body = json.dumps({"reference": "pod-captured"})
    headers = sign(body)
    resp = await api.post(
        f"/webhooks/{WF}/{finished}/signal/confirm_delivery", content=body, headers=headers
    )
    assert resp.status_code == 409, resp.text
    [row] = delivery_rows(stack, headers["webhook-id"])
    assert (row.status, row.workflow_id) == ("refused", finished)

    replay = await api.post(
        f"/webhooks/{WF}/{victim}/signal/confirm_delivery", content=body, headers=headers
    )
    assert replay.status_code == 409, replay.text
    assert "another route or run" in replay.json()["detail"]
    # And to an update route of the victim: refused as well (this body is not an approval).
    replay = await api.post(
        f"/webhooks/{WF}/{victim}/update/approve", content=body, headers=headers
    )
    assert replay.status_code in (409, 422), replay.text
    await asyncio.sleep(1)
    state = await stack.client.temporal.get_workflow_handle(victim).query("state")
    assert state["phase"] == "awaiting-delivery"
    assert "escrow.release" not in [st.name for st in business_steps(stack.runtime.store, victim)]

    # The victim's own supplier can still deliver (a fresh, signed delivery).
    resp = await post_signed(
        api, f"/webhooks/{WF}/{victim}/signal/confirm_delivery", {"reference": "pod-2"}
    )
    assert resp.status_code == 202, resp.text
    assert (await stack.client.result(victim)).outcome == "completed"


async def test_a_slow_body_is_408_and_the_api_keeps_serving(api_process: ApiProcess) -> None:
    body = json.dumps({"quantity": 1}).encode()
    head = sign(body)
    request = (
        f"POST /webhooks/{WF} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in head.items())
        + f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", api_process.port), timeout=10) as sock:
        sock.sendall(request + body[:3])  # then nothing: a slow-loris body
        started = time.monotonic()
        answer = sock.recv(4096).decode()
    assert answer.startswith("HTTP/1.1 408"), answer
    assert time.monotonic() - started < 5
    assert httpx.get(f"{api_process.url}/health", timeout=5).status_code == 200


# ---- 4. one order, one invoice -----------------------------------------------------------------


async def test_a_second_invoice_for_a_reconciled_order_is_disputed(stack: Stack) -> None:
    order = await procure(stack, 3)
    first = await run_invoice(stack, invoice(order, quantity=3))
    assert first["outcome"] == "reconciled", first
    second = await run_invoice(stack, invoice(order, quantity=3))
    assert second["outcome"] == "disputed", second
    assert first["invoice_number"] in second["reason"] and "already reconciled" in second["reason"]
    row = stack.runtime.store.reconciliation_of(order.order_id)
    assert row is not None and row.workflow_id == first["id"]
    assert row.invoice_number == first["invoice_number"]
