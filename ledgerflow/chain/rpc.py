"""JSON-RPC over HTTP with failover between several endpoints, and errors without secrets.

:class:`FailoverProvider` is a web3 async provider over an ordered list of endpoints. Each call
goes to the first endpoint that is not cooling down; a transport failure (connection refused,
timeout, HTTP 5xx or 429, a body that is not JSON-RPC) puts that endpoint aside for
``cooldown`` seconds and the same call goes to the next one. JSON-RPC error *answers* ("nonce too
low", a revert) are answers, not failures: they are returned to web3 as they are. When every
endpoint fails, the call raises :class:`~ledgerflow.errors.RPCUnavailable`, whose message names
each endpoint by its redacted URL and says what went wrong with it.

Every call ledgerflow makes is safe to repeat on another node: reads, and
``eth_sendRawTransaction`` of bytes that are already signed (a node that has them answers
"already known"). No method that makes the node sign (``eth_sendTransaction``) goes through here.

Written here rather than taken from a library: web3.py has no failover provider, and the async
providers of Lido's ``web3-multi-provider`` (2.x) are not in the package index this project
installs from (only its sync 1.0). web3's ``AsyncHTTPProvider`` also opens a new TCP connection
per request and quotes its URL, with any API key in it, in its log lines. This one keeps
connections alive, checks each endpoint's chain id, and no URL leaves it unredacted.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import aiohttp
import structlog
from web3 import AsyncWeb3
from web3.providers.async_base import AsyncJSONBaseProvider
from web3.types import RPCEndpoint, RPCResponse

from ledgerflow import jsonsafe
from ledgerflow.errors import ChainError, ConfigError, RPCUnavailable, bounded
from ledgerflow.log import redact_url, register_secret

__all__ = ["FailoverProvider", "connect_async", "describe_transport_error"]

log = structlog.get_logger(__name__)

#: The largest JSON-RPC answer read (eth_getLogs over a wide range can be large).
MAX_ANSWER_BYTES = 128 * 1024 * 1024


def describe_transport_error(exc: BaseException) -> str:
    """A short description of a failed HTTP call that quotes no URL, header or body."""
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"HTTP {exc.status}"
    if isinstance(exc, (TimeoutError, aiohttp.ServerTimeoutError)):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({type(exc.os_error).__name__})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the answer was cut short"
    if isinstance(exc, _BadAnswer):
        return str(exc)
    return type(exc).__name__


class _BadAnswer(Exception):
    """The endpoint answered with something that is not JSON-RPC."""


@dataclass
class _Endpoint:
    url: str = field(repr=False)
    label: str
    failed_until: float = 0.0
    last_error: str = ""
    chain_checked: bool = False
    session: aiohttp.ClientSession | None = field(default=None, repr=False)


class FailoverProvider(AsyncJSONBaseProvider):
    """A web3 async provider over several HTTP(S) JSON-RPC endpoints, first healthy one first.

    Args:
        urls: endpoints in order of preference.
        timeout: seconds for one HTTP call.
        cooldown: seconds a failed endpoint is skipped (then it is preferred again).
        chain_id: when given, each endpoint's ``eth_chainId`` is checked once before use; an
            endpoint on another chain is never used (a misconfigured URL must not receive
            transactions).
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        timeout: float = 10.0,
        cooldown: float = 15.0,
        chain_id: int | None = None,
    ) -> None:
        super().__init__()
        if not urls:
            raise ConfigError("no JSON-RPC endpoint configured (set LEDGERFLOW_RPC_URL)")
        for url in urls:
            register_secret(url)  # the whole URL: its token never reaches a log line
        self.endpoints = [_Endpoint(url=u, label=redact_url(u)) for u in urls]
        self.timeout = timeout
        self.cooldown = cooldown
        self.chain_id = chain_id
        self.switches = 0
        self._ids = itertools.count(1)

    def __str__(self) -> str:
        return "FailoverProvider(" + ", ".join(e.label for e in self.endpoints) + ")"

    __repr__ = __str__

    @property
    def current(self) -> str:
        """The redacted URL of the endpoint the next call goes to."""
        return self._order()[0].label

    def _order(self) -> list[_Endpoint]:
        now = time.monotonic()
        healthy = [e for e in self.endpoints if e.failed_until <= now]
        cooling = sorted(
            (e for e in self.endpoints if e.failed_until > now), key=lambda e: e.failed_until
        )
        return healthy + cooling  # when all failed lately, still try them all

    def _session(self, ep: _Endpoint) -> aiohttp.ClientSession:
        if ep.session is None or ep.session.closed:
            ep.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=64, keepalive_timeout=30),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={"Content-Type": "application/json"},
            )
        return ep.session

    async def _post(self, ep: _Endpoint, body: bytes) -> Any:
        async with self._session(ep).post(ep.url, data=body) as resp:
            if resp.status >= 500 or resp.status == 429:
                raise _BadAnswer(f"HTTP {resp.status}")
            if (resp.content_length or 0) > MAX_ANSWER_BYTES:
                raise _BadAnswer(f"answer larger than {MAX_ANSWER_BYTES} bytes")
            raw = await resp.read()
        try:
            # Untrusted bytes: a deeply nested answer must not crash the worker (jsonsafe).
            return jsonsafe.loads(
                raw, max_bytes=MAX_ANSWER_BYTES, max_depth=None, duplicates="last", what="answer"
            )
        except jsonsafe.UnsafeJSON:
            raise _BadAnswer(f"not JSON-RPC (HTTP {resp.status})") from None

    async def _check_chain(self, ep: _Endpoint) -> None:
        body = json.dumps(
            {"jsonrpc": "2.0", "id": next(self._ids), "method": "eth_chainId", "params": []}
        ).encode()
        answer = await self._post(ep, body)
        result = answer.get("result") if isinstance(answer, dict) else None
        if not isinstance(result, str):
            raise _BadAnswer("no answer to eth_chainId")
        got = int(result, 16)
        if got != self.chain_id:
            ep.failed_until = float("inf")
            log.error(
                "rpc endpoint is on another chain",
                endpoint=ep.label,
                chain_id=got,
                expected=self.chain_id,
            )
            raise _BadAnswer(f"on chain {got}, not {self.chain_id}")
        ep.chain_checked = True

    async def _call(self, what: str, body: bytes) -> Any:
        errors: list[str] = []
        for i, ep in enumerate(self._order()):
            if ep.failed_until == float("inf"):
                errors.append(f"{ep.label}: {ep.last_error}")
                continue
            failure = ""
            try:
                if self.chain_id is not None and not ep.chain_checked:
                    await self._check_chain(ep)
                answer = await self._post(ep, body)
            except (aiohttp.ClientError, TimeoutError, OSError, _BadAnswer) as exc:
                failure = describe_transport_error(exc)
            if not failure:
                if ep.failed_until:
                    ep.failed_until = 0.0
                    log.info("rpc endpoint healthy again", endpoint=ep.label)
                if i:
                    self.switches += 1
                return answer
            ep.last_error = failure
            errors.append(f"{ep.label}: {failure}")
            if ep.failed_until == float("inf"):
                continue
            was_healthy = ep.failed_until <= time.monotonic()
            ep.failed_until = time.monotonic() + self.cooldown
            if was_healthy:  # one line per outage, not one per concurrent call
                log.warning(
                    "rpc endpoint failed",
                    endpoint=ep.label,
                    method=what,
                    error=failure,
                    others=len(self.endpoints) - 1,
                )
        raise RPCUnavailable(bounded(f"no JSON-RPC endpoint answered {what}: " + "; ".join(errors)))

    async def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        body = self.encode_rpc_request(method, params)
        answer = await self._call(str(method), body)
        if not isinstance(answer, dict):
            raise ChainError(f"the JSON-RPC answer to {method} is not an object")
        return cast(RPCResponse, answer)

    async def make_batch_request(
        self, requests: list[tuple[RPCEndpoint, Any]]
    ) -> list[RPCResponse] | RPCResponse:
        body = self.encode_batch_rpc_request(requests)
        answer = await self._call(f"a batch of {len(requests)}", body)
        if isinstance(answer, list):
            return cast(list[RPCResponse], sorted(answer, key=lambda r: r.get("id", 0)))
        return cast(RPCResponse, answer)

    async def is_connected(self, show_traceback: bool = False) -> bool:
        try:
            resp = await self.make_request(RPCEndpoint("web3_clientVersion"), [])
        except ChainError:
            if show_traceback:
                raise
            return False
        return "result" in resp

    async def disconnect(self) -> None:
        for ep in self.endpoints:
            if ep.session is not None and not ep.session.closed:
                await ep.session.close()
            ep.session = None


def connect_async(
    urls: Sequence[str],
    *,
    timeout: float = 10.0,
    cooldown: float = 15.0,
    chain_id: int | None = None,
) -> AsyncWeb3:
    """An ``AsyncWeb3`` on a :class:`FailoverProvider` (nothing is sent until first use)."""
    return AsyncWeb3(FailoverProvider(urls, timeout=timeout, cooldown=cooldown, chain_id=chain_id))
