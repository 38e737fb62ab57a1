"""The signer's infrastructure: JSON-RPC failover, keys from ``*_FILE`` settings, a remote signer
over JSON-RPC, secrets that never reach a log line or an error (canary values), and
infrastructure errors mapped to short, typed, retryable-or-not errors."""

from __future__ import annotations

import asyncio
import re
import traceback
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import structlog
from eth_account import Account
from sqlalchemy.engine import make_url

from ledgerflow.chain.keys import RemoteSigner
from ledgerflow.chain.rpc import FailoverProvider, connect_async
from ledgerflow.chain.signer import Signer
from ledgerflow.errors import ConfigError, RPCUnavailable, SignerUnavailable, StoreUnavailable
from ledgerflow.log import configure_logging, redact_url, scrub
from ledgerflow.runtime import Runtime
from ledgerflow.settings import Settings
from ledgerflow.store import OutboxTx, Store
from tests.support.anvil import LocalAnvil, fund
from tests.support.servers import FailingEndpoint, Forwarder, SigningServer


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[LocalAnvil]:
    anvil = LocalAnvil(tmp_path).start()
    try:
        yield anvil
    finally:
        anvil.stop()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path}/store.db")
    s.migrate()
    yield s
    s.engine.dispose()


@pytest.fixture
async def closing() -> AsyncIterator[list[Any]]:
    """Things with an async close (providers, remote signers) to close after the test."""
    things: list[Any] = []
    yield things
    for t in things:
        if isinstance(t, FailoverProvider):
            await t.disconnect()
        elif isinstance(t, RemoteSigner):
            await t.aclose()
        else:
            await t.stop()


def dead_url() -> str:
    from ledgerflow.dev.stack import free_port

    return f"http://127.0.0.1:{free_port()}"


# ---- failover -----------------------------------------------------------------------------------


async def test_first_healthy_endpoint_is_used_and_errors_switch(
    chain: LocalAnvil, store: Store, closing: list[Any]
) -> None:
    failing = await FailingEndpoint(503).start()
    forwarder = await Forwarder(chain.port).start()
    closing += [failing, forwarder]
    w3 = connect_async([dead_url(), failing.url, forwarder.url, chain.url], cooldown=60)
    provider = w3.provider
    assert isinstance(provider, FailoverProvider)
    closing.append(provider)
    signer = Signer(w3, fund(chain.url), store, 31337, rebroadcast_every=0.3)
    to = Account.create().address
    await asyncio.gather(*(signer.send_tx(f"fo:{i}", to=to, value=1) for i in range(10)))
    # the dead one and the failing one failed the first (concurrent) calls, then were skipped
    assert provider.current == forwarder.url and provider.switches >= 1
    first_wave = len(failing.requests)
    assert 1 <= first_wave <= 10
    # the forwarder goes away in the middle of the work: the next endpoint takes over
    sends = [asyncio.create_task(signer.send_tx(f"fo:b{i}", to=to, value=1)) for i in range(10)]
    # Once the sends have started (their outbox lookups are queued): ten sends share their
    # requests and can finish within a few milliseconds, before a later stop would be noticed.
    await asyncio.sleep(0)
    await forwarder.stop()
    await asyncio.wait_for(asyncio.gather(*sends), 30)
    assert provider.current == chain.url
    assert len(failing.requests) == first_wave  # cooling down: not asked again
    assert chain.balance(to) == 20 and chain.nonce(signer.address) == 20
    assert signer.nonce_errors == 0 and store.outbox_unmined(31337, signer.address) == []


async def test_endpoint_on_another_chain_is_never_used(
    tmp_path: Path, chain: LocalAnvil, closing: list[Any]
) -> None:
    other = LocalAnvil(tmp_path, chain_id=999)
    other.start()
    try:
        w3 = connect_async([other.url, chain.url], chain_id=31337)
        closing.append(w3.provider)
        assert await w3.eth.chain_id == 31337
        provider = w3.provider
        assert isinstance(provider, FailoverProvider)
        assert provider.endpoints[0].last_error == "on chain 999, not 31337"
        assert await w3.eth.chain_id == 31337  # still never the wrong one
    finally:
        other.stop()


async def test_all_endpoints_down_is_one_short_retryable_error(closing: list[Any]) -> None:
    secret_url = f"https://canaryuser:canarypass@127.0.0.1:1/v3/canarytoken{uuid.uuid4().hex}"
    w3 = connect_async([dead_url(), secret_url + "?apikey=canaryquery"], timeout=2)
    closing.append(w3.provider)
    with pytest.raises(RPCUnavailable) as info:
        await w3.eth.block_number
    text = "".join(traceback.format_exception(info.value))
    assert info.value.retryable and len(str(info.value)) <= 300
    assert "no JSON-RPC endpoint answered eth_blockNumber" in str(info.value)
    assert "https://***@127.0.0.1:1/v3/***?apikey=***" in str(info.value)
    for canary in ("canaryuser", "canarypass", "canarytoken", "canaryquery"):
        assert canary not in text


def test_redact_url() -> None:
    assert redact_url("https://u:p@rpc.example.net/v3/9aa3d95b3bc440fa88ea12eaa4456161") == (
        "https://***@rpc.example.net/v3/***"
    )
    assert (
        redact_url("https://rpc.example.net/?key=abc&x=1")
        == "https://rpc.example.net/?key=***&x=***"
    )
    assert redact_url("http://127.0.0.1:8545") == "http://127.0.0.1:8545"
    assert redact_url("wss://node.example/ws/v2/AbCdEf1234567890") == "wss://node.example/ws/v2/***"
    assert redact_url("not a url") == "***"
    assert scrub("call to https://a:b@h.example/x?token=t failed") == (
        "call to https://***@h.example/x?token=*** failed"
    )


# ---- keys from files, remote signer --------------------------------------------------------------


def _settings(tmp_path: Path, **kw: Any) -> Settings:
    return Settings(_env_file=None, home=tmp_path, **kw)  # type: ignore[call-arg]


def test_keys_from_file_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = "0x" + bytes(Account.create().key).hex()
    path = tmp_path / "agent.key"
    path.write_text(key + "\n")
    monkeypatch.setenv("LEDGERFLOW_AGENT_KEY_FILE", str(path))
    settings = _settings(tmp_path)
    assert settings.agent_key is not None and settings.agent_key.get_secret_value() == key
    rt = Runtime(settings, store=Store(f"sqlite:///{tmp_path}/s.db"))
    rt._deployment = type("D", (), {"chain_id": 1})()  # a real chain: no dev fallback
    assert rt.tx_signer("agent").address == Account.from_key(key).address
    with pytest.raises(ConfigError, match="no key configured for the approver"):
        rt.tx_signer("approver")
    monkeypatch.setenv("LEDGERFLOW_AGENT_KEY", key)
    with pytest.raises(ConfigError, match="LEDGERFLOW_AGENT_KEY and LEDGERFLOW_AGENT_KEY_FILE"):
        _settings(tmp_path)
    monkeypatch.delenv("LEDGERFLOW_AGENT_KEY")
    monkeypatch.setenv("LEDGERFLOW_AGENT_KEY_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="cannot read LEDGERFLOW_AGENT_KEY_FILE"):
        _settings(tmp_path)
    urls = tmp_path / "rpc-urls"
    urls.write_text("https://a.example/v3/x\nhttps://b.example\n")
    monkeypatch.delenv("LEDGERFLOW_AGENT_KEY_FILE")
    monkeypatch.setenv("LEDGERFLOW_RPC_URLS_FILE", str(urls))
    assert _settings(tmp_path).rpc_endpoints == ["https://a.example/v3/x", "https://b.example"]


async def test_remote_signer_signs_and_its_answer_is_checked(
    chain: LocalAnvil, store: Store, closing: list[Any]
) -> None:
    key = fund(chain.url)
    server = await SigningServer(key, token="canarysignertoken").start()
    closing.append(server)
    remote = RemoteSigner(server.url, Account.from_key(key).address)
    closing.append(remote)
    w3 = connect_async([chain.url])
    closing.append(w3.provider)
    signer = Signer(w3, remote, store, 31337, rebroadcast_every=0.3)
    to = Account.create().address
    receipts = await asyncio.gather(*(signer.send_tx(f"rs:{i}", to=to, value=1) for i in range(8)))
    assert chain.balance(to) == 8 and len(server.requests) == 8
    assert {r["method"] for r in server.requests} == {"eth_signTransaction"}
    tx = chain.call("eth_getTransactionByHash", receipts[0].tx_hash)
    assert tx["from"].lower() == signer.address.lower()
    # Clef's method and answer shape
    remote.method = "account_signTransaction"
    await signer.send_tx("rs:clef", to=to, value=1)
    assert chain.balance(to) == 9
    # a signer that answers another transaction is not believed, and nothing is stored
    for lie, message in (
        ("to", "signed another transaction (to differs)"),
        ("key", "signed with"),
        ("garbage", "not a signed transaction"),
        ("refuse", "refused to sign: no"),
    ):
        server.lie = lie
        with pytest.raises(SignerUnavailable, match=re.escape(message)):
            await signer.send_tx(f"rs:lie:{lie}", to=to, value=1)
        assert store.outbox_get(f"rs:lie:{lie}") is None
    server.lie = ""
    await signer.send_tx("rs:after", to=to, value=1)  # no nonce was burnt by the refusals
    assert chain.nonce(signer.address) == 10 == chain.nonce(signer.address, "pending")
    await server.stop()
    with pytest.raises(SignerUnavailable, match="unreachable") as info:
        await signer.send_tx("rs:down", to=to, value=1)
    assert "canarysignertoken" not in "".join(traceback.format_exception(info.value))


def test_runtime_uses_the_remote_signer_for_roles_without_a_key(tmp_path: Path) -> None:
    address = Account.create().address
    settings = _settings(
        tmp_path,
        remote_signer_url="http://signer.internal:9000",
        agent_address=address,
        remote_signer_method="account_signTransaction",
    )
    rt = Runtime(settings, store=Store(f"sqlite:///{tmp_path}/s.db"))
    rt._deployment = type("D", (), {"chain_id": 1})()
    agent = rt.tx_signer("agent")
    assert isinstance(agent, RemoteSigner) and agent.address == address
    assert agent.method == "account_signTransaction" and "signer.internal" in repr(agent)
    with pytest.raises(ConfigError):
        rt.tx_signer("orchestrator")  # no key, no address


# ---- no secret in any log line or error ---------------------------------------------------------


async def test_canaries_never_reach_logs_or_errors(
    chain: LocalAnvil, store: Store, closing: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    token = uuid.uuid4().hex
    canaries = {
        "userinfo": f"canaryuser{token[:6]}",
        "password": f"canarypw{token[6:12]}",
        "path": f"canarypath{token}",
        "query": f"canaryquery{token[:10]}",
    }
    bad = (
        f"http://{canaries['userinfo']}:{canaries['password']}@127.0.0.1:1/v3/"
        f"{canaries['path']}?apikey={canaries['query']}"
    )
    key = fund(chain.url)
    configure_logging("DEBUG", "json")
    try:
        w3 = connect_async([bad, chain.url], timeout=2)
        closing.append(w3.provider)
        signer = Signer(w3, key, store, 31337, rebroadcast_every=0.3)
        to = Account.create().address
        await signer.send_tx("canary:1", to=to, value=1)  # fails over: a warning names the bad one
        errors: list[BaseException] = []
        only_bad = connect_async([bad], timeout=2)
        closing.append(only_bad.provider)
        try:
            await Signer(only_bad, key, store, 31337).send_tx("canary:2", to=to, value=1)
        except Exception as exc:
            errors.append(exc)
            structlog.get_logger("test").exception("send failed")
        # a library message quoting the URL, logged as is, is scrubbed too
        structlog.get_logger("test").warning("raw", detail=f"POST {bad} failed", url=bad)
        import logging

        logging.getLogger("aiohttp.client").error("request to %s failed", bad)
    finally:
        configure_logging("INFO", "auto")
    out = capsys.readouterr()
    text = (
        out.out
        + out.err
        + "".join("".join(traceback.format_exception(e)) + repr(e) for e in errors)
    )
    assert errors and isinstance(errors[0], RPCUnavailable)
    assert "rpc endpoint failed" in text and "127.0.0.1:1/v3/***" in text
    secrets = [*canaries.values(), key, key.removeprefix("0x")]
    leaked = [s for s in secrets if s.lower() in text.lower()]
    assert not leaked, f"secrets in logs or errors: {leaked}"
    assert repr(signer).startswith("Signer(address=") and key not in repr(signer.account)


# ---- infrastructure errors: short, typed, no SQL or parameters ----------------------------------


def test_unreachable_database_is_a_short_store_error() -> None:
    s = Store("postgresql+psycopg://ledgerflow:canarydbpassword@127.0.0.1:1/ledgerflow")
    with pytest.raises(StoreUnavailable) as info:
        s.migrate()
    assert info.value.__cause__ is None and info.value.__context__ is None
    text = "".join(traceback.format_exception(info.value))
    assert "canarydbpassword" not in text and "SELECT" not in text and "[SQL" not in text
    assert str(info.value).startswith("database error: OperationalError")
    assert info.value.retryable and len(str(info.value)) <= 240
    assert "canarydbpassword" not in repr(s)


def test_sql_errors_never_quote_statements_or_parameters(pg_url: str) -> None:
    url = make_url(pg_url)
    name = f"lf_test_{uuid.uuid4().hex[:12]}"
    admin = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    s = Store(url.set(database=name).render_as_string(hide_password=False))
    try:
        s.migrate()
        canary = "0xcanaryrawtransaction" + "ab" * 40
        too_long = OutboxTx(
            key="k",
            chain_id=1,
            sender="0x1",
            nonce=0,
            raw=canary,
            tx_hash="0x1",
            status="canary-status-" + "x" * 40,  # longer than the column
        )
        with pytest.raises(StoreUnavailable) as info:
            s.outbox_put(too_long)
        exc = info.value
        assert exc.__cause__ is None and exc.__context__ is None  # no driver error chained
        text = "".join(traceback.format_exception_only(exc)) + repr(exc)
        assert "canary" not in text and "INSERT" not in text and "[SQL" not in text
        assert "DataError" in str(info.value)
    finally:
        s.engine.dispose()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_read_only_sqlite_store_says_so(tmp_path: Path) -> None:
    path = tmp_path / "ro.db"
    Store(f"sqlite:///{path}").migrate()
    ro = Store(f"sqlite:///file:{path}?mode=ro&uri=true")
    with pytest.raises(StoreUnavailable, match="readonly database"):
        ro.outbox_put(OutboxTx(key="k", chain_id=1, sender="0x1", nonce=0, raw="0x", tx_hash="0x"))


def test_log_scrubbing_of_stdlib_records(capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    from ledgerflow.log import register_secret

    register_secret("0xsecretvalue-" + "9" * 20)
    configure_logging("INFO", "json")
    try:
        logging.getLogger("web3.providers").warning("sent 0xsecretvalue-%s", "9" * 20)
    finally:
        configure_logging("INFO", "auto")
    err = capsys.readouterr().err
    assert "secretvalue" not in err and "sent ***" in err


def test_infrastructure_errors_become_short_typed_errors() -> None:
    import aiohttp
    import sqlalchemy.exc as sa
    from web3.exceptions import Web3RPCError, Web3ValidationError

    from ledgerflow.errors import ChainError, infrastructure_error

    secret = "canary-" + uuid.uuid4().hex
    db = infrastructure_error(
        sa.OperationalError(f"SELECT '{secret}'", {"p": secret}, Exception("server closed"))
    )
    assert isinstance(db, StoreUnavailable) and db.retryable
    assert str(db) == "database error: OperationalError: server closed"
    bad_sql = infrastructure_error(sa.ProgrammingError(f"SELECT {secret}", {}, Exception(secret)))
    assert isinstance(bad_sql, StoreUnavailable) and not bad_sql.retryable
    assert secret not in str(bad_sql)
    net = infrastructure_error(aiohttp.ClientConnectionError(f"http://u:{secret}@h/"))
    assert isinstance(net, RPCUnavailable) and secret not in str(net)
    rpc = infrastructure_error(
        Web3RPCError("ignored", rpc_response={"error": {"message": "insufficient funds"}})
    )
    assert isinstance(rpc, ChainError) and str(rpc) == "Web3RPCError: insufficient funds"
    invalid = infrastructure_error(Web3ValidationError("bad argument"))
    assert invalid is not None and not invalid.retryable
    assert infrastructure_error(ValueError("mine")) is None
    long = infrastructure_error(Web3RPCError("x", rpc_response={"error": {"message": "y" * 5000}}))
    assert long is not None and len(str(long)) <= 240
