"""``verify`` against the real stack: a clean run verifies; every kind of tampering with the store
(or pointing at another chain or registry) is caught and names the first bad step.

Each tamper test works on its own copy of the session's SQLite store, so tests stay independent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import structlog
from typer.testing import CliRunner
from web3 import HTTPProvider, Web3

from ledgerflow.chain.deploy import _Sender, deploy_all, save_deployment
from ledgerflow.checkpoint.anchorer import build_batch
from ledgerflow.checkpoint.records import StepRecord, commitment, next_head
from ledgerflow.checkpoint.verify import VerifyReport, verify_run
from ledgerflow.dev.stack import free_port, start_anvil
from ledgerflow.runtime import Runtime
from ledgerflow.settings import ANVIL_DEFAULT_KEYS, Settings, get_settings
from tests.conftest import Stack
from tests.test_proofs import (
    close_runtime,
    copy_store,
    deploy_registry,
    run_procurement,
    sqlite_path,
)

DEV = ANVIL_DEFAULT_KEYS


@pytest.fixture(scope="module")
async def runs(stack: Stack) -> dict[str, dict[str, Any]]:
    batched, per_step = await asyncio.gather(
        run_procurement(stack, "batched", prefix="verify"),
        run_procurement(stack, "per-step", prefix="verify"),
    )
    return {"batched": batched, "per-step": per_step}


Tamper = Callable[[sqlite3.Connection, str, str], None]


async def verify_tampered(
    stack: Stack, wf_id: str, tmp_path: Path, tamper: Tamper, *, settings: Settings | None = None
) -> VerifyReport:
    """Copy the store, apply ``tamper(con, workflow_id, run_id)`` to the copy, verify the copy."""
    store = copy_store(stack.runtime.store, tmp_path / "tampered.db")
    run = store.get_run(wf_id)
    con = sqlite3.connect(sqlite_path(store))
    try:
        tamper(con, run.workflow_id, run.run_id)
        con.commit()
    finally:
        con.close()
    rt = Runtime(settings or stack.settings, store=store)
    try:
        return await verify_run(rt, wf_id, client=stack.client.temporal)
    finally:
        await close_runtime(rt)


async def verify_copy(stack: Stack, store: Any, wf_id: str, *, history: bool) -> VerifyReport:
    rt = Runtime(stack.settings, store=store)
    try:
        return await verify_run(rt, wf_id, client=stack.client.temporal if history else None)
    finally:
        await close_runtime(rt)


def _steps(con: sqlite3.Connection, wf: str, run: str) -> list[sqlite3.Row]:
    con.row_factory = sqlite3.Row
    return list(
        con.execute(
            "SELECT * FROM steps WHERE workflow_id = ? AND run_id = ? ORDER BY seq", (wf, run)
        )
    )


def _flip_one_byte(text: str) -> str:
    """The same text with one character (an ASCII letter or digit) replaced."""
    mid = len(text) // 2
    for i in list(range(mid, len(text))) + list(range(mid)):
        ch = text[i]
        if ch.isascii() and ch.isalnum():
            repl = "1" if ch == "0" else "0" if ch.isdigit() else ("b" if ch == "a" else "a")
            return text[:i] + repl + text[i + 1 :]
    raise AssertionError(f"nothing to flip in {text!r}")


def _codes(report: VerifyReport) -> set[tuple[int, str]]:
    return {(f.step, f.code) for f in report.findings}


def _assert_fails_at(report: VerifyReport, seq: int) -> None:
    assert not report.ok, report
    assert report.first_bad_step == seq, (report.first_bad_step, report.problems)
    assert report.problems


# ---- clean runs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["batched", "per-step"])
async def test_clean_run_verifies(stack: Stack, runs: dict, mode: str) -> None:
    wf = runs[mode]
    report = await verify_run(stack.runtime, wf["id"], client=stack.client.temporal)
    assert report.spec_version == 2 and report.sealed  # new runs: spec v2, sealed
    assert report.ok, report.problems
    assert report.first_bad_step is None and report.problems == []
    assert report.steps == wf["steps"] and report.head == wf["head"]
    assert report.history_checked and report.anchor_mode == mode
    assert report.pending_steps == 0
    assert report.anchors and all(a["tx_hash"].startswith("0x") for a in report.anchors)
    if mode == "per-step":
        assert len(report.anchors) == wf["steps"]
        assert sorted(a["step"] for a in report.anchors) == list(range(wf["steps"]))
    else:
        assert len(report.anchors) >= 2  # flushed before waiting on delivery, and at the end
        assert all(a["root"] for a in report.anchors)


# ---- tampering with preimages, order and rows ---------------------------------------------------


@pytest.mark.parametrize("column", ["input_preimage", "output_preimage"])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
async def test_one_byte_of_a_preimage(
    stack: Stack, runs: dict, tmp_path: Path, column: str, where: str
) -> None:
    wf = runs["batched"]
    seq = {"first": 0, "middle": wf["steps"] // 2, "last": wf["steps"] - 1}[where]

    def tamper(con: sqlite3.Connection, w: str, r: str) -> None:
        row = _steps(con, w, r)[seq]
        new = _flip_one_byte(row[column])
        assert len(new.encode()) == len(row[column].encode())
        con.execute(f"UPDATE steps SET {column} = ? WHERE id = ?", (new, row["id"]))

    report = await verify_tampered(stack, wf["id"], tmp_path, tamper)
    _assert_fails_at(report, seq)
    assert any(f"step {seq}: {column.split('_')[0]} preimage" in p for p in report.problems)


@pytest.mark.parametrize(("i", "j"), [(1, 4), (2, 3), (0, -1)])
async def test_swapping_two_steps(stack: Stack, runs: dict, tmp_path: Path, i: int, j: int) -> None:
    wf = runs["batched"]
    j = j % wf["steps"]

    def tamper(con: sqlite3.Connection, w: str, r: str) -> None:
        rows = _steps(con, w, r)
        a, b = rows[i]["id"], rows[j]["id"]
        con.execute("UPDATE steps SET seq = -1 WHERE id = ?", (a,))
        con.execute("UPDATE steps SET seq = ? WHERE id = ?", (i, b))
        con.execute("UPDATE steps SET seq = ? WHERE id = ?", (j, a))

    _assert_fails_at(await verify_tampered(stack, wf["id"], tmp_path, tamper), min(i, j))


@pytest.mark.parametrize("where", ["first", "middle", "last"])
async def test_dropping_a_step(stack: Stack, runs: dict, tmp_path: Path, where: str) -> None:
    wf = runs["batched"]
    seq = {"first": 0, "middle": 3, "last": wf["steps"] - 1}[where]

    def tamper(con: sqlite3.Connection, w: str, r: str) -> None:
        con.execute(
            "DELETE FROM steps WHERE workflow_id = ? AND run_id = ? AND seq = ?", (w, r, seq)
        )

    _assert_fails_at(await verify_tampered(stack, wf["id"], tmp_path, tamper), seq)


async def test_deleted_preimage_is_reported_redacted(
    stack: Stack, runs: dict, tmp_path: Path
) -> None:
    """A preimage gone from the store is a redaction (spec v2, section 4): the record and its
    commitments still chain and are anchored, so it is reported, never taken as tampering."""

    def tamper(con: sqlite3.Connection, w: str, r: str) -> None:
        con.execute(
            "UPDATE steps SET output_preimage = NULL WHERE workflow_id = ? AND seq = 2", (w,)
        )

    report = await verify_tampered(stack, runs["batched"]["id"], tmp_path, tamper)
    assert report.ok, report.problems
    assert report.redacted == [{"step": 2, "parts": ["output"]}]


# ---- a forger who recomputes every hash ---------------------------------------------------------


def _rehash_from(con: sqlite3.Connection, w: str, r: str, seq: int, **changes: str) -> None:
    """Apply ``changes`` to step ``seq`` and recompute every hash from there on, consistently."""

    rows = _steps(con, w, r)
    run_key = rows[0]["prev"]
    head = rows[seq]["prev"]
    for row in rows[seq:]:
        values = dict(row)
        version = int(values.get("spec_version") or 1)
        if row["seq"] == seq:
            values.update(changes)
            for part in ("input", "output"):
                salt = values.get(f"{part}_salt") if version == 2 else None
                salt_b = bytes.fromhex(salt[2:]) if salt else None
                pre = values[f"{part}_preimage"].encode()
                values[f"{part}_hash"] = "0x" + commitment(salt_b, pre).hex()
        record = StepRecord(
            v=version,
            run=run_key,
            seq=row["seq"],
            kind=values["kind"],
            name=values["name"],
            input=values["input_hash"],
            output=values["output_hash"],
            status=values["status"],
            prev=head,
        )
        sh = record.hash()
        new_head = "0x" + next_head(bytes.fromhex(head[2:]), sh).hex()
        con.execute(
            "UPDATE steps SET name = ?, input_preimage = ?, output_preimage = ?, input_hash = ?, "
            "output_hash = ?, prev = ?, step_hash = ?, head = ? WHERE id = ?",
            (
                values["name"],
                values["input_preimage"],
                values["output_preimage"],
                values["input_hash"],
                values["output_hash"],
                head,
                "0x" + sh.hex(),
                new_head,
                row["id"],
            ),
        )
        head = new_head
    con.execute("UPDATE runs SET head = ? WHERE workflow_id = ? AND run_id = ?", (head, w, r))


def _rebuild_batches(con: sqlite3.Connection, w: str, r: str) -> None:
    """Recompute the Merkle root and proofs of every batch holding a step of the run."""
    anchor_ids = {row["anchor_id"] for row in _steps(con, w, r)}
    for anchor_id in anchor_ids:
        members = list(
            con.execute(
                "SELECT id, step_hash, spec_version FROM steps WHERE anchor_id = ? ORDER BY id",
                (anchor_id,),
            )
        )
        root, proofs = build_batch([m[1] for m in members], int(members[0][2] or 1))
        for (step_id, _, _), proof in zip(members, proofs, strict=True):
            con.execute("UPDATE steps SET proof = ? WHERE id = ?", (json.dumps(proof), step_id))
        con.execute("UPDATE anchors SET root = ? WHERE id = ?", (root, anchor_id))


async def test_forged_anchor_root(stack: Stack, runs: dict, tmp_path: Path) -> None:
    wf = runs["batched"]

    def tamper(con: sqlite3.Connection, w: str, r: str) -> None:
        rows = _steps(con, w, r)
        last_anchor = rows[-1]["anchor_id"]
        con.execute("UPDATE anchors SET root = ? WHERE id = ?", ("0x" + "ab" * 32, last_anchor))

    report = await verify_tampered(stack, wf["id"], tmp_path, tamper)
    first_of_last_batch = min(
        s.seq
        for s in stack.runtime.store.get_steps(wf["id"], report.run_id)
        if s.anchor_id
        == max(x.anchor_id or 0 for x in stack.runtime.store.get_steps(wf["id"], report.run_id))
    )
    _assert_fails_at(report, first_of_last_batch)


async def test_consistently_forged_history_and_roots(
    stack: Stack, runs: dict, tmp_path: Path
) -> None:
    """Change one step's output, recompute every hash, proof and root in the store: the store is
    self-consistent, but its roots are not on chain and Temporal history disagrees."""
    wf = runs["batched"]
    seq = 3

    def tamper(con: sqlite3.Connection, w: str, r: str) -> None:
        out = _steps(con, w, r)[seq]["output_preimage"]
        _rehash_from(con, w, r, seq, output_preimage=_flip_one_byte(out))
        _rebuild_batches(con, w, r)

    run = stack.runtime.store.get_run(wf["id"])
    rows = stack.runtime.store.get_steps(wf["id"], run.run_id)
    # the forged root covers the whole batch holding step `seq`: the chain flags that batch from
    # its first step on, Temporal history names the altered step itself
    batch_start = min(r.seq for r in rows if r.anchor_id == rows[seq].anchor_id)
    report = await verify_tampered(stack, wf["id"], tmp_path, tamper)
    _assert_fails_at(report, batch_start)
    assert (batch_start, "anchor_tx") in _codes(report), report.problems  # root not in its tx
    assert (seq, "history") in _codes(report), report.problems
    # without Temporal history the chain alone still catches it
    store = copy_store(stack.runtime.store, tmp_path / "again.db")
    con = sqlite3.connect(sqlite_path(store))
    run = store.get_run(wf["id"])
    tamper(con, run.workflow_id, run.run_id)
    con.commit()
    con.close()
    report = await verify_copy(stack, store, wf["id"], history=False)
    _assert_fails_at(report, batch_start)


async def test_history_cross_check_of_a_batched_run(
    stack: Stack, runs: dict, tmp_path: Path
) -> None:
    """The step hashes acknowledged in Temporal history (local-activity markers of
    checkpoint.store_steps) must be compared with the recomputed ones."""
    wf = runs["batched"]
    seq = 3

    def tamper(con: sqlite3.Connection, w: str, r: str) -> None:
        out = _steps(con, w, r)[seq]["output_preimage"]
        _rehash_from(con, w, r, seq, output_preimage=_flip_one_byte(out))
        _rebuild_batches(con, w, r)

    report = await verify_tampered(stack, wf["id"], tmp_path, tamper)
    assert (seq, "history") in _codes(report), report.problems


async def test_forged_anchor_block(stack: Stack, runs: dict, tmp_path: Path) -> None:
    def tamper(con: sqlite3.Connection, w: str, r: str) -> None:
        first = _steps(con, w, r)[0]["anchor_id"]
        con.execute("UPDATE anchors SET block_number = block_number + 1 WHERE id = ?", (first,))

    _assert_fails_at(await verify_tampered(stack, runs["batched"]["id"], tmp_path, tamper), 0)


async def test_forged_anchor_tx_from_another_registry(
    stack: Stack, runs: dict, tmp_path: Path
) -> None:
    """The store names, as the anchoring transaction, a transaction of *another* registry that
    anchored the same root. The root is on the real registry at the stored block, but the stored
    transaction is not the one that put it there: verify must not accept it."""
    wf = runs["batched"]
    run = stack.runtime.store.get_run(wf["id"])
    rows = stack.runtime.store.get_steps(wf["id"], run.run_id)
    anchor = stack.runtime.store.get_anchors([rows[0].anchor_id])[rows[0].anchor_id]  # type: ignore[index,list-item]
    address, key = await asyncio.to_thread(deploy_registry, stack.settings.rpc_url)

    def anchor_elsewhere() -> str:
        w3 = Web3(HTTPProvider(stack.settings.rpc_url))
        sender = _Sender(w3, key, "other registry")
        reg = w3.eth.contract(address=address, abi=stack.runtime.contract("CheckpointRegistry").abi)
        receipt = sender.call(
            reg.functions.anchorRoot(bytes.fromhex(anchor.root[2:]), anchor.leaf_count, []),  # type: ignore[index]
            "CheckpointRegistry",
        )
        return "0x" + bytes(receipt["transactionHash"]).hex()

    forged_tx = await asyncio.to_thread(anchor_elsewhere)

    def tamper(con: sqlite3.Connection, w: str, r: str) -> None:
        con.execute("UPDATE anchors SET tx_hash = ? WHERE id = ?", (forged_tx, anchor.id))

    report = await verify_tampered(stack, wf["id"], tmp_path, tamper)
    assert not report.ok, "a RootAnchored log of another contract was accepted"


# ---- per-step runs ------------------------------------------------------------------------------


async def test_per_step_run_tampered(stack: Stack, runs: dict, tmp_path: Path) -> None:
    wf = runs["per-step"]

    def tamper(con: sqlite3.Connection, w: str, r: str) -> None:
        row = _steps(con, w, r)[2]
        con.execute(
            "UPDATE steps SET input_preimage = ? WHERE id = ?",
            (_flip_one_byte(row["input_preimage"]), row["id"]),
        )

    _assert_fails_at(await verify_tampered(stack, wf["id"], tmp_path, tamper), 2)


async def test_per_step_consistent_forgery(stack: Stack, runs: dict, tmp_path: Path) -> None:
    wf = runs["per-step"]

    def tamper(con: sqlite3.Connection, w: str, r: str) -> None:
        _rehash_from(con, w, r, 1, name="forged_step")

    store = copy_store(stack.runtime.store, tmp_path / "forged.db")
    run = store.get_run(wf["id"])
    con = sqlite3.connect(sqlite_path(store))
    tamper(con, run.workflow_id, run.run_id)
    con.commit()
    con.close()
    # without history: the registry's Checkpointed events and head expose it
    report = await verify_copy(stack, store, wf["id"], history=False)
    _assert_fails_at(report, 1)
    assert (1, "anchor_tx") in _codes(report), report.problems  # its Checkpointed log differs
    assert not report.history_checked
    # with history: the activity results in Temporal history name the same step
    report = await verify_copy(stack, store, wf["id"], history=True)
    _assert_fails_at(report, 1)
    assert report.history_checked
    assert (1, "history") in _codes(report), report.problems


# ---- another chain, another registry ------------------------------------------------------------


@pytest.fixture(scope="module")
def other_chain(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A second anvil with the same contracts deployed the same way (same addresses, same id)."""
    logs = tmp_path_factory.mktemp("other-chain")
    port = free_port()
    proc = start_anvil(port, log_path=logs / "anvil.log")
    try:
        rpc = f"http://127.0.0.1:{port}"
        d = deploy_all(rpc, DEV[0], agent_key=DEV[1], approver_key=DEV[2])
        save_deployment(logs / "deployments.json", d)
        yield rpc, logs / "deployments.json", d
    finally:
        proc.stop()


@pytest.mark.parametrize("mode", ["batched", "per-step"])
async def test_other_chain_fails(
    stack: Stack, runs: dict, tmp_path: Path, other_chain: Any, mode: str
) -> None:
    rpc, deployments, d = other_chain
    assert d.contracts["CheckpointRegistry"] == stack.deployment.contracts["CheckpointRegistry"]
    settings = stack.settings.model_copy(update={"rpc_url": rpc, "deployments_file": deployments})
    report = await verify_tampered(
        stack, runs[mode]["id"], tmp_path, lambda *_: None, settings=settings
    )
    _assert_fails_at(report, 0)


@pytest.mark.parametrize("mode", ["batched", "per-step"])
async def test_other_registry_fails(stack: Stack, runs: dict, tmp_path: Path, mode: str) -> None:
    address, _ = await asyncio.to_thread(deploy_registry, stack.settings.rpc_url, writer=False)
    settings = stack.settings.model_copy(update={"registry_address": address})
    report = await verify_tampered(
        stack, runs[mode]["id"], tmp_path, lambda *_: None, settings=settings
    )
    _assert_fails_at(report, 0)
    assert report.registry == address


# ---- the CLI ------------------------------------------------------------------------------------


@pytest.fixture
async def cli(stack: Stack) -> AsyncIterator[Callable[..., Any]]:
    from ledgerflow.cli.main import app

    runner = CliRunner()

    async def invoke(args: list[str], database_url: str) -> Any:
        env = {
            "LEDGERFLOW_DATABASE_URL": database_url,
            "LEDGERFLOW_RPC_URL": stack.settings.rpc_url,
            "LEDGERFLOW_TEMPORAL_ADDRESS": stack.settings.temporal_address,
            "LEDGERFLOW_DEPLOYMENTS_FILE": str(stack.settings.deployments_path),
            "LEDGERFLOW_LOG_LEVEL": "WARNING",
        }
        get_settings.cache_clear()
        # The CLI configures logging for its process, bound to the stderr it sees: the runner's
        # temporary stream, closed after the call. Put the session's configuration back.
        saved_structlog = structlog.get_config()
        root = logging.getLogger()
        saved_logging = (root.handlers[:], root.level)
        try:
            # the CLI runs its own event loop (asyncio.run): give it a thread
            return await asyncio.to_thread(runner.invoke, app, args, env=env)
        finally:
            get_settings.cache_clear()
            structlog.configure(**saved_structlog)
            root.handlers[:], root.level = saved_logging

    yield invoke


async def test_cli_verify_json(stack: Stack, runs: dict, tmp_path: Path, cli: Any) -> None:
    wf = runs["batched"]
    result = await cli(
        ["verify", wf["id"], "--json", "--allow-unsealed-v1"], stack.settings.database_url
    )
    assert result.exit_code == 0, (result.stdout, result.stderr)
    data = json.loads(result.stdout)
    for key in ("sealed", "registry", "chain_id", "spec_version", "redacted", "findings"):
        assert key in data, key
    assert data["registry"] == stack.deployment.contracts["CheckpointRegistry"]
    for key in ("workflow_id", "run_id", "ok", "steps", "head", "first_bad_step", "anchors"):
        assert key in data, key
    assert data["workflow_id"] == wf["id"] and data["ok"] is True
    assert data["steps"] == wf["steps"] and data["head"] == wf["head"]
    assert data["first_bad_step"] is None and data["history_checked"] is True
    for a in data["anchors"]:
        assert {"tx_hash", "block_number"} <= set(a) and (
            a.get("root") or a.get("step") is not None
        )

    store = copy_store(stack.runtime.store, tmp_path / "tampered.db")
    con = sqlite3.connect(sqlite_path(store))
    con.execute(
        "UPDATE steps SET output_preimage = output_preimage || ' ' "
        "WHERE workflow_id = ? AND seq = 1",
        (wf["id"],),
    )
    con.commit()
    con.close()
    result = await cli(["verify", wf["id"], "--json"], store.url)
    assert result.exit_code == 1, (result.stdout, result.stderr)
    data = json.loads(result.stdout)
    assert data["ok"] is False and data["first_bad_step"] == 1

    # human output, same verdict
    result = await cli(["verify", wf["id"]], store.url)
    assert result.exit_code == 1 and "first bad step: 1" in result.stdout
    result = await cli(
        ["verify", runs["per-step"]["id"], "--json", "--allow-unsealed-v1"],
        stack.settings.database_url,
    )
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert json.loads(result.stdout)["anchor_mode"] == "per-step"


async def test_cli_verify_from_another_directory(
    stack: Stack, runs: dict, tmp_path: Path, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No store where verify runs: one clear error naming the URL it tried, no file left."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    url = "sqlite:///.ledgerflow/ledgerflow.db"
    result = await cli(["verify", runs["batched"]["id"], "--json"], url)
    assert result.exit_code == 2
    assert f"no store at {url}" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert list(elsewhere.iterdir()) == [], "verify left a file behind"
    result = await cli(["export", runs["batched"]["id"], "--out", "b.json"], url)
    assert result.exit_code == 2 and f"no store at {url}" in result.stderr
    assert list(elsewhere.iterdir()) == []


async def test_cli_lower_case_registry_address(
    stack: Stack, runs: dict, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = stack.deployment.contracts["CheckpointRegistry"]
    monkeypatch.setenv("LEDGERFLOW_REGISTRY_ADDRESS", registry.lower())
    result = await cli(
        ["verify", runs["batched"]["id"], "--json", "--allow-unsealed-v1"],
        stack.settings.database_url,
    )
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert json.loads(result.stdout)["registry"] == registry


async def test_cli_export_then_verify_the_bundle(
    stack: Stack, runs: dict, tmp_path: Path, cli: Any
) -> None:
    """export + verify --bundle gives the store-based verdict, with no store and no Temporal."""
    for mode in ("batched", "per-step"):
        out = tmp_path / f"{mode}.json"
        result = await cli(
            ["export", runs[mode]["id"], "--out", str(out)], stack.settings.database_url
        )
        assert result.exit_code == 0, result.stderr
        bundle = json.loads(out.read_text())
        assert bundle["format"] == "ledgerflow-audit-bundle"
        assert len(bundle["steps"]) == runs[mode]["steps"]
        args = ["verify", "--bundle", str(out), "--json", "--allow-unsealed-v1"]
        result = await cli(args, "sqlite:///" + str(tmp_path / "absent.db"))
        assert result.exit_code == 0, (result.stdout, result.stderr)
        from_bundle = json.loads(result.stdout)
        from_store = await verify_run(stack.runtime, runs[mode]["id"], allow_unsealed_v1=True)
        assert from_bundle["findings"] == [] and from_store.ok
        for key in ("ok", "sealed", "first_bad_step", "steps", "head", "anchors"):
            assert from_bundle[key] == getattr(from_store, key), key
        assert not (tmp_path / "absent.db").exists()
        # a bundle checked against another registry fails, naming both
        other = "0x" + "12" * 20
        result = await cli([*args, "--registry", other, "--chain-id", "31337"], "sqlite://")
        assert result.exit_code == 1
        data = json.loads(result.stdout)
        assert data["first_bad_step"] == 0 and data["registry"] == other
        message = next(f["message"] for f in data["findings"] if f["code"] == "untrusted_registry")
        assert other in message and bundle["registry"] in message
