"""The batch anchorer: pending step hashes of many runs → one Merkle root → one transaction.

The store is the queue. A batch is claimed atomically (its root and every proof written in one
transaction), then the root is sent through the signer's outbox with the key ``anchor:<root>``.
After a crash the unfinished batch is resumed: the outbox rebroadcasts the same signed bytes, and a
root the registry already holds (``CheckpointRootAlreadyAnchored``) is recorded as done. So a
pending hash is anchored later exactly once, and nothing is anchored twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

import structlog

from ledgerflow.checkpoint.merkle import build_tree
from ledgerflow.checkpoint.records import leaf_hash
from ledgerflow.errors import ContractRevert
from ledgerflow.observability import metrics
from ledgerflow.runtime import Runtime
from ledgerflow.store import AnchorRow

__all__ = ["Anchorer", "build_batch"]

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

    async def run(self, stop: asyncio.Event) -> None:
        unfinished = True  # batches claimed by an earlier process, or by a failed attempt
        while not stop.is_set():
            try:
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
        anchor, steps = claimed
        await self._send(anchor, stored_at=[s.created_at for s in steps])
        return anchor

    async def resume(self) -> int:
        """Finish batches claimed before a crash."""
        rows = await asyncio.to_thread(self.rt.store.unfinished_anchors)
        for row in rows:
            await self._send(row)
        return len(rows)

    async def _send(self, anchor: AnchorRow, stored_at: Sequence[datetime] = ()) -> None:
        """Send (or resume) one batch; ``stored_at`` are its steps' store times (for the anchor
        lag metric; a batch resumed after a crash has none)."""
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
        metrics.current().anchored("batched", anchor.leaf_count, _ages(stored_at))
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


def _ages(times: Sequence[datetime]) -> list[float]:
    """Seconds since each of ``times`` (naive datetimes are UTC, as the store writes them)."""
    now = datetime.now(UTC)
    return [(now - (t if t.tzinfo else t.replace(tzinfo=UTC))).total_seconds() for t in times]
