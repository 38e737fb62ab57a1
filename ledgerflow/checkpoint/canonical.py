"""Canonical encoding (LCE-1) and keccak-256, as specified in docs/checkpoint-spec.md.

This module is imported by workflow code: it must stay deterministic and free of I/O.
keccak comes from pycryptodome because ``eth_hash.auto`` touches the file system and trips
Temporal's workflow sandbox.
"""

from __future__ import annotations

from json.encoder import encode_basestring as _encode_basestring  # type: ignore[attr-defined]
from typing import Any

from pydantic import BaseModel

from ledgerflow.checkpoint.merkle import keccak256 as _fast_keccak

__all__ = ["SPEC_VERSION", "CanonicalError", "canonical_bytes", "hash_obj", "keccak", "to_hex"]

SPEC_VERSION = 1


class CanonicalError(ValueError):
    """A value has no canonical encoding (a float, a non-string key, an unknown type)."""


def keccak(data: bytes) -> bytes:
    """Return the 32-byte Keccak-256 digest (Ethereum's, not SHA3-256) of ``data``."""
    return _fast_keccak(data)


def to_hex(data: bytes) -> str:
    """Lower-case ``0x``-prefixed hex."""
    return "0x" + data.hex()


def encode_string(s: str) -> str:
    """A JSON string literal per LCE-1 (used by fast paths that build records by hand)."""
    return _string(s)


def _string(s: str) -> str:
    # The stdlib's C encoder (ensure_ascii=False) writes exactly LCE-1's escapes: \" \\ \b \f
    # \n \r \t, other controls as lower-case \u00xx, everything else literal (tests pin it).
    return _encode_basestring(s)


def _encode(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(str(int(value)))
    elif isinstance(value, str):
        out.append(_string(value))
    elif isinstance(value, bytes | bytearray):
        out.append(_string(to_hex(bytes(value))))
    elif isinstance(value, BaseModel):
        _encode(value.model_dump(mode="json"), out)
    elif isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise CanonicalError(f"object keys must be strings, got {type(key).__name__}")
        out.append("{")
        # Sorting by the UTF-8 bytes of the key is the same as sorting by code point.
        for i, key in enumerate(sorted(value, key=lambda k: k.encode("utf-8"))):
            if i:
                out.append(",")
            out.append(_string(key))
            out.append(":")
            _encode(value[key], out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _encode(item, out)
        out.append("]")
    elif isinstance(value, float):
        raise CanonicalError("floats have no canonical encoding; use integer units or strings")
    else:
        raise CanonicalError(f"no canonical encoding for {type(value).__name__}")


def canonical_bytes(value: Any) -> bytes:
    """Encode ``value`` per LCE-1: JSON, UTF-8, sorted keys, no whitespace, integers only.

    Raises:
        CanonicalError: the value contains a float, a non-string key or an unknown type.
    """
    out: list[str] = []
    _encode(value, out)
    return "".join(out).encode("utf-8")


def hash_obj(value: Any) -> bytes:
    """keccak256 of the canonical encoding of ``value``."""
    return keccak(canonical_bytes(value))
