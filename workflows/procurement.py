"""ProcurementWorkflow: an autonomous buyer bounded by an on-chain rulebook.

shortfall → offers → LLM decision → policy pre-check → (over the cap: human approval) →
escrow opened exactly once → delivery (signal, or deadline) → release → restock.

The model proposes and the contracts dispose: the decision is validated against the real offers
in the LLM activity, and the escrow contract checks the AgentPolicy inside the call that moves
money. A failure after money moved runs the compensations in reverse, each one checkpointed.
"""

from __future__ import annotations

import asyncio
import functools
from datetime import timedelta
from typing import Any, Literal

from pydantic import Field, field_validator
from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from ledgerflow.activities.procurement import (
        DecisionRequest,
        DecisionResult,
        EscrowRequest,
        GrantRequest,
        OfferList,
        OrderRef,
        PolicyCheck,
        PolicyCheckRequest,
        RestockRequest,
        Shortfall,
        SkuRequest,
        procurement_order_id,
    )
    from ledgerflow.flow.ledger import Ledger, failure_output
    from ledgerflow.types import AnchorMode, StrictModel, TxResult

from ledgerflow.flow.policies import (
    CHAIN_READ_START_TO_CLOSE_TIMEOUT,
    CHAIN_RETRY_POLICY,
    CHAIN_TX_START_TO_CLOSE_TIMEOUT,
    LLM_RETRY_POLICY,
    LLM_START_TO_CLOSE_TIMEOUT,
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


class ProcurementRequest(StrictModel):
    """Input of ProcurementWorkflow. Every field has a default, so ``{}`` is a valid start."""

    sku: str = Field(
        "WIDGET-42", min_length=1, description="inventory SKU (at most 32 bytes of UTF-8)"
    )
    quantity: int | None = Field(None, gt=0, description="units to buy; default: the shortfall")
    max_lead_time_days: int = Field(14, gt=0)
    approval_timeout_seconds: int = Field(86_400, gt=0)
    delivery_deadline_seconds: int = Field(7 * 86_400, gt=0)
    simulate_delivery_after_seconds: int | None = Field(
        None,
        ge=0,
        description="demo only: a simulated supplier confirms delivery after this many seconds",
    )
    anchor_mode: AnchorMode | None = Field(
        None, description="per-run anchoring mode; null = the starter's or workflow default"
    )
    wait_for_anchor: bool | None = Field(
        None, description="complete only after the last step is anchored; null = default (true)"
    )
    trigger: str | None = Field(None, description="what started the run (webhook id, event, ...)")

    @field_validator("sku")
    @classmethod
    def _sku_fits_bytes32(cls, sku: str) -> str:
        if len(sku.encode("utf-8")) > 32:
            raise ValueError("a SKU is at most 32 bytes of UTF-8 (it is a bytes32 on chain)")
        return sku


class ApprovalDecision(StrictModel):
    """Answer to an over-cap escalation (Update ``approve`` / ``reject``)."""

    approver: str = Field("operator", max_length=128)
    reason: str = Field("", max_length=1000)


class DeliveryConfirmation(StrictModel):
    """Signal ``confirm_delivery`` from the supplier (or its webhook)."""

    reference: str = Field("", max_length=256)
    quantity: int | None = Field(None, gt=0)


class ProcurementState(StrictModel):
    """Query ``state``: where the run is."""

    phase: str
    order_id: str | None = None
    supplier: str | None = None
    quantity: int | None = None
    total: int | None = None
    steps: int = 0
    head: str | None = None
    awaiting: str | None = None


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


class _Compensate(Exception):
    """A business failure after money may have moved: compensate, then end "compensated"."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Stop(Exception):
    """Ends the run early with a typed outcome (after compensations if any)."""

    def __init__(self, outcome: str, reason: str) -> None:
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason


@workflow.defn(name="ProcurementWorkflow")
class ProcurementWorkflow:
    def __init__(self) -> None:
        self._state = ProcurementState(phase="starting")
        self._approval: tuple[bool, ApprovalDecision] | None = None
        self._delivery: DeliveryConfirmation | None = None
        self._ledger: Ledger | None = None

    # ---- messages -----------------------------------------------------------------------------

    @workflow.query(name="state")
    def state(self) -> ProcurementState:
        if self._ledger is not None:
            self._state.steps = self._ledger.steps
            self._state.head = self._ledger.head
        return self._state

    @workflow.update(name="approve")
    async def approve(self, decision: ApprovalDecision) -> str:
        """Approve the pending over-cap purchase (answerable from the Temporal UI)."""
        self._approval = (True, decision)
        return "approved"

    @approve.validator
    def _validate_approve(self, decision: ApprovalDecision) -> None:
        self._require_pending_approval()

    @workflow.update(name="reject")
    async def reject(self, decision: ApprovalDecision) -> str:
        """Reject the pending over-cap purchase."""
        self._approval = (False, decision)
        return "rejected"

    @reject.validator
    def _validate_reject(self, decision: ApprovalDecision) -> None:
        self._require_pending_approval()

    def _require_pending_approval(self) -> None:
        if self._state.awaiting != "approval" or self._approval is not None:
            raise ValueError("no approval is pending for this run")

    @workflow.signal(name="confirm_delivery")
    def confirm_delivery(self, confirmation: DeliveryConfirmation) -> None:
        if self._delivery is None:
            self._delivery = confirmation

    # ---- the run --------------------------------------------------------------------------

    @workflow.run
    async def run(self, request: ProcurementRequest) -> ProcurementResult:
        ledger = self._ledger = Ledger(
            request.anchor_mode, wait_for_anchor=request.wait_for_anchor is not False
        )
        info = workflow.info()
        order_id = procurement_order_id(info.workflow_id, info.first_execution_run_id)
        self._state.order_id = order_id
        result: dict[str, Any] = {"sku": request.sku, "order_id": order_id}
        compensations: list[tuple[str, Any]] = []
        outcome, reason = "completed", ""
        try:
            await self._procure(request, order_id, result, compensations)
        except _Stop as stop:
            outcome, reason = stop.outcome, stop.reason
        except (ActivityError, _Compensate, asyncio.CancelledError) as err:
            outcome, reason = "compensated", _reason(err)
            try:
                done = await asyncio.shield(asyncio.ensure_future(self._compensate(compensations)))
            except ActivityError as comp_err:
                # Never swallowed: the run fails loudly, after its steps (the failed compensation
                # included) are checkpointed, so the record shows what needs a human.
                await ledger.finish("compensation-failed")
                raise ApplicationError(
                    f"compensation failed after {reason}: {_reason(comp_err)}; needs a human",
                    type="CompensationFailed",
                    non_retryable=True,
                ) from comp_err
            result["compensations"] = done
            if isinstance(err, asyncio.CancelledError):
                await ledger.finish("cancelled")
                raise
        if outcome != "completed" and compensations and "compensations" not in result:
            result["compensations"] = await self._compensate(compensations)
        self._state.phase = outcome
        self._state.awaiting = None
        await ledger.finish(outcome)
        return ProcurementResult(
            outcome=outcome,  # type: ignore[arg-type]
            reason=reason,
            steps=ledger.steps,
            head=ledger.head,
            anchor_mode=ledger.mode,
            anchored=ledger.anchored,
            **result,
        )

    async def _procure(
        self,
        req: ProcurementRequest,
        order_id: str,
        result: dict[str, Any],
        compensations: list[tuple[str, Any]],
    ) -> None:
        ledger = self._ledger
        assert ledger is not None
        sku = SkuRequest(sku=req.sku)
        self._state.phase = "reading-shortfall"
        shortfall: Shortfall = await ledger.step(
            "chain",
            "inventory.read_shortfall",
            sku,
            lambda: self._read("inventory.read_shortfall", sku, Shortfall),
        )
        quantity = req.quantity or shortfall.needed
        if quantity <= 0:
            raise _Stop("rejected", f"no shortfall for {req.sku}: stock {shortfall.stock}")

        self._state.phase = "fetching-offers"
        offers: OfferList = await ledger.step(
            "chain",
            "marketplace.fetch_offers",
            sku,
            lambda: self._read("marketplace.fetch_offers", sku, OfferList),
        )
        if not offers.offers:
            raise _Stop("rejected", f"no offers for {req.sku}")

        self._state.phase = "deciding"
        decision_request = DecisionRequest(
            sku=req.sku,
            quantity_needed=quantity,
            max_lead_time_days=req.max_lead_time_days,
            offers=offers.offers,
        )
        try:
            decision: DecisionResult = await ledger.step(
                "llm",
                "llm.choose_supplier",
                decision_request,
                lambda: workflow.execute_activity(
                    "llm.choose_supplier",
                    decision_request,
                    result_type=DecisionResult,
                    start_to_close_timeout=LLM_START_TO_CLOSE_TIMEOUT,
                    retry_policy=LLM_RETRY_POLICY,
                ),
            )
        except ActivityError as err:
            raise _Stop("rejected", f"no usable decision: {_reason(err)}") from None
        supplier, total = decision.supplier, decision.total
        result.update(
            supplier=supplier,
            quantity=decision.decision.quantity,
            unit_price=decision.decision.unit_price,
            total=total,
            decided_by=f"{decision.meta.provider}:{decision.meta.model}",
        )
        self._state = self._state.model_copy(
            update={"supplier": supplier, "quantity": decision.decision.quantity, "total": total}
        )

        self._state.phase = "policy-check"
        check_req = PolicyCheckRequest(supplier=supplier, amount=total, order_id=order_id)
        check: PolicyCheck = await ledger.step(
            "chain",
            "policy.precheck",
            check_req,
            lambda: self._read("policy.precheck", check_req, PolicyCheck),
        )
        if not check.ok and check.error in ESCALATING_ERRORS:
            approver = await self._escalate(req, check)
            result["approved_by"] = approver.approver
            grant = GrantRequest(
                order_id=order_id, supplier=supplier, amount=total, approver=approver.approver
            )
            await ledger.step(
                "chain",
                "policy.grant_exception",
                grant,
                lambda: self._tx("policy.grant_exception", grant),
            )

        # Register the refund before the payment: a timed-out open may still have succeeded.
        order = OrderRef(order_id=order_id)
        compensations.append(("escrow.refund", order))
        self._state.phase = "paying"
        escrow = EscrowRequest(
            order_id=order_id,
            supplier=supplier,
            amount=total,
            deadline=int(workflow.now().timestamp()) + req.delivery_deadline_seconds,
        )
        await ledger.step("chain", "escrow.open", escrow, lambda: self._tx("escrow.open", escrow))

        await self._await_delivery(req)

        self._state.phase = "releasing"
        await ledger.step(
            "chain", "escrow.release", order, lambda: self._tx("escrow.release", order)
        )
        compensations.clear()  # the supplier is paid for a delivered order: nothing to undo
        restock = RestockRequest(
            sku=req.sku, quantity=decision.decision.quantity, order_id=order_id
        )
        self._state.phase = "restocking"
        await ledger.step(
            "chain", "inventory.restock", restock, lambda: self._tx("inventory.restock", restock)
        )

    async def _escalate(self, req: ProcurementRequest, check: PolicyCheck) -> ApprovalDecision:
        ledger = self._ledger
        assert ledger is not None
        self._state.phase = "awaiting-approval"
        self._state.awaiting = "approval"
        await ledger.flush()  # anchor what happened so far before waiting on a human
        try:
            await workflow.wait_condition(
                lambda: self._approval is not None,
                timeout=timedelta(seconds=req.approval_timeout_seconds),
            )
        except TimeoutError:
            ledger.record(
                "timer",
                "approval.timeout",
                {"timeout_seconds": req.approval_timeout_seconds, "error": check.error},
                {"error": {"type": "ApprovalTimeout", "message": "no approval before the timeout"}},
                ok=False,
            )
            raise _Stop("rejected", "approval timed out") from None
        finally:
            self._state.awaiting = None
        assert self._approval is not None
        approved, decision = self._approval
        ledger.record(
            "update",
            "approval.approve" if approved else "approval.reject",
            decision,
            {"approved": approved},
        )
        if not approved:
            raise _Stop("rejected", f"rejected by {decision.approver}: {decision.reason}".strip())
        return decision

    async def _await_delivery(self, req: ProcurementRequest) -> None:
        ledger = self._ledger
        assert ledger is not None
        self._state.phase = "awaiting-delivery"
        self._state.awaiting = "delivery"
        await ledger.flush()
        simulate = req.simulate_delivery_after_seconds
        wait = req.delivery_deadline_seconds
        if simulate is not None and simulate < wait:
            wait = simulate
        try:
            await workflow.wait_condition(
                lambda: self._delivery is not None, timeout=timedelta(seconds=wait)
            )
        except TimeoutError:
            if simulate is not None and wait == simulate:
                self._delivery = DeliveryConfirmation(reference="simulated-supplier")
                ledger.record(
                    "timer", "delivery.simulated", {"after_seconds": simulate}, self._delivery
                )
                return
            ledger.record(
                "timer",
                "delivery.deadline",
                {"deadline_seconds": wait},
                {"error": {"type": "DeliveryDeadline", "message": "no delivery by the deadline"}},
                ok=False,
            )
            raise _Compensate("delivery deadline passed") from None
        finally:
            self._state.awaiting = None
        ledger.record("signal", "delivery.confirmed", {}, self._delivery)

    async def _compensate(self, compensations: list[tuple[str, Any]]) -> list[str]:
        """Run compensations in reverse, each checkpointed; a failing one fails the run loudly."""
        ledger = self._ledger
        assert ledger is not None
        self._state.phase = "compensating"
        done: list[str] = []
        for name, arg in reversed(compensations):
            await ledger.step("compensation", name, arg, functools.partial(self._tx, name, arg))
            done.append(name)
        compensations.clear()
        return done

    # ---- activity helpers -----------------------------------------------------------------

    async def _read(self, name: str, arg: Any, result_type: type) -> Any:
        return await workflow.execute_activity(
            name,
            arg,
            result_type=result_type,
            start_to_close_timeout=CHAIN_READ_START_TO_CLOSE_TIMEOUT,
            retry_policy=CHAIN_RETRY_POLICY,
        )

    async def _tx(self, name: str, arg: Any) -> TxResult:
        return await workflow.execute_activity(
            name,
            arg,
            result_type=TxResult,
            start_to_close_timeout=CHAIN_TX_START_TO_CLOSE_TIMEOUT,
            retry_policy=CHAIN_RETRY_POLICY,
        )


def _reason(err: BaseException) -> str:
    if isinstance(err, _Compensate):
        return err.reason
    if isinstance(err, asyncio.CancelledError):
        return "cancelled"
    error = failure_output(err)["error"]
    return f"{error['type']}: {error['message']}"
