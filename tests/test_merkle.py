"""Merkle trees of checkpoint leaves: version 1 (OpenZeppelin-compatible, unsorted) and version 2
(`@openzeppelin/merkle-tree` StandardMerkleTree, checked against the JavaScript library itself).

The tree must verify with OpenZeppelin 5 ``MerkleProof.verify``; here it is checked against an
independent straightforward reimplementation (eth_utils keccak, integer comparison). The on-chain
cross-check lives with the contract tests.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from eth_utils import keccak as eth_keccak
from hypothesis import given, settings
from hypothesis import strategies as st

from ledgerflow.checkpoint import merkle
from ledgerflow.checkpoint.merkle import (
    MerkleTree,
    MultiVerifier,
    build_standard_tree,
    build_tree,
    hash_pair,
    keccak256,
    process_proof,
    standard_leaf,
    verify_proof,
)
from ledgerflow.checkpoint.records import leaf_hash, leaf_hash_v2

# --- independent reference ----------------------------------------------------------------------


def ref_node(a: bytes, b: bytes) -> bytes:
    """OpenZeppelin Hashes.commutativeKeccak256, written from its definition."""
    lo, hi = sorted((int.from_bytes(a, "big"), int.from_bytes(b, "big")))
    return eth_keccak(lo.to_bytes(32, "big") + hi.to_bytes(32, "big"))


def ref_levels(leaves: list[bytes]) -> list[list[bytes]]:
    levels = [list(leaves)]
    while len(levels[-1]) > 1:
        cur = levels[-1]
        nxt = [ref_node(cur[i], cur[i + 1]) for i in range(0, len(cur) - 1, 2)]
        if len(cur) % 2 == 1:
            nxt.append(cur[-1])
        levels.append(nxt)
    return levels


def ref_proof(leaves: list[bytes], index: int) -> list[bytes]:
    proof = []
    for level in ref_levels(leaves)[:-1]:
        sibling = index + 1 if index % 2 == 0 else index - 1
        if sibling < len(level):
            proof.append(level[sibling])
        index //= 2
    return proof


def ref_process(leaf: bytes, proof: list[bytes]) -> bytes:
    """OpenZeppelin MerkleProof.processProof."""
    node = leaf
    for sibling in proof:
        node = ref_node(node, sibling)
    return node


def step_leaves(n: int, tag: str = "s") -> list[bytes]:
    return [leaf_hash(eth_keccak(f"{tag}-{i}".encode())) for i in range(n)]


def flip(value: bytes, byte: int = -1, mask: int = 0x01) -> bytes:
    b = bytearray(value)
    b[byte] ^= mask
    return bytes(b)


# --- pinned vector: 5 leaves, step hash i = keccak256(uint8 i) ----------------------------------

VECTOR_STEP_HASHES = [
    "0xbc36789e7a1e281436464229828f817d6612f7b477d66591ff96a9e064bcc98a",
    "0x5fe7f977e71dba2ea1a68e21057beebb9be2ac30c6410aa38d4f3fbe41dcffd2",
    "0xf2ee15ea639b73fa3db9b34a245bdfa015c260c598b211bf05a1ecc4b3e3b4f2",
    "0x69c322e3248a5dfc29d73c5b0553b0185a35cd5bb6386747517ef7e53b15e287",
    "0xf343681465b9efe82c933c3e8748c70cb8aa06539c361de20f72eac04e766393",
]
VECTOR_LEAVES = [
    "0x343096bd2584d8dd159b7fc39f6b0d6fed8314f70c301f040611ded4dc7a2565",
    "0x8e0ee7025450565156484f9a3e8aa264e915a349b3b43ff2474d7cb2dee92d19",
    "0x7661a2d2e65d4456d069b7fffb38e0a41d94c58b6058d89416d78e43c0bfa865",
    "0x19073dae154b388af13684c363bd5f8126ca85be7faaae82412c7d05430faffd",
    "0x4d0918c7aeaa776ac8e59e359f887bb355fca9102b493c084b04709e5fec3ab8",
]
VECTOR_N01 = "0xafed3f608f7160caa68b823acb6424b8f928d3443ef786be93ef12784959a4a2"
VECTOR_N23 = "0xdb84fcb0c5f05f44352e8c63a254fc4902c191513d0823ca0cd29e59128a312f"
VECTOR_N0123 = "0xea259944eccea8ea1aea5d0bb9341b17400ee2322d3aa9b30efbb5247903e42a"
VECTOR_ROOT = "0xf3a91c10a2a1090a776f6d4aad32f4af6b6c251a63ce0c7ba674fd4f6120d720"
VECTOR_PROOFS = [
    [VECTOR_LEAVES[1], VECTOR_N23, VECTOR_LEAVES[4]],
    [VECTOR_LEAVES[0], VECTOR_N23, VECTOR_LEAVES[4]],
    [VECTOR_LEAVES[3], VECTOR_N01, VECTOR_LEAVES[4]],
    [VECTOR_LEAVES[2], VECTOR_N01, VECTOR_LEAVES[4]],
    [VECTOR_N0123],
]


def h(x: str) -> bytes:
    return bytes.fromhex(x.removeprefix("0x"))


def test_pinned_five_leaf_vector() -> None:
    step_hashes = [keccak256(bytes([i])) for i in range(5)]
    assert ["0x" + s.hex() for s in step_hashes] == VECTOR_STEP_HASHES
    leaves = [leaf_hash(s) for s in step_hashes]
    assert ["0x" + x.hex() for x in leaves] == VECTOR_LEAVES
    tree = build_tree(leaves)
    assert "0x" + tree.root.hex() == VECTOR_ROOT
    assert tree.depth == 3
    assert hash_pair(leaves[0], leaves[1]) == h(VECTOR_N01)
    assert hash_pair(leaves[2], leaves[3]) == h(VECTOR_N23)
    assert hash_pair(h(VECTOR_N01), h(VECTOR_N23)) == h(VECTOR_N0123)
    assert hash_pair(h(VECTOR_N0123), leaves[4]) == h(VECTOR_ROOT)
    for i in range(5):
        assert ["0x" + p.hex() for p in tree.proof(i)] == VECTOR_PROOFS[i]
        assert verify_proof(leaves[i], tree.proof(i), tree.root)
        assert ref_process(leaves[i], [h(p) for p in VECTOR_PROOFS[i]]) == h(VECTOR_ROOT)


# --- construction -------------------------------------------------------------------------------


@pytest.mark.parametrize("n", range(1, 34))
def test_sizes_match_reference_and_verify(n: int) -> None:
    leaves = step_leaves(n)
    tree = build_tree(leaves)
    levels = ref_levels(leaves)
    assert tree.root == levels[-1][0]
    assert len(tree) == n
    assert tree.leaves == tuple(leaves)
    assert tree.depth == len(levels) - 1
    mv = MultiVerifier()
    proofs = tree.proofs()
    for i, leaf in enumerate(leaves):
        proof = tree.proof(i)
        assert proof == proofs[i] == ref_proof(leaves, i)
        assert len(proof) <= tree.depth
        assert process_proof(leaf, proof) == tree.root
        assert ref_process(leaf, proof) == tree.root
        assert verify_proof(leaf, proof, tree.root)
        assert mv.verify(leaf, proof, tree.root)
        assert mv.process(leaf, proof) == tree.root
    assert all(mv.verify_many((leaf, proofs[i], tree.root) for i, leaf in enumerate(leaves)))


def test_single_leaf_tree() -> None:
    leaf = step_leaves(1)[0]
    tree = build_tree([leaf])
    assert tree.root == leaf
    assert tree.proof(0) == []
    assert tree.depth == 0
    assert verify_proof(leaf, [], leaf)
    assert not verify_proof(flip(leaf), [], leaf)
    assert MultiVerifier().verify(leaf, [], leaf)


def test_empty_and_malformed_inputs_rejected() -> None:
    with pytest.raises(ValueError):
        build_tree([])
    with pytest.raises(ValueError):
        build_tree([b"\x00" * 31])
    with pytest.raises(ValueError):
        build_tree([b"\x00" * 32, b"\x00" * 33])
    with pytest.raises(TypeError):
        build_tree(b"\x00" * 32)
    with pytest.raises(TypeError):
        build_tree(["0x" + "00" * 32])  # type: ignore[list-item]
    tree = build_tree(step_leaves(3))
    for bad in (-1, 3, 100):
        with pytest.raises(IndexError):
            tree.proof(bad)
    with pytest.raises(ValueError):
        process_proof(b"\x00" * 32, [b"\x00" * 31])
    with pytest.raises(ValueError):
        process_proof(b"\x00" * 31, [])


def test_bytes_like_leaves_accepted() -> None:
    leaves = step_leaves(4)
    assert build_tree([bytearray(x) for x in leaves]).root == build_tree(leaves).root


def test_odd_node_promoted_not_duplicated() -> None:
    a, b, c = step_leaves(3)
    tree = build_tree([a, b, c])
    assert tree.root == hash_pair(hash_pair(a, b), c)
    assert tree.proof(2) == [hash_pair(a, b)]  # no element for the level where c is promoted
    assert tree.root != build_tree([a, b, c, c]).root  # not Bitcoin-style duplication
    # 5 leaves: the fifth is promoted twice and meets the 4-leaf subtree at the top.
    leaves = step_leaves(5)
    five = build_tree(leaves)
    assert five.root == hash_pair(build_tree(leaves[:4]).root, leaves[4])
    assert five.proof(4) == [build_tree(leaves[:4]).root]


def test_leaf_order_is_kept() -> None:
    a, b, c, d = step_leaves(4)
    assert build_tree([a, b, c, d]).leaves == (a, b, c, d)
    # Sorted pair hashing: swapping siblings keeps the root, moving a leaf across pairs does not.
    # (The position is not part of the proof; the step hash binds run and seq instead.)
    assert build_tree([b, a, c, d]).root == build_tree([a, b, c, d]).root
    assert build_tree([a, c, b, d]).root != build_tree([a, b, c, d]).root


def test_hash_pair_is_openzeppelin_commutative_keccak() -> None:
    lo = b"\x00" * 31 + b"\x01"
    hi = b"\x80" + b"\x00" * 31
    assert hash_pair(lo, hi) == hash_pair(hi, lo) == eth_keccak(lo + hi)
    assert hash_pair(lo, lo) == eth_keccak(lo + lo)
    # big-endian: the first byte dominates
    x = b"\x01" + b"\xff" * 31
    y = b"\x02" + b"\x00" * 31
    assert hash_pair(y, x) == eth_keccak(x + y)
    with pytest.raises(ValueError):
        hash_pair(lo, b"\x01")


@given(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32))
@settings(max_examples=300, deadline=None)
def test_hash_pair_matches_reference(a: bytes, b: bytes) -> None:
    assert hash_pair(a, b) == ref_node(a, b)


# --- tampering ----------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 33])
def test_every_tampering_fails(n: int) -> None:
    leaves = step_leaves(n, tag=f"t{n}")
    tree = build_tree(leaves)
    root = tree.root
    mv = MultiVerifier()
    for i, leaf in enumerate(leaves):
        proof = tree.proof(i)
        cases: list[tuple[bytes, list[bytes], bytes]] = []
        for byte, mask in ((-1, 0x01), (0, 0x80)):
            cases.append((flip(leaf, byte, mask), proof, root))
            cases.append((leaf, proof, flip(root, byte, mask)))
            for j in range(len(proof)):
                tampered = list(proof)
                tampered[j] = flip(proof[j], byte, mask)
                cases.append((leaf, tampered, root))
        if proof:
            cases.append((leaf, proof[:-1], root))  # truncated
            cases.append((leaf, proof[1:], root))
        cases.append((leaf, [*proof, leaves[0]], root))  # extended
        if len(proof) > 1:
            cases.append((leaf, proof[::-1], root))  # reordered
        for j in range(n):
            if j != i:
                cases.append((leaves[j], proof, root))  # another leaf's proof
        for case in cases:
            assert not verify_proof(*case)
            assert ref_process(case[0], case[1]) != case[2]
        assert not any(mv.verify_many(cases))
        assert mv.verify(leaf, proof, root)  # the memo was not poisoned


def test_malformed_proofs_do_not_verify() -> None:
    leaves = step_leaves(6)
    tree = build_tree(leaves)
    root, proof = tree.root, tree.proof(2)
    bad: list[tuple[object, object, object]] = [
        (leaves[2], [proof[0][:31], *proof[1:]], root),
        (leaves[2], [proof[0] + b"\x00", *proof[1:]], root),
        (leaves[2][:31], proof, root),
        (leaves[2], proof, root + b"\x00"),
        (leaves[2], proof[0], root),  # a single value instead of a list
        (leaves[2], ["0x" + p.hex() for p in proof], root),  # hex strings are not bytes
        ("0x" + leaves[2].hex(), proof, root),
        (leaves[2], proof, None),
    ]
    mv = MultiVerifier()
    for leaf, prf, rt in bad:
        assert verify_proof(leaf, prf, rt) is False  # type: ignore[arg-type]
        assert mv.verify(leaf, prf, rt) is False  # type: ignore[arg-type]
    assert mv.verify_many(bad) == [False] * len(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        mv.process(leaves[2], [proof[0][:31]])


# --- MultiVerifier ------------------------------------------------------------------------------


def test_multiverifier_memo_across_runs_and_roots() -> None:
    trees = [build_tree(step_leaves(n, tag=f"m{n}")) for n in (1, 2, 9, 100, 257)]
    triples = [(t.leaves[i], t.proof(i), t.root) for t in trees for i in range(len(t))]
    # cross wiring: right proof, wrong root
    crossed = [
        (leaf, proof, trees[(k + 1) % len(trees)].root)
        for k, (leaf, proof, _) in enumerate(triples[::7])
    ]
    mv = MultiVerifier()
    assert mv.verify_many(triples) == [True] * len(triples)
    assert mv.verify_many(crossed) == [verify_proof(*c) for c in crossed]
    internal = sum(len(t) - 1 for t in trees)  # a binary tree of n leaves has n - 1 inner nodes
    assert len(mv) == internal
    mv.clear()
    assert len(mv) == 0
    small = MultiVerifier(max_entries=3)  # memo keeps being cleared; results must not change
    assert small.verify_many(triples) == [True] * len(triples)
    assert len(small) <= 3
    assert small.verify_many(crossed) == [verify_proof(*c) for c in crossed]
    with pytest.raises(ValueError):
        MultiVerifier(max_entries=0)


@given(
    n=st.integers(min_value=1, max_value=40),
    picks=st.lists(
        st.tuples(st.integers(0, 10_000), st.integers(0, 10_000), st.integers(0, 3)),
        min_size=1,
        max_size=30,
    ),
)
@settings(max_examples=150, deadline=None)
def test_multiverifier_agrees_with_verify_proof(n: int, picks: list[tuple[int, int, int]]) -> None:
    leaves = step_leaves(n, tag="h")
    tree = build_tree(leaves)
    other = build_tree(step_leaves(n + 1, tag="o"))
    mv = MultiVerifier()
    triples = []
    for a, b, mode in picks:
        i, j = a % n, b % n
        proof = tree.proof(j)
        root = tree.root if mode != 3 else other.root
        if mode == 2 and proof:
            proof = [*proof[:-1], flip(proof[-1], a % 32, 1 << (b % 8))]
        triples.append((leaves[i], proof, root))
    expected = [verify_proof(*t) for t in triples]
    assert expected == [ref_process(lf, p) == r for lf, p, r in triples]
    assert mv.verify_many(triples) == expected
    assert [mv.verify(*t) for t in triples] == expected  # now from a warm memo


# --- implementation properties ------------------------------------------------------------------


def test_fallback_keccak_gives_identical_results(monkeypatch: pytest.MonkeyPatch) -> None:
    leaves = step_leaves(37, tag="f")
    fast = build_tree(leaves)
    monkeypatch.setattr(merkle, "_RAW", None)
    slow = build_tree(leaves)
    assert slow.root == fast.root
    assert slow.proofs() == fast.proofs()
    assert all(
        MultiVerifier().verify_many((lf, slow.proof(i), slow.root) for i, lf in enumerate(leaves))
    )
    assert keccak256(b"abc") == eth_keccak(b"abc")


def test_raw_keccak_core_is_in_use() -> None:
    # pycryptodome's ctypes backend is what the project installs; if this fails the module still
    # works (fallback) but is about 3x slower.
    assert merkle._RAW is not None


def test_thread_safety() -> None:
    sizes = [1, 2, 3, 50, 129, 500] * 6
    expected = {n: build_tree(step_leaves(n, tag="x")).root for n in set(sizes)}
    leaves_of = {n: step_leaves(n, tag="x") for n in set(sizes)}

    def job(n: int) -> bool:
        tree = build_tree(leaves_of[n])
        triples = [(lf, tree.proof(i), expected[n]) for i, lf in enumerate(leaves_of[n])]
        return tree.root == expected[n] and all(MultiVerifier().verify_many(triples))

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert all(pool.map(job, sizes))


def test_does_not_import_eth_hash_auto() -> None:
    code = (
        "import sys, ledgerflow.checkpoint.merkle; "
        "bad = [m for m in sys.modules if m.startswith(('eth_hash', 'eth_utils', 'web3'))]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_ten_thousand_step_run_is_fast() -> None:
    """A 10,000-step run: build, prove and verify every step (generous bound; see report)."""
    leaves = [keccak256(b"\x00" + keccak256(i.to_bytes(4, "big"))) for i in range(10_000)]
    t0 = time.perf_counter()
    tree = build_tree(leaves)
    proofs = tree.proofs()
    t1 = time.perf_counter()
    ok = MultiVerifier().verify_many(zip(leaves, proofs, [tree.root] * len(leaves), strict=True))
    t2 = time.perf_counter()
    assert all(ok)
    assert isinstance(tree, MerkleTree)
    assert t1 - t0 < 2.0
    assert len(leaves) / (t2 - t1) > 20_000  # measured ~270,000 proofs/s on one core


# --- version 2: StandardMerkleTree of @openzeppelin/merkle-tree ----------------------------------

OZ_SCRIPT = Path(__file__).parent / "support" / "oz_tree.js"

#: docs/checkpoint-spec.md, "A five-value StandardMerkleTree".
V2_LEAVES = [
    "0x357a815b6fffc3f38b08de8f1e754bef7d52acc551d7b5cd58b4634854fe674c",
    "0x534afc8420bab6c013a3e42dc77ef141e8f16ee0206928dd007663e9c85068dd",
    "0x0b090781db9a05f5e751796e8ded776250a18f7606440b133a9e0656897175d5",
    "0x84d4332c3d26f7719582a2ae02a734055d18f3991a1339235c12ed9770d2ae1d",
    "0x7a7790fd86a12f320f509d5b3d12a21ba4309ca44ccf92acf57a3e9f2052d604",
]
V2_TREE = [
    "0x7ca574343c8c38aed5aee8931390586a935272ef389f5b656f1af1ecc0450d9a",
    "0x5c61a0983407c6222fb92f5f5b0611822e79a79547cd261c7673eb017966def8",
    "0x4157bfb288d04a26c641b054e08f0e19df7b9b25b12e281de97e2a3e37950f9d",
    "0x30bfddd3e06dae822be065c3d408bcc467777e7dcc29f5aa7bab4533c9776a72",
    V2_LEAVES[3],
    V2_LEAVES[4],
    V2_LEAVES[1],
    V2_LEAVES[0],
    V2_LEAVES[2],
]
V2_PROOF_INDICES = [[8, 4, 2], [5, 1], [7, 4, 2], [3, 2], [6, 1]]


def _hexes(values: list[bytes]) -> list[str]:
    return ["0x" + v.hex() for v in values]


def test_v2_pinned_five_value_vector() -> None:
    values = [keccak256(bytes([i])) for i in range(5)]
    assert _hexes(values) == VECTOR_STEP_HASHES
    tree = build_standard_tree(values)
    assert _hexes([tree.leaf(i) for i in range(5)]) == V2_LEAVES
    assert _hexes([standard_leaf(v) for v in values]) == V2_LEAVES
    assert [leaf_hash_v2(v) for v in values] == [standard_leaf(v) for v in values]
    assert _hexes(list(tree.tree)) == V2_TREE
    assert [tree.tree_index(i) for i in range(5)] == [7, 6, 8, 4, 5]
    for i, indices in enumerate(V2_PROOF_INDICES):
        assert _hexes(tree.proof(i)) == [V2_TREE[j] for j in indices]
        assert verify_proof(tree.leaf(i), tree.proof(i), tree.root)
        assert ref_process(tree.leaf(i), tree.proof(i)) == tree.root


def _random_sets() -> list[list[bytes]]:
    rng = random.Random(20261202)
    sets: list[list[bytes]] = []
    for n in range(1, 71):
        for _ in range(2):
            values = [rng.randbytes(32) for _ in range(n)]
            if n > 2:  # duplicates: the same step hash twice (and once three times)
                values[rng.randrange(n)] = values[rng.randrange(n)]
                if n > 5:
                    values[rng.randrange(n)] = values[0]
                    values[rng.randrange(n)] = values[0]
            sets.append(values)
    # Leaves equal as integers but differing in the order given: the sort must be stable.
    same = rng.randbytes(32)
    sets.append([same, rng.randbytes(32), same, same])
    return sets


def test_v2_identical_to_openzeppelin_merkle_tree_library() -> None:
    """Roots, every proof and the whole node array equal the JavaScript library's, for 142 random
    value sets of 1 to 70 values (with duplicates)."""
    sets = _random_sets()
    done = subprocess.run(
        ["node", str(OZ_SCRIPT)],
        input=json.dumps([_hexes(s) for s in sets]),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    results = json.loads(done.stdout)
    assert len(results) == len(sets)
    for values, js in zip(sets, results, strict=True):
        tree = build_standard_tree(values)
        assert js["verified"] is True
        assert "0x" + tree.root.hex() == js["root"], len(values)
        assert [_hexes(p) for p in tree.proofs()] == js["proofs"], len(values)
        assert _hexes(list(tree.tree)) == js["tree"], len(values)
        for i, proof in enumerate(tree.proofs()):
            assert process_proof(tree.leaf(i), proof) == tree.root


def test_v2_single_value_and_errors() -> None:
    value = keccak256(b"one")
    tree = build_standard_tree([value])
    assert tree.root == standard_leaf(value) == keccak256(keccak256(value))
    assert tree.proof(0) == []
    with pytest.raises(ValueError):
        build_standard_tree([])
    with pytest.raises(ValueError):
        build_standard_tree([b"short"])
    with pytest.raises(TypeError):
        build_standard_tree(value)
    with pytest.raises(IndexError):
        tree.proof(1)


def test_v2_differs_from_v1_where_the_issue_saw_it() -> None:
    """The v1 tree (unsorted, promoted odd nodes, 0x00-prefixed leaves) is kept for v1 runs."""
    for n in (5, 7, 9):
        values = [keccak256(bytes([i])) for i in range(n)]
        v1 = build_tree([leaf_hash(v) for v in values]).root
        assert build_standard_tree(values).root != v1


def test_v2_ten_thousand_values_build_fast() -> None:
    values = [keccak256(i.to_bytes(4, "big")) for i in range(10_000)]
    t0 = time.perf_counter()
    tree = build_standard_tree(values)
    proofs = tree.proofs()
    t1 = time.perf_counter()
    leaves = [tree.leaf(i) for i in range(len(values))]
    ok = MultiVerifier().verify_many(zip(leaves, proofs, [tree.root] * len(leaves), strict=True))
    assert all(ok)
    assert t1 - t0 < 2.0  # measured about 0.05 s
