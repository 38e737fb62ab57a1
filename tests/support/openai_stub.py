"""A scripted OpenAI-compatible HTTP server for tests.

The real ``openai`` SDK talks real HTTP to it. Tests push the replies it should give, in order,
and read back every request it received::

    with OpenAIStub() as stub:
        stub.push_completion('{"offer_id": 1, ...}', usage=(120, 30))
        provider = OpenAIProvider(api_key="sk-test", base_url=stub.base_url, ...)
        ...
        assert stub.requests[0].body["response_format"]["json_schema"]["strict"] is True

A request that arrives when no reply is scripted gets HTTP 599 with a message saying so, which
the SDK reports as a server error: a test that sends more requests than it expects fails loudly.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

__all__ = [
    "COMPLETIONS_PATH",
    "OpenAIStub",
    "RecordedRequest",
    "ScriptedReply",
    "completion_body",
    "error_body",
]

COMPLETIONS_PATH = "/v1/chat/completions"


@dataclass(frozen=True)
class ScriptedReply:
    """One reply: ``json_body`` is sent as JSON, else ``text`` as is (with ``content_type``)."""

    status: int = 200
    json_body: Any = None
    text: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None

    def encode(self) -> tuple[bytes, str]:
        if self.text is not None:
            return self.text.encode("utf-8"), self.content_type or "text/plain; charset=utf-8"
        return json.dumps(self.json_body).encode("utf-8"), self.content_type or "application/json"


@dataclass(frozen=True)
class RecordedRequest:
    """A request as the stub saw it. ``headers`` keys are lower-case; ``body`` is parsed JSON."""

    method: str
    path: str
    headers: dict[str, str]
    raw_body: bytes
    body: Any


def completion_body(
    content: str | None,
    *,
    finish_reason: str = "stop",
    refusal: str | None = None,
    usage: tuple[int, int] | None = (100, 20),
    model: str = "gpt-stub-2026-01-01",
    completion_id: str = "chatcmpl-stub",
) -> dict[str, Any]:
    """A chat-completion response body with one choice.

    Args:
        content: the assistant message text (``None`` for none, as with a refusal).
        finish_reason: ``stop``, ``length``, ``content_filter``, ...
        refusal: the message's ``refusal`` text.
        usage: ``(prompt_tokens, completion_tokens)``, or ``None`` to omit usage.
        model: the model the server reports.
        completion_id: the completion's ``id``.
    """
    body: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion",
        "created": 1_767_225_600,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": refusal},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
    }
    if usage is not None:
        prompt, completion = usage
        body["usage"] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
    return body


def error_body(
    message: str, *, type: str = "invalid_request_error", code: str | None = None
) -> dict[str, Any]:
    """An OpenAI-style error body: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type, "param": None, "code": code}}


class OpenAIStub:
    """Serves ``POST /v1/chat/completions`` on 127.0.0.1 (a free port) from a script of replies.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. Thread-safe: the server runs
    in its own thread while the test's event loop drives the SDK.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._replies: deque[ScriptedReply] = deque()
        self._requests: list[RecordedRequest] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        """Bind a free port on 127.0.0.1 and serve in a daemon thread."""
        if self._server is not None:
            return self
        server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="openai-stub", kwargs={"poll_interval": 0.05}
        )
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("OpenAIStub is not running")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """What to pass as the SDK's ``base_url``: ``http://127.0.0.1:PORT/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    # -- script ------------------------------------------------------------------------------

    def push(self, reply: ScriptedReply) -> None:
        """Queue ``reply`` for the next unanswered request."""
        with self._lock:
            self._replies.append(reply)

    def push_json(
        self, body: Any, *, status: int = 200, headers: dict[str, str] | None = None
    ) -> None:
        """Queue a JSON reply."""
        self.push(ScriptedReply(status=status, json_body=body, headers=dict(headers or {})))

    def push_text(
        self,
        text: str,
        *,
        status: int = 200,
        content_type: str = "text/plain; charset=utf-8",
        headers: dict[str, str] | None = None,
    ) -> None:
        """Queue a raw-text reply (``content_type`` may lie, e.g. ``application/json``)."""
        self.push(
            ScriptedReply(
                status=status, text=text, content_type=content_type, headers=dict(headers or {})
            )
        )

    def push_completion(self, content: str | None, **kwargs: Any) -> None:
        """Queue a 200 completion; ``kwargs`` as for :func:`completion_body`."""
        self.push_json(completion_body(content, **kwargs))

    def push_error(
        self,
        status: int,
        message: str = "error",
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Queue an OpenAI-style error reply."""
        self.push_json(error_body(message, type=type, code=code), status=status, headers=headers)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def pending(self) -> int:
        """Scripted replies not yet used."""
        with self._lock:
            return len(self._replies)

    def reset(self) -> None:
        """Forget the script and the recorded requests."""
        with self._lock:
            self._replies.clear()
            self._requests.clear()

    # -- HTTP --------------------------------------------------------------------------------

    def _record_and_pop(self, request: RecordedRequest) -> ScriptedReply:
        with self._lock:
            self._requests.append(request)
            if request.method != "POST" or request.path != COMPLETIONS_PATH:
                return ScriptedReply(
                    status=404, json_body=error_body(f"stub: no route {request.path}")
                )
            if not self._replies:
                return ScriptedReply(
                    status=599,
                    json_body=error_body("stub: no scripted reply left", type="stub_error"),
                )
            return self._replies.popleft()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                recorded = RecordedRequest(
                    method=self.command,
                    path=self.path.split("?", 1)[0],
                    headers={k.lower(): v for k, v in self.headers.items()},
                    raw_body=raw,
                    body=body,
                )
                reply = stub._record_and_pop(recorded)
                payload, content_type = reply.encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            do_POST = _serve
            do_GET = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

        return Handler
