"""No credential in any error, log, history, store row or result (issue 11, item 6).

A worker, an API and an LLM endpoint are configured with canary values for every secret: the
orchestrator's, the agent's and the approver's keys, the OpenAI API key, the webhook secret, an
HTTP step's credential, and JSON-RPC URLs carrying a token in their path, a password in their
user-info and an API key in their query, served by a node that answers 401 (the case the issue
found leaking into four histories, the result, a store row, the worker log and Temporal's
database). Real workflows run on them; then the Temporal histories (and pending-activity
failures), the store's database file, every rendered log line, the results and the API's
answers are searched for each canary.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from pydantic import SecretStr
from temporalio.client import WorkflowFailureError

from ledgerflow.activities.llm import set_provider
from ledgerflow.api.webhooks import create_app
from ledgerflow.checkpoint.anchorer import Anchorer
from ledgerflow.llm.provider import OpenAIProvider
from ledgerflow.log import configure_logging
from ledgerflow.runtime import Runtime
from ledgerflow.settings import ANVIL_DEFAULT_KEYS
from ledgerflow.worker.runner import activity_functions, build_worker, workflow_classes
from tests.conftest import Stack
from tests.support.openai_stub import OpenAIStub
from tests.support.probe_workflow import GenericProbeWorkflow, ProbeRequest
from tests.test_api import sign
from tests.test_authoring import _Erp, erp  # noqa: F401  (the fixture)

RPC_TOKEN = "rpcCanaryToken" + uuid.uuid4().hex[:16]
RPC_PASSWORD = "rpcCanaryPass" + uuid.uuid4().hex[:12]
RPC_QUERY = "rpcCanaryQuery" + uuid.uuid4().hex[:12]
OPENAI_KEY = "sk-canary-openai-" + uuid.uuid4().hex
HTTP_CREDENTIAL = "Bearer canary-erp-" + uuid.uuid4().hex
WEBHOOK_KEY = b"canary-webhook-secret-" + uuid.uuid4().hex[:10].encode()
WEBHOOK_SECRET = "whsec_" + base64.b64encode(WEBHOOK_KEY).decode()


def canaries() -> dict[str, str]:
    keys = {name: ANVIL_DEFAULT_KEYS[i] for i, name in enumerate(("orchestrator", "agent"))}
    keys["approver"] = ANVIL_DEFAULT_KEYS[2]
    out = {f"{name} key": key.removeprefix("0x").lower() for name, key in keys.items()}
    out.update(
        {
            "RPC path token": RPC_TOKEN,
            "RPC password": RPC_PASSWORD,
            "RPC query token": RPC_QUERY,
            "OpenAI API key": OPENAI_KEY,
            "HTTP credential": HTTP_CREDENTIAL.removeprefix("Bearer "),
            "webhook secret": WEBHOOK_SECRET.removeprefix("whsec_"),
        }
    )
    return out


def leaks(where: str, text: str | bytes) -> list[str]:
    blob = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    blob = blob.lower()
    return [f"{name} in {where}" for name, value in canaries().items() if value.lower() in blob]


class _Unauthorized:
    """A JSON-RPC endpoint that answers every request with 401 and quotes the URL it was asked
    (as some providers do), so an error that passes the node's answer on would leak it."""

    def __init__(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                outer.hits += 1
                body = json.dumps(
                    {"error": f"invalid project id in {self.path}", "auth": "denied"}
                ).encode()
                self.send_response(401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.hits = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def urls(self) -> list[str]:
        base = f"127.0.0.1:{self.port}"
        return [
            f"http://{base}/v3/{RPC_TOKEN}",
            f"http://canary:{RPC_PASSWORD}@{base}/rpc",
            f"http://{base}/rpc?apikey={RPC_QUERY}",
        ]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def node() -> Iterator[_Unauthorized]:
    server = _Unauthorized()
    try:
        yield server
    finally:
        server.close()


async def _worker(
    stack: Stack, home: Path, *, rpc_urls: list[str] | None = None
) -> AsyncIterator[tuple[Runtime, str]]:
    update: dict[str, Any] = {
        "database_url": f"sqlite:///{home}/store.db",
        "task_queue": f"canary-{uuid.uuid4().hex[:8]}",
        "llm_provider": "openai",
        "openai_api_key": SecretStr(OPENAI_KEY),
        "webhook_secret": SecretStr(WEBHOOK_SECRET),
        "http_allowed_hosts": ["127.0.0.1"],
        "http_credentials": {"erp": SecretStr(HTTP_CREDENTIAL)},
        "orchestrator_key": SecretStr(ANVIL_DEFAULT_KEYS[0]),
        "agent_key": SecretStr(ANVIL_DEFAULT_KEYS[1]),
        "approver_key": SecretStr(ANVIL_DEFAULT_KEYS[2]),
    }
    if rpc_urls is not None:
        update["rpc_urls"] = rpc_urls
    settings = stack.settings.model_copy(update=update)
    runtime = Runtime(settings)
    runtime.store.migrate()
    worker = build_worker(
        stack.client.temporal,
        runtime,
        task_queue=settings.task_queue,
        workflows=[*workflow_classes(), GenericProbeWorkflow],
        activities=activity_functions(runtime),
    )
    stop = asyncio.Event()
    anchorer = Anchorer(runtime, batch_size=64, max_wait=0.2)
    tasks = [asyncio.create_task(worker.run()), asyncio.create_task(anchorer.run(stop))]
    try:
        yield runtime, settings.task_queue
    finally:
        stop.set()
        await worker.shutdown()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await runtime.aclose()


async def _history_text(stack: Stack, wf_id: str) -> str:
    handle = stack.client.temporal.get_workflow_handle(wf_id)
    history = await handle.fetch_history()
    desc = await handle.describe()
    return history.to_json() + str(desc.raw_description)


def _store_bytes(runtime: Runtime) -> bytes:
    path = Path(runtime.settings.database_url.split("///", 1)[1])
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


async def test_no_canary_reaches_histories_store_logs_or_results(
    stack: Stack,
    tmp_path: Path,
    node: _Unauthorized,
    erp: _Erp,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("DEBUG", "json")  # production logging: JSON lines, secrets scrubbed
    try:
        await _run_everything(stack, tmp_path, node, erp, capsys)
    finally:
        structlog.reset_defaults()


async def _run_everything(
    stack: Stack,
    tmp_path: Path,
    node: _Unauthorized,
    erp: _Erp,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    found: list[str] = []
    outputs: list[str] = []
    ids: list[str] = []

    with OpenAIStub() as llm:
        # The endpoint refuses the key and quotes it back, as OpenAI's 401 does.
        for _ in range(3):
            llm.push_error(401, f"Incorrect API key provided: {OPENAI_KEY}", type="auth_error")
        set_provider(OpenAIProvider(OPENAI_KEY, llm.base_url, "gpt-canary", 10, 200))
        try:
            agen = _worker(stack, tmp_path / "good")
            (tmp_path / "good").mkdir()
            runtime, queue = await agen.__anext__()
            try:
                # 1. A procurement whose LLM endpoint refuses (and quotes) the API key.
                wf_id = f"canary-proc-{uuid.uuid4().hex[:8]}"
                ids.append(wf_id)
                handle = await stack.client.temporal.start_workflow(
                    "ProcurementWorkflow", {"quantity": 2}, id=wf_id, task_queue=queue
                )
                outputs.append(json.dumps(await handle.result(), default=str))
                # 2. An HTTP step with a named credential.
                wf_id = f"canary-http-{uuid.uuid4().hex[:8]}"
                ids.append(wf_id)
                handle = await stack.client.temporal.start_workflow(
                    "GenericProbeWorkflow",
                    ProbeRequest(url=erp.url, credential="erp"),
                    id=wf_id,
                    task_queue=queue,
                )
                outputs.append(json.dumps(await handle.result(), default=str))
                assert erp.auth[-1] == HTTP_CREDENTIAL  # it was really sent
                # ... and one the API refuses.
                wf_id = f"canary-http-{uuid.uuid4().hex[:8]}"
                ids.append(wf_id)
                handle = await stack.client.temporal.start_workflow(
                    "GenericProbeWorkflow",
                    ProbeRequest(url=erp.url, credential="erp", fail=True),
                    id=wf_id,
                    task_queue=queue,
                )
                with pytest.raises(WorkflowFailureError) as failed:
                    await handle.result()
                outputs.append(repr(failed.value.cause))
                # 3. Webhooks under the canary secret: one accepted, one with a wrong signature.
                app = create_app(runtime.settings, client=stack.client)
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://lf") as api:
                    body = json.dumps({"quantity": 1, "wait_for_anchor": False})
                    headers = sign(body, secret=WEBHOOK_SECRET)
                    resp = await api.post(
                        "/webhooks/ProcurementWorkflow", content=body, headers=headers
                    )
                    outputs.append(resp.text)
                    headers["webhook-signature"] = "v1," + base64.b64encode(b"x" * 32).decode()
                    headers["webhook-id"] = f"msg_{uuid.uuid4().hex}"
                    resp = await api.post(
                        "/webhooks/ProcurementWorkflow", content=body, headers=headers
                    )
                    assert resp.status_code == 401
                    outputs.append(resp.text)
                for wf in ids:
                    found += leaks(f"history of {wf}", await _history_text(stack, wf))
                found += leaks("the store", _store_bytes(runtime))
            finally:
                await agen.aclose()
        finally:
            set_provider(None)
        assert llm.requests and llm.requests[0].headers["authorization"] == f"Bearer {OPENAI_KEY}"

    # 4. The case: every RPC endpoint answers 401, with the token in its URL.
    (tmp_path / "node").mkdir()
    agen = _worker(stack, tmp_path / "node", rpc_urls=node.urls())
    runtime, queue = await agen.__anext__()
    try:
        wf_id = f"canary-rpc-{uuid.uuid4().hex[:8]}"
        handle = await stack.client.temporal.start_workflow(
            "ProcurementWorkflow", {"quantity": 2}, id=wf_id, task_queue=queue
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while loop.time() < deadline:  # a few failed attempts of the first chain read
            desc = await handle.describe()
            pending = desc.raw_description.pending_activities
            if pending and pending[0].attempt >= 3:
                break
            await asyncio.sleep(0.5)
        assert node.hits > 0
        found += leaks(f"history of {wf_id}", await _history_text(stack, wf_id))
        await handle.terminate("canary test done")
        found += leaks("the store (RPC)", _store_bytes(runtime))
    finally:
        await agen.aclose()

    for text in outputs:
        found += leaks("a result or answer", text)
    logs = capsys.readouterr()
    assert logs.err.count("\n") > 20, "the worker's log lines were not captured"
    found += leaks("the log", logs.err + logs.out)
    assert not found, found


def test_rendered_log_lines_carry_no_canary(capsys: pytest.CaptureFixture[str]) -> None:
    """Every secret the runtime registers is masked in rendered lines, tracebacks included."""
    from ledgerflow.chain.rpc import FailoverProvider
    from ledgerflow.log import register_secret

    configure_logging("DEBUG", "json")
    try:
        _ = FailoverProvider(
            [
                f"http://127.0.0.1:1/v3/{RPC_TOKEN}",
                f"http://u:{RPC_PASSWORD}@127.0.0.1:1/",
                f"http://127.0.0.1:1/?k={RPC_QUERY}",
            ],
            timeout=1,
            cooldown=1,
            chain_id=31337,
        )
        for key in ANVIL_DEFAULT_KEYS[:3]:
            register_secret(key)
        register_secret(OPENAI_KEY)
        log = structlog.get_logger("canary")
        log.info("rpc", url=f"http://127.0.0.1:1/v3/{RPC_TOKEN}", note=f"pw {RPC_PASSWORD}")
        log.warning("key", value=ANVIL_DEFAULT_KEYS[1], api=OPENAI_KEY, q=RPC_QUERY)
        try:
            raise RuntimeError(f"node said no for http://127.0.0.1:1/rpc?apikey={RPC_QUERY}")
        except RuntimeError:
            log.exception("failed")
        err = capsys.readouterr().err
    finally:
        structlog.reset_defaults()
    assert err.count("\n") >= 3
    assert not leaks("rendered log lines", err), err
