"""Audit bundles: one run as one self-contained JSON document, and the verification algorithm.

docs/checkpoint-spec.md is normative: section 9 (the bundle and trust roots) and section 10 (the
algorithm, phase by phase, with the first bad step of every class). This module is its reference
implementation:

* :func:`parse_bundle` checks the shape (phase 0) and raises :class:`BundleError` for a malformed
  bundle;
* :func:`verify_bundle` runs phases 1 to 5 against a :class:`TrustRoot` and a :class:`Chain`
  (JSON-RPC: ``eth_chainId``, ``eth_blockNumber``, ``eth_getLogs``,
  ``eth_getTransactionReceipt``) and returns a :class:`BundleReport`;
* :func:`build_bundle` exports a stored run (``ledgerflow export``); ``ledgerflow verify`` of a
  stored run builds its bundle and verifies that, so the two can never disagree.

Nothing here needs the store or Temporal to verify: a bundle and an RPC endpoint are enough.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field

from ledgerflow.checkpoint.canonical import encode_string
from ledgerflow.checkpoint.merkle import MultiVerifier, standard_layout
from ledgerflow.checkpoint.merkle import keccak256_bytes as _k
from ledgerflow.checkpoint.records import (
    OUTCOME_STEP_NAME,
    STEP_KINDS_V1,
    STEP_KINDS_V2,
    CanonicalError,
    is_failure_output,
    parse_canonical_text,
    run_key,
)
from ledgerflow.errors import ChainError, VerificationError

__all__ = [
    "BUNDLE_FORMAT",
    "BundleError",
    "BundleReport",
    "Chain",
    "DeploymentRef",
    "Finding",
    "RpcChain",
    "TrustRoot",
    "Web3Chain",
    "build_bundle",
    "checksum_address",
    "parse_bundle",
    "read_deployment",
    "verify_bundle",
]

BUNDLE_FORMAT = "ledgerflow-audit-bundle"

TOPIC_CHECKPOINTED = "0xa12dfe9830f8f73b7919eb61d98491bdfdf6fc540e3bc820db7939c346e26298"
TOPIC_ROOT_ANCHORED = "0xc29adcd0845ee582e2fd2c72c9eb59b04c906cfbff492932739ea2dfac6e76b9"
TOPIC_RUN_SEALED = "0xd7f82339b23106d0e6b054a49a1caff2f03de5e5bdf47d466d30b48fabb4c3d8"

_HEX32 = re.compile(r"^0x[0-9a-f]{64}\Z")
_HEX32_FOUR = re.compile(r"(?:0x[0-9a-f]{64}){4}")
_HEX32_MANY = re.compile(r"(?:0x[0-9a-f]{64})*")
_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}\Z")
_MAX_INT = 1 << 53
_RECORD_KEYS = frozenset(("v", "run", "seq", "kind", "name", "input", "output", "status", "prev"))
_STEP_KEYS = frozenset(("record", "input", "output", "anchor", "proof"))
_PART_KEYS = frozenset(("salt", "preimage"))
_ROOT_KEYS = frozenset(
    ("type", "chain_id", "registry", "tx_hash", "block_number", "root", "leaf_count")
)
_STEP_ANCHOR_KEYS = frozenset(("type", "chain_id", "registry", "tx_hash", "block_number", "seq"))
_SEAL_KEYS = frozenset(("steps", "head", "chain_id", "registry", "tx_hash", "block_number"))
_TX_KEYS = frozenset(
    ("tx_hash", "block_number", "block_hash", "to", "gas_used", "already_done", "event")
)
_EVENT_KEYS = frozenset(("address", "topics", "log_index"))


class BundleError(VerificationError):
    """The bundle is malformed (spec section 10.1): there is no verdict."""


def _topic_of_int(n: int) -> str:
    return "0x" + n.to_bytes(32, "big").hex()


# ---- trust roots -------------------------------------------------------------------------------


class TrustRoot(BaseModel):
    """What anchors are checked against (spec section 9.4); never taken from the bundle."""

    chain_id: int
    registry: str
    from_block: int = 0
    contracts: list[str] | None = None  # None: unknown (the bundle's contracts are used)
    source: Literal["deployments", "explicit"] = "explicit"

    @classmethod
    def explicit(cls, registry: str, chain_id: int, from_block: int = 0) -> TrustRoot:
        """From ``--registry ADDR --chain-id N [--from-block B]`` (any address case)."""
        if not _ADDRESS.match(registry or ""):
            raise VerificationError(f"--registry {registry!r} is not a 20-byte 0x-hex address")
        if chain_id <= 0 or from_block < 0:
            raise VerificationError("--chain-id must be positive and --from-block not negative")
        return cls(chain_id=chain_id, registry=registry, from_block=from_block)

    @classmethod
    def from_deployment(cls, deployment: Any, *, registry: str | None = None) -> TrustRoot:
        """From a deployments file (``ledgerflow.chain.deploy.Deployment``). ``registry``
        overrides its CheckpointRegistry (``LEDGERFLOW_REGISTRY_ADDRESS``); the deployment's
        block is then no bound for that registry's logs, so scans start at block 0."""
        own = str(deployment.contracts["CheckpointRegistry"])
        reg = registry or own
        same = reg.lower() == own.lower()
        contracts = [str(a) for a in deployment.contracts.values()]
        if not same:
            contracts.append(reg)
        return cls(
            chain_id=int(deployment.chain_id),
            registry=reg,
            from_block=int(deployment.block_number) if same else 0,
            contracts=contracts,
            source="deployments",
        )

    def trusts(self, address: str) -> bool:
        return address.lower() == self.registry.lower()


class DeploymentRef(BaseModel):
    """What verification needs of a deployments file: its chain, block and contracts."""

    chain_id: int = Field(gt=0)
    block_number: int = Field(ge=0)
    contracts: dict[str, str]


def read_deployment(path: Any) -> DeploymentRef:
    """The chain id, deployment block and contract addresses of a deployments file (written
    by ``ledgerflow deploy``), read without web3 (``ledgerflow verify`` starts faster): every
    address must be 20-byte 0x-hex and CheckpointRegistry present.

    Raises:
        ConfigError: the file is missing or is not such a document.
    """
    from pathlib import Path

    from pydantic import ValidationError

    from ledgerflow.errors import ConfigError

    p = Path(path)
    try:
        ref = DeploymentRef.model_validate_json(p.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"no deployment file at {p}; run `ledgerflow deploy`") from None
    except (OSError, ValidationError) as exc:
        raise ConfigError(f"{p} is not a valid deployment: {exc}") from None
    bad = [name for name, a in ref.contracts.items() if not _ADDRESS.match(a)]
    if bad or "CheckpointRegistry" not in ref.contracts:
        raise ConfigError(f"{p} is not a valid deployment: contracts {bad or 'without a registry'}")
    return ref


def checksum_address(address: str) -> str:
    """EIP-55 mixed-case form of a 20-byte 0x-hex address (any case).

    Raises:
        VerificationError: not such an address.
    """
    if not _ADDRESS.match(address or ""):
        raise VerificationError(f"{address!r} is not a 20-byte 0x-hex address")
    low = address[2:].lower()
    digest = _k(low.encode("ascii")).hex()
    return "0x" + "".join(
        c.upper() if int(d, 16) >= 8 else c for c, d in zip(low, digest, strict=False)
    )


# ---- the chain, as the algorithm sees it -------------------------------------------------------


class Chain(Protocol):
    """The four JSON-RPC reads verification needs. Hashes and addresses as lower-case 0x-hex;
    logs and receipts as plain dicts (keys as in JSON-RPC: ``address``, ``topics``, ``data``,
    ``logIndex``, ``transactionHash``, ``blockNumber``; ``status``, ``blockHash``, ``to``,
    ``gasUsed``, ``logs``)."""

    async def chain_id(self) -> int: ...

    async def block_number(self) -> int: ...

    async def get_logs(
        self, address: str, topics: Sequence[str], from_block: int, to_block: int
    ) -> list[dict[str, Any]]: ...

    async def receipt(self, tx_hash: str) -> dict[str, Any] | None: ...


def _hexstr(v: Any) -> str:
    if isinstance(v, str):
        return v.lower() if v.startswith("0x") else "0x" + v.lower()
    return "0x" + bytes(v).hex()


def _plain_log(log: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "address": str(log["address"]).lower(),
        "topics": [_hexstr(t) for t in log["topics"]],
        "data": _hexstr(log["data"]),
        "logIndex": int(log["logIndex"]),
        "transactionHash": _hexstr(log["transactionHash"]),
        "blockNumber": int(log["blockNumber"]),
    }


class Web3Chain:
    """:class:`Chain` over an ``AsyncWeb3``; log scans in chunks of ``chunk`` blocks, at most
    ``concurrency`` requests at a time."""

    def __init__(self, w3: Any, *, chunk: int = 100_000, concurrency: int = 16) -> None:
        self.w3 = w3
        self.chunk = chunk
        self._sem = asyncio.Semaphore(concurrency)

    async def chain_id(self) -> int:
        return int(await self.w3.eth.chain_id)

    async def block_number(self) -> int:
        return int(await self.w3.eth.block_number)

    async def get_logs(
        self, address: str, topics: Sequence[str], from_block: int, to_block: int
    ) -> list[dict[str, Any]]:
        from web3 import Web3

        out: list[dict[str, Any]] = []
        start = from_block
        while start <= to_block:
            end = min(to_block, start + self.chunk - 1)
            async with self._sem:
                logs = await self.w3.eth.get_logs(
                    {
                        "address": Web3.to_checksum_address(address),
                        "topics": list(topics),
                        "fromBlock": start,
                        "toBlock": end,
                    }
                )
            out += [_plain_log(x) for x in logs]
            start = end + 1
        return out

    async def receipt(self, tx_hash: str) -> dict[str, Any] | None:
        from web3.exceptions import TransactionNotFound

        async with self._sem:
            try:
                r = await self.w3.eth.get_transaction_receipt(tx_hash)
            except TransactionNotFound:
                return None
        return {
            "status": int(r["status"]),
            "blockNumber": int(r["blockNumber"]),
            "blockHash": _hexstr(r["blockHash"]),
            "to": str(r["to"]).lower() if r.get("to") else None,
            "gasUsed": int(r["gasUsed"]),
            "logs": [_plain_log(x) for x in r["logs"]],
        }


class RpcChain:
    """:class:`Chain` over plain JSON-RPC (httpx): what an outside verifier needs, without web3's
    import cost. Receipts are fetched in JSON-RPC batches; log scans in chunks of ``chunk``
    blocks."""

    def __init__(self, url: str, *, chunk: int = 100_000, batch: int = 100, timeout: float = 30):
        import httpx

        self.url = url
        self.chunk = chunk
        self.batch = batch
        self._client = httpx.AsyncClient(timeout=timeout)
        self._id = 0

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _call(self, calls: list[tuple[str, list[Any]]]) -> list[Any]:
        import httpx

        body = []
        for method, params in calls:
            self._id += 1
            body.append({"jsonrpc": "2.0", "id": self._id, "method": method, "params": params})
        try:
            resp = await self._client.post(self.url, json=body if len(body) > 1 else body[0])
            resp.raise_for_status()
            data = resp.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise ChainError(f"JSON-RPC request to {self.url} failed: {exc}") from None
        answers = data if isinstance(data, list) else [data]
        by_id = {a.get("id"): a for a in answers if isinstance(a, dict)}
        out = []
        for req in body:
            a = by_id.get(req["id"])
            if a is None or "error" in a:
                detail = a.get("error") if a else "no answer"
                raise ChainError(f"{req['method']} failed at {self.url}: {detail}")
            out.append(a.get("result"))
        return out

    async def chain_id(self) -> int:
        (v,) = await self._call([("eth_chainId", [])])
        return int(v, 16)

    async def block_number(self) -> int:
        (v,) = await self._call([("eth_blockNumber", [])])
        return int(v, 16)

    async def get_logs(
        self, address: str, topics: Sequence[str], from_block: int, to_block: int
    ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        start = from_block
        while start <= to_block:
            end = min(to_block, start + self.chunk - 1)
            flt = {
                "address": address,
                "topics": list(topics),
                "fromBlock": hex(start),
                "toBlock": hex(end),
            }
            (logs,) = await self._call([("eth_getLogs", [flt])])
            out += [_rpc_log(x) for x in logs or []]
            start = end + 1
        return out

    async def receipt(self, tx_hash: str) -> dict[str, Any] | None:
        return (await self.receipts([tx_hash]))[0]

    async def receipts(self, tx_hashes: Sequence[str]) -> list[dict[str, Any] | None]:
        out: list[dict[str, Any] | None] = []
        for i in range(0, len(tx_hashes), self.batch):
            chunk = tx_hashes[i : i + self.batch]
            got = await self._call([("eth_getTransactionReceipt", [h]) for h in chunk])
            out += [_rpc_receipt(r) if r else None for r in got]
        return out


def _rpc_log(x: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "address": str(x["address"]).lower(),
        "topics": [str(t).lower() for t in x["topics"]],
        "data": str(x["data"]).lower(),
        "logIndex": int(x["logIndex"], 16),
        "transactionHash": str(x["transactionHash"]).lower(),
        "blockNumber": int(x["blockNumber"], 16),
    }


def _rpc_receipt(r: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "status": int(r["status"], 16),
        "blockNumber": int(r["blockNumber"], 16),
        "blockHash": str(r["blockHash"]).lower(),
        "to": str(r["to"]).lower() if r.get("to") else None,
        "gasUsed": int(r["gasUsed"], 16),
        "logs": [_rpc_log(x) for x in r.get("logs") or []],
    }


# ---- phase 0: shape ----------------------------------------------------------------------------


def _int(v: Any, lo: int = 0) -> bool:
    return type(v) is int and lo <= v < _MAX_INT


def _hex32(v: Any) -> bool:
    return isinstance(v, str) and _HEX32.match(v) is not None


def _addr(v: Any) -> bool:
    return isinstance(v, str) and _ADDRESS.match(v) is not None


def _need(ok: bool, where: str, what: str) -> None:
    if not ok:
        raise BundleError(f"malformed bundle: {where} {what}")


def parse_bundle(data: str | bytes | Mapping[str, Any]) -> dict[str, Any]:
    """Parse and shape-check a bundle (spec section 10.1).

    Raises:
        BundleError: not JSON, or any member missing, extra (where exact) or of the wrong type.
    """
    if isinstance(data, str | bytes | bytearray):
        try:
            b: Any = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise BundleError(f"the bundle is not JSON: {exc}") from None
    else:
        b = dict(data)
    _need(isinstance(b, dict), "the bundle", "is not a JSON object")
    _need(b.get("format") == BUNDLE_FORMAT, "format", f"is not {BUNDLE_FORMAT!r}")
    version = b.get("spec_version")
    _need(type(version) is int and version in (1, 2), "spec_version", "is not 1 or 2")
    for key in ("workflow_id", "run_id", "workflow_type"):
        _need(isinstance(b.get(key), str), key, "is not a string")
    _need(_hex32(b.get("run_key")), "run_key", "is not hex32")
    _need(b.get("anchor_mode") in ("batched", "per-step"), "anchor_mode", "is not a mode")
    _need(_int(b.get("chain_id"), 1), "chain_id", "is not a positive integer")
    _need(_addr(b.get("registry")), "registry", "is not an address")
    _need(_int(b.get("registry_deployment_block")), "registry_deployment_block", "is not an int")
    contracts = b.get("contracts")
    _need(
        isinstance(contracts, dict)
        and all(isinstance(k, str) and _addr(v) for k, v in contracts.items()),
        "contracts",
        "is not an object of addresses",
    )
    anchors = b.get("anchors")
    _need(isinstance(anchors, list), "anchors", "is not an array")
    for i, a in enumerate(anchors):
        where = f"anchors[{i}]"
        _need(isinstance(a, dict), where, "is not an object")
        kind = a.get("type")
        _need(kind in ("root", "step"), where, "has no type root or step")
        _need(set(a) == (_ROOT_KEYS if kind == "root" else _STEP_ANCHOR_KEYS), where, "members")
        _need(_int(a["chain_id"], 1) and _int(a["block_number"], 1), where, "chain or block")
        _need(_addr(a["registry"]) and _hex32(a["tx_hash"]), where, "registry or tx_hash")
        if kind == "root":
            _need(_hex32(a["root"]) and _int(a["leaf_count"], 1), where, "root or leaf_count")
        else:
            _need(_int(a["seq"]), where, "seq")
    seal = b.get("seal")
    if seal is not None:
        _need(isinstance(seal, dict) and set(seal) == _SEAL_KEYS, "seal", "members")
        _need(_int(seal["steps"]) and _hex32(seal["head"]), "seal", "steps or head")
        _need(_int(seal["chain_id"], 1) and _addr(seal["registry"]), "seal", "chain or registry")
        _need(_hex32(seal["tx_hash"]) and _int(seal["block_number"], 1), "seal", "tx or block")
    steps = b.get("steps")
    _need(isinstance(steps, list), "steps", "is not an array")
    kinds = STEP_KINDS_V2 if version == 2 else STEP_KINDS_V1
    root_anchor = [a["type"] == "root" for a in anchors]
    n_anchors = len(anchors)
    v2 = version == 2
    # One cheap test per step (member sets by key views, every hex member of the step, proof
    # and salts included, in one regular expression); a step that fails it gets the detailed
    # checks, which say what is wrong.
    hex_many = _HEX32_MANY.fullmatch
    for i, st in enumerate(steps):
        try:
            r = st["record"]
            a_idx = st["anchor"]
            proof = st["proof"]
            inp, out = st["input"], st["output"]
            hexes = [r["run"], r["input"], r["output"], r["prev"]]
            if a_idx is None:
                ok = proof is None
            else:
                ok = type(a_idx) is int and 0 <= a_idx < n_anchors
                if ok and root_anchor[a_idx]:
                    ok = type(proof) is list
                    if ok:
                        hexes += proof
                else:
                    ok = ok and proof is None
            for p in (inp, out):
                if p is not None:
                    ok = ok and type(p) is dict and p.keys() == _PART_KEYS
                    ok = ok and type(p["preimage"]) is str
                    if v2:
                        hexes.append(p["salt"])
                    else:
                        ok = ok and p["salt"] is None
            if (
                ok
                and type(st) is dict
                and st.keys() == _STEP_KEYS
                and type(r) is dict
                and r.keys() == _RECORD_KEYS
                and type(r["v"]) is int
                and r["v"] == version
                and type(r["seq"]) is int
                and 0 <= r["seq"] < _MAX_INT
                and r["kind"] in kinds
                and type(r["name"]) is str
                and r["status"] in _STATUSES
                and {*map(len, hexes)} == _LEN66
                and hex_many("".join(hexes)) is not None
            ):
                continue
        except (TypeError, KeyError, AttributeError):
            pass
        _check_step(i, st, version, kinds, anchors)
    return b


_STATUSES = frozenset(("ok", "failed"))
_LEN66 = {66}


def _check_step(i: int, st: Any, version: int, kinds: Any, anchors: list[dict[str, Any]]) -> None:
    """The detailed shape checks of one step entry: raise :class:`BundleError` saying what is
    wrong (called for a step that failed the quick test of :func:`parse_bundle`; a mapping that
    is not a plain dict but is well-formed passes)."""
    where = f"steps[{i}]"
    _need(isinstance(st, dict) and set(st) == _STEP_KEYS, where, "members")
    r = st["record"]
    _need(isinstance(r, dict) and set(r) == _RECORD_KEYS, f"{where}.record", "members")
    _need(type(r["v"]) is int and r["v"] == version, f"{where}.record.v", "is not the version")
    _need(_int(r["seq"]), f"{where}.record.seq", "is not an integer")
    _need(r["kind"] in kinds, f"{where}.record.kind", "is not a kind of this version")
    _need(isinstance(r["name"], str), f"{where}.record.name", "is not a string")
    _need(r["status"] in ("ok", "failed"), f"{where}.record.status", "is not ok or failed")
    hexes = (r["run"], r["input"], r["output"], r["prev"])
    if not (
        all(type(x) is str and len(x) == 66 for x in hexes)
        and _HEX32_FOUR.fullmatch("".join(hexes))
    ):
        for key in ("run", "input", "output", "prev"):
            _need(_hex32(r[key]), f"{where}.record.{key}", "is not hex32")
    for part in ("input", "output"):
        p = st[part]
        if p is None:
            continue
        _need(isinstance(p, dict) and set(p) == _PART_KEYS, f"{where}.{part}", "members")
        _need(isinstance(p["preimage"], str), f"{where}.{part}.preimage", "not a string")
        salt_ok = _hex32(p["salt"]) if version == 2 else p["salt"] is None
        _need(salt_ok, f"{where}.{part}.salt", "is not hex32 (v2) or null (v1)")
    a_idx = st["anchor"]
    _need(a_idx is None or (_int(a_idx) and a_idx < len(anchors)), where, "anchor index")
    is_root = a_idx is not None and anchors[a_idx]["type"] == "root"
    proof = st["proof"]
    if is_root:
        _need(
            isinstance(proof, list)
            and all(type(x) is str and len(x) == 66 for x in proof)
            and _HEX32_MANY.fullmatch("".join(proof)) is not None,
            where,
            "proof array",
        )
    else:
        _need(proof is None, where, "has a proof without a root anchor")


# ---- the report --------------------------------------------------------------------------------


class Finding(BaseModel):
    step: int
    code: str
    message: str


class BundleReport(BaseModel):
    """The outcome of verifying a bundle (spec section 10.8)."""

    workflow_id: str
    run_id: str
    workflow_type: str = ""
    status: str = ""
    ok: bool
    sealed: bool
    first_bad_step: int | None
    steps: int
    head: str
    spec_version: int
    anchor_mode: str
    registry: str
    chain_id: int
    contracts_source: Literal["trust_root", "bundle"]
    anchors: list[dict[str, Any]] = Field(default_factory=list)
    seal: dict[str, Any] | None = None
    redacted: list[dict[str, Any]] = Field(default_factory=list)
    #: The run's human decisions as its verified records say them: each ``approval.*`` step's
    #: seq, name, approver (unsigned path), path and signers (signed approvals).
    approvals: list[dict[str, Any]] = Field(default_factory=list)
    findings: list[Finding] = Field(default_factory=list)
    problems: list[str] = Field(default_factory=list)
    pending_steps: int = 0
    history_checked: bool = False

    @property
    def verdict(self) -> tuple[bool, bool, int | None]:
        return self.ok, self.sealed, self.first_bad_step


class _Clock:
    """Adds the seconds since the last lap to ``timings[name]`` (nothing without timings)."""

    def __init__(self, timings: dict[str, float] | None) -> None:
        self.timings = timings
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        if self.timings is not None:
            now = time.perf_counter()
            self.timings[name] = self.timings.get(name, 0.0) + now - self.last
            self.last = now


class _Findings:
    def __init__(self) -> None:
        self.items: list[Finding] = []

    def add(self, step: int, code: str, message: str) -> None:
        self.items.append(Finding(step=step, code=code, message=message))


# ---- phases 1 to 5 -----------------------------------------------------------------------------


def _record_preimage(r: Mapping[str, Any]) -> bytes:
    # LCE-1 of the nine members in key order (equal to canonical_bytes(r), tested); the hex
    # members are hex32 and seq/v small ints after phase 0, so only the strings need escaping.
    return (
        f'{{"input":"{r["input"]}","kind":{encode_string(r["kind"])},'
        f'"name":{encode_string(r["name"])},"output":"{r["output"]}","prev":"{r["prev"]}",'
        f'"run":"{r["run"]}","seq":{r["seq"]},"status":{encode_string(r["status"])},'
        f'"v":{r["v"]}}}'
    ).encode()


def _h(b: bytes) -> str:
    return "0x" + b.hex()


class _Run:
    """Per-bundle state shared by the phases."""

    def __init__(self, b: dict[str, Any]) -> None:
        self.b = b
        self.version: int = b["spec_version"]
        self.steps: list[dict[str, Any]] = b["steps"]
        self.anchors: list[dict[str, Any]] = b["anchors"]
        self.m = len(self.steps)
        self.rk = run_key(b["workflow_id"], b["run_id"], spec=self.version)
        self.rk_hex = _h(self.rk)
        self.sh: list[bytes] = []
        self.heads: list[bytes] = [self.rk]  # h_0 .. h_M
        self.outputs: list[Any] = [None] * self.m  # parsed output values (None: unavailable)
        self.tx_results: dict[int, dict[str, Any]] = {}


def _approval_of(seq: int, name: str, values: dict[str, Any]) -> dict[str, Any]:
    """What an ``approval.*`` step's verified preimages say: who decided, by which path."""
    raw_in, raw_out = values.get("input"), values.get("output")
    inp: dict[str, Any] = raw_in if isinstance(raw_in, dict) else {}
    out: dict[str, Any] = raw_out if isinstance(raw_out, dict) else {}
    signers = out.get("signers")
    return {
        "step": seq,
        "name": name,
        "approved": out.get("approved"),
        "path": out.get("path"),
        "approver": inp.get("approver"),
        "signers": signers or [],
    }


def _phase2(
    run: _Run,
    f: _Findings,
    redacted: list[dict[str, Any]],
    approvals: list[dict[str, Any]] | None = None,
) -> None:
    v2 = run.version == 2
    head = run.rk
    rk_hex = run.rk_hex
    fromhex = bytes.fromhex
    for i, st in enumerate(run.steps):
        r = st["record"]
        sh = _k(_record_preimage(r))
        if r["seq"] != i:
            f.add(i, "seq", f"position {i} holds the record of seq {r['seq']}")
        if r["run"] != rk_hex:
            f.add(i, "run", "the record belongs to another run")
        if r["prev"] != "0x" + head.hex():
            f.add(i, "prev", "prev is not the head of the steps before it")
        head = _k(head + sh)
        run.sh.append(sh)
        run.heads.append(head)
        values: dict[str, Any] = {}
        parts: list[str] = []
        for part in ("input", "output"):
            p = st[part]
            if p is None:
                parts.append(part)
                continue
            text = p["preimage"]
            try:
                data = text.encode("utf-8")
            except UnicodeError:
                f.add(i, "preimage", f"the {part} preimage is not valid Unicode")
                continue
            try:
                values[part] = parse_canonical_text(text)
            except CanonicalError as exc:
                f.add(i, "preimage", f"the {part} preimage is not canonical LCE-1 ({exc})")
                continue
            salt = fromhex(p["salt"][2:]) if v2 else b""
            if "0x" + _k(salt + data).hex() != r[part]:
                f.add(i, "commitment", f"{part} preimage does not match its commitment")
        if parts:
            redacted.append({"step": i, "parts": parts})
        if (
            approvals is not None
            and str(r["name"]).startswith("approval.")
            and len(values) == 2
            and not any(x.step == i for x in f.items)
        ):
            approvals.append(_approval_of(i, str(r["name"]), values))
        if not v2:
            continue
        out = values.get("output")
        has_out = "output" in values
        if has_out:
            run.outputs[i] = out
        if r["status"] == "failed" and has_out and not is_failure_output(out):
            f.add(i, "failed_output", 'a failed step\'s output is not {"error": {type, message}}')
        if r["kind"] == "outcome":
            if i < run.m - 1:
                f.add(i + 1, "outcome", f"step {i + 1} comes after the run's outcome step")
            if r["name"] != OUTCOME_STEP_NAME or r["status"] != "ok":
                f.add(i, "outcome", "an outcome step is named run.outcome and has status ok")
            inp = values.get("input")
            if "input" in values and not _exact_strings(inp, ("workflow_type", "status")):
                f.add(i, "outcome", "the outcome input is not {workflow_type, status}")
            if has_out and not _exact_strings(out, ("outcome", "reason")):
                f.add(i, "outcome", "the outcome output is not {outcome, reason}")
        chain_ok = r["kind"] == "chain" and r["status"] == "ok"
        if chain_ok and isinstance(out, dict) and "tx_hash" in out:
            if _is_tx_result(out):
                run.tx_results[i] = out
            else:
                f.add(i, "tx_result", "the chain step's transaction output is malformed")


def _exact_strings(v: Any, keys: tuple[str, ...]) -> bool:
    return isinstance(v, dict) and set(v) == set(keys) and all(isinstance(v[k], str) for k in keys)


def _is_tx_result(x: dict[str, Any]) -> bool:
    if set(x) != _TX_KEYS:
        return False
    ev = x["event"]
    ok = (
        _hex32(x["tx_hash"])
        and type(x["block_number"]) is int
        and x["block_number"] > 0
        and _hex32(x["block_hash"])
        and _addr(x["to"])
        and type(x["gas_used"]) is int
        and x["gas_used"] >= 0
        and type(x["already_done"]) is bool
    )
    if not ok:
        return False
    if ev is None:
        return True
    return (
        isinstance(ev, dict)
        and set(ev) == _EVENT_KEYS
        and _addr(ev["address"])
        and isinstance(ev["topics"], list)
        and 1 <= len(ev["topics"]) <= 4
        and all(_hex32(t) for t in ev["topics"])
        and type(ev["log_index"]) is int
        and ev["log_index"] >= 0
    )


def _registry_logs(
    receipt: Mapping[str, Any], registry: str, topics: list[str]
) -> list[dict[str, Any]]:
    reg = registry.lower()
    return [
        log
        for log in receipt.get("logs", [])
        if log["address"] == reg and [t.lower() for t in log["topics"]] == topics
    ]


async def _gather_receipts(chain: Chain, tx_hashes: Iterable[str]) -> dict[str, Any]:
    unique = list(dict.fromkeys(h.lower() for h in tx_hashes))
    many = getattr(chain, "receipts", None)
    if many is not None:
        got = await many(unique)
    else:
        got = await asyncio.gather(*(chain.receipt(h) for h in unique))
    return dict(zip(unique, got, strict=True))


async def _phase3(
    run: _Run,
    trust: TrustRoot,
    chain: Chain | None,
    rng: tuple[int, int],
    f: _Findings,
    clock: _Clock | None = None,
) -> int:
    """Anchors; returns the number of unanchored steps."""
    b = run.b
    want = "root" if b["anchor_mode"] == "batched" else "step"
    verifier = MultiVerifier()
    refs: dict[int, list[int]] = {}
    root_users: dict[int, list[int]] = {}
    pending = 0
    for i, st in enumerate(run.steps):
        idx = st["anchor"]
        if idx is None:
            f.add(i, "unanchored", "the step is not anchored yet")
            pending += 1
            continue
        a = run.anchors[idx]
        if a["type"] != want:
            f.add(i, "anchor_mode", f"a {a['type']} anchor in a {b['anchor_mode']} run")
        trusted = True
        if not trust.trusts(a["registry"]):
            f.add(
                i,
                "untrusted_registry",
                f"anchored on registry {a['registry']}, the trusted registry is {trust.registry}",
            )
            trusted = False
        if a["chain_id"] != trust.chain_id:
            f.add(
                i,
                "untrusted_chain",
                f"anchored on chain {a['chain_id']}, the trusted chain is {trust.chain_id}",
            )
            trusted = False
        if a["type"] == "root":
            root_users.setdefault(idx, []).append(i)
        elif a["seq"] != i:
            f.add(i, "anchor_tx", f"the step's anchor is the checkpoint of step {a['seq']}")
            continue
        if trusted and (a["type"] == "root" or a["seq"] < run.m):
            refs.setdefault(idx, []).append(i)
    for idx, users in root_users.items():
        for i in _proof_failures(run, run.anchors[idx], users, verifier):
            f.add(i, "proof", "the Merkle proof does not lead to the anchored root")
    if clock is not None:
        clock.lap("proofs")
    if chain is None:
        return pending
    receipts = await _gather_receipts(chain, (run.anchors[idx]["tx_hash"] for idx in refs))
    for idx, users in refs.items():
        a = run.anchors[idx]
        problem = _anchor_problem(run, a, receipts.get(a["tx_hash"].lower()), trust)
        if problem:
            for i in users:
                f.add(i, "anchor_tx", problem)
    if b["anchor_mode"] == "per-step":
        logs = await chain.get_logs(
            trust.registry, [TOPIC_CHECKPOINTED, run.rk_hex], rng[0], rng[1]
        )
        by_seq: dict[int, list[dict[str, Any]]] = {}
        for log in logs:
            if len(log["topics"]) == 3:
                by_seq.setdefault(int(log["topics"][2], 16), []).append(log)
        for s in range(run.m):
            got = by_seq.get(s, [])
            idx = run.steps[s]["anchor"]
            tx = run.anchors[idx]["tx_hash"].lower() if idx is not None else None
            if len(got) != 1:
                f.add(s, "checkpoint_log", f"{len(got)} Checkpointed logs for this step")
            elif got[0]["transactionHash"] != tx:
                f.add(s, "checkpoint_log", "the step was checkpointed by another transaction")
        if any(s >= run.m for s in by_seq):
            f.add(run.m, "checkpoint_log", "the registry holds steps beyond the bundle's")
    return pending


def _proof_failures(
    run: _Run, a: Mapping[str, Any], users: list[int], verifier: MultiVerifier
) -> list[int]:
    """The steps among ``users`` (all anchored by root anchor ``a``) whose proof does not fold
    from their leaf to ``a.root`` (spec section 10.4, check 4).

    Every step's proof is folded (:class:`MultiVerifier`), except in one case that gives the
    same answers for less: a version 2 bundle holding every leaf of the batch (as many steps
    as ``leaf_count``). Its tree is then rebuilt from those leaves; when the rebuilt root is
    ``a.root``, a proof equal to the rebuilt path of its leaf folds to that root by
    construction, so it passes without being folded. Any other proof (and every proof when the
    rebuilt root differs) is folded as usual.
    """
    steps, sh = run.steps, run.sh
    k = _k
    if run.version == 2:
        leaves = [k(k(sh[i])) for i in users]
    else:
        leaves = [k(b"\x00" + sh[i]) for i in users]
    root_hex = a["root"]
    root = bytes.fromhex(root_hex[2:])
    tree_hex: list[str] | None = None
    index: list[int] = []
    if run.version == 2 and len(users) == a["leaf_count"]:
        tree, index = standard_layout(leaves)
        if tree[0] == root:
            tree_hex = ["0x" + x.hex() for x in tree]
    bad: list[int] = []
    for n, i in enumerate(users):
        proof = steps[i]["proof"]
        if tree_hex is not None:
            j = index[n]
            for x in proof:
                if j == 0 or x != tree_hex[j + 1 if j & 1 else j - 1]:
                    break
                j = (j - 1) >> 1
            else:
                if j == 0:
                    continue  # the rebuilt path of this leaf, up to the anchored root
        raw = bytes.fromhex("".join(proof).replace("0x", ""))
        siblings = [raw[j : j + 32] for j in range(0, len(raw), 32)]
        if not verifier.verify(leaves[n], siblings, root):
            bad.append(i)
    return bad


def _anchor_problem(
    run: _Run, a: Mapping[str, Any], receipt: Mapping[str, Any] | None, trust: TrustRoot
) -> str | None:
    if receipt is None:
        return f"no transaction {a['tx_hash']} on the trusted chain"
    if receipt["status"] != 1:
        return f"the anchor transaction {a['tx_hash']} failed"
    if receipt["blockNumber"] != a["block_number"]:
        return (
            f"the anchor transaction is in block {receipt['blockNumber']}, "
            f"the bundle says {a['block_number']}"
        )
    if a["type"] == "root":
        logs = _registry_logs(receipt, trust.registry, [TOPIC_ROOT_ANCHORED, a["root"]])
        if len(logs) != 1:
            return f"the transaction has {len(logs)} RootAnchored logs of the registry for the root"
        if logs[0]["data"] != _topic_of_int(a["leaf_count"]):
            return "RootAnchored's leafCount differs from the bundle's"
        return None
    seq = a["seq"]
    logs = _registry_logs(
        receipt, trust.registry, [TOPIC_CHECKPOINTED, run.rk_hex, _topic_of_int(seq)]
    )
    if len(logs) != 1:
        return f"the transaction has {len(logs)} Checkpointed logs of the registry for step {seq}"
    if logs[0]["data"] != _h(run.sh[seq] + run.heads[seq + 1]):
        return "the Checkpointed step hash or head differs from the recomputed ones"
    return None


async def _phase4(
    run: _Run,
    trust: TrustRoot,
    chain: Chain,
    rng: tuple[int, int],
    head: bytes,
    f: _Findings,
) -> tuple[bool, dict[str, Any] | None]:
    """The seal; returns (sealed, the one on-chain seal or None)."""
    m = run.m
    claimed = run.b["seal"]
    logs = await chain.get_logs(trust.registry, [TOPIC_RUN_SEALED, run.rk_hex], rng[0], rng[1])
    seals = []
    for log in logs:
        data = bytes.fromhex(log["data"][2:])
        if len(data) != 64:
            continue
        seals.append(
            {
                "steps": int.from_bytes(data[:32], "big"),
                "head": _h(data[32:]),
                "tx_hash": log["transactionHash"],
                "block_number": log["blockNumber"],
            }
        )
    if not seals:
        note = " (the bundle claims one)" if claimed is not None else ""
        f.add(m, "unsealed", f"the trusted registry holds no seal for this run{note}")
        return False, None
    if len(seals) > 1:
        counts = ", ".join(str(s["steps"]) for s in seals)
        f.add(
            min([m] + [s["steps"] for s in seals]),
            "multiple_seals",
            f"the run was sealed {len(seals)} times (steps {counts}): tampering",
        )
        return True, None
    (seal,) = seals
    n = seal["steps"]
    if n != m:
        what = "steps are missing from its tail" if m < n else "steps were appended after it"
        f.add(min(m, n), "seal_steps", f"the seal commits {n} steps, the bundle has {m}: {what}")
    elif seal["head"] != _h(head):
        f.add(max(m - 1, 0), "seal_head", "the seal's head differs from the recomputed head")
    if claimed is None or (
        claimed["steps"],
        claimed["head"],
        claimed["tx_hash"].lower(),
        claimed["block_number"],
    ) != (n, seal["head"], seal["tx_hash"], seal["block_number"]):
        f.add(min(m, n), "bundle_seal", "the bundle's seal is missing or differs from the chain's")
    for i, st in enumerate(run.steps):
        idx = st["anchor"]
        if idx is not None and run.anchors[idx]["block_number"] > seal["block_number"]:
            f.add(i, "after_seal", "the step was anchored after the run's seal")
    if run.version == 2 and n == m and (m == 0 or run.steps[m - 1]["record"]["kind"] != "outcome"):
        f.add(max(m - 1, 0), "outcome", "the sealed run does not end with its outcome step")
    return True, seal


async def _phase5(run: _Run, contracts: set[str], chain: Chain, f: _Findings) -> None:
    if not run.tx_results:
        return
    receipts = await _gather_receipts(chain, (x["tx_hash"] for x in run.tx_results.values()))
    for i, x in run.tx_results.items():
        problem = _effect_problem(x, receipts.get(x["tx_hash"].lower()), contracts)
        if problem:
            f.add(i, "chain_effect", problem)


def _effect_problem(
    x: Mapping[str, Any], r: Mapping[str, Any] | None, contracts: set[str]
) -> str | None:
    if r is None:
        return f"transaction {x['tx_hash']} is not on the trusted chain (lost blocks?)"
    if r["status"] != 1:
        return f"transaction {x['tx_hash']} failed"
    if r["blockNumber"] != x["block_number"] or r["blockHash"] != x["block_hash"].lower():
        return (
            f"transaction {x['tx_hash']} is in block {r['blockNumber']} ({r['blockHash']}), "
            f"the step says {x['block_number']} ({x['block_hash']})"
        )
    if (r["to"] or "") != x["to"].lower():
        return f"the transaction was sent to {r['to']}, the step says {x['to']}"
    if x["to"].lower() not in contracts:
        return f"{x['to']} is not one of the trusted deployment's contracts"
    if r["gasUsed"] != x["gas_used"]:
        return f"the transaction used {r['gasUsed']} gas, the step says {x['gas_used']}"
    ev = x["event"]
    if ev is not None:
        topics = [t.lower() for t in ev["topics"]]
        if not any(
            log["logIndex"] == ev["log_index"]
            and log["address"] == ev["address"].lower()
            and log["topics"] == topics
            for log in r["logs"]
        ):
            return "the transaction has no log with the step's event"
        if ev["address"].lower() not in contracts:
            return f"{ev['address']} is not one of the trusted deployment's contracts"
    return None


def _report_anchors(run: _Run) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    seen: set[int] = set()
    for st in run.steps:
        idx = st["anchor"]
        if idx is None or idx in seen:
            continue
        seen.add(idx)
        a = run.anchors[idx]
        entry: dict[str, Any] = {"tx_hash": a["tx_hash"], "block_number": a["block_number"]}
        if a["type"] == "root":
            entry["root"] = a["root"]
        else:
            entry["step"] = a["seq"]
        out.append(entry)
    return out


async def verify_bundle(
    bundle: str | bytes | Mapping[str, Any],
    trust: TrustRoot,
    chain: Chain | None,
    *,
    allow_unsealed_v1: bool = False,
    extra_findings: Sequence[Finding] = (),
    timings: dict[str, float] | None = None,
) -> BundleReport:
    """Verify an audit bundle against a trust root (docs/checkpoint-spec.md, section 10).

    ``chain`` None checks offline only: every chain finding is then missing and the report can
    never be ok (``node_chain`` at step 0 says why). ``timings``, when given, receives the
    seconds spent per phase (``parse``, ``records``, ``proofs``, ``chain``, ``seal``,
    ``effects``; the benchmark reports them).

    Raises:
        BundleError: the bundle is malformed (no verdict).
        ChainError: the node cannot be queried.
    """
    clock = _Clock(timings)
    b = parse_bundle(bundle)
    run = _Run(b)
    f = _Findings()
    redacted: list[dict[str, Any]] = []
    approvals: list[dict[str, Any]] = []
    clock.lap("parse")
    # phase 1: trust and chain
    if b["run_key"] != run.rk_hex:
        f.add(0, "run_key", "the bundle's run_key is not the run key of its workflow and run id")
    if not trust.trusts(b["registry"]):
        f.add(
            0,
            "untrusted_registry",
            f"the bundle names registry {b['registry']}, the trusted registry is {trust.registry}",
        )
    if b["chain_id"] != trust.chain_id:
        f.add(
            0,
            "untrusted_chain",
            f"the bundle names chain {b['chain_id']}, the trusted chain is {trust.chain_id}",
        )
    live = chain
    rng = (trust.from_block, 0)
    try:
        if chain is None:
            f.add(0, "node_chain", "no chain was queried (offline check)")
        else:
            node = await chain.chain_id()
            if node != trust.chain_id:
                f.add(0, "node_chain", f"the node serves chain {node}, trusted is {trust.chain_id}")
                live = None
            else:
                rng = (trust.from_block, await chain.block_number())
        clock.lap("chain")
        # phase 2: records, commitments, head chain (offline)
        _phase2(run, f, redacted, approvals)
        head = run.heads[-1]
        clock.lap("records")
        # phase 3: anchors (the proofs offline, then each anchor's receipt once)
        pending = await _phase3(run, trust, live, rng, f, clock)
        # phase 4: the seal
        sealed, seal = False, None
        if live is not None:
            if run.version == 1:
                if not allow_unsealed_v1:
                    f.add(run.m, "unsealed", "version 1 runs have no seal (--allow-unsealed-v1)")
            else:
                sealed, seal = await _phase4(run, trust, live, rng, head, f)
        clock.lap("seal")
        # phase 5: chain effects
        contracts_source: Literal["trust_root", "bundle"] = (
            "trust_root" if trust.contracts is not None else "bundle"
        )
        if live is not None and run.version == 2:
            known = trust.contracts if trust.contracts is not None else b["contracts"].values()
            await _phase5(run, {c.lower() for c in known}, live, f)
        clock.lap("effects")
    except (OSError, ValueError) as exc:
        raise ChainError(f"chain query failed while verifying: {exc}") from None
    items = sorted([*f.items, *extra_findings], key=lambda x: (x.step, x.code))
    return BundleReport(
        workflow_id=b["workflow_id"],
        run_id=b["run_id"],
        workflow_type=b["workflow_type"],
        status=str(b.get("status") or ""),
        ok=not items,
        sealed=sealed,
        first_bad_step=min((x.step for x in items), default=None),
        steps=run.m,
        head=_h(head),
        spec_version=run.version,
        anchor_mode=b["anchor_mode"],
        registry=trust.registry,
        chain_id=trust.chain_id,
        contracts_source=contracts_source,
        anchors=_report_anchors(run),
        seal=seal,
        redacted=redacted,
        approvals=approvals,
        findings=items,
        problems=[f"step {x.step}: {x.message} [{x.code}]" for x in items],
        pending_steps=pending,
    )


# ---- export ------------------------------------------------------------------------------------


def _part(preimage: str | None, salt: str | None, version: int) -> dict[str, Any] | None:
    if preimage is None or (version == 2 and salt is None):
        return None
    return {"salt": salt if version == 2 else None, "preimage": preimage}


_STEP_TUPLE_COLUMNS = (
    "seq",
    "kind",
    "name",
    "status",
    "input_hash",
    "output_hash",
    "prev",
    "spec_version",
    "input_preimage",
    "output_preimage",
    "input_salt",
    "output_salt",
    "redacted_at",
    "anchor_id",
    "proof",
)


def _step_tuples(store: Any, workflow_id: str, run_id: str) -> list[tuple[Any, ...]]:
    """The run's steps as tuples (``Store.step_tuples``: one query, no ORM objects), or from
    ``get_steps`` for a store without it; ordered by seq."""
    fast = getattr(store, "step_tuples", None)
    if fast is not None:
        return list(fast(workflow_id, run_id))
    rows = sorted(store.get_steps(workflow_id, run_id), key=lambda r: r.seq)
    return [tuple(getattr(r, c, None) for c in _STEP_TUPLE_COLUMNS) for r in rows]


#: A stored proof as the anchorer writes it (``json.dumps`` of 0x-hex siblings).
_PROOF_TEXT = re.compile(r'\[(?:"0x[0-9a-f]{64}"(?:, "0x[0-9a-f]{64}")*)?\]')


def _stored_proof(text: str | None) -> Any:
    """A stored proof column as the bundle's ``proof`` array (``[]`` for none)."""
    if not text:
        return []
    if _PROOF_TEXT.fullmatch(text):  # the anchorer's own format: split, not a JSON parse
        return text[2:-2].split('", "') if len(text) > 2 else []
    return json.loads(text)


def build_bundle(
    store: Any,
    workflow_id: str,
    run_id: str | None = None,
    *,
    chain_id: int,
    registry: str,
    registry_deployment_block: int,
    contracts: Mapping[str, str],
) -> dict[str, Any]:
    """The audit bundle of a stored run (the latest of ``workflow_id`` unless ``run_id``).

    ``chain_id``, ``registry``, ``registry_deployment_block`` and ``contracts`` describe the
    deployment the run used (from the runtime's deployments file); anchors carry the chain and
    registry stored with them.

    Raises:
        StoreError: no such run.
    """
    run = store.get_run(workflow_id, run_id)
    version = int(getattr(run, "spec_version", 1) or 1)
    rows = _step_tuples(store, run.workflow_id, run.run_id)
    anchor_rows = store.get_anchors({r[13] for r in rows if r[13] is not None})
    anchors: list[dict[str, Any]] = []
    index: dict[int, int] = {}
    for a_id, a in sorted(anchor_rows.items()):
        if a.status == "confirmed" and a.tx_hash and a.id is not None:
            index[a_id] = -1  # numbered in order of first use below
    steps: list[dict[str, Any]] = []
    append = steps.append
    rk = run.run_key
    for (
        seq,
        kind,
        name,
        status,
        input_hash,
        output_hash,
        prev,
        row_version,
        input_preimage,
        output_preimage,
        input_salt,
        output_salt,
        redacted_at,
        anchor_id,
        proof,
    ) in rows:
        ref = index.get(anchor_id) if anchor_id is not None else None
        if ref == -1:
            a = anchor_rows[anchor_id]
            base = {
                "chain_id": int(a.chain_id if a.chain_id is not None else chain_id),
                "registry": a.registry_address or registry,
                "tx_hash": a.tx_hash,
                "block_number": int(a.block_number or 0),
            }
            if a.mode == "batched":
                entry = {"type": "root", **base, "root": a.root, "leaf_count": a.leaf_count}
            else:
                entry = {"type": "step", **base, "seq": seq}
            ref = index[anchor_id] = len(anchors)
            anchors.append(entry)
        is_root = ref is not None and anchors[ref]["type"] == "root"
        redacted = redacted_at is not None
        append(
            {
                "record": {
                    "v": int(row_version or version),
                    "run": rk,
                    "seq": seq,
                    "kind": kind,
                    "name": name,
                    "input": input_hash,
                    "output": output_hash,
                    "status": status,
                    "prev": prev,
                },
                "input": None if redacted else _part(input_preimage, input_salt, version),
                "output": None if redacted else _part(output_preimage, output_salt, version),
                "anchor": ref,
                "proof": _stored_proof(proof) if is_root else None,
            }
        )
    seal_entry: dict[str, Any] | None = None
    seal_row = store.get_seal(run.workflow_id, run.run_id) if version == 2 else None
    if seal_row is not None and seal_row.status == "confirmed" and seal_row.tx_hash:
        seal_entry = {
            "steps": seal_row.steps,
            "head": seal_row.head,
            "chain_id": chain_id,
            "registry": registry,
            "tx_hash": seal_row.tx_hash,
            "block_number": int(seal_row.block_number or 0),
        }
    return {
        "format": BUNDLE_FORMAT,
        "spec_version": version,
        "workflow_id": run.workflow_id,
        "run_id": run.run_id,
        "run_key": run.run_key,
        "workflow_type": run.workflow_type,
        "status": run.status,
        "anchor_mode": run.anchor_mode,
        "chain_id": chain_id,
        "registry": registry,
        "registry_deployment_block": registry_deployment_block,
        "contracts": dict(contracts),
        "steps": steps,
        "anchors": anchors,
        "seal": seal_entry,
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
