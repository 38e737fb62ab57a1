"""The batch anchorer: pending step hashes of many runs → one Merkle root → one transaction.

The store is the queue. A batch is claimed atomically (its root and every proof written in one
transaction), then the root is sent through the signer's outbox with the key ``anchor:<root>``.
After a crash the unfinished batch is resumed: the outbox rebroadcasts the same signed bytes, and a
root the registry already holds (``CheckpointRootAlreadyAnchored``) is recorded as done. So a
pending hash is anchored later exactly once, and nothing is anchored twice.

Among many workers one anchorer at a time holds the ``anchorer`` lease (see
:mod:`ledgerflow.store.lease`); the others wait and take over within a lease lifetime when the
holder dies, resuming the batches it left.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import structlog

from ledgerflow.checkpoint.merkle import build_tree
from ledgerflow.checkpoint.records import leaf_hash
from ledgerflow.errors import ContractRevert
from ledgerflow.runtime import Runtime
from ledgerflow.store import AnchorRow
from ledgerflow.store.lease import Lease

__all__ = ["ANCHORER_LEASE", "Anchorer", "build_batch"]

#: The lease one anchorer holds among all workers sharing the store.
ANCHORER_LEASE = "anchorer"

log = structlog.get_logger(__name__)


def build_batch(step_hashes: list[str]) -> tuple[str, list[list[str]]]:
    """Merkle root (0x-hex) of the steps' leaves and each step's proof (0x-hex siblings)."""
    tree = build_tree([leaf_hash(bytes.fromhex(h[2:])) for h in step_hashes])
    proofs = [["0x" + p.hex() for p in tree.proof(i)] for i in range(len(step_hashes))]
    return "0x" + tree.root.hex(), proofs


class Anchorer:
    """Anchors pending batched steps when ``batch_size`` are waiting or the oldest waited
    ``max_wait`` seconds."""

    def __init__(
        self, runtime: Runtime, *, batch_size: int, max_wait: float, poll: float = 0.05
    ) -> None:
        self.rt = runtime
        self.batch_size = batch_size
        self.max_wait = max_wait
        self.poll = poll
        self.anchored_roots = 0
        self.lease = Lease(runtime.store, ANCHORER_LEASE, ttl=runtime.settings.lease_seconds)

    async def run(self, stop: asyncio.Event) -> None:
        """Anchor while holding the anchorer lease, until ``stop`` is set."""
        await self.lease.acquire()
        self.lease.keep()
        try:
            await self._run(stop)
        finally:
            await self.lease.release()

    async def _run(self, stop: asyncio.Event) -> None:
        unfinished = True  # batches claimed by an earlier process, or by a failed attempt
        waiting_logged = False
        while not stop.is_set():
            try:
                if not self.lease.held:
                    if not waiting_logged and self.lease.current is not None:
                        log.info(
                            "another anchorer holds the lease; standing by",
                            holder=self.lease.current.holder,
                        )
                        waiting_logged = True
                    unfinished = True  # when it comes to us, the last holder may have left some
                    await asyncio.wait_for(stop.wait(), min(1.0, self.lease.ttl / 3))
                    continue
                waiting_logged = False
                if unfinished:
                    await self.resume()
                    unfinished = False
                if not await self.tick():
                    await asyncio.wait_for(stop.wait(), self.poll)
            except TimeoutError:
                continue
            except Exception:  # keep anchoring: the claimed batch stays pending, retried next
                log.exception("anchoring failed; will retry")
                unfinished = True
                await asyncio.sleep(1.0)

    async def tick(self, *, force: bool = False) -> bool:
        """Anchor one batch if one is due; returns whether it anchored."""
        count, oldest = await asyncio.to_thread(self.rt.store.pending_stats)
        if count == 0:
            return False
        if oldest is not None and oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=UTC)
        age = (datetime.now(UTC) - oldest).total_seconds() if oldest else 0.0
        if not force and count < self.batch_size and age < self.max_wait:
            return False
        return await self.anchor_once() is not None

    async def anchor_once(self) -> AnchorRow | None:
        registry = self.rt.contract("CheckpointRegistry")
        claimed = await asyncio.to_thread(
            self.rt.store.claim_batch,
            self.batch_size,
            build_batch,
            chain_id=self.rt.chain_id,
            registry=registry.address,
        )
        if claimed is None:
            return None
        anchor, _steps = claimed
        await self._send(anchor)
        return anchor

    async def resume(self) -> int:
        """Finish batches claimed before a crash."""
        rows = await asyncio.to_thread(self.rt.store.unfinished_anchors)
        for row in rows:
            await self._send(row)
        return len(rows)

    async def _send(self, anchor: AnchorRow) -> None:
        assert anchor.root is not None and anchor.id is not None
        registry = self.rt.contract("CheckpointRegistry")
        signer = await self.rt.signer("orchestrator")
        root = bytes.fromhex(anchor.root[2:])
        call = registry.functions.anchorRoot(root, anchor.leaf_count)
        try:
            receipt = await signer.send(
                f"anchor:{anchor.root}", call, contract="CheckpointRegistry"
            )
            tx_hash, block = receipt.tx_hash, receipt.block_number
        except ContractRevert as exc:
            if exc.error != "CheckpointRootAlreadyAnchored":
                raise
            tx_hash, block = await self._find_anchor_tx(root)
        await asyncio.to_thread(
            self.rt.store.confirm_anchor, anchor.id, tx_hash=tx_hash, block_number=block
        )
        self.anchored_roots += 1
        self.rt.anchor_events.notify()
        log.info(
            "root anchored",
            root=anchor.root,
            leaves=anchor.leaf_count,
            tx_hash=tx_hash,
            block=block,
        )

    async def _find_anchor_tx(self, root: bytes) -> tuple[str, int]:
        registry = self.rt.contract("CheckpointRegistry")
        block = int(await registry.functions.anchoredAt(root).call())
        logs = await registry.events.RootAnchored.get_logs(
            argument_filters={"root": root}, from_block=block, to_block=block
        )
        for entry in logs:
            return "0x" + bytes(entry["transactionHash"]).hex(), int(entry["blockNumber"])
        return "", block
