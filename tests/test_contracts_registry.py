"""CheckpointRegistry v2 on the real anvil, through its committed artifact.

Covers the per-step chain (append-only, refused after the seal), ``sealRun``, ``anchorRoot`` with
seals (events only, in order), and ``verifyStep`` over OpenZeppelin ``StandardMerkleTree`` roots
(leaf encoding ``["bytes32"]``). The registry is deployed once per module and every test runs in
an EVM snapshot that is reverted afterwards.

This module is self-contained on purpose (it only needs the artifact and anvil), so it can travel
with the registry's own commit.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_utils import function_abi_to_4byte_selector, get_abi_input_names, get_abi_input_types
from eth_utils import keccak as _keccak
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from web3 import Web3
from web3.contract import Contract
from web3.contract.contract import ContractFunction
from web3.exceptions import ContractCustomError
from web3.logs import DISCARD
from web3.types import TxReceipt

from ledgerflow.chain.artifacts import load_artifact

ZERO = b"\x00" * 32
WRITER_ROLE = _keccak(b"WRITER_ROLE")

#: Roots that ``@openzeppelin/merkle-tree`` 1.0.8 gives for
#: ``StandardMerkleTree.of([[keccak256("oz-step-{n}-{i}")] for i < n], ["bytes32"]).root``.
JS_ROOTS = {
    1: "0xbaa3139c65c1f53e362239ac752959638a05a788d61f62105ccb2fb355e76645",
    2: "0x9ed90960954dd3444ba93a88a5a1aacb1b3cbd86e4149da1e5b610503c8ef5d8",
    3: "0xbd8a21424f8debf69a7f20160f3bd4752f868c05ad65cd5e199f1dfde5f773c5",
    4: "0x23ade0a2f93fdc0126c8e34890d23cfc974d6fa9139ae98bf26792c83969025a",
    5: "0x8cf80725dec69a3e5f62be0885a7ec7fb6da8daee950f24fd2a4755d3a6c938a",
    7: "0x8a7dff405f7e024a6e83024ceb41853cf608eab63eed90ff22bf24c36fea0b51",
    8: "0xadca2c363754e39bc5aebdc321012208ee61194fef3b46c864cf7f88537d7992",
    9: "0x3bacb38ee08a93971e9fd5b76bd0f782836c6aef8b09a819e4e190761e19fe2a",
    16: "0x666920336c26ef0487a5a4e9bb287ff513ca9bc9143013cc4c3126140d757cfe",
}


def keccak(data: bytes) -> bytes:
    return bytes(_keccak(data))


def b32(text: str) -> bytes:
    return keccak(text.encode())


def next_head(head: bytes, step_hash: bytes) -> bytes:
    return keccak(head + step_hash)


# --- a minimal StandardMerkleTree(["bytes32"]) for the tests (checked against the JS library) ---


def oz_leaf(step_hash: bytes) -> bytes:
    """``StandardMerkleTree`` leaf of ``[step_hash]`` with encoding ``["bytes32"]``."""
    return keccak(keccak(abi_encode(["bytes32"], [step_hash])))


def oz_node(a: bytes, b: bytes) -> bytes:
    return keccak(min(a, b) + max(a, b))


class OzTree:
    """OpenZeppelin's array layout: leaves sorted, ``tree[len-1-j]`` is sorted leaf ``j``."""

    def __init__(self, step_hashes: list[bytes]) -> None:
        leaves = sorted(oz_leaf(s) for s in step_hashes)
        self.tree: list[bytes] = [ZERO] * (2 * len(leaves) - 1)
        for j, leaf in enumerate(leaves):
            self.tree[len(self.tree) - 1 - j] = leaf
        for i in range(len(self.tree) - 1 - len(leaves), -1, -1):
            self.tree[i] = oz_node(self.tree[2 * i + 1], self.tree[2 * i + 2])
        self.index = {leaf: len(self.tree) - 1 - j for j, leaf in enumerate(leaves)}

    @property
    def root(self) -> bytes:
        return self.tree[0]

    def proof(self, step_hash: bytes) -> list[bytes]:
        i = self.index[oz_leaf(step_hash)]
        out = []
        while i > 0:
            out.append(self.tree[i - 1 if i % 2 == 0 else i + 1])
            i = (i - 1) // 2
        return out


# --- fixtures and helpers -------------------------------------------------------------------------


@dataclass
class Reg:
    w3: Web3
    c: Contract
    writer: str
    stranger: str

    def rpc(self, method: str, *params: Any) -> Any:
        response = self.w3.provider.make_request(method, list(params))  # type: ignore[arg-type]
        assert "error" not in response, response
        return response["result"]


@pytest.fixture(scope="module")
def reg(anvil: Any) -> Reg:
    w3 = Web3(Web3.HTTPProvider(anvil.rpc_url))
    writer, stranger = w3.eth.accounts[0], w3.eth.accounts[7]
    artifact = load_artifact("CheckpointRegistry")
    factory = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    receipt = w3.eth.wait_for_transaction_receipt(factory.constructor().transact({"from": writer}))
    c = w3.eth.contract(address=receipt["contractAddress"], abi=artifact.abi)
    send(c.functions.grantRole(WRITER_ROLE, writer), writer)
    return Reg(w3, c, writer, stranger)


@pytest.fixture(autouse=True)
def isolated(reg: Reg) -> Iterator[None]:
    snapshot = reg.rpc("evm_snapshot")
    yield
    assert reg.rpc("evm_revert", snapshot) is True


def send(fn: ContractFunction, sender: str) -> TxReceipt:
    receipt = fn.w3.eth.wait_for_transaction_receipt(
        fn.transact({"from": sender}), timeout=30, poll_latency=0.02
    )
    assert receipt["status"] == 1
    return receipt


def reverts(fn: ContractFunction, sender: str) -> tuple[str, dict[str, Any]]:
    """The decoded custom error ``fn`` reverts with when sent by ``sender``."""
    with pytest.raises(ContractCustomError) as info:
        fn.transact({"from": sender})
    data = info.value.data
    assert isinstance(data, str)
    raw = bytes.fromhex(data.removeprefix("0x"))
    for entry in fn.contract_abi:
        if entry["type"] == "error" and function_abi_to_4byte_selector(entry) == raw[:4]:
            types = get_abi_input_types(entry)
            values = [
                Web3.to_checksum_address(v) if ty == "address" else v
                for ty, v in zip(types, abi_decode(types, raw[4:]), strict=True)
            ]
            return entry["name"], dict(zip(get_abi_input_names(entry), values, strict=True))
    raise AssertionError(f"revert data {data} matches no error of the registry")


def events(receipt: TxReceipt, c: Contract) -> list[tuple[str, dict[str, Any]]]:
    """Every registry event of ``receipt``, in log order, as (name, args)."""
    out: list[tuple[str, int, dict[str, Any]]] = []
    for name in ("Checkpointed", "RootAnchored", "RunSealed"):
        for ev in c.events[name]().process_receipt(receipt, errors=DISCARD):
            out.append((name, ev["logIndex"], dict(ev["args"])))
    return [(name, args) for name, _, args in sorted(out, key=lambda e: e[1])]


def gas_line(capsys: pytest.CaptureFixture[str], text: str) -> None:
    with capsys.disabled():
        print(f"\n[gas] {text}")


def checkpoint_run(reg: Reg, run: bytes, n: int) -> bytes:
    head = run
    for seq in range(n):
        step = b32(f"{run.hex()}-{seq}")
        send(reg.c.functions.checkpoint(run, seq, head, step), reg.writer)
        head = next_head(head, step)
    return head


# --- access control -------------------------------------------------------------------------------


def test_every_write_needs_the_writer_role(reg: Reg) -> None:
    f = reg.c.functions
    run = b32("run-acl")
    calls = [
        f.checkpoint(run, 0, run, b32("s0")),
        f.sealRun(run, 1, run),
        f.anchorRoot(b32("root"), 1, []),
        f.anchorRoot(b32("root"), 1, [(run, 1, b32("head"))]),
    ]
    for fn in calls:
        name, args = reverts(fn, reg.stranger)
        assert name == "AccessControlUnauthorizedAccount"
        assert args == {"account": reg.stranger, "neededRole": WRITER_ROLE}


# --- per-step chain and sealRun -------------------------------------------------------------------


def test_chain_is_append_only(reg: Reg, capsys: pytest.CaptureFixture[str]) -> None:
    f = reg.c.functions
    run = b32("run-append")
    assert tuple(f.headOf(run).call()) == (run, 0, False)

    steps = [b32(f"step-{i}") for i in range(3)]
    head, gas = run, []
    for seq, step in enumerate(steps):
        assert f.checkpoint(run, seq, head, step).call({"from": reg.writer}) == next_head(
            head, step
        )
        receipt = send(f.checkpoint(run, seq, head, step), reg.writer)
        gas.append(receipt["gasUsed"])
        head = next_head(head, step)
        assert events(receipt, reg.c) == [
            ("Checkpointed", {"run": run, "seq": seq, "stepHash": step, "head": head})
        ]
        assert tuple(f.headOf(run).call()) == (head, seq + 1, False)
    gas_line(capsys, f"checkpoint: first step {gas[0]}, later steps {gas[1]}")

    # A repeated step (the same seq and prev again) is refused by its sequence number.
    assert reverts(f.checkpoint(run, 2, next_head(head, ZERO), steps[2]), reg.writer) == (
        "CheckpointSeqMismatch",
        {"expected": 3, "got": 2},
    )
    # A step computed on a stale head is refused with the head it should have used.
    stale = b32("not-the-head")
    assert reverts(f.checkpoint(run, 3, stale, b32("step-3")), reg.writer) == (
        "CheckpointPrevMismatch",
        {"expected": head, "got": stale},
    )
    # The first step of a run must chain onto the run key itself.
    other = b32("run-other")
    assert reverts(f.checkpoint(other, 0, head, steps[0]), reg.writer) == (
        "CheckpointPrevMismatch",
        {"expected": other, "got": head},
    )
    assert tuple(f.headOf(run).call()) == (head, 3, False)


def test_seal_run(reg: Reg, capsys: pytest.CaptureFixture[str]) -> None:
    f = reg.c.functions
    run = b32("run-seal")
    head = checkpoint_run(reg, run, 3)

    # The seal must commit exactly the registry's own state of the run.
    assert reverts(f.sealRun(run, 2, head), reg.writer) == (
        "CheckpointSealMismatch",
        {"run": run, "expectedSteps": 3, "steps": 2, "expectedHead": head, "head": head},
    )
    wrong = b32("wrong-head")
    assert reverts(f.sealRun(run, 3, wrong), reg.writer) == (
        "CheckpointSealMismatch",
        {"run": run, "expectedSteps": 3, "steps": 3, "expectedHead": head, "head": wrong},
    )
    assert reverts(f.sealRun(run, 4, head), reg.writer)[0] == "CheckpointSealMismatch"
    # A run with no steps cannot be sealed (every v2 run ends with its outcome step).
    empty = b32("run-empty")
    assert reverts(f.sealRun(empty, 0, empty), reg.writer) == (
        "CheckpointEmptySeal",
        {"run": empty},
    )
    assert reverts(f.sealRun(empty, 1, empty), reg.writer) == (
        "CheckpointSealMismatch",
        {"run": empty, "expectedSteps": 0, "steps": 1, "expectedHead": empty, "head": empty},
    )

    receipt = send(f.sealRun(run, 3, head), reg.writer)
    gas_line(capsys, f"sealRun: {receipt['gasUsed']}")
    assert events(receipt, reg.c) == [("RunSealed", {"run": run, "steps": 3, "head": head})]
    assert tuple(f.headOf(run).call()) == (head, 3, True)

    # Sealed: no second seal (not even the same one) and no further step.
    assert reverts(f.sealRun(run, 3, head), reg.writer) == ("CheckpointRunSealed", {"run": run})
    assert reverts(f.checkpoint(run, 3, head, b32("late")), reg.writer) == (
        "CheckpointRunSealed",
        {"run": run},
    )
    assert tuple(f.headOf(run).call()) == (head, 3, True)

    # Other runs are untouched.
    other = b32("run-next")
    other_head = checkpoint_run(reg, other, 1)
    assert tuple(f.headOf(other).call()) == (other_head, 1, False)


def test_sealed_flag_shares_the_steps_slot(reg: Reg) -> None:
    """Sealing writes no new storage slot: ``isSealed`` is packed with ``steps``."""
    f = reg.c.functions
    run = b32("run-packed")
    head = checkpoint_run(reg, run, 2)
    # _runs is the registry's second state variable (AccessControl's _roles is slot 0).
    base = int.from_bytes(keccak(run + (1).to_bytes(32, "big")), "big")
    before = [reg.w3.eth.get_storage_at(reg.c.address, base + k) for k in range(3)]
    send(f.sealRun(run, 2, head), reg.writer)
    after = [reg.w3.eth.get_storage_at(reg.c.address, base + k) for k in range(3)]
    assert before[0] == after[0] == head
    assert int.from_bytes(before[1], "big") == 2
    assert int.from_bytes(after[1], "big") == 2 | (1 << 64)
    assert before[2] == after[2] == ZERO


# --- anchorRoot with seals ------------------------------------------------------------------------


def test_anchor_root_with_seals(reg: Reg, capsys: pytest.CaptureFixture[str]) -> None:
    f = reg.c.functions
    gas: dict[int, int] = {}
    for count in (0, 1, 8):
        root = b32(f"root-{count}")
        seals = [(b32(f"run-{count}-{i}"), i + 1, b32(f"head-{count}-{i}")) for i in range(count)]
        assert f.anchoredAt(root).call() == 0
        receipt = send(f.anchorRoot(root, 2 * count + 1, seals), reg.writer)
        gas[count] = receipt["gasUsed"]
        assert f.anchoredAt(root).call() == receipt["blockNumber"]
        # RootAnchored first, then one RunSealed per seal in the order given.
        assert events(receipt, reg.c) == [
            ("RootAnchored", {"root": root, "leafCount": 2 * count + 1}),
            *[("RunSealed", {"run": r, "steps": s, "head": h}) for r, s, h in seals],
        ]
        # Batched seals are events only: the per-step state of those runs is untouched.
        for r, _, _ in seals:
            assert tuple(f.headOf(r).call()) == (r, 0, False)
    per_seal = (gas[8] - gas[1]) / 7
    gas_line(
        capsys,
        f"anchorRoot: 0 seals {gas[0]}, 1 seal {gas[1]}, 8 seals {gas[8]} "
        f"({per_seal:.0f} per extra seal)",
    )
    # A seal is a LOG2 with 64 data bytes (1,637) plus 96 calldata bytes (at most 1,536) and the
    # loop: no storage slot (a new one alone would be 22,100).
    assert per_seal < 4_000


def test_anchor_root_refusals(reg: Reg) -> None:
    f = reg.c.functions
    root = b32("root-once")
    send(f.anchorRoot(root, 2, []), reg.writer)
    assert reverts(f.anchorRoot(root, 2, []), reg.writer) == (
        "CheckpointRootAlreadyAnchored",
        {"root": root},
    )
    assert reverts(f.anchorRoot(ZERO, 0, []), reg.writer) == ("CheckpointEmptyRoot", {})
    run = b32("run-zero-steps")
    assert reverts(f.anchorRoot(b32("root-2"), 1, [(run, 0, run)]), reg.writer) == (
        "CheckpointEmptySeal",
        {"run": run},
    )
    assert f.anchoredAt(b32("root-2")).call() == 0  # the whole anchoring reverted


# --- verifyStep over StandardMerkleTree roots -----------------------------------------------------


def test_test_tree_matches_the_js_library() -> None:
    for n, root in JS_ROOTS.items():
        tree = OzTree([b32(f"oz-step-{n}-{i}") for i in range(n)])
        assert "0x" + tree.root.hex() == root, n


def test_verify_step_standard_merkle_tree(reg: Reg, capsys: pytest.CaptureFixture[str]) -> None:
    f = reg.c.functions
    for n in JS_ROOTS:
        steps = [b32(f"oz-step-{n}-{i}") for i in range(n)]
        tree = OzTree(steps)
        assert f.verifyStep(tree.root, steps[0], tree.proof(steps[0])).call() is False  # unanchored
        send(f.anchorRoot(tree.root, n, []), reg.writer)
        for step in steps:
            assert f.verifyStep(tree.root, step, tree.proof(step)).call() is True, (n, step)
        if n > 1:
            assert f.verifyStep(tree.root, steps[0], tree.proof(steps[1])).call() is False
            # A leaf value is not a step hash: the double hash keeps the domains apart.
            assert f.verifyStep(tree.root, oz_leaf(steps[0]), tree.proof(steps[0])).call() is False
            # An internal node is not a step either.
            assert f.verifyStep(tree.root, tree.tree[1], [tree.tree[2]]).call() is False
        assert f.verifyStep(tree.root, b32("forged"), tree.proof(steps[0])).call() is False

    # The v1 leaf keccak256(0x00 || stepHash) is no longer accepted.
    a, b = b32("v1-a"), b32("v1-b")
    v1 = oz_node(keccak(b"\x00" + a), keccak(b"\x00" + b))
    send(f.anchorRoot(v1, 2, []), reg.writer)
    assert f.verifyStep(v1, a, [keccak(b"\x00" + b)]).call() is False

    steps = [b32(f"depth-{i}") for i in range(16)]
    tree = OzTree(steps)
    send(f.anchorRoot(tree.root, 16, []), reg.writer)
    g = f.verifyStep(tree.root, steps[0], tree.proof(steps[0])).estimate_gas()
    gas_line(capsys, f"verifyStep (eth_call, 16 leaves, 4 levels): {g}")


# --- registry invariants under random operations (hypothesis) -------------------------------------


def test_registry_state_machine(reg: Reg) -> None:
    """Random checkpoints (good and bad), seals and anchors: the on-chain state of every run is
    exactly the model's (append-only, nothing after the seal), and every refusal is the named one.
    """
    f = reg.c.functions
    runs = [b32(f"sm-run-{i}") for i in range(3)]

    class RegistryMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.snapshot = reg.rpc("evm_snapshot")
            self.model = {r: (r, 0, False) for r in runs}
            self.roots: set[bytes] = set()
            self.counter = 0

        def teardown(self) -> None:
            reg.rpc("evm_revert", self.snapshot)

        def fresh(self) -> bytes:
            self.counter += 1
            return b32(f"sm-{self.counter}")

        @rule(i=st.integers(0, 2), kind=st.sampled_from(["ok", "seq", "prev"]))
        def checkpoint(self, i: int, kind: str) -> None:
            run = runs[i]
            head, steps, sealed = self.model[run]
            step = self.fresh()
            seq = steps + (1 if kind == "seq" else 0)
            prev = self.fresh() if kind == "prev" else head
            fn = f.checkpoint(run, seq, prev, step)
            if sealed:
                assert reverts(fn, reg.writer) == ("CheckpointRunSealed", {"run": run})
            elif kind == "seq":
                assert reverts(fn, reg.writer)[0] == "CheckpointSeqMismatch"
            elif kind == "prev":
                assert reverts(fn, reg.writer)[0] == "CheckpointPrevMismatch"
            else:
                send(fn, reg.writer)
                self.model[run] = (next_head(head, step), steps + 1, False)

        @rule(i=st.integers(0, 2), honest=st.booleans())
        def seal(self, i: int, honest: bool) -> None:
            run = runs[i]
            head, steps, sealed = self.model[run]
            fn = f.sealRun(run, steps if honest else steps + 1, head)
            if sealed:
                assert reverts(fn, reg.writer)[0] == "CheckpointRunSealed"
            elif honest and steps == 0:
                assert reverts(fn, reg.writer)[0] == "CheckpointEmptySeal"
            elif not honest:
                assert reverts(fn, reg.writer)[0] == "CheckpointSealMismatch"
            else:
                receipt = send(fn, reg.writer)
                assert events(receipt, reg.c) == [
                    ("RunSealed", {"run": run, "steps": steps, "head": head})
                ]
                self.model[run] = (head, steps, True)

        @precondition(lambda self: len(self.roots) < 20)
        @rule(reuse=st.booleans(), seals=st.integers(0, 3))
        def anchor(self, reuse: bool, seals: int) -> None:
            root = next(iter(self.roots)) if reuse and self.roots else self.fresh()
            batch = [(self.fresh(), 1, self.fresh()) for _ in range(seals)]
            fn = f.anchorRoot(root, 1, batch)
            if root in self.roots:
                assert reverts(fn, reg.writer)[0] == "CheckpointRootAlreadyAnchored"
            else:
                send(fn, reg.writer)
                self.roots.add(root)

        @invariant()
        def chain_matches_model(self) -> None:
            for run in runs:
                assert tuple(f.headOf(run).call()) == self.model[run]

    run_state_machine_as_test(
        RegistryMachine,
        settings=settings(
            max_examples=10,
            stateful_step_count=15,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
