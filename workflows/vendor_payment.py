"""Pay a vendor's invoice: an LLM reads it, a human approves large amounts, escrow pays."""

from pydantic import Field
from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from ledgerflow.flow import Approval, CheckpointedWorkflow, RunResult, register, update_handler
    from ledgerflow.types import Address, StrictInput, StrictModel


class VendorPayment(StrictInput):
    vendor: Address = "0x976EA74026E726554dB657fA54763abd0C3a0aa9"
    invoice: str = Field("Invoice 7: 120 x WIDGET-42 at 12 tUSD = 1,440 tUSD", max_length=4000)
    max_amount: int = Field(1_440_000_000, gt=0, le=10**12, description="token units")
    approval_above: int = Field(1_000_000_000, ge=0, le=10**12, description="token units")
    approval_timeout_seconds: int = Field(3600, gt=0, le=7 * 86_400)


class PaymentDecision(StrictModel):
    """Whether to pay this invoice and how much (token units, at most max_amount)."""

    pay: bool = Field(description="true only for a plain, legitimate invoice")
    amount: int = Field(description="amount to pay in token units")
    reason: str = Field(description="one sentence")


class VendorPaymentResult(RunResult):
    amount: int | None = None
    approved_by: str | None = None


@register
@workflow.defn(name="VendorPaymentWorkflow")
class VendorPaymentWorkflow(CheckpointedWorkflow):
    approve = update_handler("approve", Approval, into="approval", reply="recorded")

    @workflow.run
    async def run(self, req: VendorPayment) -> VendorPaymentResult:
        async with self.checkpointed(req) as run:
            decision = await run.decide(
                PaymentDecision,
                instructions="Decide whether to pay this vendor invoice, and how much.",
                data={"invoice": req.invoice, "max_amount": req.max_amount},
                offline=PaymentDecision(pay=True, amount=req.max_amount, reason="offline rules"),
            )
            if not decision.pay or not 0 < decision.amount <= req.max_amount:
                raise run.stop("rejected", f"not paid: {decision.reason}")
            if decision.amount > req.approval_above:
                approval = await run.approval("approval", timeout=req.approval_timeout_seconds)
                if approval is None or not approval.approved:
                    raise run.stop("rejected", "no approval")
                run.fields["approved_by"] = approval.approver
            order, deadline = run.key("order"), int(workflow.now().timestamp()) + 86_400
            async with run.saga() as saga:  # the refund is registered before the payment
                refund = ("Escrow", "refund", [order])
                saga.compensate_call(*refund, signer="agent", unless=("EscrowNotOpen",))
                pay = [order, req.vendor, decision.amount, deadline, run.decision_hash, []]
                await run.call("Escrow", "open", pay, signer="agent")
                await run.call("Escrow", "release", [order], signer="agent")
        return run.result(VendorPaymentResult, amount=decision.amount)
