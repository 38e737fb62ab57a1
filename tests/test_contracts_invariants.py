"""Stateful property tests (hypothesis) of AgentPolicy, AgentVault and Escrow together, on anvil.

Random sequences of opens (within and above the cap, with zero to three valid signatures, to
allowed and unlisted suppliers), releases, refunds (by the agent, a stranger, a guardian), time
moves, and pauses. A Python model of the rulebook predicts every outcome, including the exact
error, and after every step these invariants are checked on chain:

- spend within every limit: in every interval of one window length, the payments that were not
  refunded add up to at most the budget; the lifetime total is exact and within the cap;
- no double release: an order leaves Open once, and a second settle is refused;
- escrow solvency: the escrow's token balance equals the sum of the open orders;
- vault accounting: the vault's token balance equals its recorded total, which equals the agent's
  balance, and tokens are conserved between vault, escrow and suppliers.

Each operation pins the next block's timestamp (``evm_setNextBlockTimestamp``) and asks the
contracts for the error at the pending block, so the prediction and the mined transaction see the
same clock.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)
from web3.contract.contract import ContractFunction
from web3.exceptions import ContractCustomError

from ledgerflow.chain.deploy import TUSD
from tests.support.evm import (
    AGENT,
    APPROVER_KEYS,
    GUARDIAN,
    STRANGER,
    SUPPLIER_A,
    SUPPLIER_B,
    UNLISTED,
    Env,
    approval,
    b32,
    configure,
    decode_error,
    deploy_env,
    fund,
    open_fn,
    sign_all,
)

CAP = 1_000 * TUSD
BUDGET = 3_000 * TUSD
LIFETIME = 12_000 * TUSD
WINDOW = 4_000
BUCKETS = 4
BUCKET = WINDOW // BUCKETS
FUNDS = 1_000_000 * TUSD
THRESHOLD = 2
SUPPLIERS = (SUPPLIER_A, SUPPLIER_B)


@pytest.fixture(scope="module")
def env(anvil: Any) -> Env:
    return deploy_env(anvil.rpc_url)


@pytest.fixture(autouse=True)
def isolated(env: Env) -> Iterator[None]:
    snapshot = env.rpc("evm_snapshot")
    yield
    assert env.rpc("evm_revert", snapshot) is True


@dataclass
class Order:
    amount: int
    supplier: str
    deadline: int
    opened_at: int
    bucket: int
    status: int = 1  # 1 open, 2 released, 3 refunded


@dataclass
class Model:
    """The rulebook as the docs state it, independent of the Solidity."""

    paused: bool = False
    buckets: dict[int, int] = field(default_factory=dict)
    lifetime: int = 0
    orders: dict[bytes, Order] = field(default_factory=dict)
    supplier_paid: dict[str, int] = field(default_factory=dict)

    def open_sum(self) -> int:
        return sum(o.amount for o in self.orders.values() if o.status == 1)

    def live(self, bucket: int) -> int:
        return sum(v for b, v in self.buckets.items() if 0 <= bucket - b <= BUCKETS)

    def predict_open(self, now: int, supplier: str, amount: int, signatures: int) -> str | None:
        if self.paused:
            return "PolicyAgentPaused"
        if supplier not in SUPPLIERS:
            return "PolicyCounterpartyNotAllowed"
        if amount > CAP:
            if signatures == 0:
                return "PolicyCapExceeded"
            if signatures < THRESHOLD:
                return "PolicyApprovalsBelowThreshold"
        if amount > LIFETIME - self.lifetime:
            return "PolicyLifetimeCapExceeded"
        if amount > BUDGET - self.live(now // BUCKET):
            return "PolicyBudgetExceeded"
        return None

    def credit(self, now: int, order: Order) -> None:
        self.lifetime -= order.amount
        if now // BUCKET - order.bucket <= BUCKETS:
            held = self.buckets.get(order.bucket, 0)
            self.buckets[order.bucket] = held - min(held, order.amount)


def pending_error(fn: ContractFunction, sender: str) -> str | None:
    try:
        fn.call({"from": sender}, block_identifier="pending")
    except ContractCustomError as exc:
        assert isinstance(exc.data, str)
        return decode_error(fn.contract_abi, exc.data)[0]
    return None


def mined(env: Env, fn: ContractFunction, sender: str) -> Any:
    receipt = env.w3.eth.wait_for_transaction_receipt(
        fn.transact({"from": sender, "gas": 900_000}), timeout=30, poll_latency=0.02
    )
    assert receipt["status"] == 1
    return receipt


@pytest.mark.slow
def test_rulebook_invariants(env: Env) -> None:
    configure(
        env,
        cap=CAP,
        unsigned=CAP,
        budget=BUDGET,
        window=WINDOW,
        buckets=BUCKETS,
        lifetime=LIFETIME,
        threshold=THRESHOLD,
    )
    fund(env, amount=FUNDS)
    t, v, e, p = (
        env.token.functions,
        env.vault.functions,
        env.escrow.functions,
        env.policy.functions,
    )
    counter = iter(range(10**9))

    class Rulebook(RuleBasedStateMachine):
        orders = Bundle("orders")

        def __init__(self) -> None:
            super().__init__()
            self.snapshot = env.rpc("evm_snapshot")
            self.model = Model()
            self.clock = env.now()

        def tick(self, seconds: int = 1) -> int:
            """Pin the next block's timestamp; returns it."""
            self.clock += seconds
            env.rpc("evm_setNextBlockTimestamp", self.clock)
            return self.clock

        @rule(
            target=orders,
            amount=st.one_of(
                st.integers(1, CAP // 2), st.integers(1, CAP), st.integers(CAP + 1, 2 * CAP)
            ),
            supplier=st.sampled_from([*SUPPLIERS, UNLISTED]),
            signatures=st.integers(0, 3),
            ttl=st.integers(60, 3 * WINDOW),
        )
        def open(self, amount: int, supplier: str, signatures: int, ttl: int) -> bytes:
            oid = b32(f"inv-{next(counter)}")
            now = self.tick()
            terms = approval(env, oid, supplier, amount, ttl=10 * WINDOW)
            signed = sign_all(env, terms, APPROVER_KEYS[:signatures])
            fn = open_fn(env, oid, supplier, amount, ttl=ttl, approvals=signed)
            deadline = fn.args[3]
            expected = self.model.predict_open(now, supplier, amount, signatures)
            assert pending_error(fn, AGENT) == expected, (amount, supplier, signatures)
            if expected is None:
                mined(env, fn, AGENT)
                bucket = now // BUCKET
                self.model.buckets[bucket] = self.model.buckets.get(bucket, 0) + amount
                self.model.lifetime += amount
                self.model.orders[oid] = Order(amount, supplier, deadline, now, bucket)
            return oid

        @rule(oid=orders)
        def release(self, oid: bytes) -> None:
            self.tick()
            order = self.model.orders.get(oid)
            fn = e.release(oid)
            if order is None or order.status != 1:
                assert pending_error(fn, AGENT) == "EscrowNotOpen"
            elif self.model.paused:
                assert pending_error(fn, AGENT) == "PolicyAgentPaused"
            else:
                assert pending_error(fn, AGENT) is None
                mined(env, fn, AGENT)
                order.status = 2
                paid = self.model.supplier_paid
                paid[order.supplier] = paid.get(order.supplier, 0) + order.amount

        @rule(caller=st.sampled_from([AGENT, GUARDIAN]))
        def refund_oldest(self, caller: str) -> None:
            """Refunds of old orders are where v1 went wrong (credited to the current period)."""
            open_orders = [oid for oid, o in self.model.orders.items() if o.status == 1]
            if open_orders:
                self.refund(open_orders[0], caller)

        @rule(oid=orders, caller=st.sampled_from([AGENT, STRANGER, GUARDIAN]))
        def refund(self, oid: bytes, caller: str) -> None:
            now = self.tick()
            order = self.model.orders.get(oid)
            fn = e.refund(oid)
            if order is None or order.status != 1:
                assert pending_error(fn, caller) == "EscrowNotOpen"
            elif caller == STRANGER and now <= order.deadline:
                assert pending_error(fn, caller) == "EscrowNotAuthorized"
            else:
                assert pending_error(fn, caller) is None
                mined(env, fn, caller)
                order.status = 3
                self.model.credit(now, order)

        @rule(seconds=st.sampled_from([7, BUCKET // 2, BUCKET, WINDOW - 1, WINDOW + BUCKET]))
        def wait(self, seconds: int) -> None:
            self.tick(seconds)
            env.rpc("evm_mine")

        @rule(on=st.booleans())
        def pause(self, on: bool) -> None:
            self.tick()
            if on:
                mined(env, p.pauseAgent(AGENT), GUARDIAN)
            else:
                mined(env, p.unpauseAgent(AGENT), env.d.deployer)
            self.model.paused = on

        @invariant()
        def holds(self) -> None:
            m = self.model
            # Spend within every limit in every window (payments not refunded), and lifetime.
            kept = [o for o in m.orders.values() if o.status != 3]
            for start in {o.opened_at for o in kept}:
                inside = sum(o.amount for o in kept if start <= o.opened_at <= start + WINDOW)
                assert inside <= BUDGET
            assert m.lifetime == sum(o.amount for o in kept) <= LIFETIME
            # The chain's remaining budget is the model's, to the unit.
            bucket = self.clock // BUCKET
            assert p.remainingBudget(AGENT).call() == max(0, BUDGET - m.live(bucket))
            # Escrow solvency; vault accounting.
            assert t.balanceOf(env.escrow.address).call() == m.open_sum()
            assert v.totalHeld().call() == FUNDS - m.open_sum() - sum(m.supplier_paid.values())

        @rule()
        def audit(self) -> None:
            """The full books (a few more calls, so not after every step)."""
            m = self.model
            assert p.agentConfig(AGENT).call()[8] == m.lifetime
            held = v.totalHeld().call()
            assert held == v.balanceOf(AGENT).call() == t.balanceOf(env.vault.address).call()
            for s in SUPPLIERS:
                assert t.balanceOf(s).call() == m.supplier_paid.get(s, 0)
            assert t.balanceOf(AGENT).call() == 0

        def teardown(self) -> None:
            try:
                self.audit()
            finally:
                env.rpc("evm_revert", self.snapshot)

    run_state_machine_as_test(
        Rulebook,
        settings=settings(
            max_examples=6,
            stateful_step_count=40,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
