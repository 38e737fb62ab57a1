"""One trace from a webhook through the workflow into its activities, and the API's metrics.

The API (in-process, ASGI) opens a span per delivery; its Temporal client carries temporalio's
TracingInterceptor, and so does the worker built on that client. Spans go to an in-memory
exporter, so the test reads the whole trace.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import subprocess
import sys
import textwrap
import threading
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer

import httpx
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import SecretStr
from standardwebhooks import Webhook
from temporalio.common import MetricMeter
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from ledgerflow.api.webhooks import create_app
from ledgerflow.dev.stack import free_port
from ledgerflow.observability import metrics
from ledgerflow.observability.tracing import client_interceptors
from ledgerflow.sdk.client import LedgerflowClient
from ledgerflow.temporal import connect
from ledgerflow.worker.runner import build_worker
from tests.conftest import Stack
from tests.test_observability import scrape, value

SECRET = "whsec_" + base64.b64encode(b"ledgerflow-tracing-test-secret!!").decode()
TUSD = 1_000_000


def signed(body: str) -> dict[str, str]:
    msg_id = f"msg_{uuid.uuid4().hex}"
    at = datetime.now(tz=UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(SECRET).sign(msg_id, at, body),
        "content-type": "application/json",
    }


def _ancestry(span: ReadableSpan, by_id: dict[int, ReadableSpan]) -> list[str]:
    names = []
    current: ReadableSpan | None = span
    while current is not None:
        names.append(current.name)
        parent = current.parent
        current = by_id.get(parent.span_id) if parent is not None else None
    return names


async def test_one_trace_from_the_webhook_to_the_activities(
    stack: Stack, temporal_address: str
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("ledgerflow-test")
    client = await connect(temporal_address, "default", interceptors=client_interceptors(tracer))
    task_queue = f"tracing-{uuid.uuid4().hex[:8]}"
    settings = stack.settings.model_copy(
        update={"task_queue": task_queue, "webhook_secret": SecretStr(SECRET)}
    )
    lf = LedgerflowClient(client, settings, stack.runtime)
    worker = build_worker(client, stack.runtime, task_queue=task_queue)
    app = create_app(settings, lf, tracer=tracer)
    running = asyncio.create_task(worker.run())
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://ledgerflow"
        ) as api:
            body = json.dumps({"max_amount": 20 * TUSD})
            resp = await api.post(
                "/webhooks/VendorPaymentWorkflow", content=body, headers=signed(body)
            )
            assert resp.status_code == 202, resp.text
            wf_id = resp.json()["workflow_id"]
        result = await asyncio.wait_for(lf.result(wf_id), 120)
        assert result.outcome == "completed"
    finally:
        await worker.shutdown()
        with contextlib.suppress(asyncio.CancelledError):
            await running

    spans = exporter.get_finished_spans()
    hooks = [s for s in spans if s.name == "webhook.start"]
    assert len(hooks) == 1
    hook = hooks[0]
    assert hook.attributes is not None
    assert hook.attributes["ledgerflow.workflow_type"] == "VendorPaymentWorkflow"
    assert hook.attributes["http.response.status_code"] == 202
    trace_id = hook.context.trace_id
    in_trace = [s for s in spans if s.context.trace_id == trace_id]
    names = {s.name for s in in_trace}
    assert "StartWorkflow:VendorPaymentWorkflow" in names
    assert "RunWorkflow:VendorPaymentWorkflow" in names
    # Every step's activity ran inside this trace: the decision and both escrow calls.
    assert "RunActivity:llm.decide" in names
    runs = [s for s in in_trace if s.name == "RunActivity:contract.call"]
    assert len(runs) == 2
    # ... each one a descendant of the webhook's span, through the workflow.
    by_id = {s.context.span_id: s for s in in_trace}
    for run in runs:
        assert _ancestry(run, by_id) == [
            "RunActivity:contract.call",
            "StartActivity:contract.call",  # scheduled by the workflow (temporalio's workflow
            "StartWorkflow:VendorPaymentWorkflow",  # spans are children of the start's context)
            "webhook.start",
        ]
    # No span of this run started a trace of its own.
    assert not [
        s for s in spans if s.name.startswith("RunActivity") and s.context.trace_id != trace_id
    ]


async def test_the_api_counts_webhooks_by_kind_type_and_status(stack: Stack) -> None:
    """The API's series, on a Prometheus endpoint of its own; a caller's made-up workflow type
    never becomes a label value."""
    port = free_port()
    runtime = Runtime(
        telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=f"127.0.0.1:{port}"))
    )
    metrics.install(runtime.metric_meter)
    try:
        settings = stack.settings.model_copy(update={"webhook_secret": SecretStr(SECRET)})
        app = create_app(settings, stack.client)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://ledgerflow"
        ) as api:
            body = json.dumps({"quantity": 1})
            unsigned = await api.post("/webhooks/ProcurementWorkflow", content=body)
            assert unsigned.status_code == 401
            made_up = await api.post(
                "/webhooks/Evil-" + "x" * 50, content=body, headers=signed(body)
            )
            assert made_up.status_code == 404
            invalid = await api.post(
                "/webhooks/ProcurementWorkflow",
                content='{"quantity": -1}',
                headers=signed('{"quantity": -1}'),
            )
            assert invalid.status_code == 422
            health = await api.get("/health")
            assert health.status_code == 200
        async with httpx.AsyncClient() as http:
            text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    finally:
        metrics.install(MetricMeter.noop)
    samples = scrape(text)
    series = "ledgerflow_webhooks_total"
    procurement = {"kind": "start", "workflow_type": "ProcurementWorkflow"}
    assert value(samples, series, status="401", **procurement) == 1
    assert value(samples, series, status="422", **procurement) == 1
    assert value(samples, series, kind="start", workflow_type="unknown", status="404") == 1
    assert not [ls for n, ls, _ in samples if "Evil" in ls.get("workflow_type", "")]
    assert value(samples, "ledgerflow_webhook_latency_seconds_count", kind="start") == 3
    # /health is not a webhook.
    assert value(samples, series) == 3


def test_spans_go_to_the_otlp_endpoint_of_the_setting() -> None:
    """LEDGERFLOW_OTLP_ENDPOINT's exporter, end to end: a process configured the way the worker
    and the API configure themselves posts its spans (OTLP protobuf over HTTP) to the endpoint,
    and flushes them at shutdown. Run in a child process: a tracer provider is process-global."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    received: list[tuple[str, str, bytes]] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, self.headers.get("Content-Type", ""), body))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_port}/v1/traces"
    script = textwrap.dedent(
        f"""
        from ledgerflow.observability import tracing
        tracer = tracing.configure_tracing({endpoint!r}, "ledgerflow-worker")
        assert tracing.client_interceptors(tracer)
        with tracer.start_as_current_span("webhook.start", attributes={{"k": "v"}}):
            pass
        tracing.shutdown()
        """
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
        )
    finally:
        server.shutdown()
    assert done.returncode == 0, done.stderr
    assert len(received) == 1
    path, content_type, body = received[0]
    assert path == "/v1/traces" and content_type == "application/x-protobuf"
    request = ExportTraceServiceRequest.FromString(body)
    (resource_spans,) = request.resource_spans
    attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert attrs["service.name"] == "ledgerflow-worker"
    spans = [s for scope in resource_spans.scope_spans for s in scope.spans]
    assert [s.name for s in spans] == ["webhook.start"]


def test_tracing_is_off_without_an_endpoint() -> None:
    from ledgerflow.observability import tracing

    assert tracing.configure_tracing(None, "ledgerflow-worker") is None
    assert tracing.client_interceptors(None) == []
