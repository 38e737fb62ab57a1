"""OpenTelemetry tracing: one trace from a webhook through the workflow into its activities.

Off by default. With ``LEDGERFLOW_OTLP_ENDPOINT`` set (an OTLP/HTTP traces URL such as
``http://collector:4318/v1/traces``; ``OTEL_EXPORTER_OTLP_HEADERS`` and the other standard
``OTEL_*`` exporter variables apply), the worker and the API each install a tracer provider that
batches spans to it, and their Temporal clients carry temporalio's
:class:`~temporalio.contrib.opentelemetry.TracingInterceptor`:

* the API opens a ``webhook`` span per delivery (route, workflow type, status);
* the client's interceptor starts ``StartWorkflow:<Type>`` (or ``SignalWorkflow`` /
  ``StartWorkflowUpdate``) under it and puts its context in the Temporal headers;
* the worker's interceptor continues that trace: ``RunWorkflow:<Type>`` and, per step,
  ``StartActivity:<name>`` with ``RunActivity:<name>`` under it (temporalio's workflow spans are
  instantaneous and hang off the start's context, so the activity's chain of parents is
  ``RunActivity`` → ``StartActivity`` → ``StartWorkflow`` → ``webhook.start``).

Workflow spans are only created under a caller's span (temporalio's default): a run started
without one (from the Temporal UI, a schedule, the chain-event watcher) has no workflow spans.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Tracer

__all__ = ["TRACER_NAME", "client_interceptors", "configure_tracing", "shutdown", "tracer"]

TRACER_NAME = "ledgerflow"

_provider: Any = None
_tracer: Tracer | None = None


def configure_tracing(endpoint: str | None, service: str) -> Tracer | None:
    """Export this process's spans to ``endpoint`` (OTLP/HTTP) as ``service``; None when off.

    Installed as the global tracer provider, once per process.
    """
    global _provider, _tracer
    if not endpoint:
        return None
    if _tracer is not None:
        return _tracer
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)
    _provider = provider
    _tracer = provider.get_tracer(TRACER_NAME)
    return _tracer


def tracer() -> Tracer | None:
    """The configured tracer, or None when tracing is off."""
    return _tracer


def client_interceptors(tracer: Tracer | None) -> list[Any]:
    """The Temporal client interceptors that carry traces (none when ``tracer`` is None); a worker
    built from that client uses them too."""
    if tracer is None:
        return []
    from temporalio.contrib.opentelemetry import TracingInterceptor

    return [TracingInterceptor(tracer)]


def shutdown() -> None:
    """Flush the spans still queued (the CLI leaves with ``os._exit``, which would drop them)."""
    if _provider is not None:
        _provider.shutdown()
