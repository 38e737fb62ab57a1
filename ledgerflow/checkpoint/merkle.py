"""Merkle trees of checkpoint leaves, compatible with OpenZeppelin 5 ``MerkleProof``.

Normative description: docs/checkpoint-spec.md, "Batched anchoring". In short:

* leaves are 32-byte values, kept in the given order (for checkpoints each leaf is
  ``keccak256(0x00 || step_hash)``, see :func:`ledgerflow.checkpoint.leaf_hash`);
* an internal node is ``keccak256(min(a, b) || max(a, b))``, comparing ``a`` and ``b`` as 32-byte
  big-endian unsigned integers (OpenZeppelin ``Hashes.commutativeKeccak256``);
* each level is built by hashing pairs left to right; an odd last node is promoted unchanged to
  the next level (never duplicated), so its proof has no element for that level;
* a proof lists the sibling hashes from the leaf upwards; it verifies when folding it into the
  leaf with the commutative pair hash yields the root (``MerkleProof.verify`` /
  ``verifyCalldata`` on chain).

This module is imported by workflow code: it is deterministic, does no I/O, keeps no mutable
module state and does not import ``eth_hash.auto`` (which trips Temporal's workflow sandbox).
Keccak-256 comes from safe-pysha3 (one C call per hash, eth-hash's ``pysha3`` backend) when it is
installed; otherwise from pycryptodome's Keccak core through ``ctypes`` with one C hash state per
operation, which removes most of the per-hash Python overhead of ``Crypto.Hash.keccak.new`` (about
1.0 us instead of 4.3 us per 64-byte node); if that core is unavailable it falls back to
``keccak.new``. Each implementation is checked against known answers at import time.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import os
import threading
from collections.abc import Callable, Iterable, Sequence

from Crypto.Util._file_system import pycryptodome_filename

__all__ = [
    "MerkleTree",
    "MultiVerifier",
    "StandardTree",
    "build_standard_tree",
    "build_tree",
    "hash_pair",
    "keccak256",
    "keccak256_bytes",
    "process_proof",
    "standard_layout",
    "standard_leaf",
    "verify_proof",
]

_Hash64 = Callable[[bytes], bytes]


# --- keccak-256 ---------------------------------------------------------------------------------


def _slow_keccak256(data: bytes) -> bytes:
    # Imported on first use only: Crypto.Hash.keccak loads its C core through cffi when cffi is
    # installed, which parses C declarations at import (about 0.1 s of every CLI start).
    from Crypto.Hash import keccak as keccak_mod

    return keccak_mod.new(data=data, digest_bits=256).digest()


#: Known answers the C core must give before it is used (keccak-256, not SHA3-256).
_KNOWN_ANSWERS = (
    (b"", "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"),
    (b"\x00" * 33, "f39a869f62e75cf5f0bf914688a6b289caf2049435d8e68c5c5e6d05e44913f3"),
    (bytes(range(64)), "002030bde3d4cf89919649775cd71875c4d0ab1708a380e03fefc3a28aa24831"),
    (bytes(range(256)) * 3, "00e77ce2c4f77212a0d5df106b08157b77058479357a98a6039b457c469723e4"),
    (bytes(64), "ad3228b676f7d3cd4284a5443f17f1962b36e491b30a40b2405849e597ba5fb5"),
)


_PER_THREAD = threading.local()


def _keccak_library_path() -> str:
    """The file of pycryptodome's Keccak core, found the way pycryptodome's loader finds it
    (without importing ``Crypto.Hash.keccak``, whose cffi backend is slow to import)."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = pycryptodome_filename(["Crypto", "Hash"], "_keccak" + suffix)
        if os.path.isfile(path):
            return str(path)
    raise OSError("pycryptodome's Keccak core not found")


class _RawKeccak:
    """pycryptodome's Keccak C functions, called without the per-object wrapper.

    ``PyDLL`` keeps the GIL during each call. A C state is never shared between operations (and
    hence never between threads): every public function opens its own and frees it.
    """

    def __init__(self) -> None:
        lib = ctypes.PyDLL(_keccak_library_path())
        self.init = lib.keccak_init
        self.destroy = lib.keccak_destroy
        self.reset = lib.keccak_reset
        self.absorb = lib.keccak_absorb
        self.digest = lib.keccak_digest
        self.capacity = ctypes.c_size_t(64)  # 512-bit capacity: Keccak-256
        self.rounds = ctypes.c_ubyte(24)
        self.out_len = ctypes.c_size_t(32)
        self.padding = ctypes.c_ubyte(0x01)  # original Keccak padding, not SHA3's 0x06
        self.n64 = ctypes.c_size_t(64)

    def open(self) -> tuple[ctypes.c_void_p, ctypes.Array[ctypes.c_char]]:
        state = ctypes.c_void_p()
        if self.init(ctypes.byref(state), self.capacity, self.rounds):
            raise RuntimeError("keccak_init failed")
        return state, ctypes.create_string_buffer(32)

    def one(self, data: bytes) -> bytes:
        # One reusable C state per thread (never shared between threads): reset, absorb, digest.
        cached = getattr(_PER_THREAD, "keccak", None)
        if cached is None:
            cached = _PER_THREAD.keccak = self.open()
        state, buf = cached
        if (
            self.reset(state)
            | self.absorb(state, data, ctypes.c_size_t(len(data)))
            | self.digest(state, buf, self.out_len, self.padding)
        ):
            raise RuntimeError("keccak failed")
        return buf.raw

    def hasher64(self, state: ctypes.c_void_p, buf: ctypes.Array[ctypes.c_char]) -> _Hash64:
        """A function hashing 64-byte preimages with ``state``; valid until ``state`` is freed."""
        reset, absorb, digest = self.reset, self.absorb, self.digest
        n64, out_len, padding = self.n64, self.out_len, self.padding

        def h64(pre: bytes) -> bytes:
            if reset(state) | absorb(state, pre, n64) | digest(state, buf, out_len, padding):
                raise RuntimeError("keccak failed")
            return buf.raw

        return h64


def _load_raw() -> _RawKeccak | None:
    try:
        raw = _RawKeccak()
        if any(raw.one(data).hex() != digest for data, digest in _KNOWN_ANSWERS):
            return None
        state, buf = raw.open()
        try:
            h64 = raw.hasher64(state, buf)
            if any(h64(d).hex() != digest for d, digest in _KNOWN_ANSWERS if len(d) == 64):
                return None
        finally:
            raw.destroy(state)
        return raw
    except Exception:  # any problem with the private C entry points: use the public API
        return None


_RAW = _load_raw()


def _load_sha3() -> Callable[[bytes], bytes] | None:
    """safe-pysha3's Keccak-256 (one C call per hash, about 3x faster than the ctypes path), if
    it is installed and gives the known answers."""
    try:
        import sha3  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    new = sha3.keccak_256

    def one(data: bytes) -> bytes:
        return new(data).digest()  # type: ignore[no-any-return]

    if any(one(data).hex() != digest for data, digest in _KNOWN_ANSWERS):
        return None
    return one


_SHA3 = _load_sha3()
#: keccak-256 of ``bytes``: the fastest correct implementation found at import.
_ONE: Callable[[bytes], bytes] = (
    _SHA3 if _SHA3 is not None else _RAW.one if _RAW is not None else _slow_keccak256
)


def keccak256(data: bytes) -> bytes:
    """The 32-byte Keccak-256 digest (Ethereum's, not SHA3-256) of ``data``."""
    return _ONE(bytes(data))


#: :func:`keccak256` without the copy and checks, for hot loops that pass ``bytes`` only.
keccak256_bytes: Callable[[bytes], bytes] = _ONE


class _Session:
    """One C hash state for one operation, opened on first use and freed by :meth:`close`."""

    __slots__ = ("_state", "h64")

    def __init__(self) -> None:
        self._state: ctypes.c_void_p | None = None
        self.h64: _Hash64 | None = None

    def open(self) -> _Hash64:
        if self.h64 is None:
            if _SHA3 is not None or _RAW is None:
                self.h64 = _ONE  # no C state to hold
            else:
                state, buf = _RAW.open()
                self._state = state
                self.h64 = _RAW.hasher64(state, buf)
        return self.h64

    def close(self) -> None:
        if self._state is not None and _RAW is not None:
            _RAW.destroy(self._state)
        self._state = None
        self.h64 = None

    def __enter__(self) -> _Hash64:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- validation helpers -------------------------------------------------------------------------


def _b32(value: bytes, what: str) -> bytes:
    if type(value) is not bytes:
        if not isinstance(value, bytes | bytearray | memoryview):
            raise TypeError(f"{what} must be bytes, got {type(value).__name__}")
        value = bytes(value)
    if len(value) != 32:
        raise ValueError(f"{what} must be 32 bytes, got {len(value)}")
    return value


def _proof32(proof: Iterable[bytes]) -> list[bytes]:
    if isinstance(proof, bytes | bytearray | memoryview | str):
        raise TypeError("proof must be a sequence of 32-byte values, not a single value")
    return [_b32(p, "proof element") for p in proof]


# --- pair hash and single proofs ----------------------------------------------------------------


def hash_pair(a: bytes, b: bytes) -> bytes:
    """OpenZeppelin ``Hashes.commutativeKeccak256``: keccak256(min(a, b) || max(a, b))."""
    a = _b32(a, "node")
    b = _b32(b, "node")
    return keccak256(a + b if a < b else b + a)


def _fold(leaf: bytes, proof: list[bytes], h64: _Hash64) -> bytes:
    node = leaf
    for sib in proof:
        node = h64(node + sib if node < sib else sib + node)
    return node


def process_proof(leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root implied by ``leaf`` and ``proof`` (OpenZeppelin ``MerkleProof.processProof``).

    Raises:
        ValueError: the leaf or a proof element is not 32 bytes.
        TypeError: they are not bytes.
    """
    leaf = _b32(leaf, "leaf")
    elems = _proof32(proof)
    if not elems:
        return leaf
    with _Session() as h64:
        return _fold(leaf, elems, h64)


def verify_proof(leaf: bytes, proof: Sequence[bytes], root: bytes) -> bool:
    """True when ``proof`` proves ``leaf`` under ``root`` (OpenZeppelin ``MerkleProof.verify``).

    Malformed input (a value that is not 32 bytes) does not verify: the result is False.
    """
    try:
        root = _b32(root, "root")
        return process_proof(leaf, proof) == root
    except (TypeError, ValueError):
        return False


# --- trees --------------------------------------------------------------------------------------


class MerkleTree:
    """A built tree. Create with :func:`build_tree`; immutable afterwards."""

    __slots__ = ("_levels",)

    def __init__(self, levels: list[list[bytes]]) -> None:
        self._levels = levels

    @property
    def root(self) -> bytes:
        """The 32-byte root (for a single leaf, the leaf itself)."""
        return self._levels[-1][0]

    @property
    def leaves(self) -> tuple[bytes, ...]:
        """The leaves in tree order (the order given to :func:`build_tree`)."""
        return tuple(self._levels[0])

    @property
    def depth(self) -> int:
        """Number of hashing levels above the leaves (0 for one leaf); the longest proof."""
        return len(self._levels) - 1

    def __len__(self) -> int:
        return len(self._levels[0])

    def __repr__(self) -> str:
        return f"MerkleTree(leaves={len(self)}, root=0x{self.root.hex()})"

    def proof(self, index: int) -> list[bytes]:
        """Sibling hashes from leaf ``index`` up to the root (empty for a single-leaf tree).

        A level where the node was promoted (odd last node) contributes no element.

        Raises:
            IndexError: ``index`` is not in ``range(len(self))``.
        """
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError("index must be an int")
        if not 0 <= index < len(self._levels[0]):
            raise IndexError(f"leaf index {index} out of range for {len(self)} leaves")
        out: list[bytes] = []
        i = index
        for level in self._levels[:-1]:
            sib = i ^ 1
            if sib < len(level):
                out.append(level[sib])
            i >>= 1
        return out

    def proofs(self) -> list[list[bytes]]:
        """The proofs of all leaves, in leaf order."""
        return [self.proof(i) for i in range(len(self))]


def build_tree(leaves: Sequence[bytes]) -> MerkleTree:
    """Build the tree over ``leaves`` (32-byte values, order kept, duplicates allowed).

    Raises:
        ValueError: no leaves, or a leaf that is not 32 bytes.
        TypeError: a leaf that is not bytes.
    """
    if isinstance(leaves, bytes | bytearray | memoryview | str):
        raise TypeError("leaves must be a sequence of 32-byte values, not a single value")
    level = [_b32(leaf, "leaf") for leaf in leaves]
    if not level:
        raise ValueError("cannot build a Merkle tree without leaves")
    levels = [level]
    with _Session() as h64:
        while len(level) > 1:
            nxt: list[bytes] = []
            append = nxt.append
            n = len(level)
            for i in range(0, n - 1, 2):
                a = level[i]
                b = level[i + 1]
                append(h64(a + b if a < b else b + a))
            if n & 1:
                append(level[-1])  # promoted unchanged
            levels.append(nxt)
            level = nxt
    return MerkleTree(levels)


# --- many proofs --------------------------------------------------------------------------------


class MultiVerifier:
    """Verifies many (leaf, proof, root) triples, memoising every internal node it computes.

    Proofs of leaves of one tree share their upper nodes, so after the first few proofs almost
    every step is a dictionary hit: verifying all N proofs of a tree costs about N hashes instead
    of N * log2(N). Results are exactly those of :func:`verify_proof`.

    The memo is keyed by the full 64-byte preimage, so a cached value is always the true hash of
    that preimage (nothing is trusted from earlier proofs). ``max_entries`` bounds memory: the
    memo is cleared when it grows past it. An instance is cheap; use one per verification job.
    The memo is a plain dict, so sharing an instance between threads is safe but pointless.
    """

    __slots__ = ("_memo", "max_entries")

    def __init__(self, max_entries: int = 1 << 20) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        self._memo: dict[bytes, bytes] = {}
        self.max_entries = max_entries

    def __len__(self) -> int:
        """Number of memoised internal nodes."""
        return len(self._memo)

    def clear(self) -> None:
        self._memo.clear()

    def _process(self, leaf: bytes, proof: Iterable[bytes], session: _Session) -> bytes:
        # Hot path. ``leaf`` is checked by the caller; a proof element of the wrong length shows
        # up as a preimage that is not 64 bytes (the running node is always 32 bytes).
        memo = self._memo
        get = memo.get
        node = leaf
        for sib in proof:
            pre = node + sib if node < sib else sib + node
            nxt = get(pre)
            if nxt is None:
                if len(pre) != 64:
                    raise ValueError("proof element must be 32 bytes")
                nxt = (session.h64 or session.open())(pre)
                if len(memo) >= self.max_entries:
                    memo.clear()
                memo[pre] = nxt
            node = nxt
        return node

    def _run(self, triples: Iterable[tuple[bytes, Sequence[bytes], bytes]]) -> list[bool]:
        session = _Session()
        out: list[bool] = []
        append = out.append
        process = self._process
        try:
            for leaf, proof, root in triples:
                try:
                    if type(leaf) is not bytes or len(leaf) != 32:
                        leaf = _b32(leaf, "leaf")
                    if type(root) is not bytes or len(root) != 32:
                        root = _b32(root, "root")
                    if isinstance(proof, bytes | bytearray | memoryview | str):
                        raise TypeError("proof must be a sequence of 32-byte values")
                    append(process(leaf, proof, session) == root)
                except (TypeError, ValueError):
                    append(False)
        finally:
            session.close()
        return out

    def process(self, leaf: bytes, proof: Sequence[bytes]) -> bytes:
        """Like :func:`process_proof`, using and filling the memo."""
        leaf = _b32(leaf, "leaf")
        elems = _proof32(proof)
        session = _Session()
        try:
            return self._process(leaf, elems, session)
        finally:
            session.close()

    def verify(self, leaf: bytes, proof: Sequence[bytes], root: bytes) -> bool:
        """Like :func:`verify_proof`, using and filling the memo."""
        return self._run(((leaf, proof, root),))[0]

    def verify_many(self, triples: Iterable[tuple[bytes, Sequence[bytes], bytes]]) -> list[bool]:
        """Verify each (leaf, proof, root) triple; one bool per triple, in order."""
        return self._run(triples)

    def verify_all(self, triples: Iterable[tuple[bytes, Sequence[bytes], bytes]]) -> bool:
        """True when every triple verifies (vacuously True for none)."""
        return all(self._run(triples))


# --- spec v2: @openzeppelin/merkle-tree StandardMerkleTree, leaf encoding ["bytes32"] ------------


def standard_leaf(value: bytes) -> bytes:
    """The StandardMerkleTree leaf of one ``bytes32`` value: keccak256(keccak256(abi.encode(v))).

    ``abi.encode(bytes32 v)`` is ``v`` itself, so this is keccak256(keccak256(value)) (a 32-byte
    preimage hashed twice). Internal nodes hash 64 bytes, so no leaf can pose as a node.
    """
    return keccak256(keccak256(_b32(value, "value")))


class StandardTree:
    """A StandardMerkleTree (``@openzeppelin/merkle-tree`` 1.x) over ``bytes32`` values.

    Built by :func:`build_standard_tree`; immutable. The layout is the library's: the leaves are
    sorted ascending (as 256-bit unsigned integers, a stable sort), and the tree is one array of
    ``2n - 1`` nodes where ``tree[0]`` is the root, the children of node ``i`` are ``2i + 1`` and
    ``2i + 2``, and sorted leaf ``k`` sits at ``tree[2n - 2 - k]``. The proof of a value is the list
    of sibling nodes from its leaf up to (excluding) the root; it verifies with OpenZeppelin's
    ``MerkleProof.verify`` (the commutative pair hash of :func:`hash_pair`).
    """

    __slots__ = ("_index", "_tree", "_values")

    def __init__(self, tree: list[bytes], values: list[bytes], index: list[int]) -> None:
        self._tree = tree
        self._values = values
        self._index = index  # value position -> tree index

    @property
    def root(self) -> bytes:
        return self._tree[0]

    @property
    def tree(self) -> tuple[bytes, ...]:
        """The node array, root first (the library's ``dump().tree``)."""
        return tuple(self._tree)

    @property
    def values(self) -> tuple[bytes, ...]:
        """The values in the order given (not sorted)."""
        return tuple(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"StandardTree(values={len(self)}, root=0x{self.root.hex()})"

    def tree_index(self, position: int) -> int:
        """Where the leaf of value ``position`` sits in :attr:`tree`."""
        return self._index[position]

    def leaf(self, position: int) -> bytes:
        return self._tree[self._index[position]]

    def proof(self, position: int) -> list[bytes]:
        """The proof of the value at ``position`` (in the order given to the builder).

        Raises:
            IndexError: ``position`` is not in ``range(len(self))``.
        """
        if isinstance(position, bool) or not isinstance(position, int):
            raise TypeError("position must be an int")
        if not 0 <= position < len(self._values):
            raise IndexError(f"value {position} out of range for {len(self)} values")
        tree = self._tree
        i = self._index[position]
        out: list[bytes] = []
        while i > 0:
            out.append(tree[i + 1] if i & 1 else tree[i - 1])
            i = (i - 1) >> 1
        return out

    def proofs(self) -> list[list[bytes]]:
        """The proofs of all values, in the order given."""
        return [self.proof(i) for i in range(len(self._values))]


def build_standard_tree(values: Sequence[bytes]) -> StandardTree:
    """``StandardMerkleTree.of(values.map(v => [v]), ["bytes32"])``, in Python.

    Raises:
        ValueError: no values, or a value that is not 32 bytes.
        TypeError: a value that is not bytes.
    """
    if isinstance(values, bytes | bytearray | memoryview | str):
        raise TypeError("values must be a sequence of 32-byte values, not a single value")
    vals = [_b32(v, "value") for v in values]
    n = len(vals)
    if n == 0:
        raise ValueError("cannot build a Merkle tree without values")
    one = _ONE
    leaves = [one(one(v)) for v in vals]
    tree, index = standard_layout(leaves)
    return StandardTree(tree, vals, index)


def standard_layout(leaves: Sequence[bytes]) -> tuple[list[bytes], list[int]]:
    """The StandardMerkleTree node array of ``leaves`` (32-byte leaf hashes, at least one) and
    where each leaf sits in it: ``(tree, index)`` with ``tree[index[p]] == leaves[p]`` and
    ``tree[0]`` the root. A verifier holding every leaf of a batch rebuilds it with this."""
    n = len(leaves)
    if n == 0:
        raise ValueError("cannot build a Merkle tree without values")
    # Stable sort by leaf (bytes order == big-endian unsigned order), like Array.prototype.sort.
    order = sorted(range(n), key=leaves.__getitem__)
    size = 2 * n - 1
    tree: list[bytes] = [b""] * size
    index = [0] * n
    for k, pos in enumerate(order):
        t = size - 1 - k
        tree[t] = leaves[pos]
        index[pos] = t
    with _Session() as h64:
        for i in range(size - 1 - n, -1, -1):
            a = tree[2 * i + 1]
            b = tree[2 * i + 2]
            tree[i] = h64(a + b if a < b else b + a)
    return tree, index
