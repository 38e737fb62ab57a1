"""EIP-1559 fees from ``eth_feeHistory``, never above a configured maximum, and their bumps.

The fee of a new transaction is ``maxPriorityFeePerGas`` = the chosen percentile of the tips
paid in the last blocks (clamped to ``[min_tip, max_tip]``) and ``maxFeePerGas`` = twice the
next block's base fee plus that tip, so that it stays includable while the base fee rises for a
few blocks. Neither ever exceeds ``max_fee``: when the next base fee plus the smallest tip is
above it, :meth:`FeeOracle.fees` raises :class:`~ledgerflow.errors.FeeTooHigh` and nothing is
signed.

A replacement at the same nonce raises both fields by ``bump_percent`` (nodes require at least
10 %) or to the current quote if that is higher, still capped by ``max_fee``; when the cap leaves
no room for a 10 % bump, there is no replacement (:meth:`FeeOracle.replacement` returns None).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass
from typing import Any

from web3 import AsyncWeb3
from web3.types import RPCEndpoint

from ledgerflow.errors import ChainError, FeeTooHigh, bounded

__all__ = ["FeeOracle", "FeePolicy", "Fees", "gwei"]

GWEI = 10**9
#: What nodes require of a replacement (geth's txpool ``PriceBump``): +10 % on both fields.
MIN_BUMP_PERCENT = 10.0


def gwei(wei: int) -> str:
    return f"{wei / GWEI:.4g} gwei"


def _ceil_pct(value: int, percent: float) -> int:
    """``value`` raised by ``percent`` %, rounded up (integer arithmetic in 1/10000 steps)."""
    num = 10_000 + round(percent * 100)
    return -(-value * num // 10_000)


@dataclass(frozen=True)
class Fees:
    """The two EIP-1559 fee fields of a transaction, in wei per gas."""

    max_fee: int
    tip: int

    def fields(self) -> dict[str, int]:
        return {"maxFeePerGas": self.max_fee, "maxPriorityFeePerGas": self.tip}

    def __str__(self) -> str:
        return f"max {gwei(self.max_fee)}, tip {gwei(self.tip)}"


@dataclass(frozen=True)
class FeePolicy:
    """Limits and choices of the fee oracle (wei per gas unless said otherwise)."""

    max_fee: int
    min_tip: int = GWEI // 100
    max_tip: int = 10 * GWEI
    percentile: float = 50.0
    blocks: int = 10
    bump_percent: float = 12.5

    def __post_init__(self) -> None:
        if self.bump_percent < MIN_BUMP_PERCENT:
            raise ValueError("a replacement must raise both fees by at least 10 %")


@dataclass(frozen=True)
class Quote:
    """What the chain asks right now: the next block's base fee and a tip."""

    base_fee: int
    tip: int


class FeeOracle:
    """Quotes fees from ``eth_feeHistory`` (cached for ``cache_seconds``)."""

    def __init__(
        self, w3: AsyncWeb3, policy: FeePolicy, chain_id: int, *, cache_seconds: float = 2.0
    ) -> None:
        self.w3 = w3
        self.policy = policy
        self.chain_id = chain_id
        self.cache_seconds = cache_seconds
        self._cached: tuple[float, Quote] | None = None
        self._inflight: asyncio.Future[Quote] | None = None

    async def quote(self, *, fresh: bool = False) -> Quote:
        """The current quote: cached for ``cache_seconds``; concurrent callers that find no
        cached quote share one request (``fresh``: always a request of its own)."""
        now = time.monotonic()
        if not fresh and self._cached is not None and now - self._cached[0] < self.cache_seconds:
            return self._cached[1]
        if not fresh and self._inflight is not None and not self._inflight.done():
            return await asyncio.shield(self._inflight)
        fut: asyncio.Future[Quote] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        if not fresh:
            self._inflight = fut
        try:
            q = await self._fetch(now)
        except BaseException as exc:
            fut.set_exception(exc if isinstance(exc, Exception) else ChainError("interrupted"))
            raise
        finally:
            if self._inflight is fut:
                self._inflight = None
        fut.set_result(q)
        return q

    async def _fetch(self, now: float) -> Quote:
        p = self.policy
        resp: Any = await self.w3.provider.make_request(
            RPCEndpoint("eth_feeHistory"), [hex(p.blocks), "latest", [p.percentile]]
        )
        if resp.get("error"):
            err = resp["error"]
            message = err.get("message", "") if isinstance(err, dict) else str(err)
            raise ChainError(bounded(f"eth_feeHistory failed: {message}"))
        result = resp.get("result") or {}
        bases = [int(b, 16) for b in result.get("baseFeePerGas") or []]
        rewards = [int(r[0], 16) for r in result.get("reward") or [] if r]
        base = bases[-1] if bases else 0  # the last entry is the next block's base fee
        paid = [r for r in rewards if r > 0]
        tip = int(statistics.median(paid)) if paid else p.min_tip
        tip = max(p.min_tip, min(tip, p.max_tip))
        q = Quote(base_fee=base, tip=tip)
        self._cached = (now, q)
        return q

    def _too_high(self, needed: int) -> FeeTooHigh:
        cap = self.policy.max_fee
        return FeeTooHigh(
            f"chain {self.chain_id} asks at least {gwei(needed)} per gas (next base fee plus the "
            f"smallest tip), above the maximum of {gwei(cap)} (LEDGERFLOW_MAX_FEE_GWEI or "
            "LEDGERFLOW_MAX_FEE_GWEI_BY_CHAIN); nothing was paid",
            needed=needed,
            maximum=cap,
            chain_id=self.chain_id,
        )

    def fees_for(self, q: Quote) -> Fees:
        """Fees for a new transaction under quote ``q``.

        Raises:
            FeeTooHigh: the next base fee plus the smallest tip is above the maximum.
        """
        p = self.policy
        needed = q.base_fee + p.min_tip
        if needed > p.max_fee:
            raise self._too_high(needed)
        max_fee = min(2 * q.base_fee + q.tip, p.max_fee)
        return Fees(max_fee=max_fee, tip=min(q.tip, max_fee - q.base_fee))

    async def fees(self) -> Fees:
        return self.fees_for(await self.quote())

    def replacement(self, old: Fees, q: Quote) -> Fees | None:
        """Fees that replace ``old`` at the same nonce, or None when the maximum leaves no room
        for the +10 % both fields need."""
        p = self.policy
        tip = max(_ceil_pct(old.tip, p.bump_percent), q.tip)
        max_fee = max(_ceil_pct(old.max_fee, p.bump_percent), 2 * q.base_fee + tip)
        max_fee = min(max_fee, p.max_fee)
        tip = min(tip, max_fee)
        if max_fee < _ceil_pct(old.max_fee, MIN_BUMP_PERCENT) or tip < _ceil_pct(
            old.tip, MIN_BUMP_PERCENT
        ):
            return None
        return Fees(max_fee=max_fee, tip=tip)

    def too_high_for(self, q: Quote) -> FeeTooHigh | None:
        """The error to raise when even the maximum cannot pay the next base fee."""
        needed = q.base_fee + self.policy.min_tip
        return self._too_high(needed) if needed > self.policy.max_fee else None
