"""Logging: structlog for ledgerflow's own lines, the same renderer for every stdlib logger.

``configure_logging`` sets up one pipeline per process. ledgerflow's code logs through structlog
(bound context, one event per line); the standard library's loggers (temporalio's activity and
workflow loggers, the Temporal SDK core's lines forwarded by
:mod:`ledgerflow.observability.telemetry`, uvicorn, asyncio, ``warnings``) are rendered by the
same processors through :class:`structlog.stdlib.ProcessorFormatter`. With JSON output
(``LEDGERFLOW_LOG_FORMAT=json``, or ``auto`` when stderr is not a terminal) every line on stderr is
one JSON object: exceptions are a field (``exception``, the traceback as one string), uncaught
exceptions in the main thread or in other threads are logged, not printed. Nothing is written to
stdout, which belongs to what a command prints for its user.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import MutableMapping
from types import TracebackType
from typing import Any, TextIO, cast

import structlog

__all__ = [
    "configure_logging",
    "json_logging",
    "redact",
    "redact_url",
    "register_secret",
    "scrub",
]

_SECRET_KEYS = ("key", "secret", "token", "password", "authorization")


def redact(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Never let a secret-looking field reach a log line."""
    for k in list(event):
        if any(s in k.lower() for s in _SECRET_KEYS) and k not in ("key_id",):
            if k == "key" and isinstance(event[k], str) and ":" in event[k]:
                continue  # idempotency keys ("escrow.open:0x...") are public
            event[k] = "***"
    return event


def _scrub_exception(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A traceback quotes exception messages, which may quote a URL with its credentials."""
    text = event.get("exception")
    if isinstance(text, str):
        event["exception"] = scrub(text)
    return event


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is now (test runners swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


#: The handler configure_logging installed on the root logger (replaced on a second call).
_handler: logging.Handler | None = None
_json = False


def json_logging() -> bool:
    """Whether :func:`configure_logging` chose JSON lines for this process."""
    return _json


def configure_logging(level: str = "INFO", fmt: str = "auto") -> None:
    """Configure structlog and the stdlib root logger for this process (idempotent).

    Args:
        level: ledgerflow's level; the standard library's loggers log at WARNING and above
            (temporalio's INFO lines are per-task noise) unless ``level`` is stricter.
        fmt: ``json``, ``console``, or ``auto`` (JSON unless stderr is a terminal).
    """
    global _handler, _json
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    _json = use_json
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    # The console renderer prints exceptions itself (multi-line, for people); JSON gets a field.
    exceptions: list[Any] = [structlog.processors.format_exc_info, _scrub_exception]
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
    ]
    structlog.configure(
        processors=[*shared, *(exceptions if use_json else []), renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, _CurrentStderr())),
        cache_logger_on_first_use=True,
    )

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *(exceptions if use_json else []),
            renderer,
        ],
    )
    handler = logging.StreamHandler(cast(TextIO, _CurrentStderr()))
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        # Ours from an earlier call, and logging.basicConfig's; a test runner's stay.
        if old is _handler or type(old) is logging.StreamHandler:
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(max(numeric, logging.WARNING))
    _handler = handler
    logging.captureWarnings(True)
    if use_json:
        sys.excepthook = _log_uncaught
        threading.excepthook = _log_thread_uncaught


def _log_uncaught(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    logging.getLogger("ledgerflow").critical("uncaught exception", exc_info=(exc_type, exc, tb))


def _log_thread_uncaught(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None or issubclass(args.exc_type, SystemExit):
        return
    logging.getLogger("ledgerflow").error(
        "uncaught exception in thread %s",
        args.thread.name if args.thread is not None else "?",
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )


# ---- scrubbing secrets from text -------------------------------------------------------------

_URL = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)([^\s/?#@]+@)?([^\s/?#]*)([^\s?#]*)(\?[^\s#]*)?")
#: A path segment that looks like a credential (an RPC provider's project id or token).
_TOKENISH = re.compile(r"^[A-Za-z0-9_\-]{16,}$")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")
_SECRETS: set[str] = set()


def register_secret(value: str | None) -> None:
    """Remember a secret value (a key, an API key, a webhook secret): :func:`scrub` removes it."""
    if value and len(value) >= 6:
        _SECRETS.add(value)
        if value.startswith("0x"):
            _SECRETS.add(value[2:])


def redact_url(url: str) -> str:
    """``url`` without credentials: user-info, query values and token-like path segments go."""
    m = _URL.match(url)
    if m is None:
        return url
    scheme, userinfo, host, path, query = m.groups()
    out = scheme + ("***@" if userinfo else "") + host
    if path:
        out += "/".join("***" if _TOKENISH.match(seg) else seg for seg in path.split("/"))
    if query:
        pairs = [p.split("=", 1)[0] + "=***" if "=" in p else p for p in query[1:].split("&")]
        out += "?" + "&".join(pairs)
    return out + url[m.end() :]


def scrub(text: str) -> str:
    """``text`` with every registered secret, URL credential and bearer token removed."""
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, "[REDACTED]")
    text = _BEARER.sub(lambda m: f"{m.group(1)} [REDACTED]", text)
    return _URL.sub(lambda m: redact_url(m.group(0)), text)
