"""Checkpoint activities: store step preimages, anchor per step, wait for batch anchoring."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time

from temporalio import activity
from temporalio.exceptions import ApplicationError

from ledgerflow.checkpoint.models import (
    AnchorInfo,
    CheckpointAck,
    CheckpointBatch,
    OpenRun,
    RunOpened,
    anchor_infos,
)
from ledgerflow.errors import ContractRevert
from ledgerflow.flow.errors import mapped_errors
from ledgerflow.flow.registry import Activities
from ledgerflow.observability import metrics
from ledgerflow.store import SealRow, StepRow
from ledgerflow.types import ErrorType

__all__ = ["CheckpointActivities"]

#: How long the final flush waits for the anchorer before the local activity retries.
ANCHOR_WAIT_SECONDS = 45.0
#: How often a waiting flush looks at the store when no anchorer of this process wakes it.
ANCHOR_POLL_SECONDS = 1.0


def _rows(batch: CheckpointBatch) -> list[StepRow]:
    return [
        StepRow(
            workflow_id=batch.workflow_id,
            run_id=batch.run_id,
            seq=s.seq,
            kind=s.kind,
            name=s.name,
            status=s.status,
            input_hash=s.input_hash,
            output_hash=s.output_hash,
            prev=s.prev,
            step_hash=s.step_hash,
            head=s.head,
            input_preimage=s.input_preimage,
            output_preimage=s.output_preimage,
            anchor_mode=batch.anchor_mode,
            spec_version=s.spec_version,
            input_salt=s.input_salt,
            output_salt=s.output_salt,
        )
        for s in batch.steps
    ]


class CheckpointActivities(Activities):
    """The ledger's own activities: store records, anchor per step, wait for batch anchoring."""

    @activity.defn(name="checkpoint.open_run")
    @mapped_errors
    async def open_run(self, req: OpenRun) -> RunOpened:
        """A version 2 run's salt seed: 32 bytes from the operating system's CSPRNG.

        Runs as a local activity: the seed is recorded in the workflow's history (replay derives
        the same salts from it) and never written to the store, so erasing a step's preimage
        and salt (redaction) leaves nothing in the store to re-derive the salt from.
        """
        await asyncio.to_thread(
            self.rt.store.ensure_run,
            workflow_id=req.workflow_id,
            run_id=req.run_id,
            workflow_type=req.workflow_type,
            run_key=req.run_key,
            anchor_mode=req.anchor_mode,
            spec_version=2,
        )
        return RunOpened(salt_seed="0x" + secrets.token_bytes(32).hex())

    async def _save(self, batch: CheckpointBatch) -> int:
        """Store the flush (run row, steps, seal, final status) in one transaction, in one
        thread hop; returns how many steps and seals were new (0 for a retried flush)."""
        return await asyncio.to_thread(self._save_sync, batch)

    def _save_sync(self, batch: CheckpointBatch) -> int:
        seal = None
        if batch.seal is not None and batch.anchor_mode == "batched":
            # The anchorer puts it into the transaction that anchors the run's last steps.
            seal = SealRow(
                workflow_id=batch.workflow_id,
                run_id=batch.run_id,
                run_key=batch.run_key,
                steps=batch.seal.steps,
                head=batch.seal.head,
                anchor_mode="batched",
            )
        done = self.rt.store.record_flush(
            workflow_id=batch.workflow_id,
            run_id=batch.run_id,
            workflow_type=batch.workflow_type,
            run_key=batch.run_key,
            anchor_mode=batch.anchor_mode,
            spec_version=batch.spec_version,
            steps=_rows(batch),
            seal=seal,
            final_status=batch.final_status,
            count_kind="compensation",
        )
        if done.ended:  # the first time this run's end is recorded
            self._count_end(batch, done.counted)
        return done.new

    @staticmethod
    def _count_end(batch: CheckpointBatch, compensations: list[tuple[str, str]]) -> None:
        """The run's end in ``ledgerflow_runs_total`` and its compensations (the whole run's, so
        ones flushed before a wait count too)."""
        m = metrics.current()
        assert batch.final_status is not None
        m.run_ended(batch.workflow_type, batch.final_status)
        for name, status in compensations:
            m.compensation(batch.workflow_type, name, status)

    def _anchor_state(self, batch: CheckpointBatch) -> tuple[bool, list[AnchorInfo]]:
        """Whether every step of the run is anchored (and its seal, if it has one, confirmed),
        and its anchors: one store read."""
        state = self.rt.store.run_anchor_state(batch.workflow_id, batch.run_id)
        sealed = batch.seal is None or (state.seal is not None and state.seal.status == "confirmed")
        return state.pending == 0 and sealed, anchor_infos(state.steps, state.anchors)

    async def _anchors(self, batch: CheckpointBatch) -> tuple[bool, list[AnchorInfo]]:
        return await asyncio.to_thread(self._anchor_state, batch)

    @activity.defn(name="checkpoint.store_steps")
    @mapped_errors
    async def store_steps(self, batch: CheckpointBatch) -> CheckpointAck:
        """Batched mode (run as a local activity): store records; on the last flush, wait until
        the anchorer has anchored every step of the run."""
        if not batch.wait_for_anchor:
            await self._save(batch)
            return CheckpointAck(step_hashes=[s.step_hash for s in batch.steps], anchored=False)
        deadline = time.monotonic() + ANCHOR_WAIT_SECONDS
        run = (batch.workflow_id, batch.run_id)
        events = self.rt.anchor_events
        try:
            # Woken by this process's anchorer when a batch with this run's steps or seal
            # confirms; the timeout covers an anchorer in another process. What was just
            # stored cannot be anchored yet: the first read waits for the first wake-up.
            woken = events.wait(run)
            if await self._save(batch):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken, ANCHOR_POLL_SECONDS)
            while True:
                woken = events.wait(run)
                anchored, infos = await self._anchors(batch)
                if anchored:
                    break
                if time.monotonic() > deadline:
                    raise ApplicationError(
                        "steps are stored but not anchored (or sealed) yet; is the anchorer "
                        "running?",
                        type=ErrorType.ANCHOR_PENDING,
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken, ANCHOR_POLL_SECONDS)
        finally:
            events.forget(run)
        return CheckpointAck(
            step_hashes=[s.step_hash for s in batch.steps], anchored=anchored, anchors=infos
        )

    @activity.defn(name="checkpoint.anchor_steps")
    @mapped_errors
    async def anchor_steps(self, batch: CheckpointBatch) -> CheckpointAck:
        """Per-step mode: store the records, then one registry transaction per step, in order."""
        await self._save(batch)
        stored = time.monotonic()
        registry = self.rt.contract("CheckpointRegistry")
        signer = await self.rt.signer("orchestrator")
        run = bytes.fromhex(batch.run_key[2:])
        infos: list[AnchorInfo] = []
        for s in batch.steps:
            call = registry.functions.checkpoint(
                run, s.seq, bytes.fromhex(s.prev[2:]), bytes.fromhex(s.step_hash[2:])
            )
            key = f"checkpoint:{batch.run_key}:{s.seq}"
            try:
                receipt = await signer.send(key, call, contract="CheckpointRegistry")
                tx_hash, block = receipt.tx_hash, receipt.block_number
            except ContractRevert as exc:
                found = await self._existing_checkpoint(run, s.seq, s.step_hash)
                if exc.error != "CheckpointSeqMismatch" or found is None:
                    raise
                tx_hash, block = found
            await asyncio.to_thread(
                self.rt.store.record_step_anchor,
                batch.workflow_id,
                batch.run_id,
                s.seq,
                tx_hash=tx_hash,
                block_number=block,
                chain_id=self.rt.chain_id,
                registry=registry.address,
            )
            infos.append(
                AnchorInfo(mode="per-step", tx_hash=tx_hash, block_number=block, step=s.seq)
            )
            metrics.current().anchored("per-step", 1, [time.monotonic() - stored])
        if batch.seal is not None:
            await self._seal_per_step(batch)
        if batch.final_status is not None:
            _, infos = await self._anchors(batch)
        return CheckpointAck(
            step_hashes=[s.step_hash for s in batch.steps], anchored=True, anchors=infos
        )

    async def _seal_per_step(self, batch: CheckpointBatch) -> None:
        """``sealRun(run, steps, head)``: the registry checks them against its own state."""
        assert batch.seal is not None
        registry = self.rt.contract("CheckpointRegistry")
        signer = await self.rt.signer("orchestrator")
        run = bytes.fromhex(batch.run_key[2:])
        call = registry.functions.sealRun(run, batch.seal.steps, bytes.fromhex(batch.seal.head[2:]))
        try:
            receipt = await signer.send(
                f"seal:{batch.run_key}", call, contract="CheckpointRegistry"
            )
            tx_hash, block = receipt.tx_hash, receipt.block_number
        except ContractRevert as exc:
            # Sealed before by this very flush (a retry after a lost outbox row): find it.
            found = await self._existing_seal(run, batch.seal.steps, batch.seal.head)
            if exc.error != "CheckpointRunSealed" or found is None:
                raise
            tx_hash, block = found
        await asyncio.to_thread(
            self.rt.store.confirm_seal,
            SealRow(
                workflow_id=batch.workflow_id,
                run_id=batch.run_id,
                run_key=batch.run_key,
                steps=batch.seal.steps,
                head=batch.seal.head,
                anchor_mode="per-step",
                status="confirmed",
                tx_hash=tx_hash,
                block_number=block,
            ),
        )

    async def _existing_seal(self, run: bytes, steps: int, head: str) -> tuple[str, int] | None:
        registry = self.rt.contract("CheckpointRegistry")
        logs = await registry.events.RunSealed.get_logs(argument_filters={"run": run}, from_block=0)
        for log in logs:
            args = log["args"]
            if int(args["steps"]) == steps and "0x" + bytes(args["head"]).hex() == head:
                return "0x" + bytes(log["transactionHash"]).hex(), int(log["blockNumber"])
        return None

    async def _existing_checkpoint(
        self, run: bytes, seq: int, step_hash: str
    ) -> tuple[str, int] | None:
        """The transaction that already checkpointed this very step (a retry after a lost
        outbox row), or None when the chain holds something else at this seq."""
        registry = self.rt.contract("CheckpointRegistry")
        logs = await registry.events.Checkpointed.get_logs(
            argument_filters={"run": run, "seq": seq}, from_block=0
        )
        for log in logs:
            if "0x" + bytes(log["args"]["stepHash"]).hex() == step_hash:
                return "0x" + bytes(log["transactionHash"]).hex(), int(log["blockNumber"])
        return None
