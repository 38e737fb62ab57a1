"""Small servers the signer tests start: a TCP forwarder (an RPC endpoint that can go down), an
HTTP endpoint that always fails, and a JSON-RPC remote signer holding a key (Web3Signer and
Clef style), which may be told to lie."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiohttp import web
from eth_account import Account

from ledgerflow.dev.stack import free_port

__all__ = ["FailingEndpoint", "Forwarder", "SigningServer"]


class Forwarder:
    """Forwards 127.0.0.1:<port> to ``target_port``; :meth:`stop` makes the endpoint vanish."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Forwarder:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        return self

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._conns.add(up_writer)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for w in list(self._conns):
                with contextlib.suppress(Exception):
                    w.close()
            await self.server.wait_closed()
            self.server = None


class _App:
    def __init__(self) -> None:
        self.port = free_port()
        self.runner: web.AppRunner | None = None
        self.requests: list[dict[str, Any]] = []

    async def _serve(self, app: web.Application) -> None:
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


class FailingEndpoint(_App):
    """Answers every request with HTTP ``status``."""

    def __init__(self, status: int = 503) -> None:
        super().__init__()
        self.status = status

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FailingEndpoint:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._fail)
        await self._serve(app)
        return self

    async def _fail(self, request: web.Request) -> web.Response:
        self.requests.append({"path": request.path})
        return web.Response(status=self.status, text="upstream unavailable")


class SigningServer(_App):
    """A JSON-RPC signer for one key: ``eth_signTransaction`` answers the raw transaction (as
    Web3Signer does), ``account_signTransaction`` answers ``{"raw", "tx"}`` (as Clef does).

    ``lie`` makes it sign something else: ``"to"`` (another recipient), ``"key"`` (another
    key), ``"garbage"`` (bytes that are not a transaction), ``"refuse"`` (a JSON-RPC error).
    """

    def __init__(self, key: str, *, token: str = "") -> None:
        super().__init__()
        self.account = Account.from_key(key)
        self.token = token
        self.lie = ""

    @property
    def url(self) -> str:
        auth = f"signer:{self.token}@" if self.token else ""
        return f"http://{auth}127.0.0.1:{self.port}/"

    async def start(self) -> SigningServer:
        app = web.Application()
        app.router.add_post("/", self._rpc)
        await self._serve(app)
        return self

    async def _rpc(self, request: web.Request) -> web.Response:
        if self.token:
            import base64

            expected = "Basic " + base64.b64encode(f"signer:{self.token}".encode()).decode()
            if request.headers.get("Authorization") != expected:
                return web.Response(status=401)
        body = await request.json()
        self.requests.append(body)
        method, (params,) = body["method"], body["params"]
        if self.lie == "refuse":
            return web.json_response(
                {"jsonrpc": "2.0", "id": body["id"], "error": {"code": -32000, "message": "no"}}
            )
        tx = {
            "type": 2,
            "chainId": int(params["chainId"], 16),
            "nonce": int(params["nonce"], 16),
            "to": params["to"],
            "value": int(params["value"], 16),
            "data": params["data"],
            "gas": int(params["gas"], 16),
            "maxFeePerGas": int(params["maxFeePerGas"], 16),
            "maxPriorityFeePerGas": int(params["maxPriorityFeePerGas"], 16),
        }
        signer = self.account
        if self.lie == "to":
            tx["to"] = Account.create().address
        elif self.lie == "key":
            signer = Account.create()
        raw = "0x" + bytes(signer.sign_transaction(tx).raw_transaction).hex()
        if self.lie == "garbage":
            raw = "0x02deadbeef"
        result: Any = raw if method == "eth_signTransaction" else {"raw": raw, "tx": params}
        return web.json_response({"jsonrpc": "2.0", "id": body["id"], "result": result})
