"""ProcurementWorkflow: an autonomous buyer bounded by an on-chain rulebook.

shortfall → offers → LLM decision → policy pre-check → (over the cap: human approval) →
escrow opened exactly once → delivery (signal, or deadline) → release → restock.

The model proposes and the contracts dispose: the decision is validated against the real offers
in the LLM activity, and the escrow contract checks the AgentPolicy inside the call that moves
money. A failure after money moved runs the compensations in reverse, each one checkpointed.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from ledgerflow.activities.procurement import (
        DecisionRequest,
        DecisionResult,
        EscrowRequest,
        GrantRequest,
        OrderRef,
        PolicyCheck,
        PolicyCheckRequest,
        ProcurementActivities,
        RestockRequest,
        SkuRequest,
        choose_supplier_activity,
        decision_problem,
        procurement_order_id,
    )
    from ledgerflow.flow import (
        CheckpointedWorkflow,
        Compensate,
        Run,
        RunState,
        reason_of,
        register,
        signal_handler,
        update_handler,
    )
    from ledgerflow.flow.workflow import ledger_details, tokens
    from ledgerflow.types import (
        MAX_LEAD_TIME_DAYS,
        MAX_WAIT_SECONDS,
        AnchorMode,
        Quantity,
        Sku,
        StrictInput,
        StrictModel,
        Text,
        WaitSeconds,
    )

__all__ = [
    "ApprovalDecision",
    "DeliveryConfirmation",
    "ProcurementRequest",
    "ProcurementResult",
    "ProcurementState",
    "ProcurementWorkflow",
]


# ---- input, messages, state and result --------------------------------------------------------

Outcome = Literal["completed", "compensated", "rejected"]


class ProcurementRequest(StrictInput):
    """Input of ProcurementWorkflow. Every field has a default, so ``{}`` is a valid start.

    Strict and bounded (docs/procurement.md): integers are JSON integers, every duration is at
    most a year, the SKU fits a ``bytes32``.
    """

    sku: Sku = "WIDGET-42"
    quantity: Quantity | None = Field(None, description="units to buy; default: the shortfall")
    max_lead_time_days: int = Field(14, gt=0, le=MAX_LEAD_TIME_DAYS)
    approval_timeout_seconds: WaitSeconds = Field(
        86_400, description="how long an over-cap purchase waits for `approve` / `reject`"
    )
    delivery_deadline_seconds: WaitSeconds = Field(
        7 * 86_400, description="how long after paying the delivery may take (escrow deadline)"
    )
    simulate_delivery_after_seconds: int | None = Field(
        None,
        ge=0,
        le=MAX_WAIT_SECONDS,
        description="demo only: a simulated supplier confirms delivery after this many seconds",
    )
    anchor_mode: AnchorMode | None = Field(
        None, description="per-run anchoring mode; null = the starter's or workflow default"
    )
    wait_for_anchor: bool | None = Field(
        None, description="complete only after the last step is anchored; null = default (true)"
    )
    trigger: Text | None = Field(
        None, max_length=300, description="what started the run (webhook id, event, ...)"
    )


class ApprovalDecision(StrictInput):
    """Answer to an over-cap escalation (Update ``approve`` / ``reject``)."""

    approver: Text = Field("operator", min_length=1, max_length=128)
    reason: Text = Field("", max_length=1000)


class DeliveryConfirmation(StrictInput):
    """Signal ``confirm_delivery`` from the supplier (or its webhook)."""

    reference: Text = Field("", max_length=256)
    quantity: Quantity | None = None


class ProcurementState(RunState):
    """Query ``state``: where the run is."""

    order_id: str | None = None
    supplier: str | None = None
    quantity: int | None = None
    total: int | None = None


class ProcurementResult(StrictModel):
    outcome: Outcome
    reason: str = ""
    sku: str
    order_id: str | None = None
    supplier: str | None = None
    quantity: int | None = None
    unit_price: int | None = None
    total: int | None = None
    decided_by: str | None = None
    approved_by: str | None = None
    compensations: list[str] = Field(default_factory=list)
    steps: int
    head: str
    anchor_mode: AnchorMode
    anchored: bool


#: Cap errors escalate to a human; every other policy error is left to the contract to refuse.
ESCALATING_ERRORS = frozenset({"PolicyCapExceeded"})

Activities = ProcurementActivities


@register
@workflow.defn(name="ProcurementWorkflow")
class ProcurementWorkflow(CheckpointedWorkflow):
    State = ProcurementState
    state: ProcurementState

    approve = update_handler(
        "approve", ApprovalDecision, into="approval", value=lambda d: (True, d), reply="approved"
    )
    reject = update_handler(
        "reject", ApprovalDecision, into="approval", value=lambda d: (False, d), reply="rejected"
    )
    confirm_delivery = signal_handler("confirm_delivery", DeliveryConfirmation, into="delivery")

    def __init__(self) -> None:
        super().__init__()
        self._decision: DecisionResult | None = None
        self._check: PolicyCheck | None = None
        self._request: ProcurementRequest | None = None
        self._approver: str | None = None

    # ---- what the Temporal UI shows ---------------------------------------------------------

    @classmethod
    def describe(cls, request: ProcurementRequest) -> tuple[str, str]:
        what = (
            f"{request.quantity} x {request.sku}"
            if request.quantity
            else (f"the shortfall of {request.sku}")
        )
        summary = f"Buy {what} within the on-chain policy"
        details = (
            f"**Buy {what}** from the supplier the agent chooses among the marketplace's offers, "
            f"paid into escrow under the on-chain AgentPolicy.\n\n"
            f"- lead time at most {request.max_lead_time_days} days\n"
            f"- over the per-transaction cap: a human approves within "
            f"{request.approval_timeout_seconds // 3600 or 1} h, or the purchase is rejected\n"
            f"- delivery confirmed within {request.delivery_deadline_seconds // 86400 or 1} "
            f"day(s), or the escrow is refunded"
            + (f"\n- started by `{request.trigger}`" if request.trigger else "")
        )
        return summary, details

    def subject(self, request: ProcurementRequest) -> str:
        self._request = request
        return request.sku

    def search_fields(self) -> dict[str, object]:
        fields: dict[str, object] = {}
        if self._decision is not None:
            fields["counterparty"] = self._decision.supplier
            fields["amount"] = self._decision.total
        if self._approver:
            fields["approver"] = self._approver
        return fields

    def current_details(self) -> str:
        st = self.state
        lines = [f"**{st.phase}**"]
        waiting = {
            "approval": "a human approval (Update `approve` or `reject`)",
            "delivery": "the supplier's delivery confirmation (Signal `confirm_delivery`)",
        }.get(st.awaiting or "")
        if waiting:
            lines.append(f"**Waiting for** {waiting}{self._why_waiting()}")
        d = self._decision
        if d is not None:
            lines.append(
                f"**Decision** ({d.meta.provider}:{d.meta.model}): {d.decision.quantity} x "
                f"{self._request.sku if self._request else ''} at {tokens(d.decision.unit_price)} "
                f"= **{tokens(d.total)}** from `{d.supplier}`\n\n> {d.decision.rationale}"
            )
        run = self._run
        if run is not None and run.finished:
            lines.append(f"**Outcome**: {run.outcome}" + (f": {run.reason}" if run.reason else ""))
        return "\n\n".join(lines) + "\n\n" + "\n".join(ledger_details(run))

    def _why_waiting(self) -> str:
        check = self._check
        if self.state.awaiting == "approval" and check is not None and self._decision is not None:
            return (
                f": {tokens(self._decision.total)} is over the per-transaction cap of "
                f"{tokens(check.per_tx_cap)} ({check.error})"
            )
        if self.state.awaiting == "delivery" and self._request is not None:
            return f" within {self._request.delivery_deadline_seconds // 3600 or 1} h"
        return ""

    @workflow.run
    async def run(self, request: ProcurementRequest) -> ProcurementResult:
        info = workflow.info()
        order_id = procurement_order_id(info.workflow_id, info.first_execution_run_id)
        self.state.order_id = order_id
        async with self.checkpointed(request) as run:
            run.fields.update(sku=request.sku, order_id=order_id)
            await self._procure(run, request, order_id)
        return run.result(ProcurementResult)

    async def _procure(self, run: Run, req: ProcurementRequest, order_id: str) -> None:
        st = self.state
        sku = SkuRequest(sku=req.sku)
        st.phase = "reading-shortfall"
        shortfall = await run.step(Activities.read_shortfall, sku)
        quantity = req.quantity or shortfall.needed
        if quantity <= 0:
            raise run.stop("rejected", f"no shortfall for {req.sku}: stock {shortfall.stock}")

        st.phase = "fetching-offers"
        offers = await run.step(Activities.fetch_offers, sku)
        if not offers.offers:
            raise run.stop("rejected", f"no offers for {req.sku}")

        st.phase = "deciding"
        decision_request = DecisionRequest(
            sku=req.sku,
            quantity_needed=quantity,
            max_lead_time_days=req.max_lead_time_days,
            offers=offers.offers,
        )
        try:
            decision = await run.step(choose_supplier_activity, decision_request)
        except ActivityError as err:
            raise run.stop("rejected", f"no usable decision: {reason_of(err)}") from None
        # Checked again here, whatever the activity said: never more than needed, a real offer.
        problem = decision_problem(decision_request, decision)
        if problem is not None:
            raise run.stop("rejected", f"no usable decision: {problem}")
        self._decision = decision
        supplier, total = decision.supplier, decision.total
        run.fields.update(
            supplier=supplier,
            quantity=decision.decision.quantity,
            unit_price=decision.decision.unit_price,
            total=total,
            decided_by=f"{decision.meta.provider}:{decision.meta.model}",
        )
        st.supplier, st.quantity, st.total = supplier, decision.decision.quantity, total

        st.phase = "policy-check"
        check_req = PolicyCheckRequest(supplier=supplier, amount=total, order_id=order_id)
        check = await run.step(Activities.precheck, check_req)
        self._check = check
        if not check.ok and check.error in ESCALATING_ERRORS:
            approver = await self._escalate(run, req, check)
            run.fields["approved_by"] = self._approver = approver.approver
            grant = GrantRequest(
                order_id=order_id, supplier=supplier, amount=total, approver=approver.approver
            )
            await run.step(Activities.grant_exception, grant)

        order = OrderRef(order_id=order_id)
        async with run.saga() as saga:
            # Registered before the payment: a timed-out open may still have succeeded.
            saga.compensate_with(Activities.refund_escrow, order)
            st.phase = "paying"
            escrow = EscrowRequest(
                order_id=order_id,
                supplier=supplier,
                amount=total,
                deadline=int(workflow.now().timestamp()) + req.delivery_deadline_seconds,
            )
            await run.step(Activities.open_escrow, escrow)
            await self._await_delivery(run, req)
            st.phase = "releasing"
            await run.step(Activities.release_escrow, order)
            saga.done()  # the supplier is paid for a delivered order: nothing to undo

        restock = RestockRequest(
            sku=req.sku, quantity=decision.decision.quantity, order_id=order_id
        )
        st.phase = "restocking"
        await run.step(Activities.restock, restock)

    async def _escalate(
        self, run: Run, req: ProcurementRequest, check: PolicyCheck
    ) -> ApprovalDecision:
        self.state.phase = "awaiting-approval"
        answered = await run.wait_for(
            "approval",
            lambda: self.received("approval") is not None,
            timeout=req.approval_timeout_seconds,
        )
        if not answered:
            run.record(
                "timer",
                "approval.timeout",
                {"timeout_seconds": req.approval_timeout_seconds, "error": check.error},
                {"error": {"type": "ApprovalTimeout", "message": "no approval before the timeout"}},
                ok=False,
            )
            raise run.stop("rejected", "approval timed out")
        approved, decision = self.received("approval")
        self._approver = decision.approver
        run.record(
            "update",
            "approval.approve" if approved else "approval.reject",
            decision,
            {"approved": approved},
        )
        if not approved:
            raise run.stop(
                "rejected", f"rejected by {decision.approver}: {decision.reason}".strip()
            )
        return decision  # type: ignore[no-any-return]

    async def _await_delivery(self, run: Run, req: ProcurementRequest) -> None:
        self.state.phase = "awaiting-delivery"
        simulate = req.simulate_delivery_after_seconds
        wait = req.delivery_deadline_seconds
        if simulate is not None and simulate < wait:
            wait = simulate
        arrived = await run.wait_for(
            "delivery", lambda: self.received("delivery") is not None, timeout=wait
        )
        if not arrived:
            if simulate is not None and wait == simulate:
                confirmation = DeliveryConfirmation(reference="simulated-supplier")
                self._deliver("delivery", confirmation)
                run.record("timer", "delivery.simulated", {"after_seconds": simulate}, confirmation)
                return
            run.record(
                "timer",
                "delivery.deadline",
                {"deadline_seconds": wait},
                {"error": {"type": "DeliveryDeadline", "message": "no delivery by the deadline"}},
                ok=False,
            )
            raise Compensate("delivery deadline passed")
        run.record("signal", "delivery.confirmed", {}, self.received("delivery"))
