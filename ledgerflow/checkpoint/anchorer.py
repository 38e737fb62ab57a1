"""The batch anchorer: pending step hashes of many runs → one Merkle root → one transaction,
carrying the seals of the runs that ended.

The store is the queue. A batch is claimed atomically (its root, every proof and the seals that
ride with it written in one transaction), then ``anchorRoot(root, leafCount, seals)`` is sent
through the signer's outbox with the key ``anchor:<root>``. A seal joins a batch only once every
step of its run is in that batch or an earlier confirmed one (checkpoint spec v2, "The seal"); a
seal whose steps were all anchored before goes out in a seal-only transaction. After a crash the
unfinished batch is resumed: the outbox rebroadcasts the same signed bytes, and a root the
registry already holds (``CheckpointRootAlreadyAnchored``) is recorded as done, its seals with it
(they were events of that same transaction). So every pending hash and every seal is anchored
exactly once.

Among many workers one anchorer at a time holds the ``anchorer`` lease (see
:mod:`ledgerflow.store.lease`); the others wait and take over within a lease lifetime when the
holder dies, resuming the batches it left.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

import structlog
from web3.logs import DISCARD

from ledgerflow.checkpoint.canonical import keccak
from ledgerflow.checkpoint.merkle import build_standard_tree, build_tree
from ledgerflow.checkpoint.records import leaf_hash, leaf_hash_v2
from ledgerflow.errors import ContractRevert
from ledgerflow.observability import metrics
from ledgerflow.runtime import Runtime
from ledgerflow.store import AnchorRow, SealRow
from ledgerflow.store.lease import Lease

__all__ = ["ANCHORER_LEASE", "Anchorer", "build_batch", "seal_only_root"]

#: The lease one anchorer holds among all workers sharing the store.
ANCHORER_LEASE = "anchorer"

log = structlog.get_logger(__name__)

#: At most this many seals ride in one anchoring transaction (about 1,900 gas each).
MAX_SEALS_PER_TX = 256


def build_batch(step_hashes: list[str], spec_version: int = 2) -> tuple[str, list[list[str]]]:
    """Merkle root (0x-hex) of a batch of step hashes and each step's proof (0x-hex siblings).

    Version 2: ``@openzeppelin/merkle-tree``'s StandardMerkleTree over ``[step_hash]`` values
    (leaf encoding ``["bytes32"]``). Version 1: the v1 tree over ``keccak256(0x00 || step_hash)``
    leaves (for version 1 runs still pending).
    """
    values = [bytes.fromhex(h[2:]) for h in step_hashes]
    if spec_version == 1:
        tree = build_tree([leaf_hash(v) for v in values])
        proofs = [["0x" + p.hex() for p in tree.proof(i)] for i in range(len(values))]
        return "0x" + tree.root.hex(), proofs
    std = build_standard_tree(values)
    return "0x" + std.root.hex(), [["0x" + p.hex() for p in pr] for pr in std.proofs()]


def seal_only_root(seals: list[SealRow]) -> str:
    """The root of a transaction that carries only seals (``leafCount`` 0): the StandardMerkleTree
    root of one value committing to those seals. It is unique per set of seals (each run is sealed
    once) and no step proof ever leads to it."""
    data = b"ledgerflow:seal-only:" + b"".join(
        bytes.fromhex(x.run_key[2:]) + x.steps.to_bytes(32, "big") + bytes.fromhex(x.head[2:])
        for x in seals
    )
    return "0x" + leaf_hash_v2(keccak(data)).hex()


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
            # Seals whose steps are all anchored already go out on their own.
            if await asyncio.to_thread(self.rt.store.pending_seal_count):
                return await self.anchor_once(seal_only=True) is not None
            return False
        if oldest is not None and oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=UTC)
        age = (datetime.now(UTC) - oldest).total_seconds() if oldest else 0.0
        if not force and count < self.batch_size and age < self.max_wait:
            return False
        return await self.anchor_once() is not None

    async def anchor_once(self, *, seal_only: bool = False) -> AnchorRow | None:
        registry = self.rt.contract("CheckpointRegistry")
        claimed = await asyncio.to_thread(
            self.rt.store.claim_batch,
            self.batch_size,
            build_batch,
            chain_id=self.rt.chain_id,
            registry=registry.address,
            max_seals=MAX_SEALS_PER_TX,
            seal_only_root=seal_only_root if seal_only else None,
        )
        if claimed is None:
            return None
        anchor, steps = claimed
        await self._send(
            anchor,
            stored_at=[s.created_at for s in steps],
            runs={(s.workflow_id, s.run_id) for s in steps},
        )
        return anchor

    async def resume(self) -> int:
        """Finish batches claimed before a crash."""
        rows = await asyncio.to_thread(self.rt.store.unfinished_anchors)
        for row in rows:
            await self._send(row)
        return len(rows)

    async def _send(
        self,
        anchor: AnchorRow,
        stored_at: Sequence[datetime] = (),
        runs: set[tuple[str, str]] | None = None,
    ) -> None:
        """Send (or resume) one batch; ``stored_at`` are its steps' store times (for the anchor
        lag metric; a batch resumed after a crash has none) and ``runs`` the runs of its steps
        (their waiting flushes are woken; all of them when None)."""
        assert anchor.root is not None and anchor.id is not None
        registry = self.rt.contract("CheckpointRegistry")
        signer = await self.rt.signer("orchestrator")
        root = bytes.fromhex(anchor.root[2:])
        seals = await asyncio.to_thread(self.rt.store.anchor_seals, anchor.id)
        call = registry.functions.anchorRoot(
            root,
            anchor.leaf_count,
            [(bytes.fromhex(x.run_key[2:]), x.steps, bytes.fromhex(x.head[2:])) for x in seals],
        )
        try:
            receipt = await signer.send(
                f"anchor:{anchor.root}", call, contract="CheckpointRegistry"
            )
            tx_hash, block = receipt.tx_hash, receipt.block_number
            missing: list[int] = []
        except ContractRevert as exc:
            if exc.error != "CheckpointRootAlreadyAnchored":
                raise
            tx_hash, block = await self._find_anchor_tx(root)
            # Anchored by another transaction (a lost outbox row): its seals may not be ours.
            missing = await self._seals_missing_from(tx_hash, seals)
        await asyncio.to_thread(
            self.rt.store.confirm_anchor,
            anchor.id,
            tx_hash=tx_hash,
            block_number=block,
            requeue_seals=missing,
        )
        self.anchored_roots += 1
        if runs is not None:
            runs |= {(x.workflow_id, x.run_id) for x in seals}
        self.rt.anchor_events.notify(runs)
        metrics.current().anchored("batched", anchor.leaf_count, _ages(stored_at))
        log.info(
            "root anchored",
            root=anchor.root,
            leaves=anchor.leaf_count,
            seals=len(seals),
            tx_hash=tx_hash,
            block=block,
        )

    async def _seals_missing_from(self, tx_hash: str, seals: list[SealRow]) -> list[int]:
        """The ids of ``seals`` that the transaction ``tx_hash`` did not emit (to send again)."""
        if not seals:
            return []
        registry = self.rt.contract("CheckpointRegistry")
        emitted: set[tuple[bytes, int, bytes]] = set()
        if tx_hash:
            receipt = await self.rt.w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
            for ev in registry.events.RunSealed().process_receipt(receipt, errors=DISCARD):
                if str(ev["address"]).lower() == str(registry.address).lower():
                    args = ev["args"]
                    emitted.add((bytes(args["run"]), int(args["steps"]), bytes(args["head"])))
        return [
            x.id
            for x in seals
            if x.id is not None
            and (bytes.fromhex(x.run_key[2:]), x.steps, bytes.fromhex(x.head[2:])) not in emitted
        ]

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
