"""Connecting to Temporal: Temporal's own environment configuration, ledgerflow's data converter.

Every process that talks to Temporal (worker, CLI, SDK client, API, container health check)
connects through :func:`connect`, which resolves the target in this order (first wins):

1. ``LEDGERFLOW_TEMPORAL_ADDRESS`` / ``LEDGERFLOW_NAMESPACE`` when set (address and namespace);
2. Temporal's environment configuration (:mod:`temporalio.envconfig`): ``TEMPORAL_ADDRESS``,
   ``TEMPORAL_NAMESPACE``, ``TEMPORAL_API_KEY``, ``TEMPORAL_TLS``, ``TEMPORAL_TLS_*``,
   ``TEMPORAL_GRPC_META_*`` over the profile ``TEMPORAL_PROFILE`` (default ``default``) of the TOML
   file ``TEMPORAL_CONFIG_FILE`` (default: the ``temporalio/temporal.toml`` file in the user's
   configuration directory);
3. ledgerflow's defaults: ``localhost:7233``, namespace ``default``, plain gRPC.

TLS, client certificates and API keys come only from step 2, exactly as the ``temporal`` CLI and
every other Temporal SDK read them. An API key turns TLS on unless TLS is disabled explicitly.

Errors are one line each, say what to change, and never contain the API key.

Clients are built on the process's Temporal runtime (:mod:`ledgerflow.observability.telemetry`),
which forwards the SDK core's log lines into Python logging and, in the worker and the API,
serves Prometheus metrics.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from temporalio.client import Client, Interceptor, OutboundInterceptor, StartWorkflowInput
from temporalio.converter import DataConverter
from temporalio.envconfig import ClientConfigProfile
from temporalio.runtime import Runtime
from temporalio.service import TLSConfig

from ledgerflow.codec import converter_for
from ledgerflow.converter import data_converter as plain_converter
from ledgerflow.errors import ConfigError, StackError
from ledgerflow.observability.telemetry import process_runtime
from ledgerflow.settings import Settings
from ledgerflow.types import SALT_SECRET_MEMO

__all__ = ["SaltSecretInterceptor", "TemporalTarget", "connect", "resolve_target"]

DEFAULT_ADDRESS = "localhost:7233"
DEFAULT_NAMESPACE = "default"


@dataclass(frozen=True)
class TemporalTarget:
    """Where and how to connect: the keyword arguments of ``Client.connect`` that envconfig sets.

    ``api_key`` is kept out of ``repr`` so a target can be logged.
    """

    address: str
    namespace: str
    tls: bool | TLSConfig = False
    api_key: str | None = field(default=None, repr=False)
    rpc_metadata: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def uses_tls(self) -> bool:
        return self.tls is not False

    @property
    def client_cert(self) -> bool:
        return isinstance(self.tls, TLSConfig) and self.tls.client_cert is not None

    def describe(self) -> str:
        """``host:port (namespace ns, TLS, client certificate, API key)``: no secret in it."""
        parts = [f"namespace {self.namespace}"]
        if self.uses_tls:
            parts.append("TLS")
        if self.client_cert:
            parts.append("client certificate")
        if self.api_key:
            parts.append("API key")
        return f"{self.address} ({', '.join(parts)})"

    def connect_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"namespace": self.namespace, "tls": self.tls}
        if self.api_key:
            kwargs["api_key"] = self.api_key
        if self.rpc_metadata:
            kwargs["rpc_metadata"] = dict(self.rpc_metadata)
        return kwargs


def resolve_target(settings: Settings, env: Mapping[str, str] | None = None) -> TemporalTarget:
    """The Temporal target for ``settings``.

    Args:
        settings: ledgerflow's settings; its ``temporal_address`` and ``namespace`` override the
            environment configuration only when they were set explicitly (environment, ``.env``
            or constructor), not when they are the defaults.
        env: the environment to read ``TEMPORAL_*`` from (default: this process's).

    Raises:
        ConfigError: the TOML file or profile cannot be loaded, or a TLS file cannot be read.
    """
    environ = os.environ if env is None else env
    config_file = environ.get("TEMPORAL_CONFIG_FILE")
    if config_file and not Path(config_file).is_file():
        raise ConfigError(f"TEMPORAL_CONFIG_FILE={config_file} does not exist")
    try:
        profile = ClientConfigProfile.load(override_env_vars=dict(environ))
    except Exception as exc:  # the bridge's ConfigError: bad TOML, unknown profile
        detail = " ".join(str(exc).split())
        raise ConfigError(f"cannot load Temporal's client configuration: {detail}") from None
    explicit = settings.model_fields_set
    address = (
        settings.temporal_address
        if "temporal_address" in explicit
        else profile.address or settings.temporal_address or DEFAULT_ADDRESS
    )
    namespace = (
        settings.namespace
        if "namespace" in explicit
        else profile.namespace or settings.namespace or DEFAULT_NAMESPACE
    )
    tls: bool | TLSConfig = False
    if profile.api_key:
        tls = True
    if profile.tls is not None:
        try:
            tls = profile.tls.to_connect_tls_config()
        except OSError as exc:
            raise ConfigError(
                f"cannot read a TLS file for Temporal ({exc.strerror}: {exc.filename}); "
                "check TEMPORAL_TLS_*_PATH or the profile's tls section"
            ) from None
    return TemporalTarget(
        address=address,
        namespace=namespace,
        tls=tls,
        api_key=profile.api_key or None,
        rpc_metadata=dict(profile.grpc_meta),
    )


async def connect(
    target: Settings | TemporalTarget | str,
    namespace: str | None = None,
    *,
    timeout: float = 30.0,
    runtime: Runtime | None = None,
    interceptors: Sequence[Any] = (),
    data_converter: DataConverter | None = None,
) -> Client:
    """Connect with ledgerflow's data converter (:mod:`ledgerflow.converter`), retrying while
    the server is still starting. With :class:`~ledgerflow.settings.Settings` that configure
    encrypted history (``codec_keys``), the converter encrypts payloads (:mod:`ledgerflow.codec`);
    a worker built on the client uses the same converter.

    Args:
        target: the :class:`~ledgerflow.settings.Settings` of this process (every product code
            path passes these), a resolved :class:`TemporalTarget`, or a plain ``host:port`` of a
            local dev server (tests, benchmarks), which uses no environment configuration.
        namespace: the namespace, only with a plain ``host:port``.
        timeout: how long to keep retrying while nothing answers.
        runtime: the Temporal runtime (default: the process's, which forwards the SDK core's logs
            into Python logging).
        interceptors: client interceptors (tracing); a worker built on the client uses them too.
        data_converter: the converter (default: the one ``target``'s settings configure; the
            plain one for a ``TemporalTarget`` or a ``host:port``).

    Raises:
        StackError: no Temporal server answered within ``timeout`` seconds, or it refused the
            connection for a reason that retrying cannot fix (TLS, credentials): one line
            saying what to change.
        ConfigError: the environment configuration is invalid.
    """
    converter = data_converter
    if isinstance(target, str):
        resolved = TemporalTarget(target, namespace or DEFAULT_NAMESPACE)
    elif isinstance(target, TemporalTarget):
        resolved = target
    else:
        resolved = resolve_target(target)
        converter = converter or converter_for(target)
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        try:
            client = await Client.connect(
                resolved.address,
                data_converter=converter or plain_converter,
                runtime=runtime or process_runtime(),
                interceptors=[*interceptors, SaltSecretInterceptor()],
                **resolved.connect_kwargs(),
            )
            # The port opens before the namespace is ready; a cheap call proves readiness.
            await client.count_workflows()
            return client
        except Exception as exc:
            message, permanent = _explain(resolved, exc)
            if permanent:
                raise StackError(message) from None
            last = message
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.25)
    raise StackError(last)


class SaltSecretInterceptor(Interceptor):
    """Gives every workflow this client starts a fresh random secret in its memo
    (:data:`~ledgerflow.types.SALT_SECRET_MEMO`).

    A checkpointed run derives its salt seed from that secret and its run id, so it needs no
    ``checkpoint.open_run`` local activity (one history event and one store write fewer per
    run). Runs started elsewhere (the Temporal UI, a schedule, a child workflow) have no such memo
    and ask ``open_run`` as before. The secret is as private as the run's history, which holds
    the step values themselves; :func:`connect` installs this on every ledgerflow client.
    """

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        return _SaltSecretOutbound(next)


class _SaltSecretOutbound(OutboundInterceptor):
    async def start_workflow(self, input: StartWorkflowInput) -> Any:
        memo = dict(input.memo or {})
        memo.setdefault(SALT_SECRET_MEMO, "0x" + secrets.token_hex(32))
        input.memo = memo
        return await super().start_workflow(input)


_STATUS = re.compile(r'code: (\w+), message: "((?:[^"\\]|\\.)*)"')
_CERT = re.compile(r"InvalidCertificate\((\w+)")


def _explain(target: TemporalTarget, exc: BaseException) -> tuple[str, bool]:
    """A one-line, secret-free message for a failed connection, and whether it is permanent."""
    raw = " ".join(str(exc).split())
    if target.api_key:
        raw = raw.replace(target.api_key, "***")
    where = f"Temporal at {target.describe()}"
    status = _STATUS.search(raw)
    code = status.group(1) if status else _grpc_code(exc)
    detail = status.group(2) if status else ""
    if code in ("Unauthenticated", "UNAUTHENTICATED"):
        hint = (
            "check TEMPORAL_API_KEY (or the profile's api_key)"
            if target.api_key
            else "it needs credentials: set TEMPORAL_API_KEY or a client certificate "
            "(TEMPORAL_TLS_CLIENT_CERT_PATH, TEMPORAL_TLS_CLIENT_KEY_PATH)"
        )
        return (
            f"{where} refused the credentials (UNAUTHENTICATED: {detail or 'no detail'}); {hint}",
            True,
        )
    if code in ("PermissionDenied", "PERMISSION_DENIED"):
        return (
            f"{where} denied access (PERMISSION_DENIED: {detail or 'no detail'}); the credentials "
            f"are not authorised for namespace {target.namespace!r}",
            True,
        )
    if code in ("NotFound", "NOT_FOUND") and "amespace" in detail:
        return f"{where}: namespace {target.namespace!r} not found; set TEMPORAL_NAMESPACE", True
    cert = _CERT.search(raw)
    if cert:
        reason = cert.group(1)
        if reason in ("NotValidForName", "NotValidForNameContext"):
            hint = "set TEMPORAL_TLS_SERVER_NAME to a name in its certificate"
        elif reason == "Expired":
            hint = "its certificate has expired"
        else:
            hint = "set TEMPORAL_TLS_SERVER_CA_CERT_PATH to the CA that signed its certificate"
        return f"{where}: the server's TLS certificate is not trusted ({reason}); {hint}", True
    if "InvalidContentType" in raw or "InvalidMessage" in raw:
        return (
            f"{where}: the server does not speak TLS; disable TLS (TEMPORAL_TLS=false) or use "
            "its TLS port",
            True,
        )
    if target.uses_tls and ("close_notify" in raw or "UnexpectedEof" in raw or "reset" in raw):
        hint = (
            "it refused the client certificate (check TEMPORAL_TLS_CLIENT_CERT_PATH and its CA)"
            if target.client_cert
            else "it may require a client certificate: set TEMPORAL_TLS_CLIENT_CERT_PATH and "
            "TEMPORAL_TLS_CLIENT_KEY_PATH"
        )
        return f"{where} closed the TLS connection; {hint}", True
    if not target.uses_tls and ("BrokenPipe" in raw or "broken pipe" in raw):
        return (
            f"{where} closed the connection; if it requires TLS, set TEMPORAL_TLS=true "
            "(and TEMPORAL_TLS_SERVER_CA_CERT_PATH for a private CA)",
            True,
        )
    cause = _short_cause(raw)
    return (
        f"no Temporal server answered at {target.describe()}: {cause}. Start the stack with "
        "`make run` (or `ledgerflow up`), or point LEDGERFLOW_TEMPORAL_ADDRESS / TEMPORAL_ADDRESS "
        "at your cluster",
        False,
    )


def _grpc_code(exc: BaseException) -> str | None:
    status = getattr(exc, "status", None)
    return getattr(status, "name", None) if status is not None else None


def _short_cause(raw: str) -> str:
    for pattern, text in (
        (r"ConnectionRefused|Connection refused", "connection refused"),
        (r"dns error|failed to lookup|Name or service not known", "the host name does not resolve"),
        (r"[Tt]imed? ?out|deadline", "timed out"),
    ):
        if re.search(pattern, raw):
            return text
    return raw[:200]
