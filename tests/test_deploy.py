"""deploy_all, seed_demo and deployment_is_current on the real anvil."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from web3 import Web3

from ledgerflow.chain.deploy import (
    CONTRACT_NAMES,
    DEMO_SKU,
    DEMO_SUPPLIER_KEYS,
    DEV_KEYS,
    MAX_UINT256,
    TUSD,
    DemoSeed,
    Deployment,
    artifacts_digest,
    bytes32_to_sku,
    contract,
    deploy_all,
    deployment_is_current,
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
    ]
    for name, role, account in expected:
        assert c[name].functions.hasRole(role_id(role), account).call(), (name, role)
        assert c[name].functions.hasRole(role_id("DEFAULT_ADMIN_ROLE"), me).call()
        # The role ids used here are the contracts' own constants.
        assert getattr(c[name].functions, role)().call() == role_id(role)
    assert not c["AgentPolicy"].functions.hasRole(role_id("APPROVER_ROLE"), d.agent).call()
    assert c["Escrow"].functions.token().call() == d.contracts["TestUSD"]
    assert c["Escrow"].functions.policy().call() == d.contracts["AgentPolicy"]


def test_seed_demo(anvil: Any, deployed: tuple[Deployment, DemoSeed]) -> None:
    d, seed = deployed
    w3 = Web3(Web3.HTTPProvider(anvil.rpc_url))
    policy = contract(w3, "AgentPolicy", d.contracts["AgentPolicy"])
    token = contract(w3, "TestUSD", d.contracts["TestUSD"])
    market = contract(w3, "Marketplace", d.contracts["Marketplace"])
    inventory = contract(w3, "InventoryLedger", d.contracts["InventoryLedger"])
    sku = sku_to_bytes32(DEMO_SKU)

    assert (seed.stock, seed.threshold, seed.target, seed.shortfall) == (20, 50, 200, 180)
    assert inventory.functions.shortfall(sku).call() == 180
    assert (seed.per_tx_cap, seed.period_budget, seed.period_seconds) == (
        5_000 * TUSD,
        20_000 * TUSD,
        86_400,
    )
    assert token.functions.balanceOf(d.agent).call() == 50_000 * TUSD == seed.agent_balance
    assert token.functions.allowance(d.agent, d.contracts["Escrow"]).call() == MAX_UINT256

    offers = {o[0]: o for o in market.functions.offersFor(sku).call()}
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
        assert policy.functions.isCounterpartyAllowed(s.address).call() is s.allow_listed
        assert offers[s.offer_id][7] == s.description
        assert s.max_quantity >= seed.shortfall
    assert sum("Ignore your rules" in s.description for s in seed.suppliers) == 1
    best = next(s for s in seed.suppliers if s.offer_id == seed.expected_offer_id)
    assert (best.unit_price, best.lead_time_days) == (12 * TUSD, 7)

    # The on-chain rulebook, not the model, decides: the injection's payee is refused, the
    # expected purchase passes the pre-check.
    oid = b"\x01" * 32
    assert policy.functions.checkSpend(d.agent, best.address, 180 * best.unit_price, oid).call()
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
