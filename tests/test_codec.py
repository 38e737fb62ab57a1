"""Encrypted history (ledgerflow.codec): with codec keys configured, a real run's Temporal history
holds only ciphertext, the run completes and verifies, the API's codec server decodes it for a
caller with the token (and for nobody else), keys rotate by key id, and an unknown key id is a
clear typed error. Off by default."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from google.protobuf import json_format
from google.protobuf.message import Message
from pydantic import SecretStr, ValidationError
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.api.history.v1 import MarkerRecordedEventAttributes
from temporalio.client import Client, WorkflowHistory
from temporalio.worker import Replayer

from ledgerflow.api import create_app
from ledgerflow.codec import (
    ENCODING,
    KEY_ID_KEY,
    EncryptionCodec,
    codec_from_settings,
    converter_for,
    parse_keys,
)
from ledgerflow.converter import data_converter
from ledgerflow.dev.stack import find_temporal, free_port, temporal_process
from ledgerflow.dev.up import child_env, codec_endpoint
from ledgerflow.errors import CodecError, ConfigError, RunFailed, UnknownCodecKey
from ledgerflow.sdk.client import LedgerflowClient
from ledgerflow.settings import Settings
from ledgerflow.temporal import connect
from ledgerflow.worker.runner import build_worker, workflow_classes
from ledgerflow.workflows.vendor_payment import VendorPaymentResult
from tests.conftest import Stack
from tests.test_up import EmbeddedStack, embedded  # noqa: F401  (the fixture)

KEY_A = base64.b64encode(os.urandom(32)).decode()
KEY_B = base64.b64encode(os.urandom(32)).decode()
TOKEN = "codec-test-token-" + uuid.uuid4().hex
VENDOR = "0x976EA74026E726554dB657fA54763abd0C3a0aa9"
UI_ORIGIN = "http://ui.example:8233"


def _settings(**kw: Any) -> Settings:
    return Settings(_env_file=None, **kw)  # type: ignore[call-arg]


def _payloads(msg: Message, skip: tuple[str, ...] = ("search_attributes",)) -> Iterator[Payload]:
    """Every Payload inside ``msg`` but the two kinds the SDK writes in clear on purpose: search
    attributes (Temporal indexes them) and the SDK core's own marker details (a patch id, a
    local activity's type, attempt and schedule time; its result is encoded)."""
    if isinstance(msg, Payload):
        yield msg
        return
    if isinstance(msg, MarkerRecordedEventAttributes):
        if "result" in msg.details:
            yield from _payloads(msg.details["result"], skip)
        if msg.HasField("failure"):
            yield from _payloads(msg.failure, skip)
        return
    for field, value in msg.ListFields():
        if field.name in skip or field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            for v in value.values():
                if isinstance(v, Message):
                    yield from _payloads(v, skip)
        elif isinstance(value, Message):
            yield from _payloads(value, skip)
        else:  # a repeated field
            for v in value:
                yield from _payloads(v, skip)


async def _raw_history(client: Client, workflow_id: str) -> tuple[bytes, list[Payload]]:
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    raw = b"".join(e.SerializeToString() for e in history.events)
    return raw, [p for e in history.events for p in _payloads(e)]


def _plaintexts(invoice: str, amount: int) -> list[bytes]:
    return [
        invoice.encode(),
        b"offline rules",  # the decision's rationale
        VENDOR.encode(),
        VENDOR.lower().encode(),
        VENDOR[2:].lower().encode(),
        str(amount).encode(),
    ]


@dataclass
class CodecStack:
    settings: Settings
    temporal: Client
    client: LedgerflowClient


@pytest.fixture(scope="module")
async def codec_stack(stack: Stack) -> AsyncIterator[CodecStack]:
    """A worker whose client encrypts (key ``a``), on its own task queue, over the session's
    Temporal, chain, store and anchorer."""
    queue = f"ledgerflow-codec-{uuid.uuid4().hex[:8]}"
    settings = stack.settings.model_copy(
        update={
            "codec_keys": SecretStr(f"a:{KEY_A}"),
            "codec_server_token": SecretStr(TOKEN),
            "codec_cors_origins": [UI_ORIGIN],
            "task_queue": queue,
        }
    )
    temporal = await connect(settings)
    assert isinstance(temporal.data_converter.payload_codec, EncryptionCodec)
    async with build_worker(temporal, stack.runtime, task_queue=queue):
        yield CodecStack(settings, temporal, LedgerflowClient(temporal, settings, stack.runtime))


async def _pay(lf: LedgerflowClient, **fields: Any) -> tuple[str, str, int]:
    wf_id = f"codec-pay-{uuid.uuid4().hex[:10]}"
    invoice = f"Invoice CODEC-{uuid.uuid4().hex[:12]}: 3 x WIDGET-42"
    amount = 5_000_000 + int.from_bytes(os.urandom(3), "big")
    await lf.start(
        "VendorPaymentWorkflow",
        {"invoice": invoice, "max_amount": amount, "vendor": VENDOR, **fields},
        workflow_id=wf_id,
    )
    return wf_id, invoice, amount


# ---- a real run ----------------------------------------------------------------------------------


async def test_history_is_ciphertext_and_the_run_completes_and_verifies(
    codec_stack: CodecStack,
) -> None:
    lf = codec_stack.client
    wf_id, invoice, amount = await _pay(lf)
    result = await lf.result(wf_id)
    assert isinstance(result, VendorPaymentResult)
    assert result.outcome == "completed" and result.amount == amount

    raw, payloads = await _raw_history(codec_stack.temporal, wf_id)
    for plain in _plaintexts(invoice, amount):
        assert plain not in raw, f"{plain!r} is in the raw history"
    assert len(payloads) > 10
    clear = [p for p in payloads if p.metadata.get("encoding") != ENCODING]
    assert not clear, clear[:3]
    assert {p.metadata[KEY_ID_KEY] for p in payloads} == {b"a"}

    # verify cross-checks the step hashes in Temporal history: through the codec
    report = await lf.verify(wf_id)
    assert report.ok, report.problems
    assert report.history_checked
    # the keys themselves are nowhere in history
    for key in (KEY_A, KEY_B):
        assert key.encode() not in raw and base64.b64decode(key) not in raw


async def test_an_encrypted_history_replays_with_the_keys(codec_stack: CodecStack) -> None:
    lf = codec_stack.client
    wf_id, _, _ = await _pay(lf)
    await lf.result(wf_id)
    history = await codec_stack.temporal.get_workflow_handle(wf_id).fetch_history()
    converter = converter_for(codec_stack.settings)
    replayed = await Replayer(
        workflows=workflow_classes(), data_converter=converter
    ).replay_workflow(history, raise_on_replay_failure=False)
    assert replayed.replay_failure is None, replayed.replay_failure
    # without the keys the same history cannot be read (the plain converter sees ciphertext)
    plain = await Replayer(
        workflows=workflow_classes(), data_converter=data_converter
    ).replay_workflow(history, raise_on_replay_failure=False)
    assert plain.replay_failure is not None


async def test_a_failure_message_is_encrypted_and_reads_back_through_the_sdk(
    codec_stack: CodecStack,
) -> None:
    # An input the workflow refuses (InvalidInput, before any step): its message quotes the field.
    wf_id = f"codec-bad-{uuid.uuid4().hex[:10]}"
    await codec_stack.temporal.start_workflow(
        "VendorPaymentWorkflow",
        {"max_amount": 0, "invoice": "secret-invoice-text"},
        id=wf_id,
        task_queue=codec_stack.settings.task_queue,
    )
    with pytest.raises(RunFailed, match="max_amount") as info:
        await codec_stack.client.result(wf_id)
    assert info.value.failure_type == "InvalidInput"
    raw, _ = await _raw_history(codec_stack.temporal, wf_id)
    assert b"max_amount" not in raw and b"secret-invoice-text" not in raw
    assert b"Encoded failure" in raw  # Temporal's placeholder for an encrypted message


async def test_without_keys_history_is_plaintext(stack: Stack) -> None:
    # The control: the same run on the session's plain stack shows what the codec hides.
    assert stack.settings.codec_keys is None
    assert converter_for(stack.settings) is data_converter
    wf_id, invoice, _ = await _pay(stack.client)
    await stack.client.result(wf_id)
    raw, payloads = await _raw_history(stack.client.temporal, wf_id)
    assert invoice.encode() in raw and b"offline rules" in raw
    assert not any(p.metadata.get("encoding") == ENCODING for p in payloads)


# ---- the codec server ----------------------------------------------------------------------------


def _http(settings: Settings, client: tuple[str, int] = ("203.0.113.9", 5000)) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_app(settings), client=client)
    return httpx.AsyncClient(transport=transport, base_url="http://ledgerflow")


def _body(payloads: list[Payload]) -> dict[str, Any]:
    return json_format.MessageToDict(Payloads(payloads=payloads))


def _parse(body: dict[str, Any]) -> list[Payload]:
    return list(json_format.ParseDict(body, Payloads()).payloads)


async def test_the_codec_server_decodes_history_with_the_token_only(
    codec_stack: CodecStack,
) -> None:
    wf_id, invoice, amount = await _pay(codec_stack.client)
    await codec_stack.client.result(wf_id)
    _, payloads = await _raw_history(codec_stack.temporal, wf_id)
    body = _body(payloads)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with _http(codec_stack.settings) as http:
        for path in ("/codec/decode", "/codec/default/decode"):
            r = await http.post(path, json=body, headers={**auth, "X-Namespace": "default"})
            assert r.status_code == 200, r.text
            decoded = _parse(r.json())
            assert len(decoded) == len(payloads)
            assert not any(p.metadata.get("encoding") == ENCODING for p in decoded)
            text = b"".join(p.data for p in decoded)
            assert invoice.encode() in text and str(amount).encode() in text
            assert b"offline rules" in text

        # encode, then decode: the round trip the UI does for a signal it sends
        plain = Payload(metadata={"encoding": b"json/plain"}, data=b'{"x": 1}')
        r = await http.post("/codec/encode", json=_body([plain]), headers=auth)
        assert r.status_code == 200
        (sealed,) = _parse(r.json())
        assert sealed.metadata["encoding"] == ENCODING and b'"x"' not in sealed.data
        r = await http.post("/codec/decode", json=_body([sealed]), headers=auth)
        assert _parse(r.json()) == [plain]

        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            r = await http.post("/codec/decode", json=body, headers=headers)
            assert r.status_code == 401, r.text
            assert invoice not in r.text and KEY_A not in r.text

        r = await http.post("/codec/decode", content=b"not json", headers=auth)
        assert r.status_code == 400

        # CORS: the Temporal UI's origin may call it from a browser; another origin may not.
        preflight = {
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type,x-namespace",
        }
        r = await http.options("/codec/decode", headers={**preflight, "Origin": UI_ORIGIN})
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == UI_ORIGIN
        r = await http.options(
            "/codec/decode", headers={**preflight, "Origin": "http://evil.example"}
        )
        assert r.headers.get("access-control-allow-origin") != "http://evil.example"
        r = await http.post("/codec/decode", json=body, headers={**auth, "Origin": UI_ORIGIN})
        assert r.headers["access-control-allow-origin"] == UI_ORIGIN


async def test_temporals_own_cli_decodes_through_the_codec_server(
    codec_stack: CodecStack,
) -> None:
    """Temporal's CLI speaks the protocol to the API's real HTTP server: `temporal workflow
    show` with --codec-endpoint shows the plaintext, and without the token it cannot."""
    import uvicorn

    wf_id, invoice, _ = await _pay(codec_stack.client)
    await codec_stack.client.result(wf_id)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(codec_stack.settings), host="127.0.0.1", port=port, log_config=None
        )
    )
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.05)

        async def show(*extra: str) -> tuple[int, str]:
            proc = await asyncio.create_subprocess_exec(
                str(find_temporal()),
                "workflow",
                "show",
                "--address",
                codec_stack.settings.temporal_address,
                "--workflow-id",
                wf_id,
                "--output",
                "json",
                "--codec-endpoint",
                f"http://127.0.0.1:{port}/codec",
                *extra,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            out, _ = await proc.communicate()
            return proc.returncode or 0, out.decode(errors="replace")

        def texts(out: str) -> bytes:
            history = WorkflowHistory.from_json(wf_id, out)
            return b"".join(p.data for e in history.events for p in _payloads(e))

        code, out = await show("--codec-auth", f"Bearer {TOKEN}")
        assert code == 0, out
        assert invoice.encode() in texts(out)
        code, out = await show()  # no token: the codec server refuses, nothing is decrypted
        assert invoice.encode() not in (texts(out) if code == 0 else out.encode())
    finally:
        server.should_exit = True
        await task


async def test_the_codec_server_is_closed_by_default() -> None:
    keys = _settings(codec_keys=f"a:{KEY_A}")
    for settings, status in ((_settings(), 503), (keys, 503)):
        async with _http(settings, client=("127.0.0.1", 5000)) as http:
            r = await http.post("/codec/decode", json={"payloads": []})
            assert r.status_code == status, r.text
    # Opting in to loopback callers (what `ledgerflow up` does for its own UI) lets the
    # local browser in without a token, and nobody else.
    loopback = _settings(codec_keys=f"a:{KEY_A}", codec_server_allow_loopback=True)
    async with _http(loopback, client=("127.0.0.1", 5000)) as http:
        assert (await http.post("/codec/decode", json={"payloads": []})).status_code == 200
    async with _http(loopback) as http:
        assert (await http.post("/codec/decode", json={"payloads": []})).status_code == 503


# ---- key rotation and unknown keys ---------------------------------------------------------------


async def test_rotation_history_under_a_is_read_after_b_becomes_primary(
    codec_stack: CodecStack, stack: Stack
) -> None:
    # A run written by a worker holding key a alone waits for an approval...
    queue = f"ledgerflow-codec-rot-{uuid.uuid4().hex[:8]}"
    under_a = codec_stack.settings.model_copy(update={"task_queue": queue})
    temporal_a = await connect(under_a)
    lf_a = LedgerflowClient(temporal_a, under_a, stack.runtime)
    async with build_worker(temporal_a, stack.runtime, task_queue=queue):
        wf_id, invoice, amount = await _pay(lf_a, approval_above=1_000_000)
        assert (await lf_a.wait_until_awaiting(wf_id, "approval", timeout=60)).awaiting

    # ... then the keys rotate (b encrypts, a still decrypts) and that worker is gone: a worker
    # and a client with the new keys replay the history written under a and finish the run.
    rotated = under_a.model_copy(update={"codec_keys": SecretStr(f"b:{KEY_B},a:{KEY_A}")})
    temporal = await connect(rotated)
    rlf = LedgerflowClient(temporal, rotated, stack.runtime)
    async with build_worker(temporal, stack.runtime, task_queue=queue):
        assert (await rlf.status(wf_id)).awaiting == "approval"  # a query: a replay under b
        assert await rlf.approve(wf_id, approver="cfo@acme") == "recorded"
        result = await rlf.result(wf_id)
    assert result.outcome == "completed" and result.amount == amount
    assert (await rlf.verify(wf_id)).ok

    raw, payloads = await _raw_history(temporal, wf_id)
    assert invoice.encode() not in raw
    ids = {p.metadata[KEY_ID_KEY] for p in payloads}
    assert ids == {b"a", b"b"}, ids

    # A process that no longer has key a fails clearly, naming the id and no key.
    only_b = codec_from_settings(_settings(codec_keys=f"b:{KEY_B}"))
    assert only_b is not None
    sealed_a = next(p for p in payloads if p.metadata[KEY_ID_KEY] == b"a")
    with pytest.raises(UnknownCodecKey, match=r"'a'.*configured: b") as info:
        await only_b.decode([sealed_a])
    assert KEY_A not in str(info.value) and KEY_B not in str(info.value)
    assert info.value.key_id == "a" and not info.value.retryable

    # ... and so does its codec server.
    b_only_settings = _settings(codec_keys=f"b:{KEY_B}", codec_server_token=TOKEN)
    async with _http(b_only_settings) as http:
        r = await http.post(
            "/codec/decode", json=_body([sealed_a]), headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert r.status_code == 422 and "'a'" in r.json()["detail"]
        assert KEY_B not in r.text


# ---- the codec itself ----------------------------------------------------------------------------


async def test_tampering_and_relabelling_are_refused() -> None:
    codec = EncryptionCodec(parse_keys(f"a:{KEY_A},b:{KEY_A}"))
    plain = Payload(metadata={"encoding": b"json/plain"}, data=b'{"amount": 12}')
    (sealed,) = await codec.encode([plain])
    assert await codec.decode([sealed]) == [plain]
    assert (await codec.encode([plain]))[0].data != sealed.data  # a fresh nonce every time

    flipped = Payload()
    flipped.CopyFrom(sealed)
    flipped.data = sealed.data[:-1] + bytes([sealed.data[-1] ^ 1])
    with pytest.raises(CodecError, match="fails authentication"):
        await codec.decode([flipped])
    # b holds the same key bytes, but the key id is authenticated: relabelling is refused
    relabelled = Payload()
    relabelled.CopyFrom(sealed)
    relabelled.metadata[KEY_ID_KEY] = b"b"
    with pytest.raises(CodecError, match="fails authentication"):
        await codec.decode([relabelled])
    short = Payload(metadata=dict(sealed.metadata), data=b"xx")
    with pytest.raises(CodecError, match="truncated"):
        await codec.decode([short])
    # payloads written before the codec was on stay readable
    assert await codec.decode([plain]) == [plain]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "empty"),
        ("nokey", "entry 1 is not id:base64key"),
        (f"bad id!:{KEY_A}", "entry 1 is not"),
        (f"a:{KEY_A},a:{KEY_B}", "twice"),
        ("a:!!!notbase64", "not base64"),
        (f"a:{base64.b64encode(b'short').decode()}", "is 5 bytes"),
    ],
)
def test_bad_keys_are_config_errors_without_key_material(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_keys(value)
    assert KEY_A not in str(info.value) and KEY_B not in str(info.value)
    if value:
        with pytest.raises(ValidationError, match=message) as vinfo:
            _settings(codec_keys=value)
        assert KEY_A not in str(vinfo.value) and KEY_B not in str(vinfo.value)


def test_keys_parse_in_order_from_commas_or_lines() -> None:
    urlsafe = base64.urlsafe_b64encode(base64.b64decode(KEY_B)).decode().rstrip("=")
    keys = parse_keys(f"2026-12:{KEY_B}\n 2026-06:{KEY_A}, old.1:{urlsafe}")
    assert list(keys) == ["2026-12", "2026-06", "old.1"]
    assert keys["old.1"] == keys["2026-12"] == base64.b64decode(KEY_B)
    codec = codec_from_settings(_settings(codec_keys=f"b:{KEY_B},a:{KEY_A}"))
    assert codec is not None and codec.key_id == "b" and codec.key_ids == ["b", "a"]
    assert codec_from_settings(_settings()) is None


# ---- the embedded stack --------------------------------------------------------------------------


def test_up_points_the_ui_at_the_codec_server_when_it_is_on() -> None:
    off = _settings()
    assert codec_endpoint(off) is None
    assert "LEDGERFLOW_CODEC_KEYS" not in child_env(off)
    assert child_env(off)["LEDGERFLOW_CODEC_SERVER_ALLOW_LOOPBACK"] == "false"

    on = _settings(codec_keys=f"a:{KEY_A}", api_port=8123, temporal_ui_port=9233)
    assert codec_endpoint(on) == "http://127.0.0.1:8123/codec"
    env = child_env(on)
    assert env["LEDGERFLOW_CODEC_KEYS"] == f"a:{KEY_A}"  # the worker and API get the keys
    assert env["LEDGERFLOW_CODEC_SERVER_ALLOW_LOOPBACK"] == "true"
    assert set(env["LEDGERFLOW_CODEC_CORS_ORIGINS"].split(",")) == {
        "http://localhost:9233",
        "http://127.0.0.1:9233",
    }
    # the children read the same settings back
    child = Settings(
        _env_file=None,
        **{
            k.removeprefix("LEDGERFLOW_").lower(): v
            for k, v in env.items()
            if k.startswith("LEDGERFLOW_CODEC")
        },
    )  # type: ignore[call-arg]
    assert child.codec_server_allow_loopback and "http://127.0.0.1:9233" in child.codec_origins
    # an explicit "no" is kept
    closed = _settings(codec_keys=f"a:{KEY_A}", codec_server_allow_loopback=False)
    assert child_env(closed)["LEDGERFLOW_CODEC_SERVER_ALLOW_LOOPBACK"] == "false"

    port, ui_port = free_port(), free_port()
    argv = list(temporal_process(port, ui_port=ui_port, ui_codec_endpoint=codec_endpoint(on)).argv)
    assert argv[argv.index("--ui-codec-endpoint") + 1] == "http://127.0.0.1:8123/codec"
    assert "--ui-codec-endpoint" not in temporal_process(port, ui_port=ui_port).argv


async def test_the_dev_servers_ui_is_pointed_at_the_codec_server(tmp_path: Any) -> None:
    # What `ledgerflow up` starts with the codec on: the UI tells the browser where to decode.
    port, ui_port = free_port(), free_port()
    endpoint = "http://127.0.0.1:8123/codec"
    proc = temporal_process(
        port, ui_port=ui_port, ui_codec_endpoint=endpoint, log_path=tmp_path / "temporal.log"
    ).start()
    try:
        proc.wait_listening([port, ui_port], timeout=60)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ui_port}") as http:
            r = await http.get("/api/v1/settings")
        assert r.status_code == 200
        assert r.json()["Codec"]["Endpoint"] == endpoint
    finally:
        proc.stop()


@dataclass
class _WithEnv(EmbeddedStack):
    extra: dict[str, str]

    @property
    def env(self) -> dict[str, str]:
        return {**super().env, **self.extra}


def test_ledgerflow_up_with_the_codec_on(embedded: EmbeddedStack) -> None:  # noqa: F811
    """The embedded stack with keys: the demo completes and verifies, its history is ciphertext,
    the dev UI points at the API's codec server, which decodes for the local browser."""
    key = base64.b64encode(os.urandom(32)).decode()
    stack = _WithEnv(
        embedded.cwd, embedded.home, embedded.ports, {"LEDGERFLOW_CODEC_KEYS": f"dev-1:{key}"}
    )
    run = stack.up()
    try:
        run.wait_for("serving:", timeout=240)
        out = run.stdout
        assert "demo: outcome completed" in out and "verify: ok" in out, out
        api = f"http://127.0.0.1:{stack.ports['api']}"
        assert f"encrypted history: on · the Temporal UI decodes through {api}/codec" in out
        asyncio.run(_check_up_history(stack, api))
        run.proc.send_signal(signal.SIGINT)
        assert run.wait(30) == 0, run.stderr[-3000:]
        assert key not in run.stdout and key not in run.stderr
    finally:
        if run.proc.poll() is None:
            run.proc.kill()


async def _check_up_history(stack: EmbeddedStack, api: str) -> None:
    plain = await connect(f"127.0.0.1:{stack.ports['temporal']}")  # no keys
    runs = [w async for w in plain.list_workflows("WorkflowType='ProcurementWorkflow'")]
    assert runs, "the demo started no ProcurementWorkflow"
    _, payloads = await _raw_history(plain, runs[0].id)
    assert payloads and all(p.metadata.get("encoding") == ENCODING for p in payloads)
    async with httpx.AsyncClient(timeout=10) as http:
        ui = await http.get(f"http://127.0.0.1:{stack.ports['ui']}/api/v1/settings")
        assert ui.json()["Codec"]["Endpoint"] == f"{api}/codec"
        origin = f"http://localhost:{stack.ports['ui']}"
        r = await http.post(f"{api}/codec/decode", json=_body(payloads), headers={"Origin": origin})
        assert r.status_code == 200, r.text
        assert r.headers["access-control-allow-origin"] == origin
        decoded = _parse(r.json())
        assert b"WIDGET-42" in b"".join(p.data for p in decoded)
