"""A TLS-terminating gRPC proxy in front of the Temporal dev server, and a test PKI.

The dev server speaks plain HTTP/2. This proxy accepts TLS (ALPN ``h2``) with a certificate from a
CA the test generates, optionally requires a client certificate signed by that CA (mTLS), and
optionally requires the gRPC metadata ``authorization: Bearer <key>`` on every call, like Temporal
Cloud's API keys. Bytes are relayed unchanged; the client-to-server direction is read frame by
frame and its header blocks are decoded with ``hpack`` (keeping the decoder's dynamic table in
step with the server's), so the first call without the right key is answered by the proxy itself
with a trailers-only gRPC response, status 16 (UNAUTHENTICATED), after which the connection is
closed without that call ever reaching the server::

    pki = TestPKI.create(tmp_path)
    with TLSProxy(("127.0.0.1", 7233), pki, require_client_cert=True, api_key="k") as proxy:
        ...  # connect to proxy.address with pki.ca_path, pki.client_cert_path, ...

It runs its own event loop in a thread, so blocking test code cannot stall it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import ssl
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from hpack import Decoder, Encoder, NeverIndexedHeaderTuple

__all__ = ["TLSProxy", "TestPKI"]

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_DATA, _HEADERS, _CONTINUATION = 0x0, 0x1, 0x9
_END_STREAM, _END_HEADERS, _PADDED, _PRIORITY = 0x1, 0x4, 0x8, 0x20
GRPC_UNAUTHENTICATED = 16


def _openssl(*args: str, cwd: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("the openssl command is required to make the test PKI")
    result = subprocess.run(
        [openssl, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.strip()}")


_EC = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


@dataclass(frozen=True)
class TestPKI:
    """A CA, a server certificate for ``localhost``/127.0.0.1 and a client certificate.

    Made with the ``openssl`` command (P-256 keys, PKCS#8, X.509 v3 extensions as rustls wants
    them), not the ``cryptography`` package: installing that brings ``cffi``, which switches
    pycryptodome (the checkpoint core's Keccak) to a slower backend in the test process.
    """

    ca_path: Path
    ca_key_path: Path
    server_cert_path: Path
    server_key_path: Path
    client_cert_path: Path
    client_key_path: Path

    __test__ = False  # not a pytest test class

    @classmethod
    def create(cls, directory: Path, *, ca_name: str = "ledgerflow test CA") -> TestPKI:
        directory.mkdir(parents=True, exist_ok=True)
        _openssl(
            "req", "-x509", *_EC, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
            "-subj", f"/CN={ca_name}",
            "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
            "-addext", "subjectKeyIdentifier=hash",
            cwd=directory,
        )  # fmt: skip
        leaves = {
            "server": ("localhost", "serverAuth", "subjectAltName=DNS:localhost,IP:127.0.0.1\n"),
            "client": ("ledgerflow-worker", "clientAuth", ""),
        }
        for stem, (cn, usage, san) in leaves.items():
            (directory / f"{stem}.ext").write_text(
                "basicConstraints=critical,CA:FALSE\n"
                f"extendedKeyUsage={usage}\n"
                "authorityKeyIdentifier=keyid\n" + san
            )
            _openssl(
                "req", "-new", *_EC, "-keyout", f"{stem}.key", "-out", f"{stem}.csr",
                "-subj", f"/CN={cn}",
                cwd=directory,
            )  # fmt: skip
            _openssl(
                "x509", "-req", "-in", f"{stem}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-set_serial", str(int.from_bytes(os.urandom(8), "big")), "-days", "1",
                "-extfile", f"{stem}.ext", "-out", f"{stem}.pem",
                cwd=directory,
            )  # fmt: skip
        for key in directory.glob("*.key"):
            key.chmod(0o600)
        return cls(
            directory / "ca.pem",
            directory / "ca.key",
            directory / "server.pem",
            directory / "server.key",
            directory / "client.pem",
            directory / "client.key",
        )


class TLSProxy:
    """TLS (and optionally mTLS and an API key check) in front of a plain gRPC server."""

    def __init__(
        self,
        upstream: tuple[str, int],
        pki: TestPKI,
        *,
        require_client_cert: bool = False,
        api_key: str | None = None,
    ) -> None:
        self.upstream = upstream
        self.api_key = api_key
        self.port = 0
        self.rejected: list[str] = []  # why each refused call was refused (never the key itself)
        self.calls = 0  # calls relayed to the server
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(pki.server_cert_path, pki.server_key_path)
        ctx.set_alpn_protocols(["h2"])
        if require_client_cert:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cafile=str(pki.ca_path))
        self._ctx = ctx
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="tls-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._stopping: asyncio.Event | None = None

    @property
    def address(self) -> str:
        return f"localhost:{self.port}"

    # ---- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the TLS proxy did not start")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.set_exception_handler(self._on_loop_error)
        self._loop.run_until_complete(self._main())
        self._loop.close()

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        # A refused handshake (wrong CA on the client, no client certificate) is expected here.
        if isinstance(context.get("exception"), ssl.SSLError | ConnectionError):
            return
        loop.default_exception_handler(context)

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", 0, ssl=self._ctx, ssl_handshake_timeout=10
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        async with self._server:
            await self._stopping.wait()
            self._server.close()

    # ---- one connection --------------------------------------------------------------------

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.close()
            return
        lock = asyncio.Lock()
        done = asyncio.Event()
        tasks = [
            asyncio.create_task(self._client_to_server(client_r, up_w, client_w, lock, done)),
            asyncio.create_task(self._server_to_client(up_r, client_w, lock, done)),
        ]
        assert self._stopping is not None
        stop = asyncio.create_task(self._stopping.wait())
        await asyncio.wait([*tasks, stop], return_when=asyncio.FIRST_COMPLETED)
        for t in [*tasks, stop]:
            t.cancel()
        for w in (up_w, client_w):
            with contextlib.suppress(Exception):
                w.close()
                await asyncio.wait_for(w.wait_closed(), 2)

    @staticmethod
    async def _frame(reader: asyncio.StreamReader) -> tuple[bytes, int, int, int, bytes]:
        head = await reader.readexactly(9)
        length = int.from_bytes(head[:3], "big")
        payload = await reader.readexactly(length)
        stream = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
        return head, head[3], head[4], stream, payload

    async def _server_to_client(
        self,
        up_r: asyncio.StreamReader,
        client_w: asyncio.StreamWriter,
        lock: asyncio.Lock,
        done: asyncio.Event,
    ) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while not done.is_set():
                head, _, _, _, payload = await self._frame(up_r)
                async with lock:
                    if done.is_set():
                        break
                    client_w.write(head + payload)
                    await client_w.drain()
        done.set()

    async def _client_to_server(
        self,
        client_r: asyncio.StreamReader,
        up_w: asyncio.StreamWriter,
        client_w: asyncio.StreamWriter,
        lock: asyncio.Lock,
        done: asyncio.Event,
    ) -> None:
        decoder = Decoder()
        decoder.max_allowed_table_size = 1 << 20
        newest_stream = 0
        pending: list[bytes] = []  # a header block split over HEADERS + CONTINUATION frames
        block = b""
        try:
            if await client_r.readexactly(len(_PREFACE)) != _PREFACE:
                return
            up_w.write(_PREFACE)
            while True:
                head, kind, flags, stream, payload = await self._frame(client_r)
                if kind not in (_HEADERS, _CONTINUATION) and not pending:
                    up_w.write(head + payload)
                    await up_w.drain()
                    continue
                pending.append(head + payload)
                if kind == _HEADERS:
                    fragment = payload
                    if flags & _PADDED:
                        fragment = fragment[1 : len(fragment) - fragment[0]]
                    if flags & _PRIORITY:
                        fragment = fragment[5:]
                    block = fragment
                else:
                    block += payload
                if not flags & _END_HEADERS:
                    continue
                headers = {
                    (k.decode() if isinstance(k, bytes) else k): (
                        v.decode() if isinstance(v, bytes) else v
                    )
                    for k, v in decoder.decode(block, raw=False)
                }
                frames, pending = b"".join(pending), []
                if stream > newest_stream:  # a new call: its request headers
                    newest_stream = stream
                    refusal = self._refusal(headers)
                    if refusal is not None:
                        self.rejected.append(refusal)
                        await self._refuse(client_w, stream, refusal, lock, done)
                        return
                    self.calls += 1
                up_w.write(frames)
                await up_w.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            done.set()

    def _refusal(self, headers: dict[str, str]) -> str | None:
        if self.api_key is None:
            return None
        auth = headers.get("authorization")
        if auth is None:
            return "missing API key"
        if auth != f"Bearer {self.api_key}":
            return "invalid API key"
        return None

    @staticmethod
    async def _refuse(
        client_w: asyncio.StreamWriter,
        stream: int,
        message: str,
        lock: asyncio.Lock,
        done: asyncio.Event,
    ) -> None:
        # Literal, never-indexed fields: the proxy must not touch the HPACK dynamic table the
        # client keeps in step with the server's encoder.
        block = Encoder().encode(
            [
                NeverIndexedHeaderTuple(":status", "200"),
                NeverIndexedHeaderTuple("content-type", "application/grpc"),
                NeverIndexedHeaderTuple("grpc-status", str(GRPC_UNAUTHENTICATED)),
                NeverIndexedHeaderTuple("grpc-message", message),
            ]
        )
        frame = (
            len(block).to_bytes(3, "big")
            + bytes([_HEADERS, _END_STREAM | _END_HEADERS])
            + stream.to_bytes(4, "big")
            + block
        )
        async with lock:
            done.set()  # nothing more from the server after this frame
            client_w.write(frame)
            await client_w.drain()
        await asyncio.sleep(0.2)  # let the client read the answer before the connection closes
