"""The tamper battery (issue 10): every tampering of an audit bundle is caught at the exact index,
from the bundle and the chain alone (no store, no Temporal history).

The runs are built from the spec's functions and anchored on a real CheckpointRegistry v2 on a
private anvil (so chain tampering — a re-seal with the writer key, an append after the seal, lost
blocks — touches no other test). Each case is also written with its expected verdict to a
directory (``LEDGERFLOW_BATTERY_DIR``, else a temporary one) with a ``manifest.json``, and the last
tests run ``ledgerflow verify --bundle`` as a separate process over every case of the manifest, and
the independent TypeScript verifier (verifiers/ts) over the same files, which must agree with it.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from web3 import AsyncHTTPProvider, AsyncWeb3

from ledgerflow.checkpoint.bundle import BundleError, TrustRoot, Web3Chain, verify_bundle
from ledgerflow.checkpoint.canonical import canonical_bytes, keccak, to_hex
from ledgerflow.checkpoint.records import commitment
from ledgerflow.dev.stack import free_port, start_anvil
from ledgerflow.settings import ANVIL_DEFAULT_KEYS
from tests.support.bundles import (
    Chain,
    Run,
    Step,
    anchor_batched,
    anchor_per_step,
    to_bundle,
    write_case,
)
from tests.support.crosscheck import (
    Outcome,
    cases_from_manifest,
    disagreements,
    expectation_mismatches,
    forgive_known_differences,
    python_outcomes,
    ts_outcomes,
)


@pytest.fixture(scope="module")
def private_anvil(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    proc = start_anvil(port, log_path=tmp_path_factory.mktemp("battery") / "anvil.log")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def battery_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get("LEDGERFLOW_BATTERY_DIR")
    path = Path(configured) if configured else tmp_path_factory.mktemp("battery-cases")
    (path / "manifest.json").unlink(missing_ok=True)
    return path


class World:
    """The private chain: a trusted registry, another registry, a token for chain effects."""

    def __init__(self, rpc_url: str) -> None:
        self.rpc_url = rpc_url
        self.chain = Chain(rpc_url, ANVIL_DEFAULT_KEYS[0])
        self.registry, self.block = self.chain.registry()
        self.other, _ = self.chain.registry()
        self.token = self.chain.token()
        self.contracts = {
            "CheckpointRegistry": self.registry.address,
            "TestUSD": self.token.address,
        }
        self.trust = TrustRoot(
            chain_id=self.chain.chain_id,
            registry=self.registry.address,
            from_block=self.block,
            contracts=list(self.contracts.values()),
            source="deployments",
        )

    def bundle(self, run: Run, registry: Any = None) -> dict[str, Any]:
        return to_bundle(
            run,
            registry=(registry or self.registry).address,
            chain_id=self.chain.chain_id,
            deployment_block=self.block,
            contracts=self.contracts,
        )

    def steps(self, run: Run, n: int = 6) -> None:
        """A typical run: a decision, a real chain effect, activities, a failed wait, more."""
        run.add(Step("llm", "decide_supplier", {"sku": "A-100", "qty": 3}, {"supplier": "acme"}))
        tx = self.chain.tx_result(self.token, 3750)
        run.add(Step("chain", "escrow.open", {"order": "PO-7", "amount": 3750}, tx))
        run.add(Step("activity", "notify_supplier", {"to": "acme"}, {"sent": True}))
        run.add(
            Step(
                "timer",
                "delivery.deadline",
                {"seconds": 60},
                {"error": {"type": "TimeoutError", "message": "no delivery in 60 s"}},
                status="failed",
            )
        )
        for i in range(n - 4):
            run.add(Step("activity", f"step_{i}", {"i": i, "big": 2**80 + i}, {"ok": i}))

    def sealed_batched(self, n: int = 6, *, split: int = 3, with_other: Run | None = None) -> Run:
        """A batched run of n steps + outcome: steps [0, split) in one batch (shared with the
        steps of ``with_other``), the rest with the seal in a second."""
        run = Run("batched")
        self.steps(run, n)
        run.outcome()
        first: list[tuple[Run, range]] = [(run, range(split))]
        if with_other is not None:
            first.append((with_other, range(len(with_other.steps))))
        anchor_batched(self.chain, self.registry, first)
        anchor_batched(
            self.chain, self.registry, [(run, range(split, len(run.steps)))], seals=[(run, None)]
        )
        return run


@pytest.fixture(scope="module")
def world(private_anvil: str) -> World:
    return World(private_anvil)


@pytest.fixture(scope="module")
def base(world: World) -> dict[str, Run]:
    other = Run("batched")
    world.steps(other, 5)
    run = world.sealed_batched(8, split=4, with_other=other)
    other.outcome()
    anchor_batched(
        world.chain, world.registry, [(other, range(5, len(other.steps)))], seals=[(other, None)]
    )
    per_step = Run("per-step")
    world.steps(per_step, 5)
    per_step.outcome()
    anchor_per_step(world.chain, world.registry, per_step)
    return {"batched": run, "other": other, "per-step": per_step}


async def check(
    world: World,
    battery_dir: Path,
    name: str,
    bundle: dict[str, Any],
    *,
    ok: bool,
    sealed: bool,
    first_bad_step: int | None,
    codes: set[str] = frozenset(),  # type: ignore[assignment]
    trust: TrustRoot | None = None,
) -> Any:
    trust = trust or world.trust
    w3 = AsyncWeb3(AsyncHTTPProvider(world.rpc_url))
    try:
        report = await verify_bundle(bundle, trust, Web3Chain(w3))
    finally:
        await w3.provider.disconnect()
    got = {f.code for f in report.findings if f.step == report.first_bad_step}
    assert report.verdict == (ok, sealed, first_bad_step), report.problems
    assert codes <= got, (codes, report.problems)
    write_case(
        battery_dir,
        name,
        bundle,
        {"ok": ok, "sealed": sealed, "first_bad_step": first_bad_step},
        trust.model_dump(),
        world.rpc_url,
    )
    return report


def _recommit(step: dict[str, Any], part: str, value: Any) -> None:
    """Replace a step's value consistently (new preimage, same salt, new commitment)."""
    p = step[part]
    pre = canonical_bytes(value)
    p["preimage"] = pre.decode()
    step["record"][part] = to_hex(commitment(bytes.fromhex(p["salt"][2:]), pre))


# ---- clean runs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["batched", "per-step"])
async def test_clean_run_verifies(
    world: World, base: dict[str, Run], battery_dir: Path, mode: str
) -> None:
    run = base[mode]
    report = await check(
        world,
        battery_dir,
        f"clean-{mode}",
        world.bundle(run),
        ok=True,
        sealed=True,
        first_bad_step=None,
    )
    assert report.steps == len(run.steps) and report.head == to_hex(run.head)
    assert report.registry == world.registry.address and report.chain_id == world.chain.chain_id
    assert report.seal is not None and report.seal["steps"] == len(run.steps)
    assert report.contracts_source == "trust_root"
    assert len(report.anchors) == (2 if mode == "batched" else len(run.steps))


async def test_clean_run_with_explicit_trust_uses_the_bundles_contracts(
    world: World, base: dict[str, Run], battery_dir: Path
) -> None:
    trust = TrustRoot.explicit(world.registry.address.lower(), world.chain.chain_id)
    report = await check(
        world,
        battery_dir,
        "clean-explicit-trust",
        world.bundle(base["batched"]),
        ok=True,
        sealed=True,
        first_bad_step=None,
        trust=trust,
    )
    assert report.contracts_source == "bundle" and report.registry == trust.registry


# ---- the battery --------------------------------------------------------------------------------


async def test_one_preimage_byte(world: World, base: dict[str, Run], battery_dir: Path) -> None:
    b = world.bundle(base["batched"])
    p = b["steps"][2]["input"]
    p["preimage"] = p["preimage"].replace("acme", "acmf")
    await check(
        world,
        battery_dir,
        "one-preimage-byte",
        b,
        ok=False,
        sealed=True,
        first_bad_step=2,
        codes={"commitment"},
    )


async def test_one_salt_byte(world: World, base: dict[str, Run], battery_dir: Path) -> None:
    b = world.bundle(base["batched"])
    salt = b["steps"][5]["output"]["salt"]
    b["steps"][5]["output"]["salt"] = salt[:-1] + ("0" if salt[-1] != "0" else "1")
    await check(
        world,
        battery_dir,
        "one-salt-byte",
        b,
        ok=False,
        sealed=True,
        first_bad_step=5,
        codes={"commitment"},
    )


async def test_swap_two_steps(world: World, base: dict[str, Run], battery_dir: Path) -> None:
    b = world.bundle(base["batched"])
    b["steps"][1], b["steps"][3] = b["steps"][3], b["steps"][1]
    await check(
        world,
        battery_dir,
        "swap-two-steps",
        b,
        ok=False,
        sealed=True,
        first_bad_step=1,
        codes={"seq", "prev"},
    )


async def test_drop_a_middle_step(world: World, base: dict[str, Run], battery_dir: Path) -> None:
    b = world.bundle(base["batched"])
    del b["steps"][3]
    await check(
        world,
        battery_dir,
        "drop-middle-step",
        b,
        ok=False,
        sealed=True,
        first_bad_step=3,
        codes={"seq"},
    )


async def test_drop_the_last_step(world: World, base: dict[str, Run], battery_dir: Path) -> None:
    b = world.bundle(base["batched"])
    m = len(b["steps"])
    b["steps"].pop()
    await check(
        world,
        battery_dir,
        "drop-last-step",
        b,
        ok=False,
        sealed=True,
        first_bad_step=m - 1,
        codes={"seal_steps"},
    )


async def test_drop_the_last_steps_with_their_anchors_and_proofs(
    world: World, base: dict[str, Run], battery_dir: Path
) -> None:
    b = world.bundle(base["batched"])
    m = len(b["steps"])
    keep = m - 5  # the whole second batch (4 steps and the outcome) and its anchor entry
    b["steps"] = b["steps"][:keep]
    used = {st["anchor"] for st in b["steps"]}
    assert used == {0}
    b["anchors"] = b["anchors"][:1]
    b["seal"] = None  # ... and the seal the operator would rather not show
    await check(
        world,
        battery_dir,
        "drop-tail-with-anchors",
        b,
        ok=False,
        sealed=True,
        first_bad_step=keep,
        codes={"seal_steps", "bundle_seal"},
    )


async def test_drop_the_seal(world: World, base: dict[str, Run], battery_dir: Path) -> None:
    b = world.bundle(base["batched"])
    b["seal"] = None
    m = len(b["steps"])
    await check(
        world,
        battery_dir,
        "drop-seal",
        b,
        ok=False,
        sealed=True,
        first_bad_step=m,
        codes={"bundle_seal"},
    )


async def test_append_a_step_after_the_seal(world: World, battery_dir: Path) -> None:
    run = world.sealed_batched(5)
    n = len(run.steps)
    run.add(Step("activity", "pay_again", {"amount": 900}, {"paid": True}))
    anchor_batched(world.chain, world.registry, [(run, range(n, n + 1))])  # the writer key
    b = world.bundle(run)
    await check(
        world,
        battery_dir,
        "append-after-seal",
        b,
        ok=False,
        sealed=True,
        first_bad_step=n,
        codes={"seal_steps", "after_seal"},
    )


async def test_reseal_a_truncated_run_with_the_writer_key(world: World, battery_dir: Path) -> None:
    run = world.sealed_batched(7)
    keep = 5
    # the writer key emits a second seal for the truncated chain on the real registry
    world.chain.send(
        world.registry.functions.anchorRoot(
            keccak(os.urandom(32)), 0, [(run.rk, keep, run.heads[keep])]
        )
    )
    b = world.bundle(run)
    b["steps"] = b["steps"][:keep]
    b["seal"]["steps"], b["seal"]["head"] = keep, to_hex(run.heads[keep])
    await check(
        world,
        battery_dir,
        "reseal-truncated",
        b,
        ok=False,
        sealed=True,
        first_bad_step=keep,
        codes={"multiple_seals"},
    )


async def test_a_forged_sibling(world: World, base: dict[str, Run], battery_dir: Path) -> None:
    b = world.bundle(base["batched"])
    proof = b["steps"][1]["proof"]
    proof[0] = to_hex(keccak(bytes.fromhex(proof[0][2:])))
    await check(
        world,
        battery_dir,
        "forged-sibling",
        b,
        ok=False,
        sealed=True,
        first_bad_step=1,
        codes={"proof"},
    )


def _falsify_from(world: World, run: Run, k: int, registry: Any) -> dict[str, Any]:
    """Step k's amount 3750 -> 9000 in a copy of the run, steps k.. re-anchored (and the copy
    sealed) on ``registry``: the forged-proof attack of issue 10."""
    forged = copy.deepcopy(run)
    forged.steps = forged.steps[:k]
    forged.records, forged.hashes = forged.records[:k], forged.hashes[:k]
    forged.heads, forged.anchor_of = forged.heads[: k + 1], forged.anchor_of[:k]
    forged.proofs, forged.seal = forged.proofs[:k], None
    for st in run.steps[k:]:
        st = copy.deepcopy(st)
        if st.name == "escrow.open":
            st.input = {**st.input, "amount": 9000}
        forged.add(st)
    anchor_batched(
        world.chain, registry, [(forged, range(k, len(forged.steps)))], seals=[(forged, None)]
    )
    return world.bundle(forged)


async def test_a_root_anchored_on_another_registry(
    world: World, base: dict[str, Run], battery_dir: Path
) -> None:
    b = _falsify_from(world, base["batched"], 1, world.other)
    await check(
        world,
        battery_dir,
        "root-on-another-registry",
        b,
        ok=False,
        sealed=True,
        first_bad_step=1,
        codes={"untrusted_registry"},
    )


async def test_a_whole_run_on_another_registry(
    world: World, base: dict[str, Run], battery_dir: Path
) -> None:
    b = _falsify_from(world, base["batched"], 0, world.other)
    b["registry"] = world.other.address
    b["seal"]["registry"] = world.other.address
    report = await check(
        world,
        battery_dir,
        "run-on-another-registry",
        b,
        ok=False,
        sealed=True,
        first_bad_step=0,
        codes={"untrusted_registry"},
    )
    message = next(f.message for f in report.findings if f.code == "untrusted_registry")
    assert world.other.address in message and world.registry.address in message


async def test_another_chain_id(world: World, base: dict[str, Run], battery_dir: Path) -> None:
    b = world.bundle(base["batched"])
    b["chain_id"] = 1
    for a in b["anchors"]:
        a["chain_id"] = 1
    await check(
        world,
        battery_dir,
        "another-chain-id",
        b,
        ok=False,
        sealed=True,
        first_bad_step=0,
        codes={"untrusted_chain"},
    )


async def test_a_node_of_another_chain(
    world: World, base: dict[str, Run], battery_dir: Path
) -> None:
    trust = world.trust.model_copy(update={"chain_id": 5})
    b = world.bundle(base["batched"])
    await check(
        world,
        battery_dir,
        "node-of-another-chain",
        b,
        ok=False,
        sealed=False,
        first_bad_step=0,
        codes={"node_chain", "untrusted_chain"},
        trust=trust,
    )


async def test_a_step_replayed_from_another_run(
    world: World, base: dict[str, Run], battery_dir: Path
) -> None:
    b = world.bundle(base["batched"])
    theirs = world.bundle(base["other"])
    # step 3 of the other run, with its (valid) proof into the same trusted root
    assert theirs["anchors"][theirs["steps"][3]["anchor"]]["root"] == b["anchors"][0]["root"]
    b["steps"][3] = copy.deepcopy(theirs["steps"][3])
    b["steps"][3]["anchor"] = 0
    await check(
        world,
        battery_dir,
        "step-from-another-run",
        b,
        ok=False,
        sealed=True,
        first_bad_step=3,
        codes={"run", "prev"},
    )


async def test_a_per_step_anchor_tx_swapped(
    world: World, base: dict[str, Run], battery_dir: Path
) -> None:
    b = world.bundle(base["per-step"])
    a0, a3 = b["anchors"][0], b["anchors"][3]
    a3["tx_hash"], a3["block_number"] = a0["tx_hash"], a0["block_number"]
    await check(
        world,
        battery_dir,
        "per-step-anchor-swapped",
        b,
        ok=False,
        sealed=True,
        first_bad_step=3,
        codes={"anchor_tx", "checkpoint_log"},
    )


# ---- what is not tampering, and what else is caught ---------------------------------------------


async def test_a_redacted_step_is_reported_not_tampered(
    world: World, base: dict[str, Run], battery_dir: Path
) -> None:
    b = world.bundle(base["batched"])
    b["steps"][0]["input"] = None
    b["steps"][1]["output"] = None  # a redacted chain effect: not checkable, not tampered
    report = await check(
        world, battery_dir, "redacted", b, ok=True, sealed=True, first_bad_step=None
    )
    assert report.redacted == [{"step": 0, "parts": ["input"]}, {"step": 1, "parts": ["output"]}]


async def test_a_running_run_is_unsealed(world: World, battery_dir: Path) -> None:
    run = Run("batched")
    world.steps(run, 4)
    anchor_batched(world.chain, world.registry, [(run, range(4))])
    b = world.bundle(run)
    report = await check(
        world,
        battery_dir,
        "running-unsealed",
        b,
        ok=False,
        sealed=False,
        first_bad_step=4,
        codes={"unsealed"},
    )
    assert report.seal is None


async def test_a_vanished_chain_effect_after_lost_blocks(world: World, battery_dir: Path) -> None:
    w3 = world.chain.w3
    snap = w3.provider.make_request("evm_snapshot", [])["result"]  # type: ignore[arg-type]
    lost = world.chain.tx_result(world.token, 1234)  # escrow.open's transaction ...
    assert w3.provider.make_request("evm_revert", [snap])["result"]  # type: ignore[arg-type]
    for _ in range(3):  # ... and the chain moves on without it
        w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    run = Run("batched")
    run.add(Step("llm", "decide_supplier", {"sku": "B"}, {"supplier": "acme"}))
    run.add(Step("chain", "escrow.open", {"order": "PO-9", "amount": 1234}, lost))
    run.outcome()
    anchor_batched(world.chain, world.registry, [(run, range(3))], seals=[(run, None)])
    await check(
        world,
        battery_dir,
        "vanished-chain-effect",
        world.bundle(run),
        ok=False,
        sealed=True,
        first_bad_step=1,
        codes={"chain_effect"},
    )


async def test_a_chain_effect_on_an_untrusted_contract(world: World, battery_dir: Path) -> None:
    rogue = world.chain.token()  # deployed from the published artifact, not the deployment's
    run = Run("batched")
    run.add(
        Step(
            "chain", "escrow.open", {"order": "PO-10", "amount": 5}, world.chain.tx_result(rogue, 5)
        )
    )
    run.outcome()
    anchor_batched(world.chain, world.registry, [(run, range(2))], seals=[(run, None)])
    await check(
        world,
        battery_dir,
        "effect-on-untrusted-contract",
        world.bundle(run),
        ok=False,
        sealed=True,
        first_bad_step=0,
        codes={"chain_effect"},
    )


async def test_a_failed_step_with_another_output_shape(world: World, battery_dir: Path) -> None:
    run = Run("batched")
    run.add(Step("timer", "resolve.timeout", {"seconds": 5}, {"expired": True}, status="failed"))
    run.outcome()
    anchor_batched(world.chain, world.registry, [(run, range(2))], seals=[(run, None)])
    await check(
        world,
        battery_dir,
        "failed-output-shape",
        world.bundle(run),
        ok=False,
        sealed=True,
        first_bad_step=0,
        codes={"failed_output"},
    )


async def test_a_sealed_run_without_its_outcome_step(world: World, battery_dir: Path) -> None:
    run = Run("batched")
    world.steps(run, 4)
    anchor_batched(world.chain, world.registry, [(run, range(4))], seals=[(run, None)])
    await check(
        world,
        battery_dir,
        "sealed-without-outcome",
        world.bundle(run),
        ok=False,
        sealed=True,
        first_bad_step=3,
        codes={"outcome"},
    )


async def test_a_non_canonical_preimage(
    world: World, base: dict[str, Run], battery_dir: Path
) -> None:
    b = world.bundle(base["batched"])
    st = b["steps"][4]
    st["input"]["preimage"] = st["input"]["preimage"].replace(":", ": ", 1)  # whitespace
    pre = st["input"]["preimage"].encode()
    st["record"]["input"] = to_hex(commitment(bytes.fromhex(st["input"]["salt"][2:]), pre))
    await check(
        world,
        battery_dir,
        "non-canonical-preimage",
        b,
        ok=False,
        sealed=True,
        first_bad_step=4,
        codes={"preimage"},
    )


async def test_a_consistently_rewritten_step_is_caught_by_the_chain(
    world: World, base: dict[str, Run], battery_dir: Path
) -> None:
    """Rewrite step 2's output and every record after it consistently: offline nothing is off,
    but the proofs no longer reach the anchored roots and the seal's head differs."""
    b = world.bundle(base["batched"])
    _recommit(b["steps"][2], "output", {"sent": False})
    head = bytes.fromhex(b["steps"][2]["record"]["prev"][2:])
    from ledgerflow.checkpoint.bundle import _record_preimage

    for st in b["steps"][2:]:
        st["record"]["prev"] = to_hex(head)
        head = keccak(head + keccak(_record_preimage(st["record"])))
    await check(
        world,
        battery_dir,
        "rewritten-consistently",
        b,
        ok=False,
        sealed=True,
        first_bad_step=2,
        codes={"proof"},
    )


def test_malformed_bundles_have_no_verdict(world: World, base: dict[str, Run]) -> None:
    import asyncio

    good = world.bundle(base["batched"])
    for mutate in (
        lambda b: b.pop("steps"),
        lambda b: b.update(format="other"),
        lambda b: b.update(spec_version=3),
        lambda b: b["steps"][0]["record"].update(extra=1),
        lambda b: b["steps"][0]["record"].update(input="0X" + "a" * 64),
        lambda b: b["steps"][0].update(proof=None),
        lambda b: b["steps"][0]["input"].update(salt=None),
        lambda b: b["steps"][0].update(anchor=99),
    ):
        b = copy.deepcopy(good)
        mutate(b)
        with pytest.raises(BundleError):
            asyncio.run(verify_bundle(b, world.trust, None))


# ---- the runners: two more verifiers over the same cases ---------------------------------------


@pytest.fixture(scope="module")
def cli_outcomes(battery_dir: Path) -> dict[str, Outcome]:
    """``ledgerflow verify --bundle`` (a separate process, as an outside verifier would be) over
    every case written above, once for both runners."""
    env = {**os.environ, "LEDGERFLOW_HOME": str(battery_dir / "no-home")}
    return python_outcomes(cases_from_manifest(battery_dir), env)


def test_the_cli_verifier_agrees_on_every_case(
    battery_dir: Path, cli_outcomes: dict[str, Outcome]
) -> None:
    """The CLI's verdicts and exit codes are the expected ones."""
    cases = cases_from_manifest(battery_dir)
    assert len(cases) >= 24
    mismatches = expectation_mismatches(cases, cli_outcomes)
    assert not mismatches, mismatches


def test_the_typescript_verifier_agrees_on_every_case(
    battery_dir: Path, cli_outcomes: dict[str, Outcome]
) -> None:
    """The independent TypeScript verifier (verifiers/ts, written from the spec alone) gives the
    expected verdict on every case, and the same verdict, head, seal, anchors and set of
    (step, code) findings as ledgerflow's CLI."""
    cases = cases_from_manifest(battery_dir)
    ts = ts_outcomes(cases)
    forgive_known_differences(cli_outcomes, ts)
    problems = disagreements(cli_outcomes, ts) + expectation_mismatches(cases, ts)
    assert not problems, "\n".join(problems)
