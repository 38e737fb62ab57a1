"""Step records, commitments, step hashes and the head chain (checkpoint spec v1 and v2).

Pure functions shared by workflow code (which computes the chain), the store, ``verify``, the
audit bundle and the contracts' tests. docs/checkpoint-spec.md is the normative description; keep
the two in step.

Version 2 differs from version 1 in: the run key preimage (``"spec": 2``), salted commitments
(``keccak256(salt || LCE(value))``), the ``outcome`` step kind and the Merkle leaf
(``keccak256(keccak256(step_hash))``, the StandardMerkleTree leaf of ``["bytes32"]``).
"""

from __future__ import annotations

import json
import json.encoder
import json.scanner
import sys
import threading
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

from ledgerflow.checkpoint.canonical import CanonicalError, canonical_bytes, keccak, to_hex

__all__ = [
    "LATEST_SPEC",
    "LEAF_PREFIX",
    "OUTCOME_STEP_NAME",
    "SPEC_VERSIONS",
    "STEP_KINDS",
    "STEP_KINDS_V1",
    "STEP_KINDS_V2",
    "StepKind",
    "StepRecord",
    "StepStatus",
    "commitment",
    "is_failure_output",
    "leaf_hash",
    "leaf_hash_v2",
    "next_head",
    "parse_canonical",
    "parse_canonical_text",
    "run_key",
    "step_hash",
]

StepKind = Literal[
    "llm", "chain", "activity", "signal", "update", "timer", "compensation", "outcome"
]
StepStatus = Literal["ok", "failed"]
STEP_KINDS_V1: tuple[str, ...] = (
    "llm",
    "chain",
    "activity",
    "signal",
    "update",
    "timer",
    "compensation",
)
STEP_KINDS_V2: tuple[str, ...] = (*STEP_KINDS_V1, "outcome")
#: The version 1 kinds (kept under its old name for existing callers).
STEP_KINDS = STEP_KINDS_V1

#: The spec versions this package implements, and the one new runs are recorded under.
SPEC_VERSIONS = (1, 2)
LATEST_SPEC = 2

#: The name of the last step of every version 2 run (kind ``outcome``).
OUTCOME_STEP_NAME = "run.outcome"

#: Domain separation byte for version 1 Merkle leaves (internal nodes hash 64 bytes, leaves 33).
LEAF_PREFIX = b"\x00"


def run_key(workflow_id: str, run_id: str, spec: int = LATEST_SPEC) -> bytes:
    """The run's key on chain and its genesis head: keccak256(LCE({"spec", "workflow_id",
    "run_id"})) (checkpoint spec, section "Run key")."""
    if spec not in SPEC_VERSIONS:
        raise ValueError(f"unknown checkpoint spec version {spec!r}")
    return keccak(canonical_bytes({"spec": spec, "workflow_id": workflow_id, "run_id": run_id}))


def commitment(salt: bytes | None, preimage: bytes) -> bytes:
    """An input or output commitment: keccak256(salt || preimage) (v2), keccak256(preimage) (v1,
    ``salt`` None).

    Raises:
        ValueError: the salt is not 32 bytes.
    """
    if salt is None:
        return keccak(preimage)
    if len(salt) != 32:
        raise ValueError("a salt is 32 bytes")
    return keccak(bytes(salt) + preimage)


class StepRecord(BaseModel):
    """One step of a run, as hashed. Hashes are 0x-hex strings of 32 bytes.

    ``v`` is the spec version (1 or 2); a version 1 record has no ``outcome`` kind.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1, 2] = 1
    run: str
    seq: int
    kind: StepKind
    name: str
    input: str
    output: str
    status: StepStatus
    prev: str

    @model_validator(mode="after")
    def _kind_of_version(self) -> StepRecord:
        if self.v == 1 and self.kind not in STEP_KINDS_V1:
            raise ValueError(f"kind {self.kind!r} does not exist in spec version 1")
        return self

    def preimage(self) -> bytes:
        """The canonical bytes whose keccak256 is the step hash."""
        return canonical_bytes(self.model_dump())

    def hash(self) -> bytes:
        return keccak(self.preimage())


def step_hash(record: StepRecord) -> bytes:
    """keccak256 of the step record's canonical encoding (with its ``"v"`` member)."""
    return record.hash()


def next_head(prev: bytes, step: bytes) -> bytes:
    """head_n = keccak256(head_{n-1} || step_hash_n), both 32 bytes."""
    if len(prev) != 32 or len(step) != 32:
        raise ValueError("head and step hash must be 32 bytes")
    return keccak(prev + step)


def leaf_hash(step: bytes) -> bytes:
    """The version 1 Merkle leaf of a step: keccak256(0x00 || step_hash)."""
    if len(step) != 32:
        raise ValueError("step hash must be 32 bytes")
    return keccak(LEAF_PREFIX + step)


def leaf_hash_v2(step: bytes) -> bytes:
    """The version 2 Merkle leaf of a step: keccak256(keccak256(step_hash)).

    This is ``@openzeppelin/merkle-tree``'s StandardMerkleTree leaf of the value ``[step_hash]``
    with encoding ``["bytes32"]`` (``keccak256(bytes.concat(keccak256(abi.encode(stepHash))))``).
    """
    if len(step) != 32:
        raise ValueError("step hash must be 32 bytes")
    return keccak(keccak(step))


def _no_float(text: str) -> Any:
    raise CanonicalError("floats have no canonical encoding")


def _no_constant(text: str) -> Any:
    raise CanonicalError(f"{text} has no canonical encoding")


_DECODER = json.JSONDecoder(parse_float=_no_float, parse_constant=_no_constant)
_loads = _DECODER.decode
_dumps = json.JSONEncoder(
    ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
).encode


def _no_default(value: Any) -> Any:  # pragma: no cover - parsed JSON holds no other types
    raise CanonicalError(f"no canonical encoding for {type(value).__name__}")


# The C scanner and encoder behind ``_loads`` and ``_dumps``, made once: the same results
# without the per-call set-up of JSONDecoder.decode and JSONEncoder.encode (about 3x faster for
# the small preimages a verifier reads by the thousand). No cycle check: parsed JSON has none.
_c_scan: Any = getattr(json.scanner, "c_make_scanner", None)
_c_encoder: Any = getattr(json.encoder, "c_make_encoder", None)
_scan_once = _c_scan(_DECODER) if _c_scan is not None else None
_encode_once = (
    _c_encoder(
        None, _no_default, json.encoder.encode_basestring, None, ":", ",", True, False, False
    )
    if _c_encoder is not None
    else None
)


#: The deepest nesting :func:`parse_canonical` reads. LCE-1 sets no limit; ledgerflow never
#: writes a preimage this deep, and its verifier reports a deeper one as a preimage problem.
MAX_NESTING = 10_000
_LIMIT_LOCK = threading.Lock()


def _nesting(text: str) -> int:
    """The deepest ``[``/``{`` nesting of a JSON text (brackets inside strings ignored)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _round_trip(text: str) -> tuple[Any, str]:
    if _scan_once is not None and _encode_once is not None:
        try:
            value, end = _scan_once(text, 0)
        except StopIteration:
            end = -1  # no JSON value at the start: the full decoder says what is wrong
        if end == len(text):
            return value, "".join(_encode_once(value, 0))
    return (value := _loads(text)), _dumps(value)


def _round_trip_deep(text: str) -> tuple[Any, str]:
    """The same for a text nested deeper than the interpreter's recursion limit allows (which
    depends on what else the process imported): with the limit raised just enough, for this
    call only, and never beyond :data:`MAX_NESTING` levels (a C stack overflow is a crash)."""
    depth = _nesting(text)
    if depth > MAX_NESTING:
        raise CanonicalError(f"nested deeper than {MAX_NESTING:,} levels")
    with _LIMIT_LOCK:
        before = sys.getrecursionlimit()
        sys.setrecursionlimit(max(before, before + 2 * depth + 100))
        try:
            return _round_trip(text)
        finally:
            sys.setrecursionlimit(before)


def parse_canonical(data: bytes) -> Any:
    """Parse an LCE-1 text, insisting that it is canonical (re-encoding gives the same bytes).

    Duplicate keys need no check of their own: the parsed object keeps one of them, so its
    encoding differs from the text. For parsed JSON (no bytes, no floats) the stdlib encoder with
    these options writes exactly LCE-1 (keys sorted by code point = by UTF-8 bytes).

    Raises:
        CanonicalError: not UTF-8, not JSON, a float, a duplicate key, or not the canonical
            encoding of the value it denotes (whitespace, escapes, key order, number form).
    """
    try:
        text = data.decode("utf-8")
        try:
            value, encoded = _round_trip(text)
        except RecursionError:
            value, encoded = _round_trip_deep(text)
        again = encoded.encode("utf-8")
    except CanonicalError:
        raise
    except (UnicodeError, ValueError, RecursionError) as exc:
        raise CanonicalError(f"not an LCE-1 text: {exc}") from None
    if again != data:
        raise CanonicalError("not the canonical encoding of its value")
    return value


def parse_canonical_text(text: str) -> Any:
    """:func:`parse_canonical` of ``text.encode("utf-8")`` for a ``text`` that has a UTF-8
    encoding (the caller encodes it first): the same value or the same error, without decoding
    the bytes again. A string compares equal exactly when its UTF-8 encodings do.

    Raises:
        CanonicalError: as :func:`parse_canonical`.
    """
    try:
        try:
            value, encoded = _round_trip(text)
        except RecursionError:
            value, encoded = _round_trip_deep(text)
    except CanonicalError:
        raise
    except (ValueError, RecursionError) as exc:
        raise CanonicalError(f"not an LCE-1 text: {exc}") from None
    if encoded != text:
        raise CanonicalError("not the canonical encoding of its value")
    return value


def is_failure_output(value: Any) -> bool:
    """Whether ``value`` is exactly ``{"error": {"type": str, "message": str}}``."""
    if not isinstance(value, dict) or set(value) != {"error"}:
        return False
    err = value["error"]
    return (
        isinstance(err, dict)
        and set(err) == {"type", "message"}
        and isinstance(err["type"], str)
        and isinstance(err["message"], str)
    )


def hex32(data: bytes) -> str:
    """0x-hex of a 32-byte value."""
    return to_hex(data)
