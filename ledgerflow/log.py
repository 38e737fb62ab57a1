"""structlog set-up: a console renderer on a TTY, JSON lines otherwise."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO, cast

import structlog

__all__ = ["configure_logging", "redact", "redact_url", "register_secret", "scrub"]

_SECRET_KEYS = ("key", "secret", "token", "password", "authorization")


def redact(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Never let a secret-looking field reach a log line."""
    for k in list(event):
        if any(s in k.lower() for s in _SECRET_KEYS) and k not in ("key_id",):
            if k == "key" and isinstance(event[k], str) and ":" in event[k]:
                continue  # idempotency keys ("escrow.open:0x...") are public
            event[k] = "***"
    return event


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is now (test runners swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(level: str = "INFO", fmt: str = "auto") -> None:
    """Configure structlog and the stdlib root logger once per process."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, _CurrentStderr())),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr, force=True)


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
