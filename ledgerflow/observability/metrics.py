"""ledgerflow's own Prometheus series, recorded through Temporal's metric meter.

Every series goes through the process's :class:`temporalio.common.MetricMeter` (the meter of the
Temporal runtime the worker or API was built with, see :mod:`ledgerflow.observability.telemetry`),
so one Prometheus endpoint per process serves Temporal's SDK series (``temporal_*``) and
ledgerflow's (``ledgerflow_*``) side by side, with one configuration and one port. Nothing here
needs ``prometheus_client``: the meter has counters, integer and float histograms with configured
buckets (:data:`HISTOGRAM_BUCKETS`) and gauges, which is all these series are. What it cannot do,
a collect-time callback, is covered by sampling (:mod:`ledgerflow.worker.sampler` sets the gauges
every ``LEDGERFLOW_METRICS_SAMPLE_SECONDS``).

Until a process installs a meter (:func:`install`), every call records into
``MetricMeter.noop``: code that records metrics runs the same in tests, the CLI and the SDK.

The series (labels in braces; amounts are integer token units, times are seconds):

========================================== =============================================
series                                     what
========================================== =============================================
``ledgerflow_runs_total``                  runs that ended {workflow_type, outcome}
``ledgerflow_compensations_total``         compensation steps {workflow_type, step, status}
``ledgerflow_payments_total``              escrow events {outcome: escrowed, released, refunded}
``ledgerflow_payment_amount_total``        their amounts, token units {outcome}
``ledgerflow_anchors_total``               anchoring transactions mined {mode}
``ledgerflow_anchor_leaves``               leaves per anchored root (histogram) {mode}
``ledgerflow_anchor_lag_seconds``          step stored → its anchor mined (histogram) {mode}
``ledgerflow_anchor_pending_leaves``       steps waiting for a batch (gauge)
``ledgerflow_anchor_oldest_pending_seconds`` age of the oldest of them (gauge)
``ledgerflow_signer_nonce_lag``            signed but not yet mined transactions {role, address}
``ledgerflow_signer_replacements_total``   transactions replaced at their nonce {role, address}
``ledgerflow_llm_calls_total``             LLM decisions {provider, model, result}
``ledgerflow_llm_latency_seconds``         their latency (histogram) {provider, model}
``ledgerflow_llm_tokens_total``            tokens used {provider, model, kind: prompt, completion}
``ledgerflow_webhooks_total``              webhook deliveries answered {kind, workflow_type, status}
``ledgerflow_webhook_latency_seconds``     time to answer them (histogram) {kind}
========================================== =============================================

Counters are recorded where the effect is seen (the activity that got the receipt, the anchorer
that confirmed the root, the flush that recorded the run's end), at least once: a worker that
crashes after the effect but before its activity completes records it again on the retry.
Label values are bounded (workflow types the registry knows, step names from code, result
classes), never free text from a caller.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from temporalio.common import MetricMeter

__all__ = [
    "HISTOGRAM_BUCKETS",
    "Metrics",
    "current",
    "install",
]

#: Bucket boundaries of ledgerflow's histograms (Temporal's exporter takes them per series name).
HISTOGRAM_BUCKETS: dict[str, list[float]] = {
    "ledgerflow_anchor_lag_seconds": [0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 3600],
    "ledgerflow_anchor_leaves": [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384, 65536],
    "ledgerflow_llm_latency_seconds": [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60],
    "ledgerflow_webhook_latency_seconds": [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 30],
}

#: Escrow events → the payment outcome they record.
ESCROW_OUTCOMES = {
    "EscrowOpened": "escrowed",
    "EscrowReleased": "released",
    "EscrowRefunded": "refunded",
}


class Metrics:
    """ledgerflow's instruments on one meter."""

    def __init__(self, meter: MetricMeter) -> None:
        self.meter = meter
        m = meter
        self._runs = m.create_counter("ledgerflow_runs_total", "runs that ended, by outcome")
        self._compensations = m.create_counter(
            "ledgerflow_compensations_total", "compensation steps that ran, by status"
        )
        self._payments = m.create_counter(
            "ledgerflow_payments_total", "escrow payments: escrowed, released, refunded"
        )
        self._amounts = m.create_counter(
            "ledgerflow_payment_amount_total", "amounts of those payments in token units"
        )
        self._anchors = m.create_counter(
            "ledgerflow_anchors_total", "anchoring transactions confirmed (roots, or per-step)"
        )
        self._leaves = m.create_histogram("ledgerflow_anchor_leaves", "leaves per anchored root")
        self._lag = m.create_histogram_float(
            "ledgerflow_anchor_lag_seconds",
            "seconds from a step being stored to its anchor being mined",
            "s",
        )
        self._pending = m.create_gauge(
            "ledgerflow_anchor_pending_leaves", "batched steps waiting for a root"
        )
        self._oldest = m.create_gauge_float(
            "ledgerflow_anchor_oldest_pending_seconds",
            "age of the oldest step waiting for a root",
            "s",
        )
        self._nonce_lag = m.create_gauge(
            "ledgerflow_signer_nonce_lag", "transactions signed by the key and not mined yet"
        )
        self._replacements = m.create_counter(
            "ledgerflow_signer_replacements_total", "transactions replaced at the same nonce"
        )
        self._llm_calls = m.create_counter("ledgerflow_llm_calls_total", "LLM decisions by result")
        self._llm_latency = m.create_histogram_float(
            "ledgerflow_llm_latency_seconds", "latency of an LLM decision", "s"
        )
        self._llm_tokens = m.create_counter("ledgerflow_llm_tokens_total", "LLM tokens used")
        self._webhooks = m.create_counter(
            "ledgerflow_webhooks_total", "webhook deliveries answered, by HTTP status"
        )
        self._webhook_latency = m.create_histogram_float(
            "ledgerflow_webhook_latency_seconds", "seconds to answer a webhook delivery", "s"
        )

    # -- runs --

    def run_ended(self, workflow_type: str, outcome: str) -> None:
        self._runs.add(1, {"workflow_type": workflow_type, "outcome": outcome})

    def compensation(self, workflow_type: str, step: str, status: str) -> None:
        self._compensations.add(1, {"workflow_type": workflow_type, "step": step, "status": status})

    # -- money --

    def payment(self, outcome: str, amount: int) -> None:
        self._payments.add(1, {"outcome": outcome})
        if amount > 0:
            self._amounts.add(amount, {"outcome": outcome})

    def escrow_events(self, events: Iterable[tuple[str, Mapping[str, Any]]]) -> int:
        """Record the payments among decoded Escrow events ``(name, args)``; returns how many."""
        n = 0
        for name, args in events:
            outcome = ESCROW_OUTCOMES.get(name)
            if outcome is not None:
                self.payment(outcome, int(args.get("amount", 0)))
                n += 1
        return n

    def escrow_receipt(self, escrow: Any, receipt: Any) -> int:
        """Record the payments in a receipt of a transaction to ``escrow`` (a web3 contract of
        the deployment's Escrow): only that contract's own events count."""
        from web3.logs import DISCARD

        ours = str(escrow.address).lower()
        found = []
        for name in ESCROW_OUTCOMES:
            for log in escrow.events[name]().process_receipt(receipt, errors=DISCARD):
                if str(log["address"]).lower() == ours:
                    found.append((name, log["args"]))
        return self.escrow_events(found)

    # -- anchoring --

    def anchored(self, mode: str, leaves: int, lags: Iterable[float] = ()) -> None:
        """One anchoring transaction confirmed with ``leaves`` steps, each stored ``lags`` ago."""
        attrs = {"mode": mode}
        self._anchors.add(1, attrs)
        if leaves > 0:
            self._leaves.record(leaves, attrs)
        for lag in lags:
            self._lag.record(max(float(lag), 0.0), attrs)

    def pending(self, leaves: int, oldest_seconds: float) -> None:
        self._pending.set(leaves)
        self._oldest.set(max(oldest_seconds, 0.0))

    # -- signers --

    def signer(self, role: str, address: str, *, nonce_lag: int, replacements: int = 0) -> None:
        attrs = {"role": role, "address": address}
        self._nonce_lag.set(max(nonce_lag, 0), attrs)
        if replacements > 0:
            self._replacements.add(replacements, attrs)

    # -- LLM --

    def llm_call(
        self,
        provider: str,
        model: str,
        result: str,
        seconds: float,
        *,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
    ) -> None:
        attrs = {"provider": provider, "model": model}
        self._llm_calls.add(1, {**attrs, "result": result})
        self._llm_latency.record(max(seconds, 0.0), attrs)
        if prompt_tokens > 0:
            self._llm_tokens.add(prompt_tokens, {**attrs, "kind": "prompt"})
        if completion_tokens > 0:
            self._llm_tokens.add(completion_tokens, {**attrs, "kind": "completion"})

    # -- webhooks --

    def webhook(self, kind: str, workflow_type: str, status: int, seconds: float) -> None:
        self._webhooks.add(1, {"kind": kind, "workflow_type": workflow_type, "status": str(status)})
        self._webhook_latency.record(max(seconds, 0.0), {"kind": kind})


_current = Metrics(MetricMeter.noop)


def install(meter: MetricMeter) -> Metrics:
    """Record this process's series on ``meter`` from now on (the worker and the API call it)."""
    global _current
    _current = Metrics(meter)
    return _current


def current() -> Metrics:
    """The process's instruments (no-op until :func:`install`)."""
    return _current
