"""The process's Temporal runtime: the SDK core's logs forwarded into Python logging, and (for
the worker and the API) its Prometheus endpoint.

Temporal's default runtime writes the Rust core's log lines to stdout, ANSI-coloured, outside
Python logging; every ledgerflow process builds its clients on the runtime made here instead, so
those lines go through the ``temporalio.core`` logger and come out rendered like every other line
(JSON lines with ``LEDGERFLOW_LOG_FORMAT=json``), on stderr.

With a metrics address the same runtime serves ``http://<address>/metrics``: Temporal's SDK series
(``temporal_workflow_completed``, ``temporal_activity_execution_latency``, ... with the core's
defaults, so Temporal's published SDK dashboards read them) and ledgerflow's own, recorded on its
meter (:mod:`ledgerflow.observability.metrics`).
"""

from __future__ import annotations

import logging
import threading

from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    PrometheusConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)

from ledgerflow.errors import ConfigError
from ledgerflow.observability import metrics

__all__ = ["CORE_LOGGER", "configure_runtime", "metrics_address", "process_runtime"]

#: Where the SDK core's log lines go (``temporalio.core-sdk_core::<target>`` per target).
CORE_LOGGER = "temporalio.core"

_lock = threading.Lock()
_runtime: Runtime | None = None
_metrics_address: str | None = None


def metrics_address(host: str, port: int) -> str | None:
    """``host:port`` of a Prometheus endpoint, or None when ``port`` is 0 (no endpoint)."""
    if not port:
        return None
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


#: The core's level names → Python's (the core filters first; Python must let them through).
_PY_LEVEL = {"ERROR": logging.ERROR, "WARN": logging.WARNING, "INFO": logging.INFO}


def _build(core_level: str, metrics_address: str | None) -> Runtime:
    logging.getLogger(CORE_LOGGER).setLevel(_PY_LEVEL.get(core_level, logging.DEBUG))
    telemetry = TelemetryConfig(
        logging=LoggingConfig(
            filter=TelemetryFilter(core_level=core_level, other_level="ERROR"),
            forwarding=LogForwardingConfig(logger=logging.getLogger(CORE_LOGGER)),
        ),
        metrics=(
            PrometheusConfig(
                bind_address=metrics_address,
                histogram_bucket_overrides=metrics.HISTOGRAM_BUCKETS,
            )
            if metrics_address
            else None
        ),
    )
    try:
        return Runtime(telemetry=telemetry)
    except Exception as exc:  # the core refuses a taken or invalid address
        raise ConfigError(
            f"cannot serve metrics on {metrics_address}: {exc} "
            "(set LEDGERFLOW_METRICS_PORT / LEDGERFLOW_API_METRICS_PORT, 0 for none)"
        ) from None


def configure_runtime(*, core_level: str = "WARN", metrics_address: str | None = None) -> Runtime:
    """Build this process's runtime (once, before its first client) and, with a metrics address,
    serve Prometheus there and record ledgerflow's series on its meter.

    Raises:
        ConfigError: the runtime exists already with another metrics address, or the address
            cannot be bound (a port taken).
    """
    global _runtime, _metrics_address
    with _lock:
        if _runtime is not None:
            if metrics_address and metrics_address != _metrics_address:
                raise ConfigError(
                    f"this process already has a Temporal runtime "
                    f"(metrics {_metrics_address or 'off'}); cannot serve metrics on "
                    f"{metrics_address} too (one endpoint per process: set the metrics port "
                    "to 0 for a worker or API started inside another ledgerflow process)"
                )
            return _runtime
        _runtime = _build(core_level, metrics_address)
        _metrics_address = metrics_address
        if metrics_address:
            metrics.install(_runtime.metric_meter)
        return _runtime


def process_runtime() -> Runtime:
    """The process's runtime: the configured one, or one that forwards logs and serves no
    metrics (what the CLI and the SDK use)."""
    if _runtime is not None:
        return _runtime
    return configure_runtime()
