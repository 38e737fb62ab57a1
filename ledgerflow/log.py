"""Logging: structlog for ledgerflow's own lines, the same renderer for every stdlib logger, and
no secret in any line.

``configure_logging`` sets up one pipeline per process. ledgerflow's code logs through structlog
(bound context, one event per line); the standard library's loggers (temporalio's activity and
workflow loggers, the Temporal SDK core's lines forwarded by
:mod:`ledgerflow.observability.telemetry`, uvicorn, asyncio, ``warnings``) are rendered by the
same processors through :class:`structlog.stdlib.ProcessorFormatter`. With JSON output
(``LEDGERFLOW_LOG_FORMAT=json``, or ``auto`` when stderr is not a terminal) every line on stderr is
one JSON object: exceptions are a field (``exception``, the traceback as one string), uncaught
exceptions in the main thread or in other threads are logged, not printed. Nothing is written to
stdout, which belongs to what a command prints for its user.

Three layers keep secrets out of logs and errors:

- :func:`redact` masks fields whose *name* looks secret (``key``, ``token``, ...);
- :func:`redact_url` strips what in a URL can be a credential: user-info, query values, and
  path segments that look like tokens (``/v3/<api key>``);
- :func:`register_secret` remembers secret *values* (private keys, RPC URLs, signer URLs); the
  last processor, and a filter on other handlers of the standard library's root logger, replace
  any of them, and any URL, in every rendered line, tracebacks included.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import MutableMapping
from types import TracebackType
from typing import Any, TextIO, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

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
MASK = "***"


def redact(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Never let a secret-looking field reach a log line."""
    for k in list(event):
        if any(s in k.lower() for s in _SECRET_KEYS) and k not in ("key_id",):
            if k == "key" and isinstance(event[k], str) and ":" in event[k]:
                continue  # idempotency keys ("escrow.open:0x...") are public
            event[k] = MASK
    return event


# ---- URLs -------------------------------------------------------------------------------------

_TOKENISH = re.compile(r"[A-Za-z0-9_\-.~%]+")


def _token_like(segment: str) -> bool:
    """A path segment that may be an API key: long, or letters and digits mixed."""
    if not segment or not _TOKENISH.fullmatch(segment):
        return bool(segment) and len(segment) >= 16
    has_digit = any(c.isdigit() for c in segment)
    has_alpha = any(c.isalpha() for c in segment)
    return len(segment) >= 16 or (len(segment) >= 10 and has_digit and has_alpha)


def redact_url(url: str) -> str:
    """``url`` without anything that can be a credential.

    User-info becomes ``***@``, every query value ``***``, token-like path segments ``***``
    (``https://mainnet.example/v3/9aa3d95b...`` → ``https://mainnet.example/v3/***``); the
    fragment is dropped. Scheme, host, port and short path words stay, so an operator can
    still tell endpoints apart.
    """
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return MASK
    if not parts.scheme or not host:
        return MASK
    netloc = (f"{MASK}@" if parts.username or parts.password else "") + (
        f"[{host}]" if ":" in host else host
    )
    if port:
        netloc += f":{port}"
    path = "/".join(MASK if _token_like(seg) else seg for seg in parts.path.split("/"))
    query = urlencode([(k, MASK) for k, _ in parse_qsl(parts.query, keep_blank_values=True)])
    return urlunsplit((parts.scheme, netloc, path, query.replace("%2A", "*"), ""))


# ---- secret values ----------------------------------------------------------------------------

_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_secret_pattern: re.Pattern[str] | None = None
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.\-]{1,15}://[^\s'\"<>()\[\]{},]+")
#: ``Authorization`` header values quoted in a message.
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")


def register_secret(value: str | None) -> None:
    """Remember a secret value so that :func:`scrub` (every log line) masks it.

    Values shorter than 8 characters are ignored (they would mask ordinary words). A 0x-hex
    value is also remembered without its prefix.
    """
    global _secret_pattern
    if not value:
        return
    value = value.strip()
    candidates = {value}
    if value.lower().startswith("0x") and len(value) > 10:
        candidates.add(value[2:])
    candidates.update(_url_secrets(value))
    with _secrets_lock:
        before = len(_secrets)
        _secrets.update(c for c in candidates if len(c) >= 8)
        if len(_secrets) != before:
            ordered = sorted(_secrets, key=len, reverse=True)
            _secret_pattern = re.compile("|".join(re.escape(s) for s in ordered), re.IGNORECASE)


def _url_secrets(value: str) -> set[str]:
    """The parts of a URL that can be credentials on their own: the password (and user), every
    query value and the token-like path segments, so that one quoted apart from its URL (an
    error message that echoes a path or a query value) is masked too."""
    if "://" not in value:
        return set()
    try:
        parts = urlsplit(value)
        found = {parts.password or "", parts.username or ""} if parts.password else set()
        found.update(v for _, v in parse_qsl(parts.query, keep_blank_values=True))
    except ValueError:
        return set()
    found.update(seg for seg in parts.path.split("/") if _token_like(seg))
    return {f for f in found if len(f) >= 8}


def scrub(text: str) -> str:
    """``text`` with every registered secret masked and every URL passed through
    :func:`redact_url`."""
    pattern = _secret_pattern
    if pattern is not None:
        text = pattern.sub(MASK, text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {MASK}", text)
    if "://" in text:
        text = _URL.sub(lambda m: redact_url(m.group(0)), text)
    return text


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_scrub_value(v) for v in value)
    if isinstance(value, dict):
        return {k: _scrub_value(v) for k, v in value.items()}
    if isinstance(value, BaseException):
        return scrub(f"{type(value).__name__}: {value}")
    return value


def scrub_secrets(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: :func:`scrub` every string of the event (run after exceptions are
    formatted, so tracebacks are scrubbed too)."""
    for k, v in list(event.items()):
        event[k] = _scrub_value(v)
    return event


class _ScrubFilter(logging.Filter):
    """Scrubs standard-library log records (web3, aiohttp, SQLAlchemy log through them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        record.msg, record.args = scrub(message), None
        if record.exc_info and record.exc_info[1] is not None:
            formatted = logging.Formatter().formatException(record.exc_info)
            record.exc_info, record.exc_text = None, scrub(formatted)
        return True


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
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
    ]
    # Exceptions become a field (one string) before the scrub, so tracebacks are scrubbed too.
    final: list[Any] = [structlog.processors.format_exc_info, scrub_secrets, renderer]
    structlog.configure(
        processors=[*shared, *final],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, _CurrentStderr())),
        cache_logger_on_first_use=True,
    )

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
    )
    handler = logging.StreamHandler(cast(TextIO, _CurrentStderr()))
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        # Ours from an earlier call, and logging.basicConfig's; a test runner's stay, scrubbed.
        if old is _handler or type(old) is logging.StreamHandler:
            root.removeHandler(old)
        elif not any(isinstance(f, _ScrubFilter) for f in old.filters):
            old.addFilter(_ScrubFilter())
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
