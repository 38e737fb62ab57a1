"""ProcurementWorkflow: an autonomous buyer bounded by an on-chain rulebook.

shortfall → offers → LLM decision → reservation of the quantity → policy pre-check → (over the
cap: approval, by approvers' signatures or an unsigned exception) → escrow opened exactly once,
naming the decision step → delivery (signal, or deadline) → release → restock.

The model proposes and the contracts dispose: the decision is validated against the real offers
in the LLM activity and again here, the inventory ledger refuses to reserve more than the
shortfall no other order holds, and the escrow contract checks the AgentPolicy inside the call
that moves money. A purchase the rulebook refuses is rejected with the rule, before anything is
paid; a failure after money moved runs the compensations in reverse, each one checkpointed.

Runs recorded before checkpoint spec v2 (and rulebook v2) replay on the version 1 path: no
reservation, budget refusals left to the escrow, unsigned approvals only.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal, NoReturn

from pydantic import Field
from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

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
        ReservationRequest,
        RestockRequest,
        SkuRequest,
        choose_supplier_activity,
        decision_problem,
        explain_refusal,
        procurement_order_id,
    )
    from ledgerflow.chain.approvals import ApprovalSignature, ApprovalTerms, signer_of
    from ledgerflow.flow import (
        CheckpointedWorkflow,
        Compensate,
        Run,
        RunState,
        reason_of,
        register,
        revert_of,
        signal_handler,
    )
    from ledgerflow.flow.workflow import ledger_details, tokens
    from ledgerflow.types import (
        MAX_LEAD_TIME_DAYS,
        MAX_WAIT_SECONDS,
        AnchorMode,
        ErrorType,
        EvolvingModel,
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
    quantity: Quantity | None = Field(
        None,
        description="units to buy, as asked; default: the part of the shortfall no open order "
        "has reserved, reserved on chain for this run",
    )
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


class ApprovalDecision(StrictInput, EvolvingModel):
    """Answer to an over-cap escalation (Update ``approve`` / ``reject``).

    ``signature`` is one approver's EIP-712 signature of the terms the run's state shows
    (``ledgerflow approve <id> --key-file F`` and the SDK make it); without one, ``approve`` is
    the unsigned path, open only up to the agent's unsigned limit.
    """

    __added_fields__ = frozenset({"signature"})

    approver: Text = Field("operator", min_length=1, max_length=128)
    reason: Text = Field("", max_length=1000)
    signature: ApprovalSignature | None = None


class DeliveryConfirmation(StrictInput):
    """Signal ``confirm_delivery`` from the supplier (or its webhook)."""

    reference: Text = Field("", max_length=256)
    quantity: Quantity | None = None


class ProcurementState(RunState):
    """Query ``state``: where the run is; while it waits for approval, what approvers sign."""

    order_id: str | None = None
    supplier: str | None = None
    quantity: int | None = None
    total: int | None = None
    approval: ApprovalTerms | None = None


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
    decision_hash: str | None = None
    approved_by: str | None = None
    approval_path: Literal["exception", "signatures"] | None = None
    rule: str | None = Field(None, description="the custom error of a rulebook refusal")
    compensations: list[str] = Field(default_factory=list)
    steps: int
    head: str
    anchor_mode: AnchorMode
    anchored: bool


#: Cap errors escalate to a human; every other refusal rejects the purchase before it is paid
#: (version 1 runs left those to the escrow contract).
ESCALATING_ERRORS = frozenset({"PolicyCapExceeded"})
#: How long an unsigned exception the approver service grants stays usable.
EXCEPTION_SECONDS = 3_600
#: A signature must stay valid at least this long after it arrives (the payment follows it).
MIN_SIGNATURE_SECONDS = 300

Activities = ProcurementActivities


@register
@workflow.defn(name="ProcurementWorkflow")
class ProcurementWorkflow(CheckpointedWorkflow):
    State = ProcurementState
    state: ProcurementState

    confirm_delivery = signal_handler("confirm_delivery", DeliveryConfirmation, into="delivery")

    def __init__(self) -> None:
        super().__init__()
        self._decision: DecisionResult | None = None
        self._check: PolicyCheck | None = None
        self._request: ProcurementRequest | None = None
        self._approver: str | None = None
        self._signed: list[ApprovalDecision] = []

    # ---- approvals -----------------------------------------------------------------------

    @workflow.update(name="approve")
    async def approve(self, decision: ApprovalDecision) -> str:
        """Approve the pending purchase: with an approver's signature (counted towards the
        threshold) or, up to the unsigned limit, without one."""
        if decision.signature is None:
            self._deliver("approval", (True, decision))
            return "approved"
        self._signed.append(decision)
        terms = self.state.approval
        if terms is not None:
            terms.signed_by.append(decision.signature.signer)
            if len(terms.signed_by) < terms.required:
                return f"signature {len(terms.signed_by)} of {terms.required} recorded"
        return "approved"

    @approve.validator
    def _validate_approve(self, decision: ApprovalDecision) -> None:
        self._refuse_unless_pending()
        terms = self.state.approval
        sig = decision.signature
        if sig is None:
            if terms is not None and terms.amount > terms.unsigned_limit:
                self._refuse(
                    f"{tokens(terms.amount)} is above the unsigned limit of "
                    f"{tokens(terms.unsigned_limit)}: it needs {terms.required} approvers' "
                    "signatures (ledgerflow approve <workflow-id> --key-file F)"
                )
            return
        if terms is None:
            self._refuse("this run takes no signed approvals")
        if sig.signer not in terms.approvers:
            self._refuse(f"{sig.signer} is not a registered approver of the agent")
        if sig.signer in terms.signed_by:
            self._refuse(f"{sig.signer} has signed already")
        if sig.expiry < workflow.now().timestamp() + MIN_SIGNATURE_SECONDS:
            self._refuse(f"the signature expires too soon (at least {MIN_SIGNATURE_SECONDS} s)")
        if signer_of(terms, sig) != sig.signer:
            self._refuse(f"the signature is not {sig.signer}'s over these terms")

    @workflow.update(name="reject")
    async def reject(self, decision: ApprovalDecision) -> str:
        """Reject the pending purchase."""
        self._deliver("approval", (False, decision))
        return "rejected"

    @reject.validator
    def _validate_reject(self, decision: ApprovalDecision) -> None:
        self._refuse_unless_pending()

    def _refuse_unless_pending(self) -> None:
        if self.state.awaiting != "approval" or "approval" in self._inbox:
            self._refuse("no approval is pending for this run")

    @staticmethod
    def _refuse(message: str) -> NoReturn:
        raise ApplicationError(message, type=ErrorType.UPDATE_REJECTED, non_retryable=True)

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
        check, terms = self._check, self.state.approval
        if self.state.awaiting == "approval" and terms is not None:
            signed = ", ".join(f"`{a}`" for a in terms.signed_by) or "nobody yet"
            above = (
                f"; above the unsigned limit of {tokens(terms.unsigned_limit)} only signatures"
                if terms.amount > terms.unsigned_limit
                else f"; up to {tokens(terms.unsigned_limit)} an unsigned `approve` will do"
            )
            return (
                f": {tokens(terms.amount)} is over the per-transaction cap"
                + (f" of {tokens(check.per_tx_cap)}" if check is not None else "")
                + f". {terms.required} of {len(terms.approvers)} approvers sign the EIP-712 "
                f"approval (`ledgerflow approve <workflow-id> --key-file F`){above}; "
                f"signed so far: {signed}"
            )
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

    def _rejected(self, run: Run, rule: str, reason: str) -> Exception:
        run.fields["rule"] = rule
        return run.stop("rejected", reason)

    async def _procure(self, run: Run, req: ProcurementRequest, order_id: str) -> None:
        st = self.state
        sku = SkuRequest(sku=req.sku)
        st.phase = "reading-shortfall"
        shortfall = await run.step(Activities.read_shortfall, sku)
        if run.v2 and req.quantity is None:
            # Buying the shortfall: only what no open order holds already, reserved on chain
            # before paying, so concurrent runs never buy the same units twice.
            if shortfall.needed <= 0:
                raise run.stop("rejected", f"no shortfall for {req.sku}: stock {shortfall.stock}")
            if shortfall.available <= 0:
                raise run.stop(
                    "rejected",
                    f"the shortfall of {shortfall.needed} x {req.sku} is reserved by other "
                    "orders already",
                )
            quantity = shortfall.available
        elif run.v2 and req.quantity is not None:
            quantity = req.quantity  # a purchase order someone wrote: bought as asked
        else:
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
        # The payment names this step: from EscrowOpened on chain to the anchored decision.
        decision_hash = run.decision_hash
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
        if run.v2:
            run.fields["decision_hash"] = decision_hash
        st.supplier, st.quantity, st.total = supplier, decision.decision.quantity, total

        order = OrderRef(order_id=order_id)
        async with run.saga() as saga:
            if run.v2 and req.quantity is None:
                st.phase = "reserving"
                saga.compensate_with(Activities.cancel_reservation, order)
                reservation = ReservationRequest(
                    sku=req.sku, quantity=decision.decision.quantity, order_id=order_id
                )
                try:
                    await run.step(Activities.reserve, reservation)
                except ActivityError as err:
                    refused = revert_of(err)
                    if refused is None:
                        raise
                    raise self._rejected(run, refused[0], explain_refusal(*refused)) from None

            st.phase = "policy-check"
            now = int(workflow.now().timestamp())
            v2_terms = (
                {"deadline": now + req.delivery_deadline_seconds, "decision_hash": decision_hash}
                if run.v2
                else {}
            )
            check_req = PolicyCheckRequest(
                supplier=supplier, amount=total, order_id=order_id, **v2_terms
            )
            check = await run.step(Activities.precheck, check_req)
            self._check = check
            approvals: list[ApprovalSignature] = []
            if not check.ok and check.error in ESCALATING_ERRORS:
                approvals = await self._approval(run, req, check, order_id, decision_hash)
            elif not check.ok and run.v2:
                raise self._rejected(run, check.error or "", check.reason or str(check.error))

            # Registered before the payment: a timed-out open may still have succeeded.
            saga.compensate_with(Activities.refund_escrow, order)
            st.phase = "paying"
            deadline = int(workflow.now().timestamp()) + req.delivery_deadline_seconds
            escrow = (
                EscrowRequest(
                    order_id=order_id,
                    supplier=supplier,
                    amount=total,
                    deadline=deadline,
                    decision_hash=decision_hash,
                    approvals=approvals,
                )
                if run.v2
                else EscrowRequest(
                    order_id=order_id, supplier=supplier, amount=total, deadline=deadline
                )
            )
            try:
                await run.step(Activities.open_escrow, escrow)
            except ActivityError as err:
                refused = revert_of(err) if run.v2 else None
                if refused is None:
                    raise
                # Refused inside the paying call (another run spent the budget since the
                # pre-check, a guardian paused the agent): nothing was paid, nothing to refund.
                raise self._rejected(
                    run,
                    refused[0],
                    explain_refusal(
                        *refused,
                        budget=check.budget,
                        window=None,
                    ),
                ) from None
            await self._await_delivery(run, req)
            st.phase = "releasing"
            await run.step(Activities.release_escrow, order)
            saga.done()  # the supplier is paid for a delivered order: nothing to undo

        restock = RestockRequest(
            sku=req.sku, quantity=decision.decision.quantity, order_id=order_id
        )
        st.phase = "restocking"
        await run.step(Activities.restock, restock)

    async def _approval(
        self,
        run: Run,
        req: ProcurementRequest,
        check: PolicyCheck,
        order_id: str,
        decision_hash: str,
    ) -> list[ApprovalSignature]:
        """Wait for the approval of an over-cap purchase; returns the signatures to pay with
        (none on the unsigned path, after the exception is granted)."""
        decision = self._decision
        assert decision is not None
        terms = check.approval if run.v2 else None
        self.state.approval = terms
        approved, answer, signed = await self._escalate(run, req, check)
        self.state.approval = None
        if signed:
            signers = [d.signature.signer for d in signed if d.signature is not None]
            run.record(
                "update",
                "approval.approve",
                {"approvals": signed},
                {"approved": True, "path": "signatures", "signers": signers},
            )
            run.fields.update(approved_by=", ".join(signers), approval_path="signatures")
            self._approver = ", ".join(signers)
            return [d.signature for d in signed if d.signature is not None]
        assert answer is not None
        self._approver = answer.approver
        run.record(
            "update",
            "approval.approve" if approved else "approval.reject",
            answer,
            {"approved": approved, "path": "exception"} if run.v2 else {"approved": approved},
        )
        if not approved:
            raise run.stop("rejected", f"rejected by {answer.approver}: {answer.reason}".strip())
        run.fields["approved_by"] = answer.approver
        if run.v2:
            run.fields["approval_path"] = "exception"
            expiry = int(workflow.now().timestamp()) + EXCEPTION_SECONDS
            grant = GrantRequest(
                order_id=order_id,
                supplier=decision.supplier,
                amount=decision.total,
                approver=answer.approver,
                decision_hash=decision_hash,
                expiry=expiry,
            )
        else:
            grant = GrantRequest(
                order_id=order_id,
                supplier=decision.supplier,
                amount=decision.total,
                approver=answer.approver,
            )
        await run.step(Activities.grant_exception, grant)
        return []

    def _valid_signatures(self, terms: ApprovalTerms | None) -> list[ApprovalDecision]:
        """The signed approvals that are still good for long enough to pay with."""
        if terms is None:
            return []
        now = workflow.now().timestamp()
        return [
            d
            for d in self._signed
            if d.signature is not None and d.signature.expiry >= now + MIN_SIGNATURE_SECONDS
        ][: max(terms.required, 1)]

    async def _escalate(
        self, run: Run, req: ProcurementRequest, check: PolicyCheck
    ) -> tuple[bool, ApprovalDecision | None, list[ApprovalDecision]]:
        """Wait for a human answer or enough signatures: ``(approved, answer, signatures)``."""
        self.state.phase = "awaiting-approval"
        terms = self.state.approval
        deadline = workflow.now() + timedelta(seconds=req.approval_timeout_seconds)

        def enough() -> bool:
            return terms is not None and len(self._valid_signatures(terms)) >= terms.required > 0

        while True:
            left = (deadline - workflow.now()).total_seconds()
            answered = left > 0 and await run.wait_for(
                "approval",
                lambda: self.received("approval") is not None or enough(),
                timeout=left,
            )
            if not answered:
                break
            if self.received("approval") is not None:
                approved, answer = self.received("approval")
                return approved, answer, []
            if enough():
                assert terms is not None
                return True, None, self._valid_signatures(terms)
            # A signature expired while waiting for the others: drop it, keep waiting.
            self._signed = self._valid_signatures(terms)
            if terms is not None:
                terms.signed_by = [d.signature.signer for d in self._signed if d.signature]
        have = len(self._valid_signatures(terms))
        signatures = f" ({have} of {terms.required} signatures)" if terms is not None else ""
        run.record(
            "timer",
            "approval.timeout",
            {"timeout_seconds": req.approval_timeout_seconds, "error": check.error},
            {
                "error": {
                    "type": "ApprovalTimeout",
                    "message": f"no approval before the timeout{signatures}",
                }
            },
            ok=False,
        )
        raise run.stop("rejected", f"approval timed out{signatures}")

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
