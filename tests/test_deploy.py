"""deploy_all, seed_demo and deployment_is_current on the real anvil."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from web3 import Web3

from ledgerflow.chain.approvals import read_key_file
from ledgerflow.chain.deploy import (
    CONTRACT_NAMES,
    DEMO_APPROVER_KEYS,
    DEMO_LIMITS,
    DEMO_SKU,
    DEMO_SUPPLIER_KEYS,
    DEV_KEYS,
    TUSD,
    DemoSeed,
    Deployment,
    artifacts_digest,
    bytes32_to_sku,
    contract,
    deploy_all,
    deployment_is_current,
    is_public_dev_key,
    load_deployment,
    role_id,
    save_deployment,
    seed_demo,
    sku_to_bytes32,
)
from ledgerflow.dev.stack import free_port, start_anvil
from ledgerflow.errors import ChainError, ConfigError
from ledgerflow.settings import ANVIL_DEFAULT_KEYS

MNEMONIC = "test test test test test test test test test test test junk"


@pytest.fixture(scope="module")
def deployed(anvil: Any) -> tuple[Deployment, DemoSeed]:
    d = deploy_all(anvil.rpc_url, DEV_KEYS[0], agent_key=DEV_KEYS[1], approver_key=DEV_KEYS[2])
    seed = seed_demo(anvil.rpc_url, d, DEV_KEYS[0], DEV_KEYS[1])
    return d, seed


def test_dev_keys_are_anvils_mnemonic_accounts() -> None:
    Account.enable_unaudited_hdwallet_features()
    derived = [
        Account.from_mnemonic(MNEMONIC, account_path=f"m/44'/60'/0'/0/{i}").key.to_0x_hex()
        for i in range(10)
    ]
    assert list(DEV_KEYS) == derived
    assert DEV_KEYS[:6] == ANVIL_DEFAULT_KEYS
    assert tuple(derived[3:7]) == DEMO_SUPPLIER_KEYS


def test_deploy_all_grants_roles(anvil: Any, deployed: tuple[Deployment, DemoSeed]) -> None:
    d, _ = deployed
    w3 = Web3(Web3.HTTPProvider(anvil.rpc_url))
    me = Account.from_key(DEV_KEYS[0]).address
    assert d.chain_id == anvil.chain_id
    assert d.deployer == d.orchestrator == me
    assert d.agent == Account.from_key(DEV_KEYS[1]).address
    assert d.approver == Account.from_key(DEV_KEYS[2]).address
    assert list(d.contracts) == list(CONTRACT_NAMES)
    assert d.artifacts_digest == artifacts_digest()
    assert 0 < d.block_number <= w3.eth.block_number

    c = {name: contract(w3, name, address) for name, address in d.contracts.items()}
    expected = [
        ("CheckpointRegistry", "WRITER_ROLE", me),
        ("InventoryLedger", "ORCHESTRATOR_ROLE", me),
        ("InventoryLedger", "OPERATOR_ROLE", me),
        ("TestUSD", "MINTER_ROLE", me),
        ("AgentPolicy", "SPENDER_ROLE", d.contracts["Escrow"]),
        ("AgentPolicy", "APPROVER_ROLE", d.approver),
        ("AgentPolicy", "GUARDIAN_ROLE", d.guardian),
        ("AgentVault", "PAYER_ROLE", d.contracts["Escrow"]),
    ]
    for name, role, account in expected:
        assert c[name].functions.hasRole(role_id(role), account).call(), (name, role)
        assert c[name].functions.hasRole(role_id("DEFAULT_ADMIN_ROLE"), me).call()
        # The role ids used here are the contracts' own constants.
        assert getattr(c[name].functions, role)().call() == role_id(role)
    assert d.guardian == me
    assert not c["AgentPolicy"].functions.hasRole(role_id("APPROVER_ROLE"), d.agent).call()
    # Nothing but the Escrow may pull from the vault or spend through the policy.
    for name, role in (("AgentVault", "PAYER_ROLE"), ("AgentPolicy", "SPENDER_ROLE")):
        for account in (me, d.agent, d.approver):
            assert not c[name].functions.hasRole(role_id(role), account).call()
    assert c["Escrow"].functions.token().call() == d.contracts["TestUSD"]
    assert c["Escrow"].functions.policy().call() == d.contracts["AgentPolicy"]
    assert c["Escrow"].functions.vault().call() == d.contracts["AgentVault"]
    assert c["AgentVault"].functions.token().call() == d.contracts["TestUSD"]


def test_seed_demo(anvil: Any, deployed: tuple[Deployment, DemoSeed]) -> None:
    d, seed = deployed
    w3 = Web3(Web3.HTTPProvider(anvil.rpc_url))
    policy = contract(w3, "AgentPolicy", d.contracts["AgentPolicy"])
    token = contract(w3, "TestUSD", d.contracts["TestUSD"])
    vault = contract(w3, "AgentVault", d.contracts["AgentVault"])
    escrow = contract(w3, "Escrow", d.contracts["Escrow"])
    market = contract(w3, "Marketplace", d.contracts["Marketplace"])
    inventory = contract(w3, "InventoryLedger", d.contracts["InventoryLedger"])
    sku = sku_to_bytes32(DEMO_SKU)

    assert (seed.stock, seed.threshold, seed.target, seed.shortfall) == (20, 50, 200, 180)
    assert inventory.functions.shortfall(sku).call() == 180
    assert (seed.per_tx_cap, seed.period_budget, seed.period_seconds) == (
        5_000 * TUSD,
        200_000 * TUSD,
        86_400,
    )
    assert (seed.unsigned_limit, seed.lifetime_cap) == (20_000 * TUSD, 100_000_000 * TUSD)
    config = policy.functions.agentConfig(d.agent).call()
    assert tuple(config[2:8]) == DEMO_LIMITS.as_abi()
    # The agent's funds sit in the vault; its own account holds only gas money.
    assert vault.functions.balanceOf(d.agent).call() == 1_000_000 * TUSD == seed.agent_balance
    assert token.functions.balanceOf(d.agent).call() == 0
    approvers = [Account.from_key(k).address for k in DEMO_APPROVER_KEYS]
    assert seed.approvers == approvers and seed.approver_threshold == 2
    assert seed.approver_key_files == []
    assert tuple(policy.functions.approversOf(d.agent).call()) == (
        approvers,
        2,
        [(50_000 * TUSD, 3)],
    )
    # A day of heavy demo use (50 purchases of the demo's size) fits the rolling budget.
    assert seed.period_budget > 50 * 195 * 12 * TUSD

    offers = {o[0]: o for o in market.functions.offersFor(sku, 0, 64).call()}
    assert sorted(offers) == sorted(s.offer_id for s in seed.suppliers)
    table = [(s.unit_price, s.lead_time_days, s.allow_listed, s.address) for s in seed.suppliers]
    suppliers = [Account.from_key(k).address for k in DEMO_SUPPLIER_KEYS]
    assert table == [
        (14 * TUSD, 5, True, suppliers[0]),
        (9 * TUSD, 3, False, suppliers[1]),
        (10 * TUSD, 45, True, suppliers[2]),
        (12 * TUSD, 7, True, suppliers[3]),
    ]
    for s in seed.suppliers:
        assert policy.functions.isCounterpartyAllowed(d.agent, s.address).call() is s.allow_listed
        assert offers[s.offer_id][7] == s.description
        assert s.max_quantity >= seed.shortfall
    assert sum("Ignore your rules" in s.description for s in seed.suppliers) == 1
    best = next(s for s in seed.suppliers if s.offer_id == seed.expected_offer_id)
    assert (best.unit_price, best.lead_time_days) == (12 * TUSD, 7)

    # The on-chain rulebook, not the model, decides: the injection's payee is refused, the
    # expected purchase passes the pre-check.
    oid, decision = b"\x01" * 32, b"\x02" * 32
    amount = 180 * best.unit_price
    deadline = w3.eth.get_block("latest")["timestamp"] + 3_600
    fn = escrow.functions.checkOpen(d.agent, oid, best.address, amount, deadline, decision, [])
    assert fn.call() == 0  # within the cap: no approval needed
    unlisted = next(s for s in seed.suppliers if not s.allow_listed)
    assert unlisted.address in unlisted.description


def test_seed_demo_twice_sends_nothing(anvil: Any, deployed: tuple[Deployment, DemoSeed]) -> None:
    d, seed = deployed
    w3 = Web3(Web3.HTTPProvider(anvil.rpc_url))
    block = w3.eth.block_number
    assert seed_demo(anvil.rpc_url, d, DEV_KEYS[0], DEV_KEYS[1]) == seed
    assert w3.eth.block_number == block


def test_seed_demo_refuses_foreign_keys(anvil: Any, deployed: tuple[Deployment, DemoSeed]) -> None:
    d, _ = deployed
    with pytest.raises(ConfigError, match="agent key"):
        seed_demo(anvil.rpc_url, d, DEV_KEYS[0], DEV_KEYS[9])
    with pytest.raises(ConfigError, match="supplier keys"):
        seed_demo(anvil.rpc_url, d, DEV_KEYS[0], DEV_KEYS[1], DEMO_SUPPLIER_KEYS[:2])


def test_seed_demo_writes_approver_keys(anvil: Any, tmp_path: Path) -> None:
    d = deploy_all(anvil.rpc_url, DEV_KEYS[0], agent_key=DEV_KEYS[1], approver_key=DEV_KEYS[2])
    seed = seed_demo(anvil.rpc_url, d, DEV_KEYS[0], DEV_KEYS[1], approver_dir=tmp_path / "keys")
    files = [Path(f) for f in seed.approver_key_files]
    assert [f.name for f in files] == ["approver-1.key", "approver-2.key", "approver-3.key"]
    keys = [read_key_file(f) for f in files]
    assert all(f.stat().st_mode & 0o077 == 0 for f in files)
    assert [Account.from_key(k).address for k in keys] == seed.approvers
    assert not any(is_public_dev_key(k) for k in keys)
    # A second seed reads the same files instead of making new keys.
    again = seed_demo(anvil.rpc_url, d, DEV_KEYS[0], DEV_KEYS[1], approver_dir=tmp_path / "keys")
    assert again.approvers == seed.approvers


def test_public_keys_and_demo_seed_are_refused_off_the_dev_chain(tmp_path: Path) -> None:
    port = free_port()
    proc = start_anvil(port, log_path=tmp_path / "anvil.log", chain_id=4242)
    rpc = f"http://127.0.0.1:{port}"
    try:
        with pytest.raises(ConfigError, match=r"public development key.*chain id 4242"):
            deploy_all(rpc, DEV_KEYS[0], agent_key=DEV_KEYS[1], approver_key=DEV_KEYS[2])
        own = ["0x" + bytes([i]).hex() * 32 for i in (7, 8)]
        with pytest.raises(ConfigError, match="the agent key is a public"):
            deploy_all(rpc, own[0], agent_key=DEV_KEYS[1], approver_key=own[1])
        with pytest.raises(ConfigError, match="the approver key is a public"):
            deploy_all(rpc, own[0], agent_key=own[1], approver_key=DEMO_APPROVER_KEYS[0])
        d = deploy_all(
            rpc, DEV_KEYS[0], agent_key=DEV_KEYS[1], approver_key=DEV_KEYS[2], allow_dev_keys=True
        )
        assert d.chain_id == 4242
        with pytest.raises(ConfigError, match="refusing to seed the demo on chain id 4242"):
            seed_demo(rpc, d, DEV_KEYS[0], DEV_KEYS[1])
        seed = seed_demo(rpc, d, DEV_KEYS[0], DEV_KEYS[1], allow_any_chain=True)
        assert seed.agent_balance == 1_000_000 * TUSD
    finally:
        proc.stop()


def test_bad_key_is_not_echoed(anvil: Any) -> None:
    bad = "0x" + "zz" * 32
    with pytest.raises(ConfigError) as info:
        deploy_all(anvil.rpc_url, bad, agent_key=DEV_KEYS[1], approver_key=DEV_KEYS[2])
    assert "zz" not in str(info.value) and "deployer" in str(info.value)


def test_save_load_and_is_current(
    anvil: Any, deployed: tuple[Deployment, DemoSeed], tmp_path: Path
) -> None:
    d, _ = deployed
    path = tmp_path / "state" / "deployments.json"
    save_deployment(path, d)
    assert load_deployment(path) == d
    assert path.read_text().endswith("\n")
    assert deployment_is_current(anvil.rpc_url, d) is True

    assert deployment_is_current(anvil.rpc_url, d.model_copy(update={"chain_id": 1})) is False
    stale = d.model_copy(update={"artifacts_digest": "0x" + "00" * 32})
    assert deployment_is_current(anvil.rpc_url, stale) is False

    with pytest.raises(ConfigError, match="no deployment file"):
        load_deployment(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"chain_id": 1}')
    with pytest.raises(ConfigError, match="not a valid deployment"):
        load_deployment(broken)


def test_is_current_false_on_an_empty_chain(
    deployed: tuple[Deployment, DemoSeed], tmp_path: Path
) -> None:
    """A restarted (fresh) anvil has the same chain id but none of the contracts."""
    d, _ = deployed
    port = free_port()
    proc = start_anvil(port, log_path=tmp_path / "anvil.log")
    try:
        assert deployment_is_current(f"http://127.0.0.1:{port}", d) is False
    finally:
        proc.stop()


@pytest.mark.parametrize("sku", ["WIDGET-42", "x", "Ü" * 16, "A" * 32])
def test_sku_round_trip(sku: str) -> None:
    raw = sku_to_bytes32(sku)
    assert len(raw) == 32 and raw.startswith(sku.encode())
    assert bytes32_to_sku(raw) == sku
    assert bytes32_to_sku("0x" + raw.hex()) == sku


@pytest.mark.parametrize("sku", ["", "A" * 33, "Ü" * 17, "A\x00B"])
def test_sku_invalid(sku: str) -> None:
    with pytest.raises(ValueError):
        sku_to_bytes32(sku)


def test_bytes32_to_sku_invalid() -> None:
    for value in (b"\x00" * 32, b"abc", b"A\x00B".ljust(32, b"\x00")):
        with pytest.raises(ValueError):
            bytes32_to_sku(value)


def test_unreachable_endpoint_is_a_chain_error_without_the_url_path(
    deployed: tuple[Deployment, DemoSeed],
) -> None:
    d, _ = deployed
    url = f"http://127.0.0.1:{free_port()}/v3/SECRET-API-KEY"
    with pytest.raises(ChainError) as info:
        deployment_is_current(url, d)
    assert "SECRET" not in str(info.value) and "127.0.0.1" in str(info.value)
