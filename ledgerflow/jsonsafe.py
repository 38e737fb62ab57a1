"""Parsing untrusted JSON without letting it crash or confuse the process.

``py_ecc`` (imported through web3) raises Python's recursion limit to 100,000 when it is
imported; the standard library's JSON parser then recurses in C until the C stack overflows
(about 70,000 nested brackets, well under a webhook's 256 KB body cap) and the process dies with
SIGSEGV instead of raising. Every JSON text that comes from outside (webhook bodies, workflow
inputs given to Temporal by anyone, LLM endpoints' HTTP bodies, JSON-RPC answers, a remote
signer's answers) is parsed here instead:

* the size is checked first (``max_bytes``);
* the text is parsed by pydantic-core's parser (jiter, Rust), which refuses nesting deeper than
  about 200 levels with an error instead of recursing on the C stack, refuses lone surrogates,
  ``NaN``/``Infinity`` and integers longer than Python's 4,300-digit limit;
* the value is checked without recursion for ``max_depth`` and for non-finite numbers
  (``1e400`` parses to infinity);
* with ``duplicates="refuse"`` (the default), an object that names a key twice is refused: the
  standard library and jiter would both keep the last value, so the text that was signed and
  the value that is acted on could mean different things to different readers. That check
  re-reads the text with the standard library's ``object_pairs_hook``, which is safe because
  jiter has proved the nesting shallow.

:func:`restore_recursion_limit` puts the recursion limit back where it was before a dependency
raised it, so that deep recursion anywhere else raises ``RecursionError`` rather than crashing.

Why not a library for all of it: jiter (already a dependency, through pydantic) gives the safe
parse; none of the parsers in the dependency tree refuses duplicate keys or bounds depth below
its own fixed limit, so those two checks are the few lines here.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from collections.abc import Iterable
from typing import Any, Literal

import pydantic_core

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_RECURSION_LIMIT",
    "UnsafeJSON",
    "check_depth",
    "loads",
    "restore_recursion_limit",
]

#: Nesting deeper than this is refused by default (ledgerflow's own documents nest < 10 levels).
DEFAULT_MAX_DEPTH = 64
#: About how deep pydantic-core's parser lets JSON nest before it refuses it.
_PARSER_DEPTH = 200
#: CPython's default recursion limit, where :func:`restore_recursion_limit` puts it back.
DEFAULT_RECURSION_LIMIT = 1000


class UnsafeJSON(ValueError):
    """A JSON text was refused: not JSON, too large, too deep, a duplicate key, a number out of
    range. The message says which, never quoting more than a few characters of the text."""


def loads(
    data: bytes | bytearray | memoryview | str,
    *,
    max_bytes: int,
    max_depth: int | None = DEFAULT_MAX_DEPTH,
    duplicates: Literal["refuse", "last"] = "refuse",
    what: str = "JSON",
) -> Any:
    """Parse untrusted JSON with a size limit, a depth limit and no duplicate keys.

    Args:
        data: the text (bytes are decoded as UTF-8; invalid UTF-8 is refused).
        max_bytes: the largest text accepted, in bytes.
        max_depth: the deepest nesting accepted (``[[1]]`` has depth 2); ``None`` keeps only
            the parser's own limit of about 200 levels (for large, trusted-shape answers such as
            JSON-RPC results, where walking every value would cost more than it protects).
        duplicates: ``"refuse"`` (default) refuses an object naming a key twice; ``"last"``
            keeps the last value, as the standard library does.
        what: how the text is called in error messages (``"webhook body"``).

    Returns:
        The value: dicts, lists, str, int, float (finite), bool and None.

    Raises:
        UnsafeJSON: the text is larger than ``max_bytes``, not valid JSON (or not UTF-8),
            nested deeper than ``max_depth``, names a key twice, or holds a number that is
            not finite or has more than 4,300 digits.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if len(raw) > max_bytes:
        raise UnsafeJSON(f"{what} is larger than {max_bytes} bytes")
    try:
        value = pydantic_core.from_json(raw, allow_inf_nan=False)
    except ValueError as exc:
        if "recursion limit" in str(exc):
            limit = max_depth if max_depth is not None else _PARSER_DEPTH
            raise UnsafeJSON(f"{what} is nested deeper than {limit} levels") from None
        raise UnsafeJSON(f"{what} is not valid JSON: {_short(str(exc))}") from None
    if max_depth is not None or duplicates == "refuse":
        # Shallow by now (jiter refuses ~200 levels), so walking it cannot exhaust anything.
        check_depth(value, max_depth, what=what)
    if duplicates == "refuse" and _has_objects(value):
        try:
            json.loads(raw, object_pairs_hook=_refuse_duplicates)
        except _DuplicateKey as exc:
            raise UnsafeJSON(f"{what} names the key {exc.key!r} twice in one object") from None
        except ValueError as exc:  # pragma: no cover - jiter accepted it; stdlib should too
            raise UnsafeJSON(f"{what} is not valid JSON: {_short(str(exc))}") from None
    return value


def check_depth(value: Any, max_depth: int | None, *, what: str = "JSON") -> None:
    """Refuse ``value`` (parsed JSON) if it nests deeper than ``max_depth`` or holds a number
    that is not finite. Iterative: a deep value cannot exhaust the stack here.

    Raises:
        UnsafeJSON: as described.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Iterable[Any] = node.values()
        elif isinstance(node, list):
            children = node
        else:
            if isinstance(node, float) and not math.isfinite(node):
                raise UnsafeJSON(f"{what} holds a number that is not finite")
            continue
        if max_depth is not None and depth > max_depth:
            raise UnsafeJSON(f"{what} is nested deeper than {max_depth} levels")
        stack.extend((child, depth + 1) for child in children)


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(_short(key, 64))
        out[key] = value
    return out


def _has_objects(value: Any) -> bool:
    if isinstance(value, dict):
        return True
    if isinstance(value, list):
        return any(isinstance(v, dict | list) for v in value)
    return False


def _short(text: str, limit: int = 160) -> str:
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= limit else one_line[: limit - 1] + "…"


def restore_recursion_limit(limit: int = DEFAULT_RECURSION_LIMIT) -> int:
    """Undo a dependency's import-time ``sys.setrecursionlimit``; returns the limit now in force.

    ``py_ecc`` sets the limit to 100,000 when imported (web3 and eth-account import it). It is
    imported here first, if installed, so that its side effect has happened before the limit is
    put back; nothing ledgerflow runs needs more than CPython's default.
    """
    if importlib.util.find_spec("py_ecc") is not None and "py_ecc" not in sys.modules:
        import py_ecc  # noqa: F401  (imported for its side effect, which is undone below)
    if sys.getrecursionlimit() > limit:
        sys.setrecursionlimit(limit)
    return sys.getrecursionlimit()
