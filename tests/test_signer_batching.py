"""Concurrent sends share their requests (outbox lookups in one query, estimates, broadcasts and
receipts in JSON-RPC batches) without giving up anything a send guarantees: the signed bytes are
persisted before they are broadcast, in nonce order, exactly once per key; a node that refuses
batches gets the same requests one by one; a caller that passes ``gas=`` skips the estimate and
a revert then surfaces from the receipt."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from web3 import AsyncWeb3

from ledgerflow.chain.artifacts import load_artifact
from ledgerflow.chain.rpc import FailoverProvider, connect_async
from ledgerflow.chain.signer import Signer
from ledgerflow.errors import ContractRevert, RPCUnavailable
from ledgerflow.store import Store
from tests.support.anvil import LocalAnvil, fund
from tests.test_proofs import deploy_registry


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


class Recording(FailoverProvider):
    """Records every HTTP request (a batch is one) and, for ``eth_sendRawTransaction``, the
    nonce order in which signed bytes reached the node; optionally refuses batches."""

    def __init__(self, url: str, *, batches: bool | str = True) -> None:
        super().__init__([url])
        self.batches = batches
        self.http: list[list[str]] = []
        self.sent: list[str] = []

    async def make_request(self, method: Any, params: Any) -> Any:
        self.http.append([str(method)])
        if method == "eth_sendRawTransaction":
            self.sent.append(params[0])
        return await super().make_request(method, params)

    async def make_batch_request(self, requests: list[tuple[Any, Any]]) -> Any:
        self.http.append([str(m) for m, _ in requests])
        if self.batches == "http-429":  # a gateway refusing batches at the HTTP level
            raise RPCUnavailable("no JSON-RPC endpoint answered a batch: HTTP 429")
        if not self.batches:  # what a node without batch support answers
            return {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "no"}}
        self.sent += [p[0] for m, p in requests if m == "eth_sendRawTransaction"]
        return await super().make_batch_request(requests)


def nonces_of(raws: list[str]) -> list[int]:
    from ledgerflow.chain.keys import decode_signed

    return [int(decode_signed(r)[0]["nonce"]) for r in raws]


@pytest.mark.parametrize(
    "batches",
    [True, False, "http-429"],
    ids=["batched", "node-without-batches", "gateway-refusing-batches"],
)
async def test_concurrent_sends_share_requests_and_keep_nonce_order(
    chain: LocalAnvil, store: Store, batches: bool | str
) -> None:
    provider = Recording(chain.url, batches=batches)
    signer = Signer(AsyncWeb3(provider), fund(chain.url), store, 31337, rebroadcast_every=0.3)
    to = str(Account.create().address)
    n = 60
    try:
        receipts = await asyncio.gather(
            *(signer.send_tx(f"share:{i}", to=to, value=i + 1) for i in range(n))
        )
    finally:
        await provider.disconnect()
    assert chain.balance(to) == sum(range(1, n + 1))
    assert all(r.ok for r in receipts) and signer.nonce_errors == 0
    rows = [store.outbox_get(f"share:{i}") for i in range(n)]
    assert sorted(r.nonce for r in rows if r is not None) == list(range(n))
    assert all(r is not None and r.status == "mined" for r in rows)
    assert chain.nonce(signer.address) == n == chain.nonce(signer.address, "pending")
    # every first broadcast of a nonce reached the node after every lower nonce's
    first: dict[int, int] = {}
    for i, nonce in enumerate(nonces_of(provider.sent)):
        first.setdefault(nonce, i)
    assert sorted(first, key=first.__getitem__) == list(range(n))
    if batches is True:
        # an estimate, a broadcast and a receipt per send would be 3 * n requests
        assert len(provider.http) < n, len(provider.http)
        assert any(len(b) > 1 and b[0] == "eth_sendRawTransaction" for b in provider.http)
        assert signer.rpc_requests <= len(provider.http)
    else:
        assert all(len(b) == 1 for b in provider.http[1:])  # one by one after the refusal
        assert signer._batch_rpc is False


async def test_a_revert_with_gas_given_surfaces_from_the_receipt_once(
    chain: LocalAnvil, store: Store
) -> None:
    """With ``gas=`` nothing is estimated, so a call that reverts is signed and mined: the send
    raises the decoded ContractRevert from the receipt (status 0), the row is ``reverted``, and a
    retry of the key raises the same without signing again. Without ``gas=`` the same call
    fails at estimation and nothing is signed."""
    registry_address, _ = deploy_registry(chain.url)
    w3 = connect_async([chain.url])
    registry = w3.eth.contract(
        address=registry_address,  # type: ignore[arg-type]
        abi=load_artifact("CheckpointRegistry").abi,
    )
    outsider = Signer(w3, fund(chain.url), store, 31337)  # no WRITER_ROLE: anchorRoot reverts
    try:
        call = registry.functions.anchorRoot(b"\x01" * 32, 1, [])
        with pytest.raises(ContractRevert):
            await outsider.send("revert:estimated", call, contract="CheckpointRegistry")
        assert store.outbox_get("revert:estimated") is None  # nothing signed
        assert chain.nonce(outsider.address) == 0

        with pytest.raises(ContractRevert) as first:
            await outsider.send("revert:gas", call, contract="CheckpointRegistry", gas=200_000)
        row = store.outbox_get("revert:gas")
        assert row is not None and row.status == "reverted"
        receipt = chain.call("eth_getTransactionReceipt", row.tx_hash)
        assert receipt["status"] == "0x0"
        assert chain.nonce(outsider.address) == 1
        with pytest.raises(ContractRevert) as again:
            await outsider.send("revert:gas", call, contract="CheckpointRegistry", gas=200_000)
        assert again.value.error == first.value.error
        assert chain.nonce(outsider.address) == 1  # the retry signed nothing
    finally:
        await w3.provider.disconnect()  # type: ignore[attr-defined]


async def test_a_revert_behind_another_transaction_in_its_block_is_explained(
    chain: LocalAnvil, store: Store
) -> None:
    """Two sends in one block, the second reverting because of the first (as concurrent runs
    spending one budget do): the second's reason is decoded, although its call succeeds on the
    parent block's state."""
    registry_address, key = deploy_registry(chain.url)
    w3 = connect_async([chain.url])
    registry = w3.eth.contract(
        address=registry_address,  # type: ignore[arg-type]
        abi=load_artifact("CheckpointRegistry").abi,
    )
    signer = Signer(w3, key, store, 31337, rebroadcast_every=0.3)
    call = registry.functions.anchorRoot(b"\x07" * 32, 1, [])  # the second anchoring reverts
    start = chain.nonce(signer.address)
    keys = ("same-block:first", "same-block:second")
    chain.call("evm_setAutomine", False)
    try:
        sends = [
            asyncio.create_task(signer.send(k, call, contract="CheckpointRegistry", gas=200_000))
            for k in keys
        ]
        for _ in range(200):
            if chain.nonce(signer.address, "pending") == start + 2:
                break
            await asyncio.sleep(0.05)
        chain.mine()
        results = await asyncio.gather(*sends, return_exceptions=True)
        mined = [r for r in results if not isinstance(r, BaseException)]
        reverted = [r for r in results if isinstance(r, BaseException)]
        assert len(mined) == 1 and len(reverted) == 1, results
        assert isinstance(reverted[0], ContractRevert), reverted
        assert reverted[0].error == "CheckpointRootAlreadyAnchored", reverted
        rows = [store.outbox_get(k) for k in keys]
        row = next(r for r in rows if r is not None and r.status == "reverted")
        receipt = chain.call("eth_getTransactionReceipt", row.tx_hash)
        assert int(receipt["transactionIndex"], 16) == 1  # behind the other, in its block
        assert int(receipt["blockNumber"], 16) == mined[0].block_number
    finally:
        chain.call("evm_setAutomine", True)
        await w3.provider.disconnect()  # type: ignore[attr-defined]
