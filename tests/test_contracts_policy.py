"""AgentPolicy v2 on the real anvil: limits, the rolling budget, refunds, pauses, the two approval
paths, and the adversaries of the trust model (a thief of the agent key, of one approver key).

Also the unit tests of ledgerflow.chain.approvals, checked against the contract's own EIP-712
verification. Every test runs in an EVM snapshot reverted afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from eth_account import Account
from web3.contract.contract import ContractFunction

from ledgerflow.chain import approvals as ap
from ledgerflow.chain.deploy import TUSD, role_id
from tests.support.evm import (
    AGENT,
    APPROVER_KEYS,
    APPROVERS,
    BUCKETS,
    BUDGET,
    CAP,
    DECISION,
    DEPLOYER,
    GUARDIAN,
    OTHER_AGENT,
    OUTSIDER_KEY,
    SERVICE,
    STRANGER,
    SUPPLIER_A,
    SUPPLIER_B,
    UNLISTED,
    UNSIGNED,
    WINDOW,
    Env,
    approval,
    b32,
    configure,
    deploy_env,
    error_of,
    fund,
    gas_line,
    logs,
    open_fn,
    reverts,
    send,
    sign_all,
)

BUCKET = WINDOW // BUCKETS


@pytest.fixture(scope="module")
def env(anvil: Any) -> Env:
    return deploy_env(anvil.rpc_url)


@pytest.fixture(autouse=True)
def isolated(env: Env) -> Iterator[None]:
    snapshot = env.rpc("evm_snapshot")
    yield
    assert env.rpc("evm_revert", snapshot) is True


@pytest.fixture
def ready(env: Env) -> Env:
    configure(env)
    fund(env)
    return env


def check_fn(env: Env, oid: bytes, supplier: str, amount: int, **kw: Any) -> ContractFunction:
    """Escrow.checkOpen with the same arguments open_fn would send."""
    opened = open_fn(env, oid, supplier, amount, **kw)
    return env.escrow.functions.checkOpen(AGENT, *opened.args)


def policy_check(env: Env, oid: bytes, supplier: str, amount: int, **kw: Any) -> ContractFunction:
    opened = open_fn(env, oid, supplier, amount, **kw)
    o, s, a, _deadline, decision, approvals = opened.args
    return env.policy.functions.checkSpend(AGENT, s, a, o, decision, approvals)


def same_error_everywhere(env: Env, oid: bytes, supplier: str, amount: int, **kw: Any) -> Any:
    """open (eth_call), Escrow.checkOpen and AgentPolicy.checkSpend agree on the error."""
    via_open = error_of(open_fn(env, oid, supplier, amount, **kw), AGENT)
    assert error_of(check_fn(env, oid, supplier, amount, **kw), AGENT) == via_open
    policy = error_of(policy_check(env, oid, supplier, amount, **kw), AGENT)
    if via_open is None or via_open[0].startswith("Policy"):
        assert policy == via_open
    return via_open


# --- configuration ------------------------------------------------------------------------------


def test_set_agent_validates(env: Env) -> None:
    p = env.policy.functions
    ok = (CAP, UNSIGNED, BUDGET, WINDOW, BUCKETS, 10**9)
    assert reverts(p.setAgent(AGENT, ok), STRANGER)[0] == "AccessControlUnauthorizedAccount"
    for window, buckets in ((3_600, 0), (3_600, 8), (3_601, 4), (0, 1)):
        assert reverts(p.setAgent(AGENT, (CAP, 0, BUDGET, window, buckets, 1)), DEPLOYER) == (
            "PolicyInvalidWindow",
            {"windowSeconds": window, "buckets": buckets},
        )
    assert reverts(p.setAgent(AGENT, (2**96, 0, BUDGET, 3_600, 4, 1)), DEPLOYER)[0] == (
        "PolicyInvalidLimits"
    )
    send(p.setAgent(AGENT, ok), DEPLOYER)
    v = p.agentConfig(AGENT).call()
    assert tuple(v[:8]) == (True, False, *ok)

    # Approver sets: bounded, no zero address, no duplicate, never the agent itself.
    set_ = p.setApprovers
    assert reverts(set_(AGENT, APPROVERS, 0, []), DEPLOYER) == (
        "PolicyInvalidThreshold",
        {"threshold": 0, "approverCount": 3},
    )
    assert reverts(set_(AGENT, APPROVERS, 4, []), DEPLOYER)[0] == "PolicyInvalidThreshold"
    assert reverts(set_(AGENT, [], 1, []), DEPLOYER)[0] == "PolicyInvalidThreshold"
    for bad in ([APPROVERS[0], APPROVERS[0]], [AGENT], ["0x" + "00" * 20]):
        assert reverts(set_(AGENT, bad, 1, []), DEPLOYER)[0] == "PolicyInvalidApprover"
    assert reverts(set_(AGENT, APPROVERS, 2, [(10, 3), (5, 3)]), DEPLOYER) == (
        "PolicyInvalidTiers",
        {},
    )
    assert reverts(set_(AGENT, APPROVERS, 2, [(10, 4)]), DEPLOYER)[0] == "PolicyInvalidThreshold"
    send(set_(AGENT, APPROVERS, 2, [(5_000 * TUSD, 3)]), DEPLOYER)
    assert p.requiredApprovals(AGENT, CAP).call() == 0
    assert p.requiredApprovals(AGENT, CAP + 1).call() == 2
    assert p.requiredApprovals(AGENT, 5_000 * TUSD + 1).call() == 3
    # Replacing the set removes the old approvers.
    send(set_(AGENT, APPROVERS[1:], 1, []), DEPLOYER)
    assert p.isApprover(AGENT, APPROVERS[0]).call() is False
    assert tuple(p.approversOf(AGENT).call()) == (APPROVERS[1:], 1, [])


def test_allow_list_is_per_agent_and_cap_applies(ready: Env) -> None:
    env = ready
    configure(env, OTHER_AGENT, suppliers=(UNLISTED,))
    p = env.policy.functions
    assert p.isCounterpartyAllowed(AGENT, SUPPLIER_A).call() is True
    assert p.isCounterpartyAllowed(OTHER_AGENT, SUPPLIER_A).call() is False
    assert p.isCounterpartyAllowed(AGENT, UNLISTED).call() is False
    assert same_error_everywhere(env, b32("x"), UNLISTED, 1) == (
        "PolicyCounterpartyNotAllowed",
        {"agent": AGENT, "counterparty": UNLISTED},
    )
    assert same_error_everywhere(env, b32("x"), SUPPLIER_A, CAP + 1) == (
        "PolicyCapExceeded",
        {"amount": CAP + 1, "cap": CAP},
    )
    assert same_error_everywhere(env, b32("x"), SUPPLIER_A, CAP) is None
    assert reverts(p.checkSpend(STRANGER, SUPPLIER_A, 1, b32("x"), DECISION, []), STRANGER) == (
        "PolicyUnknownAgent",
        {"agent": STRANGER},
    )
    # Only the Escrow (SPENDER_ROLE) records spends and credits.
    name, args = reverts(p.consume(AGENT, SUPPLIER_A, 1, b32("x"), DECISION, []), DEPLOYER)
    assert (name, args["neededRole"]) == (
        "AccessControlUnauthorizedAccount",
        role_id("SPENDER_ROLE"),
    )
    assert reverts(p.credit(AGENT, 1, 0), AGENT)[0] == "AccessControlUnauthorizedAccount"


# --- the rolling budget -------------------------------------------------------------------------


def test_budget_cannot_be_doubled_across_a_window_edge(ready: Env) -> None:
    """v1's fixed periods let an agent spend twice its budget around the period's end."""
    env = ready
    p = env.policy.functions
    # Bucket-aligned times, each step well inside its bucket (anvil's clock keeps running).
    start = (env.now() // BUCKET + 2) * BUCKET
    env.travel_to(start + 10)
    send(open_fn(env, b32("a"), SUPPLIER_A, CAP), AGENT)
    env.travel_to(start + WINDOW - 100)
    send(open_fn(env, b32("b"), SUPPLIER_A, CAP), AGENT)
    # The budget (2.5 caps) is nearly spent; a "new period" after the edge changes nothing: the
    # first spend is still counted while any window of WINDOW seconds could contain both.
    env.travel_to(start + WINDOW + 100)
    name, args = reverts(open_fn(env, b32("c"), SUPPLIER_A, CAP), AGENT)
    assert name == "PolicyBudgetExceeded"
    assert args["remaining"] == BUDGET - 2 * CAP
    # ... and the error says when budget comes back: once the first bucket leaves the window.
    assert args["nextReleaseAt"] == start + WINDOW + BUCKET
    remaining, at, amount = p.budgetOf(AGENT).call()
    assert (remaining, at, amount) == (BUDGET - 2 * CAP, start + WINDOW + BUCKET, CAP)
    env.travel_to(start + WINDOW + BUCKET - 100)
    assert reverts(open_fn(env, b32("c"), SUPPLIER_A, CAP), AGENT)[0] == "PolicyBudgetExceeded"
    env.travel_to(start + WINDOW + BUCKET + 10)
    send(open_fn(env, b32("c"), SUPPLIER_A, CAP), AGENT)
    assert p.remainingBudget(AGENT).call() == BUDGET - 2 * CAP
    # No interval of WINDOW seconds ever held more than the budget: a, b, c span more than it.


def test_refund_credits_the_bucket_it_was_spent_in(ready: Env) -> None:
    """The v1 bug: a refund of an older period's order credited the current period, so 25,000
    tUSD were paid in one period against a 20,000 budget. Here the same sequence is refused."""
    env = ready
    configure(env, cap=20_000 * TUSD, unsigned=20_000 * TUSD, budget=20_000 * TUSD)
    fund(env, amount=100_000 * TUSD)
    e, p = env.escrow.functions, env.policy.functions
    send(open_fn(env, b32("old"), SUPPLIER_A, 5_000 * TUSD, ttl=86_400), AGENT)
    # A new window: the old order's spend no longer counts ...
    env.travel(WINDOW + BUCKET)
    assert p.remainingBudget(AGENT).call() == 20_000 * TUSD
    send(open_fn(env, b32("new"), SUPPLIER_A, 20_000 * TUSD), AGENT)
    assert p.remainingBudget(AGENT).call() == 0
    # ... so its refund (a missed delivery deadline, say) must not give budget back now.
    receipt = send(e.refund(b32("old")), AGENT)
    (credited,) = logs(env.policy.events.BudgetCredited, receipt)
    assert credited["args"]["amount"] == 5_000 * TUSD and credited["args"]["credited"] == 0
    assert p.remainingBudget(AGENT).call() == 0
    assert reverts(open_fn(env, b32("more"), SUPPLIER_A, 5_000 * TUSD), AGENT)[0] == (
        "PolicyBudgetExceeded"
    )
    # A refund inside the window gives back exactly what it took.
    receipt = send(e.refund(b32("new")), AGENT)
    assert logs(env.policy.events.BudgetCredited, receipt)[0]["args"]["credited"] == 20_000 * TUSD
    assert p.remainingBudget(AGENT).call() == 20_000 * TUSD


def test_changing_the_bucket_length_keeps_spending_counted(ready: Env) -> None:
    env = ready
    p = env.policy.functions
    send(open_fn(env, b32("a"), SUPPLIER_A, CAP), AGENT)
    send(open_fn(env, b32("b"), SUPPLIER_A, CAP), AGENT)
    # Another bucket length: what was spent moves into the current bucket of the new layout.
    send(p.setAgent(AGENT, (CAP, UNSIGNED, BUDGET, 7_200, 3, 10**12)), DEPLOYER)
    assert p.remainingBudget(AGENT).call() == BUDGET - 2 * CAP
    assert p.agentConfig(AGENT).call()[11] == 1  # epoch
    # A refund of a spend from before the change no longer credits (conservative) ...
    send(env.escrow.functions.refund(b32("a")), AGENT)
    assert p.remainingBudget(AGENT).call() == BUDGET - 2 * CAP
    # ... but the lifetime total is still given back.
    assert p.agentConfig(AGENT).call()[8] == CAP


def test_lifetime_cap(ready: Env) -> None:
    env = ready
    configure(env, lifetime=3 * CAP, budget=10 * CAP)
    p = env.policy.functions
    for i in range(3):
        send(open_fn(env, b32(f"l{i}"), SUPPLIER_A, CAP), AGENT)
    assert p.remainingLifetime(AGENT).call() == 0
    assert same_error_everywhere(env, b32("l3"), SUPPLIER_A, 1) == (
        "PolicyLifetimeCapExceeded",
        {"amount": 1, "remaining": 0},
    )
    send(env.escrow.functions.refund(b32("l0")), AGENT)
    assert p.remainingLifetime(AGENT).call() == CAP


# --- pauses -------------------------------------------------------------------------------------


def test_guardian_pauses_one_agent_or_all(ready: Env) -> None:
    env = ready
    p, e = env.policy.functions, env.escrow.functions
    send(open_fn(env, b32("before"), SUPPLIER_A, 10 * TUSD), AGENT)
    assert reverts(p.pauseAgent(AGENT), STRANGER)[0] == "AccessControlUnauthorizedAccount"
    assert reverts(p.pauseAgent(AGENT), AGENT)[0] == "AccessControlUnauthorizedAccount"
    receipt = send(p.pauseAgent(AGENT), GUARDIAN)
    assert dict(logs(env.policy.events.AgentPaused, receipt)[0]["args"]) == {
        "agent": AGENT,
        "by": GUARDIAN,
    }
    assert p.isPaused(AGENT).call() is True
    assert same_error_everywhere(env, b32("p"), SUPPLIER_A, 1) == (
        "PolicyAgentPaused",
        {"agent": AGENT},
    )
    assert reverts(e.release(b32("before")), AGENT) == ("PolicyAgentPaused", {"agent": AGENT})
    # Only the admin lifts it.
    assert reverts(p.unpauseAgent(AGENT), GUARDIAN)[0] == "AccessControlUnauthorizedAccount"
    send(p.unpauseAgent(AGENT), DEPLOYER)
    assert same_error_everywhere(env, b32("p"), SUPPLIER_A, 1) is None

    # The kill switch stops every agent; refunds still work.
    configure(env, OTHER_AGENT)
    send(p.pauseAll(), GUARDIAN)
    assert same_error_everywhere(env, b32("p"), SUPPLIER_A, 1) == ("PolicyAllPaused", {})
    assert reverts(p.checkSpend(OTHER_AGENT, SUPPLIER_A, 1, b32("q"), DECISION, []), AGENT) == (
        "PolicyAllPaused",
        {},
    )
    assert reverts(e.release(b32("before")), AGENT) == ("PolicyAllPaused", {})
    send(e.refund(b32("before")), AGENT)
    assert reverts(p.unpauseAll(), GUARDIAN)[0] == "AccessControlUnauthorizedAccount"
    send(p.unpauseAll(), DEPLOYER)
    assert p.allPaused().call() is False


# --- signed approvals ---------------------------------------------------------------------------


def test_approvals_module_matches_the_contract(env: Env) -> None:
    terms = approval(env, b32("o"), SUPPLIER_A, 1_234 * TUSD)
    on_chain = env.policy.functions.approvalDigest(
        terms.order_id,
        terms.agent,
        terms.supplier,
        terms.amount,
        terms.decision_hash,
        terms.expiry,
    ).call()
    assert ap.digest(terms, chain_id=env.chain_id, policy=env.policy.address) == on_chain
    assert env.policy.functions.APPROVAL_TYPEHASH().call() == ap.keccak(
        b"Approval(bytes32 orderId,address agent,address supplier,uint256 amount,"
        b"bytes32 decisionHash,uint64 expiry)"
    )
    domain = env.policy.functions.eip712Domain().call()
    assert (domain[1], domain[2], domain[3], domain[4]) == (
        ap.DOMAIN_NAME,
        ap.DOMAIN_VERSION,
        env.chain_id,
        env.policy.address,
    )
    signed = ap.sign(terms, APPROVER_KEYS[0], chain_id=env.chain_id, policy=env.policy.address)
    assert signed.signer == APPROVERS[0] and signed.expiry == terms.expiry
    assert (
        ap.recover(terms, signed.signature, chain_id=env.chain_id, policy=env.policy.address)
        == (APPROVERS[0])
    )
    # Another chain, another contract or other terms recover someone else.
    assert (
        ap.recover(terms, signed.signature, chain_id=1, policy=env.policy.address) != APPROVERS[0]
    )
    assert (
        ap.recover(terms, signed.signature, chain_id=env.chain_id, policy=SUPPLIER_A)
        != (APPROVERS[0])
    )
    assert ap.SignedApproval.from_json(signed.to_json()) == signed
    assert ap.approvals_hash([]) == bytes(32)
    with pytest.raises(ValueError):
        ap.Approval(b"short", AGENT, SUPPLIER_A, 1, DECISION, 1)
    with pytest.raises(ValueError):
        ap.Approval(b32("o"), "0x123", SUPPLIER_A, 1, DECISION, 1)


def test_over_cap_needs_m_signatures(ready: Env, capsys: pytest.CaptureFixture[str]) -> None:
    env = ready
    configure(env, tiers=[(2_000 * TUSD, 3)], budget=100 * CAP)
    amount = CAP + 500 * TUSD
    oid = b32("signed-order")
    terms = approval(env, oid, SUPPLIER_A, amount)
    two = sign_all(env, terms, APPROVER_KEYS[:2])

    # No signatures: the cap. One: below the threshold.
    assert same_error_everywhere(env, oid, SUPPLIER_A, amount) == (
        "PolicyCapExceeded",
        {"amount": amount, "cap": CAP},
    )
    assert same_error_everywhere(env, oid, SUPPLIER_A, amount, approvals=two[:1]) == (
        "PolicyApprovalsBelowThreshold",
        {"valid": 1, "required": 2},
    )
    assert check_fn(env, oid, SUPPLIER_A, amount, approvals=two).call() == 1  # Signatures
    receipt = send(open_fn(env, oid, SUPPLIER_A, amount, approvals=two), AGENT)
    (approved,) = logs(env.policy.events.SpendApproved, receipt)
    assert approved["args"]["signers"] == APPROVERS[:2] and approved["args"]["path"] == 1
    (opened,) = logs(env.escrow.events.EscrowOpened, receipt)
    assert opened["args"]["approvalsHash"] == ap.approvals_hash(two)
    assert approved["args"]["approvalsHash"] == ap.approvals_hash(two)
    assert opened["args"]["decisionHash"] == DECISION
    assert env.policy.functions.orderApproved(oid).call() is True

    # Replayed: the same approvals (the order id is single-use in the policy too).
    assert reverts(policy_check(env, oid, SUPPLIER_A, amount, approvals=two), AGENT) == (
        "PolicyApprovalReplayed",
        {"orderId": oid},
    )
    assert reverts(open_fn(env, oid, SUPPLIER_A, amount, approvals=two), AGENT)[0] == (
        "EscrowOrderExists"
    )

    # Above the tier, three are needed.
    gas = {}
    for n in (1, 2, 3):
        big = 2_000 * TUSD + n
        o = b32(f"tier-{n}")
        signed = sign_all(env, approval(env, o, SUPPLIER_B, big), APPROVER_KEYS[:n])
        if n < 3:
            assert same_error_everywhere(env, o, SUPPLIER_B, big, approvals=signed) == (
                "PolicyApprovalsBelowThreshold",
                {"valid": n, "required": 3},
            )
        # Gas of open with n signatures, each verified on chain (thresholds lowered to n here).
        configure(env, threshold=n, budget=100 * CAP)
        gas[n] = send(open_fn(env, o, SUPPLIER_B, big, approvals=signed), AGENT)["gasUsed"]
        configure(env, tiers=[(2_000 * TUSD, 3)], budget=100 * CAP)
    gas_line(capsys, f"Escrow.open over the cap: 1 sig {gas[1]}, 2 sigs {gas[2]}, 3 sigs {gas[3]}")


def test_bad_signatures_are_refused(ready: Env) -> None:
    env = ready
    amount, oid = CAP + 1, b32("bad")
    terms = approval(env, oid, SUPPLIER_A, amount)
    good = sign_all(env, terms, APPROVER_KEYS)

    def err(approvals: list[ap.SignedApproval], **kw: Any) -> Any:
        return same_error_everywhere(env, oid, SUPPLIER_A, amount, approvals=approvals, **kw)

    outsider = ap.sign(terms, OUTSIDER_KEY, chain_id=env.chain_id, policy=env.policy.address)
    assert err([good[0], outsider]) == ("PolicyApproverUnknown", {"signer": outsider.signer})
    # The agent signing for itself is just an unknown signer.
    agent_key = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
    assert Account.from_key(agent_key).address == AGENT
    own = ap.sign(terms, agent_key, chain_id=env.chain_id, policy=env.policy.address)
    assert err([own, good[1]]) == ("PolicyApproverUnknown", {"signer": AGENT})
    assert err([good[0], good[0]]) == ("PolicyApprovalDuplicated", {"signer": APPROVERS[0]})
    # Expired: signed with an expiry already past.
    stale = approval(env, oid, SUPPLIER_A, amount, ttl=-10)
    old = sign_all(env, stale, APPROVER_KEYS[:2])
    assert err(old) == (
        "PolicyApprovalExpired",
        {"signer": APPROVERS[0], "expiry": stale.expiry},
    )
    # Wrong chain, wrong contract: the signature is not over this domain.
    for domain in ({"chain_id": 1}, {"policy": SUPPLIER_B}):
        wrong = sign_all(env, terms, APPROVER_KEYS[:2], **domain)
        assert err(wrong) == ("PolicyApprovalInvalid", {"signer": APPROVERS[0]})
    # Other terms: another amount, supplier, decision or order.
    for other in (
        approval(env, oid, SUPPLIER_A, amount + 1),
        approval(env, oid, SUPPLIER_B, amount),
        approval(env, oid, SUPPLIER_A, amount, decision=b32("another decision")),
        approval(env, b32("other order"), SUPPLIER_A, amount),
    ):
        signed = sign_all(env, other, APPROVER_KEYS[:2])
        # Same expiry as the terms being opened, so only the signed content differs.
        fixed = [ap.SignedApproval(s.signer, terms.expiry, s.signature) for s in signed]
        assert err(fixed) == ("PolicyApprovalInvalid", {"signer": APPROVERS[0]})
    # A signer claiming another's signature.
    swapped = [ap.SignedApproval(APPROVERS[1], good[0].expiry, good[0].signature), good[2]]
    assert err(swapped) == ("PolicyApprovalInvalid", {"signer": APPROVERS[1]})
    # Garbage bytes.
    junk = [ap.SignedApproval(APPROVERS[0], terms.expiry, b"\x01" * 65), good[1]]
    assert err(junk) == ("PolicyApprovalInvalid", {"signer": APPROVERS[0]})
    # After all that, the valid ones still pass.
    assert err(good[:2]) is None


def test_stolen_approver_key_cannot_pass_a_threshold_alone(ready: Env) -> None:
    env = ready
    amount, oid = UNSIGNED + 1, b32("theft")
    stolen = APPROVER_KEYS[0]
    terms = approval(env, oid, SUPPLIER_A, amount)
    one = sign_all(env, terms, [stolen])
    assert same_error_everywhere(env, oid, SUPPLIER_A, amount, approvals=one) == (
        "PolicyApprovalsBelowThreshold",
        {"valid": 1, "required": 2},
    )
    # Signing twice with it, or forging the second slot, does not help.
    twice = sign_all(env, terms, [stolen, stolen])
    assert same_error_everywhere(env, oid, SUPPLIER_A, amount, approvals=twice)[0] == (
        "PolicyApprovalDuplicated"
    )
    forged = [*one, ap.SignedApproval(APPROVERS[1], terms.expiry, one[0].signature)]
    assert same_error_everywhere(env, oid, SUPPLIER_A, amount, approvals=forged)[0] == (
        "PolicyApprovalInvalid"
    )
    # Nor does the unsigned path: above the unsigned limit only signatures pass, and the thief
    # does not hold the service key anyway.
    send(env.policy.functions.grantRole(role_id("APPROVER_ROLE"), STRANGER), DEPLOYER)
    fn = env.policy.functions.grantException(oid, AGENT, SUPPLIER_A, amount, DECISION, 2**40)
    assert reverts(fn, STRANGER) == (
        "PolicyUnsignedLimitExceeded",
        {"amount": amount, "unsignedLimit": UNSIGNED},
    )


# --- the unsigned path (service key) ------------------------------------------------------------


def test_unsigned_exception_expires_and_is_used_once(ready: Env) -> None:
    env = ready
    p = env.policy.functions
    big, oid = CAP + 200 * TUSD, b32("escalated")
    expiry = env.now() + 600
    grant = p.grantException(oid, AGENT, SUPPLIER_A, big, DECISION, expiry)
    assert reverts(grant, AGENT)[0] == "AccessControlUnauthorizedAccount"
    assert reverts(grant, DEPLOYER)[0] == "AccessControlUnauthorizedAccount"
    too_far = env.now() + 31 * 86_400
    assert reverts(p.grantException(oid, AGENT, SUPPLIER_A, big, DECISION, too_far), SERVICE) == (
        "PolicyInvalidExpiry",
        {"expiry": too_far},
    )
    receipt = send(grant, SERVICE)
    (granted,) = logs(env.policy.events.ExceptionGranted, receipt)
    assert granted["args"]["grantedBy"] == SERVICE and granted["args"]["expiry"] == expiry

    # Exactly these terms.
    assert same_error_everywhere(env, oid, SUPPLIER_A, big - 1) == (
        "PolicyExceptionMismatch",
        {"orderId": oid},
    )
    assert same_error_everywhere(env, oid, SUPPLIER_B, big)[0] == "PolicyExceptionMismatch"
    assert same_error_everywhere(env, oid, SUPPLIER_A, big, decision=b32("x"))[0] == (
        "PolicyExceptionMismatch"
    )
    assert same_error_everywhere(env, b32("other"), SUPPLIER_A, big)[0] == "PolicyCapExceeded"
    assert check_fn(env, oid, SUPPLIER_A, big).call() == 2  # Exception

    receipt = send(open_fn(env, oid, SUPPLIER_A, big), AGENT)
    (approved,) = logs(env.policy.events.SpendApproved, receipt)
    assert approved["args"]["path"] == 2 and approved["args"]["signers"] == []
    # Used once: no second grant for the same order.
    assert reverts(p.grantException(oid, AGENT, SUPPLIER_A, big, DECISION, expiry), SERVICE) == (
        "PolicyApprovalReplayed",
        {"orderId": oid},
    )

    # It expires.
    oid2 = b32("expires")
    send(p.grantException(oid2, AGENT, SUPPLIER_A, big, DECISION, env.now() + 60), SERVICE)
    env.travel(120)
    assert same_error_everywhere(env, oid2, SUPPLIER_A, big)[0] == "PolicyExceptionExpired"
    # Lowering the unsigned limit after a grant voids it too.
    oid3 = b32("lowered")
    send(p.grantException(oid3, AGENT, SUPPLIER_A, big, DECISION, env.now() + 600), SERVICE)
    configure(env, unsigned=CAP)
    assert same_error_everywhere(env, oid3, SUPPLIER_A, big) == (
        "PolicyUnsignedLimitExceeded",
        {"amount": big, "unsignedLimit": CAP},
    )


# --- a thief of the agent key -------------------------------------------------------------------


def test_stolen_agent_key_moves_nothing_beyond_the_limits(ready: Env) -> None:
    """Everything a holder of the agent key can sign, tried: only policy-bounded payments to
    allow-listed suppliers go through, and the vault keeps the rest."""
    env = ready
    t, v, p, e = (
        env.token.functions,
        env.vault.functions,
        env.policy.functions,
        env.escrow.functions,
    )
    thief = AGENT
    vault_before = v.balanceOf(AGENT).call()
    assert t.balanceOf(AGENT).call() == 0

    # A direct token transfer: the agent's account holds nothing.
    assert reverts(t.transfer(STRANGER, 1_000 * TUSD), thief)[0] == "ERC20InsufficientBalance"
    assert reverts(t.transferFrom(env.vault.address, STRANGER, 1), thief)[0] == (
        "ERC20InsufficientAllowance"
    )
    assert reverts(t.transferFrom(env.escrow.address, STRANGER, 1), thief)[0] == (
        "ERC20InsufficientAllowance"
    )
    # The vault's and the policy's privileged functions.
    attempts = [
        v.withdraw(AGENT, STRANGER, 1),
        v.pull(AGENT, 1),
        t.mint(STRANGER, 1),
        p.setAgent(AGENT, (10**12, 10**12, 10**12, 3_600, 1, 10**12)),
        p.setCounterparty(AGENT, STRANGER, True),
        p.setApprovers(AGENT, [STRANGER], 1, []),
        p.grantException(b32("t"), AGENT, SUPPLIER_A, UNSIGNED, DECISION, 2**40),
        p.consume(AGENT, STRANGER, 1, b32("t"), DECISION, []),
        p.credit(AGENT, 10**12, 0),
        p.unpauseAll(),
        env.policy.functions.grantRole(role_id("SPENDER_ROLE"), AGENT),
        env.vault.functions.grantRole(role_id("PAYER_ROLE"), AGENT),
    ]
    for fn in attempts:
        assert reverts(fn, thief)[0] == "AccessControlUnauthorizedAccount", fn.fn_name
    # Paying itself or an accomplice: not on the allow-list.
    for payee in (AGENT, STRANGER, UNLISTED):
        assert reverts(open_fn(env, b32(f"to-{payee}"), payee, 1), thief)[0] == (
            "PolicyCounterpartyNotAllowed"
        )
    # Releasing someone else's order, refunding to itself: not possible.
    send(open_fn(env, b32("legit"), SUPPLIER_A, 100 * TUSD), AGENT)
    assert reverts(e.release(b32("legit")), STRANGER)[0] == "EscrowNotAuthorized"
    send(e.refund(b32("legit")), thief)
    assert t.balanceOf(AGENT).call() == 0  # a refund lands in the vault

    # What it can do: pay allow-listed suppliers within the cap and the rolling budget.
    paid = 0
    for i in range(10):
        fn = open_fn(env, b32(f"drain-{i}"), SUPPLIER_A, CAP)
        if error_of(fn, thief) is not None:
            break
        send(fn, thief)
        send(e.release(b32(f"drain-{i}")), thief)
        paid += CAP
    assert paid <= BUDGET
    assert v.balanceOf(AGENT).call() == vault_before - paid
    assert t.balanceOf(AGENT).call() == 0
    # The guardian stops even that.
    send(p.pauseAgent(AGENT), GUARDIAN)
    env.travel(2 * WINDOW)
    assert reverts(open_fn(env, b32("after-pause"), SUPPLIER_A, 1), thief)[0] == (
        "PolicyAgentPaused"
    )


# --- concurrency ---------------------------------------------------------------------------------


def test_concurrent_opens_cannot_exceed_the_budget(ready: Env) -> None:
    """Many opens from one agent land in one block (automine off, sent without waiting); the
    policy's check and record happen inside each paying call, so exactly the budget passes."""
    env = ready
    configure(env, budget=10 * CAP, cap=CAP)
    w3 = env.w3
    nonce = w3.eth.get_transaction_count(AGENT)
    env.rpc("evm_setAutomine", False)
    try:
        hashes = [
            open_fn(env, b32(f"race-{i}"), SUPPLIER_A, CAP).transact(
                {"from": AGENT, "gas": 600_000, "nonce": nonce + i}
            )
            for i in range(25)
        ]
        env.rpc("evm_mine")
    finally:
        env.rpc("evm_setAutomine", True)
    receipts = [w3.eth.wait_for_transaction_receipt(h, timeout=30) for h in hashes]
    assert len({r["blockNumber"] for r in receipts}) == 1
    ok = [r for r in receipts if r["status"] == 1]
    assert len(ok) == 10
    assert env.policy.functions.remainingBudget(AGENT).call() == 0
    assert env.token.functions.balanceOf(env.escrow.address).call() == 10 * CAP
