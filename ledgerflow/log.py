"""structlog set-up: a console renderer on a TTY, JSON lines otherwise."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO, cast

import structlog

__all__ = ["configure_logging", "redact"]

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
