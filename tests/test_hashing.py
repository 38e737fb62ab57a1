"""Checkpoint spec v1 and v2: canonical encoding (LCE-1), run keys, commitments, step hashes, heads.

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
from ledgerflow.checkpoint.records import (
    OUTCOME_STEP_NAME,
    StepRecord,
    commitment,
    is_failure_output,
    leaf_hash,
    leaf_hash_v2,
    next_head,
    parse_canonical,
    run_key,
    step_hash,
)

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
    assert to_hex(run_key(WORKFLOW_ID, RUN_ID, spec=1)) == RUN_KEY
    assert to_hex(eth_keccak(pre)) == RUN_KEY
    assert run_key(WORKFLOW_ID, RUN_ID + "x", spec=1) != run_key(WORKFLOW_ID, RUN_ID, spec=1)
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


# --- version 2: run key, salted commitments, records with "v": 2, the outcome step ---------------


RUN_KEY_V2 = "0x28c604edc969299f3a1ba4d572b3c8037eb2f4dd4f3152a3930b7a7b78e575db"
TX_RESULT = {
    "tx_hash": "0x" + "ab" * 32,
    "block_number": 42,
    "block_hash": "0x" + "cd" * 32,
    "to": "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512",
    "gas_used": 120000,
    "already_done": False,
    "event": {
        "address": "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512",
        "topics": ["0x" + "11" * 32, "0x" + "22" * 32],
        "log_index": 0,
    },
}
V2_STEPS: list[tuple[str, str, Any, Any, str]] = [
    (
        "llm",
        "decide_supplier",
        {"qty": 3, "sku": "A-100"},
        {"supplier": "acme", "unit_price": 1250},
        "ok",
    ),
    ("chain", "escrow.open", {"amount": 3750, "order": "PO-7"}, TX_RESULT, "ok"),
    (
        "activity",
        "notify_supplier",
        {"to": "acme"},
        {"error": {"type": "TimeoutError", "message": "no answer in 30 s"}},
        "failed",
    ),
    (
        "outcome",
        OUTCOME_STEP_NAME,
        {"workflow_type": "ProcurementWorkflow", "status": "completed"},
        {"outcome": "completed", "reason": ""},
        "ok",
    ),
]
#: (input commitment, output commitment, step hash, head after the step, v2 leaf)
V2_TABLE = [
    (
        "0xe5423e2ea8891b5435feee0c284c55fc7bce8378f413a9910b13cd59a85a0cda",
        "0x0fa37790be5fa74549015c68cfe23c5255247a71897081dd3a055b7c7b5d467f",
        "0x66bdf1e2b66403c19ee90d384611060b6db22dba6690f09196b9dff7b71093c0",
        "0x7ee9f53f6625ceb171410562cf0928a171ad957941c2743d34f5d408957e176d",
        "0xc20a4946f6c1605dc7d3109ddd854f2940ce453c2ccd7e8281bf159d0c8c9bb6",
    ),
    (
        "0x9383b69dec5e101c4550af8544736810b6c56ad4c7c03ef45e7e7520278c2b6c",
        "0x09da94a98aba8547099dc63adbcbdc17c52c0ced6dea9f6182ec99a42cd95435",
        "0x2465d32b1284674f2e83cd25065cdd3583a823f2a924d75bf1974f6d3ce65b18",
        "0x1c7e3b57d7e9b8cf60a47c7225e60a6dda5fe8b13106001cc0a07454cb9a807d",
        "0xa2aeacb7dbc80dca61da99a41bc318c35060d546008e277622c15aca25714fd1",
    ),
    (
        "0x2550e9dc94a7b48c20439e7f8e4c611e4a2afb145809b83cf2ce8878dedfaef1",
        "0x3797bd73106966f2d714306297c9cdcc24c3ae2e567d658f33417923589a6236",
        "0xfba6cf22209526d1a6270c1b4d81f5f541e915a7edfab59c8d73a7428b8dc06f",
        "0x6140611dd728dce16d8c223f886b0debcc631b80043bd24c15d6e315614a1bd6",
        "0x08dc0f7e80791cd594f97987b728b23942cf4b7e37464b80435fbe77044c7c48",
    ),
    (
        "0xdc52b27ce34d3ea36767dc33b03739080088f9a08a6b94ccce3067fc9b9b969c",
        "0xc3e0bc7c86cbed7376fe285629da3ad5720bcbbb28f3de4bd1c93fcf59f301c9",
        "0x7363728cbcbcde9f5525e78d97a38609b095c1ec09b03953fbb51f4d2c1e868f",
        "0x6297bbb13fd68dfaa3c9d9dbc279b41acf6afd0ad913c5879875588a116e5b17",
        "0x601bb862af862aa3ee036bb761f735adc3a0d3ecec525d483cdb985f18ab58b6",
    ),
]


def test_v2_run_key_vector() -> None:
    pre = canonical_bytes({"spec": 2, "workflow_id": WORKFLOW_ID, "run_id": RUN_ID})
    assert pre == (f'{{"run_id":"{RUN_ID}","spec":2,"workflow_id":"{WORKFLOW_ID}"}}').encode()
    assert to_hex(run_key(WORKFLOW_ID, RUN_ID)) == RUN_KEY_V2  # v2 is the default
    assert to_hex(run_key(WORKFLOW_ID, RUN_ID, spec=2)) == RUN_KEY_V2
    assert run_key(WORKFLOW_ID, RUN_ID, spec=1) != run_key(WORKFLOW_ID, RUN_ID, spec=2)
    with pytest.raises(ValueError):
        run_key(WORKFLOW_ID, RUN_ID, spec=3)


def test_v2_four_step_run_vectors() -> None:
    rk = run_key(WORKFLOW_ID, RUN_ID)
    head = rk
    for seq, ((kind, name, inp, out, status), row) in enumerate(
        zip(V2_STEPS, V2_TABLE, strict=True)
    ):
        salt_in, salt_out = bytes([2 * seq + 1]) * 32, bytes([2 * seq + 2]) * 32
        c_in = commitment(salt_in, canonical_bytes(inp))
        c_out = commitment(salt_out, canonical_bytes(out))
        assert (to_hex(c_in), to_hex(c_out)) == row[:2]
        assert c_in == eth_keccak(salt_in + canonical_bytes(inp))
        record = StepRecord(
            v=2,
            run=to_hex(rk),
            seq=seq,
            kind=kind,  # type: ignore[arg-type]
            name=name,
            input=to_hex(c_in),
            output=to_hex(c_out),
            status=status,  # type: ignore[arg-type]
            prev=to_hex(head),
        )
        if seq == 0:
            assert record.preimage().decode() == (
                f'{{"input":"{row[0]}","kind":"llm","name":"decide_supplier","output":"{row[1]}",'
                f'"prev":"{RUN_KEY_V2}","run":"{RUN_KEY_V2}","seq":0,"status":"ok","v":2}}'
            )
        sh = step_hash(record)
        head = next_head(head, sh)
        assert (to_hex(sh), to_hex(head), to_hex(leaf_hash_v2(sh))) == row[2:]
        assert leaf_hash_v2(sh) == eth_keccak(eth_keccak(sh))


def test_v2_commitment_needs_a_32_byte_salt_and_v1_has_none() -> None:
    assert commitment(None, b"{}") == keccak(b"{}")
    with pytest.raises(ValueError):
        commitment(b"\x00" * 31, b"{}")
    salt = bytes(range(32))
    assert commitment(salt, b"{}") != commitment(bytes(32), b"{}")


def test_outcome_kind_exists_only_in_v2() -> None:
    fields = dict(run="0x" + "00" * 32, seq=0, name="run.outcome", input="0x" + "11" * 32)
    fields |= dict(output="0x" + "22" * 32, status="ok", prev="0x" + "00" * 32)
    StepRecord(v=2, kind="outcome", **fields)
    with pytest.raises(ValueError):
        StepRecord(v=1, kind="outcome", **fields)


@pytest.mark.parametrize(
    "text",
    [
        b'{"a":1}',
        b"[]",
        b'"\\u001f"',
        b"18446744073709551616",
        '{"é":"😀"}'.encode(),
    ],
)
def test_parse_canonical_accepts_canonical_texts(text: bytes) -> None:
    assert canonical_bytes(parse_canonical(text)) == text


@pytest.mark.parametrize(
    "text",
    [
        b'{"a": 1}',  # whitespace
        b'{"b":1,"a":2}',  # key order
        b'{"a":1,"a":1}',  # duplicate key
        b"1.0",  # float
        b"1e3",  # exponent
        b"-0",  # not the canonical zero
        b"NaN",
        b'"\\u0041"',  # needless escape
        b'"\\ud800"',  # lone surrogate
        b'"\\/"',  # escaped slash
        b"\xff",  # not UTF-8
        b"",
        b'{"a":1}\n',
    ],
)
def test_parse_canonical_refuses_non_canonical_texts(text: bytes) -> None:
    with pytest.raises(CanonicalError):
        parse_canonical(text)


def test_failure_output_shape() -> None:
    assert is_failure_output({"error": {"type": "TimeoutError", "message": "m"}})
    assert not is_failure_output({"expired": True})  # what v1 stored for resolve.timeout
    assert not is_failure_output({"error": {"type": "T", "message": "m", "extra": 1}})
    assert not is_failure_output({"error": {"type": "T"}})
    assert not is_failure_output({"error": {"type": 1, "message": "m"}})
    assert not is_failure_output({"error": {"type": "T", "message": "m"}, "more": 1})


def test_deep_preimages_parse_whatever_the_recursion_limit() -> None:
    """A verifier's answer must not depend on what the process imported (py_ecc raises the
    recursion limit, ledgerflow's entry points put it back)."""
    import sys

    from ledgerflow.checkpoint.canonical import CanonicalError
    from ledgerflow.checkpoint.records import MAX_NESTING, parse_canonical

    deep = ("[" * 3000 + "]" * 3000).encode()
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    try:
        assert parse_canonical(deep) is not None
        assert sys.getrecursionlimit() == 1000
        assert parse_canonical(b'{"a":"[[\\"]]{"}') == {"a": '[["]]{'}
        too_deep = ("[" * (MAX_NESTING + 1) + "]" * (MAX_NESTING + 1)).encode()
        try:
            parse_canonical(too_deep)
        except CanonicalError as exc:
            assert "nested deeper than 10,000 levels" in str(exc)
        else:
            raise AssertionError("a preimage deeper than MAX_NESTING was read")
    finally:
        sys.setrecursionlimit(before)
