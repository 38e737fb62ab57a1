"""Checkpoint spec v1: canonical encoding (LCE-1), run key, step hash and head chain.

The literal vectors below are the ones published in docs/checkpoint-spec.md ("Test vectors");
changing any of them is a spec change (see "Versioning" there).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from decimal import Decimal
from typing import Any

import pytest
from eth_utils import keccak as eth_keccak
from hypothesis import given, settings
from hypothesis import strategies as st
from web3 import Web3

from ledgerflow.checkpoint.canonical import (
    CanonicalError,
    canonical_bytes,
    hash_obj,
    keccak,
    to_hex,
)
from ledgerflow.checkpoint.merkle import keccak256 as merkle_keccak256
from ledgerflow.checkpoint.records import StepRecord, leaf_hash, next_head, run_key, step_hash

# --- canonical encoding vectors: (value, canonical bytes as hex, keccak256 of those bytes) -------

CANONICAL_VECTORS: dict[str, tuple[Any, str, str]] = {
    "nesting": (
        {"b": 1, "a": [True, False, None], "c": {"z": "", "y": -12}, "": [], "d": {}},
        "7b22223a5b5d2c2261223a5b747275652c66616c73652c6e756c6c5d2c2262223a312c2263223a7b2279223a"
        "2d31322c227a223a22227d2c2264223a7b7d7d",
        "0xdca23758598d0af80dff97f37f80437fbac018ee17c422069b30fd090c3e512c",
    ),
    "unicode": (
        "héllo ☃ 𝄞",
        "2268c3a96c6c6f20e2988320f09d849e22",
        "0xd1e9e5dfd04e752942d1901401a1e1c2d6c44d94f2d230a4be3eb4a5e614a58f",
    ),
    "escapes": (
        'q"b\\n\n\t\r\b\f\x00\x1f\x7f/</',
        "22715c22625c5c6e5c6e5c745c725c625c665c75303030305c75303031667f2f3c2f22",
        "0x9681a0727422886f78792df8a1deb84150475d0eb222cbbad5ee790a54ec67b5",
    ),
    "keys": (
        {"é": 1, "z": 2, "Z": 3, "a": 4, "ab": 5, "ÿ": 6, "\ue000": 7, "😀": 8, "": 9},
        "7b22223a392c225a223a332c2261223a342c226162223a352c227a223a322c22c3a9223a312c22c3bf223a"
        "362c22ee8080223a372c22f09f9880223a387d",
        "0xc3794b67904f236a2cb2981aeb14ba7d26fd0a9d6ddab517832ead2c5b0fac85",
    ),
    "ints": (
        [0, -1, 2**64, -(2**64) - 1, 2**256 - 1],
        "5b302c2d312c31383434363734343037333730393535313631362c2d3138343436373434303733373039353531"
        "3631372c313135373932303839323337333136313935343233353730393835303038363837393037383533323639"
        "3938343636353634303536343033393435373538343030373931333132393633393933355d",
        "0xa191c865e00d5c10570cf20c1e35a3eb8df9311d6d6cc3ddd2d78a99d347416c",
    ),
    "bytes": (
        {"h": b"\x00\xff\x10", "e": b""},
        "7b2265223a223078222c2268223a223078303066663130227d",
        "0xd82b8c77719fcd8695721e3a1e871d03dd5952bfcaeb43fd93a845d684ae2dea",
    ),
}


@pytest.mark.parametrize("name", sorted(CANONICAL_VECTORS))
def test_canonical_vectors(name: str) -> None:
    value, hex_bytes, digest = CANONICAL_VECTORS[name]
    encoded = canonical_bytes(value)
    assert encoded.hex() == hex_bytes
    assert to_hex(hash_obj(value)) == digest
    assert to_hex(eth_keccak(encoded)) == digest  # independent keccak


def test_canonical_texts_read_as_documented() -> None:
    """The same vectors as text, as printed in the spec."""
    assert canonical_bytes(CANONICAL_VECTORS["nesting"][0]) == (
        b'{"":[],"a":[true,false,null],"b":1,"c":{"y":-12,"z":""},"d":{}}'
    )
    assert canonical_bytes(CANONICAL_VECTORS["escapes"][0]) == (
        b'"q\\"b\\\\n\\n\\t\\r\\b\\f\\u0000\\u001f\x7f/</"'
    )
    assert canonical_bytes(CANONICAL_VECTORS["bytes"][0]) == b'{"e":"0x","h":"0x00ff10"}'
    keys = json.loads(canonical_bytes(CANONICAL_VECTORS["keys"][0]))
    # Code point (= UTF-8 byte) order: U+E000 before U+1F600, unlike UTF-16 order (RFC 8785).
    assert list(keys) == ["", "Z", "a", "ab", "z", "é", "ÿ", "\ue000", "😀"]


def test_scalars() -> None:
    assert canonical_bytes(None) == b"null"
    assert canonical_bytes(True) == b"true"
    assert canonical_bytes(False) == b"false"
    assert canonical_bytes(0) == b"0"
    assert canonical_bytes(-0) == b"0"
    assert canonical_bytes("") == b'""'
    assert canonical_bytes([]) == b"[]"
    assert canonical_bytes({}) == b"{}"
    assert canonical_bytes((1, "a")) == b'[1,"a"]'  # tuples are arrays
    assert canonical_bytes("\x7f\u2028\u2029") == '"\x7f\u2028\u2029"'.encode()  # not escaped
    assert canonical_bytes("\x01\x1e") == b'"\\u0001\\u001e"'  # lower-case hex


def test_every_control_character_escape() -> None:
    short = {0x08: "\\b", 0x09: "\\t", 0x0A: "\\n", 0x0C: "\\f", 0x0D: "\\r"}
    for cp in range(0x20):
        expected = short.get(cp, f"\\u{cp:04x}")
        assert canonical_bytes(chr(cp)) == f'"{expected}"'.encode()


def test_key_order_ignores_insertion_order() -> None:
    a = {"b": {"y": 1, "x": 2}, "a": 0}
    b = OrderedDict([("a", 0), ("b", OrderedDict([("x", 2), ("y", 1)]))])
    assert canonical_bytes(a) == canonical_bytes(b) == b'{"a":0,"b":{"x":2,"y":1}}'


@pytest.mark.parametrize(
    "value",
    [1.0, 0.5, float("nan"), float("inf"), {"a": 1.5}, [1, [2.0]], {1: "a"}, {True: 1}, {b"a": 1}],
)
def test_no_canonical_encoding(value: Any) -> None:
    with pytest.raises(CanonicalError):
        canonical_bytes(value)


@pytest.mark.parametrize("value", [{1, 2}, frozenset(), object(), 1j, Decimal("1"), {"a": {2}}])
def test_unknown_types_rejected(value: Any) -> None:
    with pytest.raises(CanonicalError):
        canonical_bytes(value)


def test_keccak_is_keccak_not_sha3() -> None:
    empty = "0xc5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
    assert to_hex(keccak(b"")) == empty
    assert to_hex(merkle_keccak256(b"")) == empty
    for data in (b"abc", bytes(range(256)) * 5, b"\x00" * 136, b"\x00" * 135):
        assert keccak(data) == eth_keccak(data) == merkle_keccak256(data)


# --- run key, step hashes, head chain -----------------------------------------------------------

WORKFLOW_ID = "procurement-demo-1"
RUN_ID = "2f1c7a52-8d2b-4c1e-9a3f-0b6e5d4c3b2a"
RUN_KEY = "0x34c7b86a0bcf4bc51158341ece61ba1e69680665851eb250414e4db4486a18a3"

# (kind, name, input value, output value, status, input hash, output hash, step hash, head)
STEPS: list[tuple[str, str, Any, Any, str, str, str, str, str]] = [
    (
        "llm",
        "decide_supplier",
        {"sku": "A-100", "qty": 3},
        {"supplier": "acme", "unit_price": 1250},
        "ok",
        "0x01d26f5ded7ae6a7f7a8997371214dce62ec5f3f1bd97807fb6e684f10e468c5",
        "0x3adfb8268a391f92887d0132a86bc7d8dfd10df695112ee39cdb07c983a5b8eb",
        "0x462d3f91c311e38031a0ec39b046b55db2ca7ccfe8a5e48a1556ba80f597940c",
        "0x2234a4297b452101882e9be57c2b254725a44ac6d9cc34dc643ab49c79b68fcc",
    ),
    (
        "chain",
        "escrow.deposit",
        {"order": "PO-7", "amount": 3750},
        {"tx": b"\xab" * 32},
        "ok",
        "0x3f23b4542d2fb821a7c33b018b3effb878e22345668578adc543369cafbe26ae",
        "0x9c9e732033a63f070c38a190b4f5c2964985ae1712bcde0e08e32cadce4627fc",
        "0x6445b47708f05ac1eacfaa49f58fa51a6890d4c98c23a9d7954b1bc457839a4d",
        "0xeae138ef511f400e547956c2112fa83157bac14c608c3785283fe75be66a8e59",
    ),
    (
        "activity",
        "notify_supplier",
        {"to": "acme"},
        {"error": {"type": "TimeoutError", "message": "no answer in 30 s"}},
        "failed",
        "0x2dfb2174f411581339b6b3a5da12c2ff500c4f1c3af87d64676163d655b7f9cf",
        "0xe17a3e31336a86afedf90d9787e24e0e360ac2a84992b19491cfc281ed6d29c7",
        "0xe709d4858497fa898544fa45a195489099dc0e786d046c5d0485199eb4b3e579",
        "0x73722a132a753fa85549dbf9ee776d2b42cc44405108003bb951539af43cb847",
    ),
]

LEAVES = [
    "0x5ccacfc32a830d61634013f8c1a3d5ca581c13b5ca9c821bcc3524ebbbb534e3",
    "0x3fa64a1371e4205c6bc07906013422d3f123754009d17db60d82fdb2d408129f",
    "0xe15c9f993eec54c6b0b8d7b90e11fd4ce54825cabd6a923277e337650a52c7b2",
]


def test_run_key_vector() -> None:
    pre = canonical_bytes({"spec": 1, "workflow_id": WORKFLOW_ID, "run_id": RUN_ID})
    assert pre == (
        b'{"run_id":"2f1c7a52-8d2b-4c1e-9a3f-0b6e5d4c3b2a","spec":1,'
        b'"workflow_id":"procurement-demo-1"}'
    )
    assert to_hex(run_key(WORKFLOW_ID, RUN_ID)) == RUN_KEY
    assert to_hex(eth_keccak(pre)) == RUN_KEY
    assert run_key(WORKFLOW_ID, RUN_ID + "x") != run_key(WORKFLOW_ID, RUN_ID)
    assert run_key("a", "bc") != run_key("ab", "c")


def _records() -> list[StepRecord]:
    out = []
    head = bytes.fromhex(RUN_KEY[2:])
    for seq, (kind, name, inp, outp, status, *_rest) in enumerate(STEPS):
        rec = StepRecord(
            run=RUN_KEY,
            seq=seq,
            kind=kind,  # type: ignore[arg-type]
            name=name,
            input=to_hex(hash_obj(inp)),
            output=to_hex(hash_obj(outp)),
            status=status,  # type: ignore[arg-type]
            prev=to_hex(head),
        )
        out.append(rec)
        head = next_head(head, step_hash(rec))
    return out


def test_first_step_preimage_and_hash() -> None:
    rec = _records()[0]
    assert rec.preimage() == (
        b'{"input":"0x01d26f5ded7ae6a7f7a8997371214dce62ec5f3f1bd97807fb6e684f10e468c5",'
        b'"kind":"llm","name":"decide_supplier",'
        b'"output":"0x3adfb8268a391f92887d0132a86bc7d8dfd10df695112ee39cdb07c983a5b8eb",'
        b'"prev":"0x34c7b86a0bcf4bc51158341ece61ba1e69680665851eb250414e4db4486a18a3",'
        b'"run":"0x34c7b86a0bcf4bc51158341ece61ba1e69680665851eb250414e4db4486a18a3",'
        b'"seq":0,"status":"ok","v":1}'
    )
    assert to_hex(step_hash(rec)) == STEPS[0][7]
    assert to_hex(eth_keccak(rec.preimage())) == STEPS[0][7]


def test_failed_step_output_shape() -> None:
    assert canonical_bytes(STEPS[2][3]) == (
        b'{"error":{"message":"no answer in 30 s","type":"TimeoutError"}}'
    )


def test_three_step_head_chain() -> None:
    records = _records()
    head = bytes.fromhex(RUN_KEY[2:])
    for rec, (_k, _n, _i, _o, _s, in_hash, out_hash, sh, expected_head) in zip(
        records, STEPS, strict=True
    ):
        assert rec.input == in_hash
        assert rec.output == out_hash
        assert rec.prev == to_hex(head)
        assert to_hex(rec.hash()) == sh
        new = next_head(head, rec.hash())
        assert to_hex(new) == expected_head
        # independent: eth_utils keccak of the concatenation, and Solidity abi.encodePacked
        assert new == eth_keccak(head + rec.hash())
        assert new == bytes(Web3.solidity_keccak(["bytes32", "bytes32"], [head, rec.hash()]))
        head = new
    assert [to_hex(leaf_hash(r.hash())) for r in records] == LEAVES
    assert [to_hex(eth_keccak(b"\x00" + r.hash())) for r in records] == LEAVES


def test_every_field_changes_the_step_hash() -> None:
    rec = _records()[1]
    base = rec.hash()
    other = "0x" + "11" * 32
    for field, value in [
        ("run", other),
        ("seq", 2),
        ("kind", "activity"),
        ("name", "escrow.deposit2"),
        ("input", other),
        ("output", other),
        ("status", "failed"),
        ("prev", other),
    ]:
        assert rec.model_copy(update={field: value}).hash() != base, field


def test_next_head_and_leaf_reject_bad_lengths() -> None:
    with pytest.raises(ValueError):
        next_head(b"\x00" * 31, b"\x00" * 32)
    with pytest.raises(ValueError):
        next_head(b"\x00" * 32, b"\x00" * 33)
    with pytest.raises(ValueError):
        leaf_hash(b"\x00" * 31)


@given(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32))
@settings(max_examples=200, deadline=None)
def test_next_head_matches_solidity_encode_packed(prev: bytes, step: bytes) -> None:
    expected = bytes(Web3.solidity_keccak(["bytes32", "bytes32"], [prev, step]))
    assert next_head(prev, step) == expected


# --- properties ---------------------------------------------------------------------------------

_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**300), max_value=2**300) | _text,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(_text, children, max_size=5),
    max_leaves=30,
)


def _reference(value: Any) -> bytes:
    """An independent LCE-1 encoder for float-free, bytes-free values: the stdlib json module."""
    return json.dumps(
        value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False
    ).encode("utf-8")


def _reversed_insertion(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _reversed_insertion(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reversed_insertion(v) for v in value]
    return value


@given(_json)
@settings(max_examples=400, deadline=None)
def test_canonical_roundtrip_and_order_invariance(value: Any) -> None:
    encoded = canonical_bytes(value)
    assert json.loads(encoded.decode("utf-8")) == value
    assert canonical_bytes(_reversed_insertion(value)) == encoded
    assert encoded == _reference(value)
