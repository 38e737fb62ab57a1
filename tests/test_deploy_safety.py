"""``ledgerflow deploy`` off the local dev chain: no public development keys, no demo seeding,
unless asked explicitly."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_account import Account
from web3 import Web3

from ledgerflow.chain.deploy import contract, load_deployment
from ledgerflow.dev.stack import free_port, start_anvil
from tests.support.isolated import clean_env

CHAIN_ID = 4242  # any chain but 31337


@pytest.fixture(scope="module")
def other_chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    logs = tmp_path_factory.mktemp("other-chain")
    proc = start_anvil(port, chain_id=CHAIN_ID, log_path=logs / "anvil.log")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


def _deploy(rpc_url: str, home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    home.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "ledgerflow.cli", "deploy", *args],
        cwd=home,
        env=clean_env({"LEDGERFLOW_RPC_URL": rpc_url, "LEDGERFLOW_HOME": str(home), **env}),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_dev_keys_are_refused_off_the_dev_chain(other_chain: str, tmp_path: Path) -> None:
    result = _deploy(other_chain, tmp_path / "home")
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert f"refusing to deploy on chain {CHAIN_ID}" in lines[0]
    assert "LEDGERFLOW_ORCHESTRATOR_KEY, LEDGERFLOW_AGENT_KEY, LEDGERFLOW_APPROVER_KEY" in lines[0]
    assert not (tmp_path / "home" / "deployments.json").exists()

    allowed = _deploy(other_chain, tmp_path / "throwaway", "--allow-dev-keys", "--no-seed")
    assert allowed.returncode == 0, allowed.stderr
    assert load_deployment(tmp_path / "throwaway" / "deployments.json").chain_id == CHAIN_ID


def test_own_keys_deploy_without_demo_data_unless_asked(other_chain: str, tmp_path: Path) -> None:
    w3 = Web3(Web3.HTTPProvider(other_chain))
    env = {}
    for role in ("orchestrator", "agent", "approver"):
        account = Account.create()
        w3.provider.make_request("anvil_setBalance", [account.address, hex(10**20)])
        key_file = tmp_path / f"{role}.key"
        key_file.write_text("0x" + account.key.hex().removeprefix("0x") + "\n")
        env[f"LEDGERFLOW_{role.upper()}_KEY_FILE"] = str(key_file)
        if role == "agent":
            agent = account.address

    result = _deploy(other_chain, tmp_path / "home", **env)
    assert result.returncode == 0, result.stderr
    assert f"not seeding the demo data on chain {CHAIN_ID}" in result.stderr
    d = load_deployment(tmp_path / "home" / "deployments.json")
    vault = contract(w3, "AgentVault", d.address("AgentVault"))
    assert vault.functions.balanceOf(agent).call() == 0  # the demo would have funded the vault
    assert json.dumps(d.model_dump(mode="json")).count(agent) >= 1

    seeded = _deploy(other_chain, tmp_path / "seeded", "--seed", **env)
    assert seeded.returncode == 0, seeded.stderr
    d = load_deployment(tmp_path / "seeded" / "deployments.json")
    vault = contract(w3, "AgentVault", d.address("AgentVault"))
    assert vault.functions.balanceOf(agent).call() > 0
