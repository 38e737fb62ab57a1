"""The fast paths of verification give the reference answers and still catch tampering.

* Batch trees: when a bundle holds every leaf of a root, the tree is rebuilt and a proof equal
  to its leaf's rebuilt path passes unfolded; any other proof is folded. A forged sibling, a
  swapped proof, a changed leaf or a batch shared with another run are each found exactly
  where the per-step fold finds them.
* The store is read as plain tuples; the bundle equals the one built from ORM rows.
* Preimages are round-tripped by the C scanner and encoder: the same values and verdicts as
  the full decoder.
* The shape check is one test per step; malformed steps still get the detailed message.
* The light deployments reader and EIP-55 checksum agree with the web3-based ones.
"""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import pytest

from ledgerflow.checkpoint import bundle as bundle_mod
from ledgerflow.checkpoint.bundle import (
    BundleError,
    checksum_address,
    parse_bundle,
    read_deployment,
    verify_bundle,
)
from ledgerflow.checkpoint.merkle import MultiVerifier
from ledgerflow.checkpoint.records import CanonicalError, parse_canonical, parse_canonical_text
from ledgerflow.checkpoint.sqlite_read import STEP_COLUMNS, SqliteReader, open_reader, sqlite_file
from ledgerflow.errors import ConfigError, StoreError, VerificationError
from ledgerflow.store import Store
from tests.test_bundle import TRUST, _anchor_all, _export
from tests.test_store import make_run, seal_of


@pytest.fixture
def store(tmp_path: Any) -> Store:
    s = Store(f"sqlite:///{tmp_path}/store.db")
    s.migrate()
    return s


def _run_bundle(store: Store, n: int = 13, batch: int = 8) -> dict[str, Any]:
    wf, _, rows = make_run(store, n, spec=2)
    store.save_steps(rows)
    seal_of(store, rows)
    _anchor_all(store, batch)
    return _export(store, wf)


def _offline(b: dict[str, Any]) -> set[tuple[int, str]]:
    report = asyncio.run(verify_bundle(b, TRUST, None))
    return {(x.step, x.code) for x in report.findings} - {(0, "node_chain")}


def _reference_proofs(b: dict[str, Any]) -> set[int]:
    """The steps whose proof does not fold to its root, one independent fold per step."""
    from ledgerflow.checkpoint.bundle import _k, _record_preimage

    bad = set()
    for i, st in enumerate(b["steps"]):
        a = b["anchors"][st["anchor"]]
        leaf = _k(_k(_k(_record_preimage(st["record"]))))
        proof = [bytes.fromhex(x[2:]) for x in st["proof"]]
        if not MultiVerifier().verify(leaf, proof, bytes.fromhex(a["root"][2:])):
            bad.add(i)
    return bad


def _count_folds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = MultiVerifier.verify

    def counting(self: MultiVerifier, leaf: bytes, proof: Any, root: bytes) -> bool:
        calls.append(1)
        return real(self, leaf, proof, root)

    monkeypatch.setattr(MultiVerifier, "verify", counting)
    return calls


def test_full_batches_verify_without_folding(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    b = _run_bundle(store)
    assert [a["leaf_count"] for a in b["anchors"]] == [8, 5]  # every leaf is in the bundle
    folds = _count_folds(monkeypatch)
    assert _offline(b) == set()
    assert folds == []  # every proof was its leaf's rebuilt path


def test_a_forged_sibling_in_a_full_batch_is_a_proof_finding(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = _run_bundle(store)
    proof = b["steps"][3]["proof"]
    proof[1] = "0x" + "ab" * 32
    folds = _count_folds(monkeypatch)
    assert _offline(b) == {(3, "proof")}
    assert len(folds) == 1  # only the step whose proof is not the rebuilt path is folded
    monkeypatch.undo()
    assert _reference_proofs(b) == {3}


def test_swapped_and_truncated_proofs_are_found(store: Store) -> None:
    b = _run_bundle(store)
    s = b["steps"]
    s[1]["proof"], s[2]["proof"] = s[2]["proof"], s[1]["proof"]
    s[5]["proof"] = s[5]["proof"][:-1]  # one level short
    s[6]["proof"] = [*s[6]["proof"], s[6]["proof"][0]]  # one element too many
    expected = {(i, "proof") for i in _reference_proofs(b)}
    assert expected >= {(5, "proof"), (6, "proof")}
    assert _offline(b) == expected


def test_a_changed_leaf_makes_the_rebuilt_root_differ_and_every_proof_is_folded(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = _run_bundle(store)
    b["steps"][2]["record"]["name"] = "forged"  # another step hash, so another leaf
    folds = _count_folds(monkeypatch)
    found = _offline(b)
    assert len(folds) == 8  # that batch's rebuilt root differs: its 8 proofs are folded
    assert (2, "proof") in found
    assert {i for i, code in found if code == "proof"} == _reference_proofs(b) == {2}


def test_a_batch_shared_with_another_run_is_folded(store: Store) -> None:
    wf_a, _, rows_a = make_run(store, 5, spec=2)
    wf_b, _, rows_b = make_run(store, 6, spec=2)
    store.save_steps(rows_a)
    store.save_steps(rows_b)
    seal_of(store, rows_a)
    seal_of(store, rows_b)
    _anchor_all(store, 16)  # one root for both runs
    for wf in (wf_a, wf_b):
        b = _export(store, wf)
        assert b["anchors"][0]["leaf_count"] == 11 > len(b["steps"])
        assert _offline(b) == set()
        b["steps"][0]["proof"][0] = "0x" + "00" * 32
        assert _offline(b) == {(0, "proof")}


def test_tuples_from_the_store_give_the_orm_bundle(store: Store) -> None:
    b = _run_bundle(store, n=9, batch=4)
    wf = b["workflow_id"]
    row = store.get_steps(wf, b["run_id"])[0]
    cols = Store.STEP_TUPLE_COLUMNS
    assert cols == bundle_mod._STEP_TUPLE_COLUMNS == STEP_COLUMNS
    assert store.step_tuples(wf, b["run_id"])[0] == tuple(getattr(row, c) for c in cols)

    class OrmOnly:  # a store without step_tuples: the ORM fallback
        def __getattr__(self, name: str) -> Any:
            if name == "step_tuples":
                raise AttributeError(name)
            return getattr(store, name)

    again = _export(OrmOnly(), wf)  # type: ignore[arg-type]
    light = _export(SqliteReader(store.url.split("///", 1)[1]), wf)  # type: ignore[arg-type]
    for x in (b, again, light):
        x.pop("exported_at")
    assert again == b
    assert light == b


def test_the_sqlite_reader_is_chosen_for_plain_files_only(tmp_path: Any) -> None:
    assert sqlite_file("sqlite:///rel/store.db") == "rel/store.db"
    assert sqlite_file("sqlite:////abs/store.db") == "/abs/store.db"
    for url in ("sqlite://", "sqlite:///:memory:", "sqlite:///x.db?mode=ro", "postgresql://h/d"):
        assert sqlite_file(url) is None, url
    with pytest.raises(StoreError, match="no store at"):
        open_reader(f"sqlite:///{tmp_path}/missing.db")
    assert not (tmp_path / "missing.db").exists()


def test_the_sqlite_reader_reports_no_run_like_the_store(store: Store) -> None:
    reader = SqliteReader(store.url.split("///", 1)[1])
    with pytest.raises(StoreError, match="no checkpointed run"):
        reader.get_run("nope")
    with pytest.raises(StoreError, match="no checkpointed run"):
        store.get_run("nope")
    reader.close()


def test_stored_proofs_in_another_json_form_are_parsed() -> None:
    h = "0x" + "12" * 32
    assert bundle_mod._stored_proof(json.dumps([h, h])) == [h, h]
    assert bundle_mod._stored_proof(json.dumps([h, h], separators=(",", ":"))) == [h, h]
    assert bundle_mod._stored_proof("[]") == [] and bundle_mod._stored_proof(None) == []
    assert bundle_mod._stored_proof('["0xZZ"]') == ["0xZZ"]  # parse_bundle rejects it later


@pytest.mark.parametrize(
    "text",
    [
        '{"a":1}',
        '{"b":1,"a":2}',
        '{"a":1,"a":2}',
        " 1",
        "1 ",
        "1.5",
        "1e3",
        "NaN",
        "[1,2]",
        '"\\u00e9"',
        '"é"',
        '"\\n"',
        "",
        "[",
        '{"a":[{"b":null,"c":true}]}',
        "123456789012345678901234567890",
        "-0",
        "01",
    ],
)
def test_the_fast_round_trip_agrees_with_the_full_decoder(text: str) -> None:
    def outcome(fn: Any, arg: Any) -> Any:
        try:
            return ("ok", fn(arg))
        except CanonicalError:
            return ("error",)

    assert outcome(parse_canonical_text, text) == outcome(parse_canonical, text.encode())


def test_deep_preimages_are_still_read() -> None:
    text = "[" * 5000 + "]" * 5000
    for value in (parse_canonical_text(text), parse_canonical(text.encode())):
        depth = 0
        while value:  # walked, not compared: == on 5,000 levels would recurse
            (value,) = value
            depth += 1
        assert depth == 4999


def test_a_malformed_step_still_gets_the_detailed_message(store: Store) -> None:
    b = _run_bundle(store, n=5, batch=8)
    for mutate, message in (
        (lambda s: s["record"].__setitem__("seq", -1), "steps[2].record.seq"),
        (lambda s: s["record"].__setitem__("input", "0x" + "AB" * 32), "steps[2].record.input"),
        (lambda s: s["input"].__setitem__("salt", "0x12"), "steps[2].input.salt"),
        (lambda s: s["proof"].append("0x" + "G" * 64), "steps[2] proof array"),
        (lambda s: s.__setitem__("proof", None), "steps[2] proof array"),
        (lambda s: s.__setitem__("extra", 1), "steps[2] members"),
    ):
        bad = copy.deepcopy(b)
        mutate(bad["steps"][2])
        with pytest.raises(BundleError, match=message.replace("[", r"\[").replace("]", r"\]")):
            parse_bundle(bad)
    parse_bundle(b)


def test_light_deployment_reader(tmp_path: Any) -> None:
    from ledgerflow.chain.deploy import load_deployment

    reg = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
    doc = {
        "chain_id": 31337,
        "block_number": 7,
        "deployer": reg,
        "orchestrator": reg,
        "agent": reg,
        "approver": reg,
        "guardian": reg,
        "contracts": {
            name: reg
            for name in (
                "CheckpointRegistry",
                "TestUSD",
                "InventoryLedger",
                "Marketplace",
                "AgentPolicy",
                "AgentVault",
                "Escrow",
                "ProvenanceRegistry",
            )
        },
        "artifacts_digest": "x",
    }
    path = tmp_path / "deployments.json"
    path.write_text(json.dumps(doc))
    light, full = read_deployment(path), load_deployment(path)
    assert (light.chain_id, light.block_number, light.contracts) == (
        full.chain_id,
        full.block_number,
        dict(full.contracts),
    )
    path.write_text(json.dumps({**doc, "contracts": {"CheckpointRegistry": "0x12"}}))
    with pytest.raises(ConfigError):
        read_deployment(path)
    path.write_text(json.dumps({**doc, "contracts": {"TestUSD": reg}}))
    with pytest.raises(ConfigError):
        read_deployment(path)
    with pytest.raises(ConfigError):
        read_deployment(tmp_path / "missing.json")


def test_checksum_address_is_eip55() -> None:
    from eth_utils import to_checksum_address

    for a in (
        "0x5fbdb2315678afecb367f032d93f642f64180aa3",
        "0xDC64A140AA3E981100A9BECA4E685F962F0CF6C9",
        "0x" + "00" * 20,
        "0x" + "ff" * 20,
    ):
        assert checksum_address(a) == to_checksum_address(a)
    with pytest.raises(VerificationError):
        checksum_address("0x1234")
