"""The worker's metrics sampler: the gauges that describe a backlog, set every few seconds.

Temporal's metric meter has no collect-time callbacks, so the values a scrape should see "now"
are sampled: how many batched steps wait for a root and how old the oldest is (from the store,
so every worker reports the same backlog), and per signer how many of its transactions are
signed but not mined yet (the outbox's highest nonce against the chain's count) and how many it
replaced since the last sample.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any

import structlog

from ledgerflow.observability import metrics
from ledgerflow.runtime import Runtime

__all__ = ["MetricsSampler"]

log = structlog.get_logger(__name__)


class MetricsSampler:
    """Sets ``ledgerflow_anchor_pending_leaves``, ``..._oldest_pending_seconds``,
    ``ledgerflow_signer_nonce_lag`` and ``ledgerflow_signer_replacements_total``."""

    def __init__(self, runtime: Runtime, *, every: float) -> None:
        self.rt = runtime
        self.every = every
        self._replacements: dict[int, int] = {}

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.sample()
            except Exception as exc:  # a sample is best effort; the next one may succeed
                log.warning("metrics sample failed", error=type(exc).__name__, detail=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.every)

    async def sample(self) -> None:
        m = metrics.current()
        store = self.rt.store
        count, oldest = await asyncio.to_thread(store.pending_stats)
        age = 0.0
        if oldest is not None:
            when = oldest if oldest.tzinfo else oldest.replace(tzinfo=UTC)
            age = (datetime.now(UTC) - when).total_seconds()
        m.pending(count, age)
        for role, signer in self.rt.active_signers().items():
            await self._sample_signer(m, role, signer)

    async def _sample_signer(self, m: metrics.Metrics, role: str, signer: Any) -> None:
        address = str(signer.address)
        highest = await asyncio.to_thread(self.rt.store.outbox_max_nonce, self.rt.chain_id, address)
        mined = int(await self.rt.w3.eth.get_transaction_count(signer.address, "latest"))
        lag = 0 if highest is None else highest + 1 - mined
        # Signers that count their replacements (``replacements``) report the delta.
        total = int(getattr(signer, "replacements", 0) or 0)
        seen = self._replacements.get(id(signer), 0)
        self._replacements[id(signer)] = total
        m.signer(role, address, nonce_lag=lag, replacements=max(total - seen, 0))
