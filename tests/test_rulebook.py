"""The rulebook v2 through ProcurementWorkflow on the real stack: signed M-of-N approvals,
payments bound to their decision step, budget refusals before anything is paid, concurrent runs
against one budget and one shortfall.

The contracts' own rules are tested call by call in tests/test_contracts_*.py; here the same
rules hold for whole runs, including runs racing each other.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from eth_account import Account

from ledgerflow.chain.approvals import ApprovalSignature, approvals_hash, signer_of
from ledgerflow.chain.deploy import DEMO_APPROVER_KEYS, DEV_KEYS, TUSD
from ledgerflow.errors import UpdateRejected
from ledgerflow.workflows.procurement import ProcurementRequest
from tests.conftest import Stack
from tests.support.chain import ChainAdmin
from tests.support.steps import business_steps

SUPPLIER_KEY = DEV_KEYS[8]
APPROVERS = [Account.from_key(k).address for k in DEMO_APPROVER_KEYS]


@pytest.fixture(scope="module")
def admin(stack: Stack) -> ChainAdmin:
    admin = ChainAdmin(stack.settings.rpc_url, stack.deployment)
    admin.allow(SUPPLIER_KEY)
    return admin


class TightBudget:
    def __init__(self, admin: ChainAdmin) -> None:
        self.admin = admin

    def leave(self, tusd: int) -> None:
        """Set the agent's rolling budget so that ``tusd`` of it remain now (what the session's
        earlier purchases spent stays in the window)."""
        policy = self.admin.c("AgentPolicy")
        agent = self.admin.d.agent
        budget = int(policy.functions.agentConfig(agent).call()[4])
        remaining = int(policy.functions.budgetOf(agent).call()[0])
        spent = budget - remaining  # in token units: earlier purchases need not be whole tUSD
        self.admin.set_agent_limits(cap_tusd=5_000, budget_tusd=0, budget_units=spent + tusd * TUSD)


@pytest.fixture
def tight_budget(admin: ChainAdmin) -> Iterator[TightBudget]:
    """The agent under a small rolling budget for one test (the session's limits after)."""
    yield TightBudget(admin)
    admin.set_agent_limits(cap_tusd=5_000, budget_tusd=10_000_000)


def _sku(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}".upper()


async def _result(stack: Stack, wf_id: str) -> dict[str, Any]:
    result: dict[str, Any] = (await stack.client.result(wf_id)).model_dump(mode="json")
    report = await stack.client.verify(wf_id)
    assert report.ok, report.problems
    return result


async def _awaiting_approval(stack: Stack, wf_id: str) -> Any:
    status = await stack.client.wait_until_awaiting(wf_id, "approval", timeout=60)
    assert status.awaiting == "approval", status
    return status.state.approval


async def test_over_the_unsigned_limit_only_m_valid_signatures_pay(
    stack: Stack, admin: ChainAdmin
) -> None:
    sku = _sku("REACTOR")
    admin.new_sku(sku, stock=0, threshold=100, target=100)
    admin.post_offer(SUPPLIER_KEY, sku, 300, 10, 500, "Reactor vessel parts")  # 30,000 tUSD
    wf_id = f"proc-signed-{uuid.uuid4().hex[:8]}"
    before = admin.vault_balance(stack.deployment.agent)
    await stack.client.start("ProcurementWorkflow", ProcurementRequest(sku=sku), workflow_id=wf_id)
    terms = await _awaiting_approval(stack, wf_id)
    assert terms.amount == 30_000 * TUSD and terms.unsigned_limit == 20_000 * TUSD
    assert terms.required == 2 and sorted(terms.approvers) == sorted(APPROVERS)
    expiry = int(time.time()) + 3_600

    # Above the unsigned limit, the Temporal UI's unsigned approve no longer works.
    with pytest.raises(UpdateRejected, match="above the unsigned limit"):
        await stack.client.approve(wf_id, approver="cfo@acme")
    # A stranger's signature, a forged one in an approver's name, one over other terms.
    stranger = Account.create()
    with pytest.raises(UpdateRejected, match="not a registered approver"):
        await stack.client.approve(wf_id, signature=terms.sign(stranger.key, expiry))
    forged = terms.sign(stranger.key, expiry).model_copy(update={"signer": APPROVERS[0]})
    with pytest.raises(UpdateRejected, match=r"is not .* over these terms"):
        await stack.client.approve(wf_id, signature=forged)
    cheaper = terms.model_copy(update={"amount": TUSD}).sign(DEMO_APPROVER_KEYS[0], expiry)
    with pytest.raises(UpdateRejected, match="over these terms"):
        await stack.client.approve(wf_id, signature=cheaper)

    # One approver's key (stolen, say) is not enough: the run keeps waiting.
    first = await stack.client.approve(wf_id, approver="a1", key=DEMO_APPROVER_KEYS[0])
    assert first == "signature 1 of 2 recorded"
    with pytest.raises(UpdateRejected, match="has signed already"):
        await stack.client.approve(wf_id, key=DEMO_APPROVER_KEYS[0])
    status = await stack.client.status(wf_id)
    assert status.awaiting == "approval" and status.state.approval.signed_by == [APPROVERS[0]]
    assert admin.vault_balance(stack.deployment.agent) == before

    # The second approver signs elsewhere and sends the signature over a signed webhook.
    from tests.test_api import WF, http, post_signed

    second = terms.sign(DEMO_APPROVER_KEYS[1], expiry).model_dump(mode="json")
    async with http(stack) as api:
        resp = await post_signed(
            api, f"/webhooks/{WF}/{wf_id}/update/approve", {"approver": "a2", "signature": second}
        )
    assert resp.status_code == 200, resp.text
    assert "approved" in resp.text
    await stack.client.wait_until_awaiting(wf_id, "delivery")
    await stack.client.confirm_delivery(wf_id, reference="pod-7")
    res = await _result(stack, wf_id)
    assert res["outcome"] == "completed", res
    assert res["approval_path"] == "signatures"
    assert res["approved_by"] == f"{APPROVERS[0]}, {APPROVERS[1]}"
    assert admin.vault_balance(stack.deployment.agent) == before - 30_000 * TUSD

    # The approval step names the signers; the chain carries the same signatures.
    steps = business_steps(stack.runtime.store, wf_id)
    approval = next(s for s in steps if s.name == "approval.approve")
    assert '"path":"signatures"' in approval.output_preimage
    assert APPROVERS[0] in approval.output_preimage and APPROVERS[1] in approval.output_preimage
    signed = [
        ApprovalSignature.model_validate(a["signature"])
        for a in json.loads(approval.input_preimage)["approvals"]
    ]
    assert [signer_of(terms, s) for s in signed] == APPROVERS[:2]
    (opened,) = admin.escrow_opened(res["order_id"])
    assert opened["approvalsHash"] == approvals_hash([s.signed() for s in signed])
    policy = admin.c("AgentPolicy")
    (spend,) = policy.events.SpendApproved.get_logs(
        argument_filters={"orderId": bytes.fromhex(res["order_id"][2:])}, from_block=0
    )
    assert list(spend["args"]["signers"]) == APPROVERS[:2]
    # verify shows who approved, from the verified records.
    report = await stack.client.verify(wf_id)
    assert report.ok, report.problems
    (shown,) = report.approvals
    assert shown["name"] == "approval.approve" and shown["path"] == "signatures"
    assert shown["approved"] is True and shown["signers"] == APPROVERS[:2]


async def test_one_signature_of_two_times_out_and_moves_nothing(
    stack: Stack, admin: ChainAdmin
) -> None:
    sku = _sku("REACTOR")
    admin.new_sku(sku, stock=0, threshold=100, target=100)
    admin.post_offer(SUPPLIER_KEY, sku, 300, 10, 500, "Reactor vessel parts")
    wf_id = f"proc-signed-{uuid.uuid4().hex[:8]}"
    before = admin.vault_balance(stack.deployment.agent)
    request = ProcurementRequest(sku=sku, approval_timeout_seconds=4)
    await stack.client.start("ProcurementWorkflow", request, workflow_id=wf_id)
    await _awaiting_approval(stack, wf_id)
    await stack.client.approve(wf_id, key=DEMO_APPROVER_KEYS[2])
    res = await _result(stack, wf_id)
    assert res["outcome"] == "rejected"
    assert res["reason"] == "approval timed out (1 of 2 signatures)"
    assert admin.vault_balance(stack.deployment.agent) == before
    assert admin.escrow_opened_events(res["order_id"]) == 0
    assert admin.reservation(res["order_id"])["status"] == 3  # given back


async def test_a_budget_refusal_says_the_rule_and_when_it_renews(
    stack: Stack, admin: ChainAdmin, tight_budget: TightBudget
) -> None:
    tight_budget.leave(150)  # one 120 tUSD purchase fits
    first = f"proc-budget-{uuid.uuid4().hex[:8]}"
    request = ProcurementRequest(sku="WIDGET-42", quantity=10, simulate_delivery_after_seconds=0)
    await stack.client.start("ProcurementWorkflow", request, workflow_id=first)
    done = await _result(stack, first)
    assert done["outcome"] == "completed", done

    before = admin.vault_balance(stack.deployment.agent)
    second = f"proc-budget-{uuid.uuid4().hex[:8]}"
    await stack.client.start("ProcurementWorkflow", request, workflow_id=second)
    res = await _result(stack, second)
    assert res["outcome"] == "rejected" and res["rule"] == "PolicyBudgetExceeded"
    assert res["reason"].startswith("over budget: 120.00 tUSD asked, 30.00 tUSD left")
    assert "the budget renews from 20" in res["reason"] and " UTC" in res["reason"]
    names = [s.name for s in business_steps(stack.runtime.store, second)]
    # No human was asked and nothing was paid, so there is nothing to undo: no refund.
    assert "approval.approve" not in names and "escrow.open" not in names
    assert res["compensations"] == []
    assert admin.vault_balance(stack.deployment.agent) == before


async def test_concurrent_runs_cannot_together_exceed_the_budget(
    stack: Stack, admin: ChainAdmin, tight_budget: TightBudget
) -> None:
    tight_budget.leave(500)  # four 120 tUSD purchases fit
    request = ProcurementRequest(sku="WIDGET-42", quantity=10, simulate_delivery_after_seconds=0)
    ids = [f"proc-race-{uuid.uuid4().hex[:8]}" for _ in range(8)]
    before = admin.vault_balance(stack.deployment.agent)
    await asyncio.gather(
        *(stack.client.start("ProcurementWorkflow", request, workflow_id=i) for i in ids)
    )
    results = await asyncio.gather(*(_result(stack, i) for i in ids))
    completed = [r for r in results if r["outcome"] == "completed"]
    rejected = [r for r in results if r["outcome"] == "rejected"]
    assert len(completed) == 4 and len(rejected) == 4, [r["reason"] for r in results]
    assert all(r["rule"] == "PolicyBudgetExceeded" for r in rejected)
    paid = sum(e["amount"] for r in results for e in admin.escrow_opened(r["order_id"]))
    assert paid == 4 * 120 * TUSD <= 500 * TUSD
    assert admin.vault_balance(stack.deployment.agent) == before - paid


async def test_concurrent_runs_cannot_buy_the_same_shortfall_twice(
    stack: Stack, admin: ChainAdmin
) -> None:
    sku = _sku("VALVE")
    admin.new_sku(sku, stock=0, threshold=40, target=40)  # a shortfall of 40
    admin.post_offer(SUPPLIER_KEY, sku, 2, 3, 1_000, "Valves")
    request = ProcurementRequest(sku=sku, simulate_delivery_after_seconds=0)  # the shortfall
    ids = [f"proc-short-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    await asyncio.gather(
        *(stack.client.start("ProcurementWorkflow", request, workflow_id=i) for i in ids)
    )
    results = await asyncio.gather(*(_result(stack, i) for i in ids))
    completed = [r for r in results if r["outcome"] == "completed"]
    assert len(completed) == 1 and completed[0]["quantity"] == 40, results
    for r in results:
        if r is not completed[0]:
            assert r["outcome"] == "rejected" and "reserved by other orders" in r["reason"], r
    assert admin.stock(sku) == 40
    assert sum(len(admin.escrow_opened(r["order_id"])) for r in results) == 1


async def test_a_payment_leads_back_to_its_decision_from_chain_data_alone(
    stack: Stack, admin: ChainAdmin
) -> None:
    """From EscrowOpened to the anchored decision step, per-step mode: the registry's
    Checkpointed log with that step hash names the run and the step's position."""
    wf_id = f"proc-trace-{uuid.uuid4().hex[:8]}"
    request = ProcurementRequest(
        sku="WIDGET-42", quantity=2, anchor_mode="per-step", simulate_delivery_after_seconds=0
    )
    await stack.client.start("ProcurementWorkflow", request, workflow_id=wf_id)
    res = await _result(stack, wf_id)
    (opened,) = admin.escrow_opened(res["order_id"])
    registry = admin.c("CheckpointRegistry")
    logs = registry.events.Checkpointed.get_logs(from_block=0)
    (hit,) = [log for log in logs if log["args"]["stepHash"] == opened["decisionHash"]]
    steps = business_steps(stack.runtime.store, wf_id)
    decided = next(s for s in steps if s.name == "llm.choose_supplier")
    assert hit["args"]["seq"] == decided.seq
    assert "0x" + hit["args"]["run"].hex() == stack.runtime.store.get_run(wf_id).run_key
