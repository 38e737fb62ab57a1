"""Webhooks end to end: the API in-process (ASGI) against the real stack (Temporal, anvil, store).

The reference signer is the ``standardwebhooks`` package; the API verifies with its own code.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from pydantic import SecretStr
from sqlmodel import select
from standardwebhooks import Webhook
from temporalio.service import RPCError, RPCStatusCode

from ledgerflow.api import webhooks as webhooks_module
from ledgerflow.api.webhooks import (
    create_app,
    decode_secret,
    serve_api,
    verify_signature,
    webhook_workflow_id,
)
from ledgerflow.dev.stack import free_port
from ledgerflow.errors import ConfigError, WebhookError
from ledgerflow.settings import Settings
from ledgerflow.store import WebhookDelivery
from ledgerflow.workflows.procurement import ProcurementState
from tests.conftest import Stack

SECRET = "whsec_" + base64.b64encode(b"ledgerflow-webhook-test-secret!!").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"some-other-secret-of-32-bytes!!!").decode()
WF = "ProcurementWorkflow"
# Small orders, so the many runs of the session stay far below the agent's budget.
ORDER = {"sku": "WIDGET-42", "quantity": 3}


def sign(
    body: bytes | str,
    *,
    secret: str = SECRET,
    msg_id: str | None = None,
    at: datetime | None = None,
) -> dict[str, str]:
    """Standard Webhooks headers made by the reference library."""
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    at = at or datetime.now(tz=UTC)
    text = body.decode() if isinstance(body, bytes) else body
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, at, text),
        "content-type": "application/json",
    }


def settings_for(stack: Stack, **update: Any) -> Settings:
    return stack.settings.model_copy(update={"webhook_secret": SecretStr(SECRET), **update})


def http(stack: Stack, settings: Settings | None = None) -> httpx.AsyncClient:
    app = create_app(settings or settings_for(stack), client=stack.client)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ledgerflow")


@pytest.fixture
async def api(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with http(stack) as client:
        yield client


async def run_exists(stack: Stack, workflow_id: str) -> bool:
    try:
        await stack.client.temporal.get_workflow_handle(workflow_id).describe()
    except RPCError as exc:
        assert exc.status == RPCStatusCode.NOT_FOUND
        return False
    return True


def delivery_rows(stack: Stack, webhook_id: str) -> list[WebhookDelivery]:
    with stack.runtime.store.session() as s:
        return list(
            s.exec(select(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id)).all()
        )


async def wait_phase(stack: Stack, workflow_id: str, phase: str, timeout: float = 60) -> None:
    handle = stack.client.temporal.get_workflow_handle(workflow_id)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    state = None
    while loop.time() < deadline:
        state = await handle.query("state", result_type=ProcurementState)
        if state.phase == phase:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{workflow_id} never reached {phase} (last: {state})")


async def post_signed(api: httpx.AsyncClient, path: str, payload: Any, **kw: Any) -> httpx.Response:
    body = json.dumps(payload)
    return await api.post(path, content=body, headers=sign(body, **kw))


async def started_input(stack: Stack, workflow_id: str) -> dict[str, Any]:
    history = await stack.client.temporal.get_workflow_handle(workflow_id).fetch_history()
    attrs = history.events[0].workflow_execution_started_event_attributes
    return json.loads(attrs.input.payloads[0].data)


# ---- the happy path ---------------------------------------------------------------------------


async def test_signed_webhook_starts_a_run_that_completes_and_replays(
    stack: Stack, api: httpx.AsyncClient
) -> None:
    body = json.dumps({**ORDER, "trigger": "spoofed"})
    msg_id = f"msg_{uuid.uuid4().hex}"
    resp = await api.post(f"/webhooks/{WF}", content=body, headers=sign(body, msg_id=msg_id))
    assert resp.status_code == 202, resp.text
    first = resp.json()
    assert set(first) == {"workflow_id", "run_id"}
    assert first["workflow_id"] == webhook_workflow_id(WF, msg_id)
    assert first["workflow_id"].startswith("procurement-wh-")
    wf_id = first["workflow_id"]
    # The payload is the input; the trigger names the webhook, whatever the payload claims.
    started = await started_input(stack, wf_id)
    assert started["trigger"] == f"webhook:{msg_id}"
    assert started["quantity"] == ORDER["quantity"]

    # Steer it over the signal route.
    await wait_phase(stack, wf_id, "awaiting-delivery")
    signal_id = f"msg_{uuid.uuid4().hex}"
    path = f"/webhooks/{WF}/{wf_id}/signal/confirm_delivery"
    resp = await post_signed(api, path, {"reference": "pod-webhook"}, msg_id=signal_id)
    assert resp.status_code == 202, resp.text
    assert resp.json()["run_id"] == first["run_id"]
    assert resp.json()["duplicate"] is False
    result = (await stack.client.result(wf_id)).model_dump(mode="json")
    assert result["outcome"] == "completed", result

    # A replay after completion (same webhook-id, fresh timestamp) answers the original run.
    resp = await api.post(f"/webhooks/{WF}", content=body, headers=sign(body, msg_id=msg_id))
    assert resp.status_code == 202, resp.text
    assert resp.json() == first
    desc = await stack.client.temporal.get_workflow_handle(wf_id).describe()
    assert desc.run_id == first["run_id"]  # no second run
    assert len(delivery_rows(stack, msg_id)) == 1

    # The signal's replay is acknowledged without signalling again.
    resp = await post_signed(api, path, {"reference": "pod-webhook"}, msg_id=signal_id)
    assert resp.status_code == 202, resp.text
    assert resp.json()["duplicate"] is True

    # The run verifies like any other.
    report = await stack.client.verify(wf_id)
    assert report.ok, report.problems


async def test_replay_after_store_loss_still_answers_the_existing_run(
    stack: Stack, api: httpx.AsyncClient
) -> None:
    """If the delivery row is gone (a crash before it was written), Temporal still knows the id."""
    body = json.dumps({**ORDER, "simulate_delivery_after_seconds": 1})
    msg_id = f"msg_{uuid.uuid4().hex}"
    resp = await api.post(f"/webhooks/{WF}", content=body, headers=sign(body, msg_id=msg_id))
    assert resp.status_code == 202, resp.text
    first = resp.json()
    await stack.client.result(first["workflow_id"])
    with stack.runtime.store.session() as s:
        for row in s.exec(select(WebhookDelivery).where(WebhookDelivery.webhook_id == msg_id)):
            s.delete(row)
        s.commit()
    resp = await api.post(f"/webhooks/{WF}", content=body, headers=sign(body, msg_id=msg_id))
    assert resp.status_code == 202, resp.text
    assert resp.json() == first


async def test_crash_between_start_and_record_cannot_start_a_second_run(
    stack: Stack, api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run id is recorded after the answer. Should the API die after the start and before
    that record (with or without answering), the delivery stays ``pending`` without a run; a
    retry of it (and a concurrent burst of retries) answers the same run, Temporal refusing a
    second one for the webhook-id's workflow id, and records the run then."""
    body = json.dumps({**ORDER, "simulate_delivery_after_seconds": 1})
    msg_id = f"msg_{uuid.uuid4().hex}"

    async def died(*_args: Any) -> None:  # the process died before recording the run
        return None

    with monkeypatch.context() as m:
        m.setattr(webhooks_module._Webhooks, "_record_run", died)
        resp = await api.post(f"/webhooks/{WF}", content=body, headers=sign(body, msg_id=msg_id))
    assert resp.status_code == 202, resp.text
    first = resp.json()
    (row,) = delivery_rows(stack, msg_id)
    assert (row.status, row.run_id) == ("pending", None)

    # Retries while the run is running: the same run, exactly once.
    responses = await asyncio.gather(
        *(
            api.post(f"/webhooks/{WF}", content=body, headers=sign(body, msg_id=msg_id))
            for _ in range(3)
        )
    )
    assert all(r.status_code == 202 for r in responses), [r.text for r in responses]
    assert {(r.json()["workflow_id"], r.json()["run_id"]) for r in responses} == {
        (first["workflow_id"], first["run_id"])
    }
    (row,) = delivery_rows(stack, msg_id)
    assert (row.status, row.run_id) == ("accepted", first["run_id"])

    # And after it has finished, with the record lost again: still that run, no second one.
    await stack.client.result(first["workflow_id"])
    with stack.runtime.store.session() as s:
        for stored in s.exec(select(WebhookDelivery).where(WebhookDelivery.webhook_id == msg_id)):
            stored.status, stored.run_id = "pending", None
            s.add(stored)
        s.commit()
    resp = await api.post(f"/webhooks/{WF}", content=body, headers=sign(body, msg_id=msg_id))
    assert resp.status_code == 202, resp.text
    assert resp.json() == first
    desc = await stack.client.temporal.get_workflow_handle(first["workflow_id"]).describe()
    assert desc.run_id == first["run_id"]
    runs = [
        w
        async for w in stack.client.temporal.list_workflows(
            f"WorkflowId = '{first['workflow_id']}'"
        )
    ]
    assert len(runs) <= 1


async def test_crash_after_binding_before_start_lets_the_retry_start_the_run(
    stack: Stack, api: httpx.AsyncClient
) -> None:
    """A delivery bound (``pending``) whose process died before the start: the retry starts the
    run (once), bound to the same route and run as before."""
    body = json.dumps({**ORDER, "simulate_delivery_after_seconds": 1})
    msg_id = f"msg_{uuid.uuid4().hex}"
    wf_id = webhook_workflow_id(WF, msg_id)
    _row, mine = stack.runtime.store.delivery_bind(msg_id, WF, wf_id)
    assert mine and not await run_exists(stack, wf_id)
    resp = await api.post(f"/webhooks/{WF}", content=body, headers=sign(body, msg_id=msg_id))
    assert resp.status_code == 202, resp.text
    assert resp.json()["workflow_id"] == wf_id
    (row,) = delivery_rows(stack, msg_id)
    assert (row.status, row.run_id) == ("accepted", resp.json()["run_id"])
    await stack.client.result(wf_id)


async def test_ten_concurrent_deliveries_start_exactly_one_run(
    stack: Stack, api: httpx.AsyncClient
) -> None:
    body = json.dumps({**ORDER, "simulate_delivery_after_seconds": 1})
    msg_id = f"msg_{uuid.uuid4().hex}"
    headers = sign(body, msg_id=msg_id)
    responses = await asyncio.gather(
        *(api.post(f"/webhooks/{WF}", content=body, headers=headers) for _ in range(10))
    )
    assert all(200 <= r.status_code < 300 for r in responses), [r.text for r in responses]
    answers = {(r.json()["workflow_id"], r.json()["run_id"]) for r in responses}
    assert len(answers) == 1, answers
    ((wf_id, run_id),) = answers
    desc = await stack.client.temporal.get_workflow_handle(wf_id).describe()
    assert desc.run_id == run_id
    assert [r.run_id for r in delivery_rows(stack, msg_id)] == [run_id]
    # Exactly one execution with that id, ever.
    runs = [w async for w in stack.client.temporal.list_workflows(f"WorkflowId = '{wf_id}'")]
    assert len(runs) <= 1  # visibility may lag; never more than one
    result = (await stack.client.result(wf_id)).model_dump(mode="json")
    assert result["outcome"] == "completed"
    runs = [w async for w in stack.client.temporal.list_workflows(f"WorkflowId = '{wf_id}'")]
    assert len(runs) <= 1


async def test_several_signatures_one_valid_is_accepted(
    stack: Stack, api: httpx.AsyncClient
) -> None:
    body = json.dumps({**ORDER, "simulate_delivery_after_seconds": 1})
    headers = sign(body)
    old = sign(body, secret=OTHER_SECRET, msg_id=headers["webhook-id"])["webhook-signature"]
    headers["webhook-signature"] = f"v1a,c29tZXRoaW5nLWVsc2U= {old} {headers['webhook-signature']}"
    resp = await api.post(f"/webhooks/{WF}", content=body, headers=headers)
    assert resp.status_code == 202, resp.text
    await stack.client.result(resp.json()["workflow_id"])


# ---- refusals that start nothing --------------------------------------------------------------


def _tampered(body: str, h: dict[str, str]) -> tuple[str, dict[str, str]]:
    return body.replace('"quantity": 3', '"quantity": 300'), h


def _wrong_secret(body: str, h: dict[str, str]) -> tuple[str, dict[str, str]]:
    return body, sign(body, secret=OTHER_SECRET, msg_id=h["webhook-id"])


def _stale(body: str, h: dict[str, str]) -> tuple[str, dict[str, str]]:
    at = datetime.now(tz=UTC) - timedelta(seconds=400)
    return body, sign(body, msg_id=h["webhook-id"], at=at)


def _future(body: str, h: dict[str, str]) -> tuple[str, dict[str, str]]:
    at = datetime.now(tz=UTC) + timedelta(seconds=400)
    return body, sign(body, msg_id=h["webhook-id"], at=at)


def _no_signature(body: str, h: dict[str, str]) -> tuple[str, dict[str, str]]:
    return body, {k: v for k, v in h.items() if k != "webhook-signature"}


def _no_timestamp(body: str, h: dict[str, str]) -> tuple[str, dict[str, str]]:
    return body, {k: v for k, v in h.items() if k != "webhook-timestamp"}


def _no_comma(body: str, h: dict[str, str]) -> tuple[str, dict[str, str]]:
    return body, {**h, "webhook-signature": h["webhook-signature"].replace(",", "")}


def _not_base64(body: str, h: dict[str, str]) -> tuple[str, dict[str, str]]:
    return body, {**h, "webhook-signature": "v1,***not-base64***"}


def _bad_timestamp(body: str, h: dict[str, str]) -> tuple[str, dict[str, str]]:
    return body, {**h, "webhook-timestamp": "yesterday"}


def _bad_id(body: str, h: dict[str, str]) -> tuple[str, dict[str, str]]:
    return body, {**h, "webhook-id": "x" * 300}


@pytest.mark.parametrize(
    ("mutate", "expect"),
    [
        (_tampered, "no valid v1 signature"),
        (_wrong_secret, "no valid v1 signature"),
        (_stale, "±300 s"),
        (_future, "±300 s"),
        (_no_signature, "webhook-signature"),
        (_no_timestamp, "webhook-timestamp"),
        (_no_comma, "malformed webhook-signature"),
        (_not_base64, "no valid v1 signature"),
        (_bad_timestamp, "malformed webhook-timestamp"),
        (_bad_id, "malformed webhook-id"),
    ],
    ids=lambda v: getattr(v, "__name__", "").strip("_") or None,
)
async def test_bad_signature_is_401_and_starts_nothing(
    stack: Stack, api: httpx.AsyncClient, mutate: Any, expect: str
) -> None:
    body = json.dumps(ORDER)
    msg_id = f"msg_{uuid.uuid4().hex}"
    body, headers = mutate(body, sign(body, msg_id=msg_id))
    with structlog.testing.capture_logs() as logs:
        resp = await api.post(f"/webhooks/{WF}", content=body, headers=headers)
    assert resp.status_code == 401, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    assert expect in resp.json()["detail"]
    assert not await run_exists(stack, webhook_workflow_id(WF, msg_id))
    assert delivery_rows(stack, msg_id) == []
    secret_b64 = SECRET.removeprefix("whsec_")
    assert secret_b64 not in resp.text
    assert secret_b64 not in repr(logs)


async def test_missing_webhook_id_is_401(api: httpx.AsyncClient) -> None:
    body = json.dumps(ORDER)
    headers = {k: v for k, v in sign(body).items() if k != "webhook-id"}
    resp = await api.post(f"/webhooks/{WF}", content=body, headers=headers)
    assert resp.status_code == 401
    assert "webhook-id" in resp.json()["detail"]


async def test_unsigned_steering_is_401(stack: Stack, api: httpx.AsyncClient) -> None:
    resp = await api.post(
        f"/webhooks/{WF}/anything/signal/confirm_delivery", json={"reference": "x"}
    )
    assert resp.status_code == 401
    resp = await api.post(f"/webhooks/{WF}/anything/update/approve", json={})
    assert resp.status_code == 401
    resp = await api.post("/webhooks/NoSuchWorkflow", json={})
    assert resp.status_code == 401  # unsigned callers learn nothing about routes


async def test_oversized_body_is_413(stack: Stack) -> None:
    settings = settings_for(stack, webhook_max_body_bytes=1024)
    body = json.dumps({**ORDER, "sku": "W" * 2000})
    msg_id = f"msg_{uuid.uuid4().hex}"
    async with http(stack, settings) as api:
        resp = await api.post(f"/webhooks/{WF}", content=body, headers=sign(body, msg_id=msg_id))
        assert resp.status_code == 413, resp.text
        assert "1024" in resp.json()["detail"]

        # Without a Content-Length (chunked), the actual size is counted.
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(body), 100):
                yield body[i : i + 100].encode()

        headers = sign(body, msg_id=msg_id)
        resp = await api.post(f"/webhooks/{WF}", content=chunks(), headers=headers)
        assert "content-length" not in {k.lower() for k in resp.request.headers}
        assert resp.status_code == 413, resp.text
    assert not await run_exists(stack, webhook_workflow_id(WF, msg_id))


@pytest.mark.parametrize(
    ("body", "expect"),
    [
        ('{"sku": "WIDGET-42", ', "not valid JSON"),
        ('{"quantity": -5}', "quantity"),
        ('{"quantity": "many"}', "quantity"),
        ('{"bogus": 1}', "bogus"),
        ("[1, 2]", "invalid input for ProcurementWorkflow"),
    ],
)
async def test_invalid_body_is_422_with_a_helpful_message(
    stack: Stack, api: httpx.AsyncClient, body: str, expect: str
) -> None:
    msg_id = f"msg_{uuid.uuid4().hex}"
    resp = await api.post(f"/webhooks/{WF}", content=body, headers=sign(body, msg_id=msg_id))
    assert resp.status_code == 422, resp.text
    assert expect in resp.json()["detail"]
    assert not await run_exists(stack, webhook_workflow_id(WF, msg_id))
    # Recorded as refused (no run): the signed delivery cannot be replayed to another route.
    [row] = delivery_rows(stack, msg_id)
    assert (row.status, row.run_id, row.workflow_type) == ("refused", None, WF)


async def test_unknown_workflow_type_is_404(api: httpx.AsyncClient) -> None:
    resp = await post_signed(api, "/webhooks/NoSuchWorkflow", {})
    assert resp.status_code == 404
    assert "ProcurementWorkflow" in resp.json()["detail"]  # names the known types
    resp = await post_signed(api, "/webhooks/NoSuchWorkflow/x/signal/confirm_delivery", {})
    assert resp.status_code == 404


async def test_no_secret_is_503(stack: Stack) -> None:
    settings = stack.settings.model_copy(update={"webhook_secret": None})
    msg_id = f"msg_{uuid.uuid4().hex}"
    async with http(stack, settings) as api:
        resp = await post_signed(api, f"/webhooks/{WF}", ORDER, msg_id=msg_id)
        assert resp.status_code == 503
        assert resp.json()["detail"] == "webhooks disabled: set LEDGERFLOW_WEBHOOK_SECRET"
        resp = await post_signed(api, f"/webhooks/{WF}/x/signal/confirm_delivery", {})
        assert resp.status_code == 503
        assert (await api.get("/health")).json()["webhooks"] == "disabled"
    assert not await run_exists(stack, webhook_workflow_id(WF, msg_id))


async def test_malformed_secret_is_503_without_echoing_it(stack: Stack) -> None:
    settings = stack.settings.model_copy(
        update={"webhook_secret": SecretStr("whsec_!!!definitely-not-base64!!!")}
    )
    async with http(stack, settings) as api:
        resp = await post_signed(api, f"/webhooks/{WF}", ORDER)
    assert resp.status_code == 503
    assert "definitely" not in resp.text
    with pytest.raises(ConfigError):
        decode_secret("whsec_")


# ---- steering running runs --------------------------------------------------------------------


async def test_update_routes_approve_reject_and_conflicts(
    stack: Stack, api: httpx.AsyncClient
) -> None:
    # 500 units at 12.00 is over the 5,000 per-transaction cap: the run escalates.
    resp = await post_signed(api, f"/webhooks/{WF}", {"sku": "WIDGET-42", "quantity": 500})
    assert resp.status_code == 202, resp.text
    wf_id = resp.json()["workflow_id"]
    await wait_phase(stack, wf_id, "awaiting-approval")

    # Model violations are 422, unknown messages 404.
    path = f"/webhooks/{WF}/{wf_id}/update"
    resp = await post_signed(api, f"{path}/reject", {"approver": "x" * 500})
    assert resp.status_code == 422 and "approver" in resp.json()["detail"]
    resp = await post_signed(api, f"{path}/explode", {})
    assert resp.status_code == 404 and "approve" in resp.json()["detail"]
    resp = await post_signed(api, f"/webhooks/{WF}/{wf_id}/signal/explode", {})
    assert resp.status_code == 404

    reject_id = f"msg_{uuid.uuid4().hex}"
    decision = {"approver": "cfo@example.com", "reason": "too much"}
    resp = await post_signed(api, f"{path}/reject", decision, msg_id=reject_id)
    assert resp.status_code == 200, resp.text
    assert resp.json()["result"] == "rejected"
    assert resp.json()["duplicate"] is False

    result = (await stack.client.result(wf_id)).model_dump(mode="json")
    assert result["outcome"] == "rejected"
    assert "cfo@example.com" in result["reason"]

    # A replay of the answered update is acknowledged, not refused.
    resp = await post_signed(api, f"{path}/reject", decision, msg_id=reject_id)
    assert resp.status_code == 200, resp.text
    assert resp.json()["duplicate"] is True
    # A new update to the finished run conflicts.
    resp = await post_signed(api, f"{path}/approve", {})
    assert resp.status_code == 409, resp.text


async def test_update_without_pending_approval_is_409(stack: Stack, api: httpx.AsyncClient) -> None:
    resp = await post_signed(api, f"/webhooks/{WF}", ORDER)
    assert resp.status_code == 202, resp.text
    wf_id = resp.json()["workflow_id"]
    await wait_phase(stack, wf_id, "awaiting-delivery")
    msg_id = f"msg_{uuid.uuid4().hex}"
    resp = await post_signed(api, f"/webhooks/{WF}/{wf_id}/update/approve", {}, msg_id=msg_id)
    assert resp.status_code == 409, resp.text
    assert "no approval is pending" in resp.json()["detail"]
    # Refused deliveries are recorded as refused, bound to this route and run.
    [row] = delivery_rows(stack, msg_id)
    assert (row.status, row.workflow_id) == ("refused", wf_id)
    assert "no approval is pending" in (row.detail or "")

    # Concurrent duplicate signals: all acknowledged, the run completes once.
    path = f"/webhooks/{WF}/{wf_id}/signal/confirm_delivery"
    body = json.dumps({"reference": "pod-dup"})
    headers = sign(body)
    responses = await asyncio.gather(
        *(api.post(path, content=body, headers=headers) for _ in range(5))
    )
    assert all(r.status_code == 202 for r in responses), [r.text for r in responses]
    assert sum(not r.json()["duplicate"] for r in responses) == 1
    result = (await stack.client.result(wf_id)).model_dump(mode="json")
    assert result["outcome"] == "completed"


async def test_unknown_run_is_404(api: httpx.AsyncClient) -> None:
    resp = await post_signed(
        api, f"/webhooks/{WF}/no-such-run-{uuid.uuid4().hex[:8]}/signal/confirm_delivery", {}
    )
    assert resp.status_code == 404, resp.text
    assert "no run" in resp.json()["detail"]
    resp = await post_signed(api, f"/webhooks/{WF}/no-such-run/update/approve", {})
    assert resp.status_code == 404, resp.text


async def test_webhook_id_cannot_be_reused_on_another_route(
    stack: Stack, api: httpx.AsyncClient
) -> None:
    """A captured start delivery replayed (within the window) to a signal route is refused."""
    body = json.dumps({})
    msg_id = f"msg_{uuid.uuid4().hex}"
    headers = sign(body, msg_id=msg_id)
    resp = await api.post(f"/webhooks/{WF}", content=body, headers=headers)
    assert resp.status_code == 202, resp.text
    wf_id = resp.json()["workflow_id"]
    try:
        resp = await api.post(
            f"/webhooks/{WF}/{wf_id}/signal/confirm_delivery", content=body, headers=headers
        )
        assert resp.status_code == 409, resp.text
        assert "another route" in resp.json()["detail"]
    finally:
        await stack.client.temporal.get_workflow_handle(wf_id).terminate("test cleanup")


# ---- docs and the verifier itself -------------------------------------------------------------


async def test_openapi_documents_routes_and_models(api: httpx.AsyncClient) -> None:
    assert (await api.get("/docs")).status_code == 200
    spec = (await api.get("/openapi.json")).json()
    start = spec["paths"][f"/webhooks/{WF}"]["post"]
    ref = start["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref == "#/components/schemas/ProcurementRequest"
    assert {p["name"] for p in start["parameters"]} >= {
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    }
    assert "202" in start["responses"] and "401" in start["responses"]
    schemas = spec["components"]["schemas"]
    for name in ("ProcurementRequest", "DeliveryConfirmation", "ApprovalDecision"):
        assert name in schemas
    assert "quantity" in schemas["ProcurementRequest"]["properties"]
    assert f"/webhooks/{WF}/{{workflow_id}}/signal/confirm_delivery" in spec["paths"]
    assert f"/webhooks/{WF}/{{workflow_id}}/update/approve" in spec["paths"]
    assert f"/webhooks/{WF}/{{workflow_id}}/update/reject" in spec["paths"]


def test_verifier_agrees_with_the_reference_library() -> None:
    key = decode_secret(SECRET)
    body = b'{"x": "caf\xc3\xa9"}'
    headers = sign(body)
    assert verify_signature(key, headers, body) == headers["webhook-id"]
    Webhook(SECRET).verify(body, headers)  # and the reference accepts what we accept
    with pytest.raises(WebhookError) as err:
        verify_signature(key, headers, body + b" ")
    assert err.value.status == 401
    # The prefix is optional, unpadded base64 is fine.
    raw = SECRET.removeprefix("whsec_")
    assert decode_secret(raw) == key == decode_secret("whsec_" + raw.rstrip("="))


# ---- the API as served, with the documented curl example ----------------------------------------


@pytest.mark.skipif(
    not all(shutil.which(t) for t in ("bash", "curl", "openssl", "od", "base64")),
    reason="needs bash, curl, openssl, od and base64",
)
async def test_documented_curl_example_starts_a_run(stack: Stack) -> None:
    """``docs/webhooks.md``'s shell example, run verbatim against ``serve_api`` over real HTTP.

    The app connects its own client lazily (no client injected), as ``ledgerflow api`` does.
    """
    doc = (Path(__file__).resolve().parents[1] / "docs" / "webhooks.md").read_text()
    match = re.search(r"### Shell.*?```sh\n(.*?)```", doc, re.S)
    assert match, "docs/webhooks.md lost its shell example"
    port = free_port()
    # In this process the Temporal runtime exists already (without metrics): no endpoint here;
    # the API process's own endpoint is scraped in test_up.
    settings = settings_for(stack, api_port=port, api_metrics_port=0)
    script = (
        match.group(1)
        .replace("SECRET='whsec_...'", f"SECRET='{SECRET}'")
        .replace("API='http://127.0.0.1:8000'", f"API='http://127.0.0.1:{port}'")
    )
    stop = asyncio.Event()
    server = asyncio.create_task(serve_api(settings, stop))
    try:
        async with httpx.AsyncClient() as c:
            for _ in range(100):
                try:
                    if (await c.get(f"http://127.0.0.1:{port}/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
        proc = await asyncio.create_subprocess_exec(
            "bash", "-euo", "pipefail", "-c", script, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0
        answer = json.loads(out)
        assert set(answer) == {"workflow_id", "run_id"}, answer
        wf_id = answer["workflow_id"]
        await wait_phase(stack, wf_id, "awaiting-delivery")
        await stack.client.confirm_delivery(wf_id, reference="pod-curl")
        assert (await stack.client.result(wf_id)).outcome == "completed"
    finally:
        stop.set()
        await asyncio.wait_for(server, 10)


async def test_content_review_is_answerable_by_webhook(
    stack: Stack, api: httpx.AsyncClient
) -> None:
    """ContentProvenanceWorkflow: started and reviewed over signed webhooks."""
    payload = {"title": "Q3 memo", "body": "CONFIDENTIAL - do not distribute.", "author": "cfo"}
    resp = await post_signed(api, "/webhooks/ContentProvenanceWorkflow", payload)
    assert resp.status_code == 202, resp.text
    wf_id = resp.json()["workflow_id"]
    handle = stack.client.temporal.get_workflow_handle(wf_id)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while (await handle.query("state"))["phase"] != "awaiting-review":
        assert loop.time() < deadline, "the flagged content never waited for review"
        await asyncio.sleep(0.1)
    review = {"action": "approve", "reviewer": "editor@example.com", "reason": "redacted"}
    resp = await post_signed(
        api, f"/webhooks/ContentProvenanceWorkflow/{wf_id}/update/review", review
    )
    assert resp.status_code == 200, resp.text
    result = (await stack.client.result(wf_id)).model_dump(mode="json")
    assert result["outcome"] == "approved" and result["reviewed_by"] == "editor@example.com"
    assert (await stack.client.verify(wf_id)).ok
