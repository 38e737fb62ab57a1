"""Helpers for the contract tests: a deployed set of contracts on anvil, sending from anvil's
unlocked accounts, decoding custom errors, signing approvals."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from eth_abi import decode as abi_decode
from eth_account import Account
from eth_utils import function_abi_to_4byte_selector, get_abi_input_names, get_abi_input_types
from web3 import Web3
from web3.contract import Contract
from web3.contract.contract import ContractFunction
from web3.exceptions import ContractCustomError
from web3.logs import DISCARD
from web3.types import TxReceipt

from ledgerflow.chain import approvals as ap
from ledgerflow.chain.artifacts import load_artifact
from ledgerflow.chain.deploy import (
    CONTRACT_NAMES,
    DEMO_APPROVER_KEYS,
    DEV_KEYS,
    TUSD,
    Deployment,
    contract,
    deploy_all,
    role_id,
)
from ledgerflow.checkpoint.canonical import keccak

ADDR = [Account.from_key(k).address for k in DEV_KEYS]
DEPLOYER, AGENT, SERVICE = ADDR[0], ADDR[1], ADDR[2]
SUPPLIER_A, SUPPLIER_B, UNLISTED = ADDR[3], ADDR[4], ADDR[5]
GUARDIAN, STRANGER, OTHER_AGENT = ADDR[6], ADDR[7], ADDR[8]
APPROVER_KEYS = list(DEMO_APPROVER_KEYS)
APPROVERS = [Account.from_key(k).address for k in APPROVER_KEYS]
#: A key nobody registered as an approver.
OUTSIDER_KEY = "0x" + keccak(b"not an approver").hex()

# Limits used by the policy and escrow tests (token units, 6 decimals).
CAP = 1_000 * TUSD
UNSIGNED = 3_000 * TUSD
BUDGET = 2_500 * TUSD
WINDOW = 3_600
BUCKETS = 4
LIFETIME = 10**6 * TUSD
DECISION = keccak(b"decision step hash")


@dataclass
class Env:
    w3: Web3
    d: Deployment
    registry: Contract
    token: Contract
    inventory: Contract
    market: Contract
    policy: Contract
    vault: Contract
    escrow: Contract

    def rpc(self, method: str, *params: Any) -> Any:
        response = self.w3.provider.make_request(method, list(params))  # type: ignore[arg-type]
        assert "error" not in response, response
        return response["result"]

    def now(self) -> int:
        return int(self.w3.eth.get_block("latest")["timestamp"])

    def travel(self, seconds: int) -> None:
        self.rpc("evm_increaseTime", seconds)
        self.rpc("evm_mine")

    def travel_to(self, timestamp: int) -> None:
        """Mine a block at exactly ``timestamp``: the next transaction's block is one later."""
        self.rpc("evm_mine", timestamp)

    @property
    def chain_id(self) -> int:
        return int(self.w3.eth.chain_id)


def deploy_env(rpc_url: str) -> Env:
    d = deploy_all(rpc_url, DEV_KEYS[0], agent_key=DEV_KEYS[1], approver_key=DEV_KEYS[2])
    w3 = Web3(Web3.HTTPProvider(rpc_url))
    c = {name: contract(w3, name, address) for name, address in d.contracts.items()}
    env = Env(
        w3,
        d,
        c["CheckpointRegistry"],
        c["TestUSD"],
        c["InventoryLedger"],
        c["Marketplace"],
        c["AgentPolicy"],
        c["AgentVault"],
        c["Escrow"],
    )
    send(env.policy.functions.grantRole(role_id("GUARDIAN_ROLE"), GUARDIAN), DEPLOYER)
    return env


# --- sending and reverts ------------------------------------------------------------------------


def decode_error(abi: list[dict[str, Any]], data: str) -> tuple[str, dict[str, Any]]:
    """Name and arguments of the custom error ``data`` (0x-hex revert data).

    Errors bubble up through calls (AgentPolicy's through Escrow.open, the vault's and TestUSD's
    through SafeERC20), so after ``abi`` the error entries of every artifact are tried.
    """
    raw = bytes.fromhex(data.removeprefix("0x"))
    everything = [e for name in CONTRACT_NAMES for e in load_artifact(name).errors()]
    for entry in [*abi, *everything]:
        if entry["type"] == "error" and function_abi_to_4byte_selector(entry) == raw[:4]:
            types = get_abi_input_types(entry)
            values = [
                Web3.to_checksum_address(v) if ty == "address" else v
                for ty, v in zip(types, abi_decode(types, raw[4:]), strict=True)
            ]
            return entry["name"], dict(zip(get_abi_input_names(entry), values, strict=True))
    raise AssertionError(f"revert data {data} matches no error of the ABI")


def send(fn: ContractFunction, sender: str, **tx: Any) -> TxReceipt:
    """Send from one of anvil's unlocked accounts and require success."""
    tx_hash = fn.transact({"from": sender, **tx})
    receipt = fn.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30, poll_latency=0.02)
    assert receipt["status"] == 1
    return receipt


def reverts(fn: ContractFunction, sender: str) -> tuple[str, dict[str, Any]]:
    """The decoded custom error ``fn`` reverts with when sent (or called) by ``sender``."""
    with pytest.raises(ContractCustomError) as info:
        if fn.abi.get("stateMutability") in ("view", "pure"):
            fn.call({"from": sender})
        else:
            fn.transact({"from": sender})
    assert isinstance(info.value.data, str)
    return decode_error(fn.contract_abi, info.value.data)


def error_of(fn: ContractFunction, sender: str) -> tuple[str, dict[str, Any]] | None:
    """The custom error an eth_call of ``fn`` from ``sender`` reverts with, or None."""
    try:
        fn.call({"from": sender})
    except ContractCustomError as exc:
        assert isinstance(exc.data, str)
        return decode_error(fn.contract_abi, exc.data)
    return None


def logs(event: Any, receipt: TxReceipt) -> list[Any]:
    """The receipt's logs of ``event`` (other events of the transaction are skipped)."""
    return list(event().process_receipt(receipt, errors=DISCARD))


def b32(text: str) -> bytes:
    return keccak(text.encode())


def gas_line(capsys: pytest.CaptureFixture[str], text: str) -> None:
    with capsys.disabled():
        print(f"\n[gas] {text}")


# --- set-up -------------------------------------------------------------------------------------


def configure(
    env: Env,
    agent: str = AGENT,
    *,
    cap: int = CAP,
    unsigned: int = UNSIGNED,
    budget: int = BUDGET,
    window: int = WINDOW,
    buckets: int = BUCKETS,
    lifetime: int = LIFETIME,
    suppliers: tuple[str, ...] = (SUPPLIER_A, SUPPLIER_B),
    approvers: list[str] | None = None,
    threshold: int = 2,
    tiers: list[tuple[int, int]] | None = None,
) -> None:
    """Give ``agent`` limits, an allow-list and (by default) the three test approvers, 2-of-3."""
    p = env.policy.functions
    send(p.setAgent(agent, (cap, unsigned, budget, window, buckets, lifetime)), DEPLOYER)
    for supplier in suppliers:
        send(p.setCounterparty(agent, supplier, True), DEPLOYER)
    chosen = APPROVERS if approvers is None else approvers
    send(p.setApprovers(agent, chosen, threshold if chosen else 0, tiers or []), DEPLOYER)


def fund(env: Env, agent: str = AGENT, amount: int = 100_000 * TUSD) -> None:
    """Mint ``amount`` and deposit it into ``agent``'s vault balance (the agent holds none)."""
    send(env.token.functions.mint(DEPLOYER, amount), DEPLOYER)
    send(env.token.functions.approve(env.vault.address, amount), DEPLOYER)
    send(env.vault.functions.deposit(agent, amount), DEPLOYER)


def approval(
    env: Env,
    oid: bytes,
    supplier: str,
    amount: int,
    *,
    agent: str = AGENT,
    decision: bytes = DECISION,
    ttl: int = 3_600,
) -> ap.Approval:
    return ap.Approval(
        order_id=oid,
        agent=agent,
        supplier=supplier,
        amount=amount,
        decision_hash=decision,
        expiry=env.now() + ttl,
    )


def sign_all(
    env: Env, terms: ap.Approval, keys: list[str], **domain: Any
) -> list[ap.SignedApproval]:
    chain_id = domain.get("chain_id", env.chain_id)
    policy = domain.get("policy", env.policy.address)
    return [ap.sign(terms, k, chain_id=chain_id, policy=policy) for k in keys]


def open_fn(
    env: Env,
    oid: bytes,
    supplier: str,
    amount: int,
    *,
    ttl: int = 3_600,
    decision: bytes = DECISION,
    approvals: list[ap.SignedApproval] | None = None,
) -> ContractFunction:
    abi = [a.as_abi() for a in approvals or []]
    return env.escrow.functions.open(oid, supplier, amount, env.now() + ttl, decision, abi)
