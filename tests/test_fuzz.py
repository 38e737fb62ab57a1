"""A signed fuzz run of the webhooks API against its own OpenAPI document (schemathesis).

Every generated request is signed per Standard Webhooks with the server's secret (a fresh
``webhook-id`` and the current timestamp, unless the generated header itself is the schema
violation under test), so positive and negative examples reach body parsing, validation, the
store and Temporal. The server is a real ``ledgerflow api`` process on a task queue that no worker
polls: accepted starts are real Temporal workflows that never run, so the fuzz moves no money.

Checks: no 5xx, only documented status codes and content types, responses that match their
schemas, and schema-violating input refused (``negative_data_rejection``): what the published
schema says is what is accepted.

``LEDGERFLOW_FUZZ_EXAMPLES`` sets the examples per operation (default 25, small enough for
``make test``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from ledgerflow.dev.stack import free_port

SECRET_KEY = b"ledgerflow-fuzz-secret-of-32-bytes!!"
SECRET = "whsec_" + base64.b64encode(SECRET_KEY).decode()
EXAMPLES = int(os.environ.get("LEDGERFLOW_FUZZ_EXAMPLES", "25"))
_ID = re.compile(r"[\x21-\x7e]{1,255}")
_STAMP = re.compile(r"[0-9]+")


@pytest.fixture(scope="module")
def fuzz_server(temporal_address: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("fuzz-api")
    port = free_port()
    env = {
        **os.environ,
        "LEDGERFLOW_HOME": str(home),
        "LEDGERFLOW_TEMPORAL_ADDRESS": temporal_address,
        "LEDGERFLOW_TASK_QUEUE": f"fuzz-nobody-polls-{uuid.uuid4().hex[:8]}",
        "LEDGERFLOW_DATABASE_URL": f"sqlite:///{home}/store.db",
        "LEDGERFLOW_WEBHOOK_SECRET": SECRET,
        "LEDGERFLOW_API_PORT": str(port),
        "LEDGERFLOW_LOG_FORMAT": "json",
    }
    log = home / "api.log"
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("ledgerflow")), "api"],
        env=env,
        cwd=home,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "ledgerflow api did not start"
            time.sleep(0.2)
        yield url
        assert proc.poll() is None, "the API died during the fuzz run:\n" + log.read_text()[-4000:]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _operations() -> dict[str, Any]:
    """The API's operations, from the OpenAPI document the app publishes (built in-process, so
    the parametrization exists before any server runs; the server publishes the same)."""
    from pydantic import SecretStr

    from ledgerflow.api.webhooks import create_app
    from ledgerflow.settings import Settings

    app = create_app(Settings(_env_file=None, webhook_secret=SecretStr(SECRET)))  # type: ignore[call-arg]
    loaded = schemathesis.openapi.from_dict(app.openapi())
    operations = (result.ok() for result in loaded.get_all_operations())
    return {f"{op.method.upper()} {op.path}": op for op in operations}


OPERATIONS = _operations()


def _signed(kwargs: dict[str, Any]) -> tuple[dict[str, str], bytes]:
    """The request's headers, signed over the exact body bytes sent."""
    headers = {k: str(v) for k, v in (kwargs.get("headers") or {}).items()}
    if "json" in kwargs:
        body = json.dumps(kwargs["json"]).encode()
        headers["Content-Type"] = "application/json"
    else:
        data = kwargs.get("data")
        body = data.encode() if isinstance(data, str) else bytes(data or b"")
    lower = {k.lower(): k for k in headers}
    given_id = headers.get(lower.get("webhook-id", ""), "")
    given_stamp = headers.get(lower.get("webhook-timestamp", ""), "")
    # A schema-valid header becomes a real one; an invalid one (the negative example) stays.
    msg_id = f"msg_{uuid.uuid4().hex}" if _ID.fullmatch(given_id) else given_id
    stamp = str(int(time.time())) if _STAMP.fullmatch(given_stamp) else given_stamp
    present = {
        name for name in ("webhook-id", "webhook-timestamp", "webhook-signature") if name in lower
    }
    for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        headers.pop(lower.get(name, name), None)
    mac = hmac.new(SECRET_KEY, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    signed = {
        "webhook-id": msg_id,
        "webhook-timestamp": stamp,
        "webhook-signature": "v1," + base64.b64encode(mac).decode(),
    }
    # A required header the negative example left out stays out (the server must refuse it).
    headers.update({k: v for k, v in signed.items() if k in present})
    return headers, body


def test_the_served_document_is_the_one_fuzzed(fuzz_server: str) -> None:
    served = httpx.get(f"{fuzz_server}/openapi.json", timeout=10).json()
    labels = {f"{m.upper()} {path}" for path, item in served["paths"].items() for m in item}
    assert labels == set(OPERATIONS)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_signed_fuzzing_finds_no_server_error(
    fuzz_server: str, label: str, mode: GenerationMode
) -> None:
    operation = OPERATIONS[label]
    seen: set[int] = set()
    if mode.is_negative and label == "GET /health":
        pytest.skip("no parameters and no body: nothing can violate the schema")

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: Any) -> None:
        kwargs = case.as_transport_kwargs(base_url=fuzz_server)
        headers, body = _signed(kwargs)
        with httpx.Client(timeout=60) as client:
            response = client.request(
                kwargs["method"],
                kwargs["url"],
                params=kwargs.get("params"),
                headers=headers,
                content=body,
            )
        seen.add(response.status_code)
        # The fuzzed API has no chain: the provenance lookup answers its documented 503.
        no_chain = label.startswith("GET /provenance/") and response.status_code == 503
        case.validate_response(
            response,
            checks=[
                *([] if no_chain else [not_a_server_error]),
                status_code_conformance,
                content_type_conformance,
                response_schema_conformance,
                negative_data_rejection,
            ],
        )

    fuzz()
    # The signing worked: requests got past authentication, and valid starts started runs.
    assert seen - {401}, f"{label}: every request was refused at the signature: {seen}"
    if mode.is_positive and label.startswith("POST") and label.count("/") == 2:
        assert 202 in seen, f"{label}: no valid start was accepted: {seen}"
