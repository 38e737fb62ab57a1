"""The codec server: Temporal's UI and CLI decode encrypted history through it.

Temporal's codec-server protocol: ``POST {endpoint}/decode`` (and ``/encode``) with the JSON body
``{"payloads": [...]}``, payloads in proto3 JSON (``metadata`` values and ``data`` in base64),
answered with the same shape, the payloads run through the codec (:mod:`ledgerflow.codec`). The
CLI's ``--codec-endpoint`` may template the namespace into the path, so
``{endpoint}/{namespace}/decode`` is served too.

Mounted by the API under ``/codec``. Every request needs ``Authorization: Bearer
<LEDGERFLOW_CODEC_SERVER_TOKEN>`` (the CLI sends it with ``--codec-auth``; for a browser UI, the
authenticating proxy in front of it adds it), except, with
``LEDGERFLOW_CODEC_SERVER_ALLOW_LOOPBACK=true``, requests from a loopback address. Without a
token (and without that opt-in) the endpoint answers 503: it never decrypts for anyone by
default. Browsers may call it from the origins of ``LEDGERFLOW_CODEC_CORS_ORIGINS`` (default:
the origin of ``LEDGERFLOW_TEMPORAL_UI_URL``). The codec keys never leave the process; refusals
name no key.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from google.protobuf import json_format
from temporalio.api.common.v1 import Payloads

from ledgerflow.codec import EncryptionCodec, codec_from_settings
from ledgerflow.errors import CodecError
from ledgerflow.settings import Settings

__all__ = ["MAX_CODEC_BODY_BYTES", "PREFIX", "create_codec_app", "mount_codec"]

log = structlog.get_logger(__name__)

#: Where the API serves the codec server.
PREFIX = "/codec"
#: The largest request body accepted (the UI sends a page of events' payloads at once).
MAX_CODEC_BODY_BYTES = 32 * 1024 * 1024


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class _CodecServer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.codec: EncryptionCodec | None = codec_from_settings(settings)
        token = settings.codec_server_token
        self._token = token.get_secret_value().encode() if token is not None else None

    def refuse(self, request: Request) -> JSONResponse | None:
        """The refusal of an unauthorised or unserviceable request, or None."""
        if self.codec is None:
            return _error(503, "encrypted history is off: set LEDGERFLOW_CODEC_KEYS")
        client = request.client.host if request.client else None
        if self.settings.codec_server_allow_loopback and _is_loopback(client):
            return None
        if self._token is None:
            return _error(
                503,
                "codec server disabled: set LEDGERFLOW_CODEC_SERVER_TOKEN (or, for a local "
                "Temporal UI, LEDGERFLOW_CODEC_SERVER_ALLOW_LOOPBACK=true)",
            )
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), self._token
        ):
            log.info("codec.refused", path=request.url.path, client=client)
            return _error(401, "missing or wrong bearer token", authenticate=True)
        return None

    async def handle(self, request: Request, direction: str) -> JSONResponse:
        refused = self.refuse(request)
        if refused is not None:
            return refused
        assert self.codec is not None
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_CODEC_BODY_BYTES:
            return _error(413, f"body larger than {MAX_CODEC_BODY_BYTES} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_CODEC_BODY_BYTES:
                return _error(413, f"body larger than {MAX_CODEC_BODY_BYTES} bytes")
        payloads = Payloads()
        try:
            json_format.Parse(bytes(body) or b"{}", payloads)
        except (json_format.ParseError, UnicodeDecodeError, ValueError):
            return _error(
                400, 'the body is not {"payloads": [...]} in proto3 JSON (base64 metadata, data)'
            )
        try:
            if direction == "decode":
                out = await self.codec.decode(payloads.payloads)
            else:
                out = await self.codec.encode(payloads.payloads)
        except CodecError as exc:
            return _error(422, str(exc))
        log.info(
            f"codec.{direction}",
            namespace=request.headers.get("x-namespace") or request.path_params.get("namespace"),
            payloads=len(out),
        )
        return JSONResponse(json_format.MessageToDict(Payloads(payloads=out)))


def _error(status: int, detail: str, *, authenticate: bool = False) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if authenticate else None
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def create_codec_app(settings: Settings) -> FastAPI:
    """The codec server as its own ASGI app (routes ``/encode``, ``/decode``, and both under
    ``/{namespace}/``), with CORS for the Temporal UI's origins."""
    server = _CodecServer(settings)
    app = FastAPI(title="ledgerflow codec server", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.codec_origins,
        allow_methods=["POST", "OPTIONS"],
        allow_headers=["authorization", "content-type", "x-namespace"],
        allow_credentials=True,
        max_age=600,
    )

    async def decode(request: Request) -> JSONResponse:
        return await server.handle(request, "decode")

    async def encode(request: Request) -> JSONResponse:
        return await server.handle(request, "encode")

    for path in ("", "/{namespace}"):
        app.add_api_route(f"{path}/decode", decode, methods=["POST"])
        app.add_api_route(f"{path}/encode", encode, methods=["POST"])
    return app


def mount_codec(app: Any, settings: Settings) -> None:
    """Serve the codec server from ``app`` under :data:`PREFIX`."""
    app.mount(PREFIX, create_codec_app(settings))
