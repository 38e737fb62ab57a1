"""``verify``: a stored run is verified as its audit bundle (checkpoint spec v2, section 10).

:func:`verify_run` exports the run from the store (:func:`export_run`, the same document
``ledgerflow export`` writes), verifies that bundle with :func:`ledgerflow.checkpoint.bundle.
verify_bundle` against the runtime's trust root (its deployments file), and, while Temporal still
holds the run's history, adds the history cross-check: the step hashes acknowledged by every
checkpoint flush and the head and step count in the workflow's result must be the bundle's. So
``verify <workflow-id>`` and ``verify --bundle`` of its export can only differ by that
cross-check.

:func:`verify_stored` is the same from its parts (a store or
:class:`~ledgerflow.checkpoint.sqlite_read.SqliteReader`, the deployment, any chain client):
``ledgerflow verify <id>`` uses it without a runtime, web3 or, with ``--no-history``, Temporal.

:func:`verify_steps` and :func:`decode_proof` check version 1 step rows directly (the store's
tests, and the benchmark's per-step baseline, use them).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

from ledgerflow.checkpoint.bundle import (
    BundleReport,
    Chain,
    Finding,
    TrustRoot,
    Web3Chain,
    build_bundle,
    verify_bundle,
)
from ledgerflow.checkpoint.canonical import encode_string, keccak
from ledgerflow.checkpoint.records import next_head, run_key

if TYPE_CHECKING:  # not at run time: `ledgerflow verify` imports neither Temporal nor web3
    from temporalio.client import Client

    from ledgerflow.runtime import Runtime
    from ledgerflow.store import StepRow

__all__ = [
    "VerifyReport",
    "export_run",
    "export_stored",
    "trust_root",
    "verify_run",
    "verify_steps",
    "verify_stored",
]

CHECKPOINT_ACTIVITIES = {"checkpoint.anchor_steps", "checkpoint.store_steps"}


#: The report of a verification (``verify --json``): see docs/checkpoint-spec.md, section 10.8.
VerifyReport = BundleReport


class _Findings:
    def __init__(self) -> None:
        self.problems: list[str] = []
        self.first_bad: int | None = None

    def bad(self, seq: int | None, message: str) -> None:
        self.problems.append(message if seq is None else f"step {seq}: {message}")
        if seq is not None and (self.first_bad is None or seq < self.first_bad):
            self.first_bad = seq


_PROOF_PUNCTUATION = str.maketrans("", "", '[]", ')


def decode_proof(text: str | None) -> list[bytes]:
    """A stored proof (JSON list of 0x-hex siblings) as 32-byte values, decoded in one pass.

    Raises:
        ValueError: the text is not such a list.
    """
    if not text:
        return []
    raw = bytes.fromhex(text.replace('"0x', "").translate(_PROOF_PUNCTUATION))
    if not text.startswith("[") or len(raw) != 32 * text.count('"0x'):
        raise ValueError("a stored proof must be a JSON list of 32-byte 0x-hex values")
    return [raw[i : i + 32] for i in range(0, len(raw), 32)]


def _hex(b: bytes) -> str:
    return "0x" + b.hex()


def verify_steps(
    workflow_id: str, run_id: str, rows: list[StepRow], findings: _Findings
) -> tuple[list[bytes], bytes]:
    """Recompute step hashes and the head chain; returns (step hashes, final head)."""
    rk = run_key(workflow_id, run_id, spec=1)
    rk_hex = _hex(rk)
    head = rk
    hashes: list[bytes] = []
    for expected, row in enumerate(sorted(rows, key=lambda r: r.seq)):
        if row.seq != expected:
            findings.bad(expected, f"missing (next stored step is {row.seq})")
            break
        if row.input_preimage is None or row.output_preimage is None:
            findings.bad(expected, "preimage missing from the store")
            break
        ih = _hex(keccak(row.input_preimage.encode("utf-8")))
        oh = _hex(keccak(row.output_preimage.encode("utf-8")))
        # LCE-1 of {"v", "run", "seq", "kind", "name", "input", "output", "status", "prev"}
        # written out in key order; equal to canonical_bytes(record) (tested), 5x faster.
        prev_hex = _hex(head)
        preimage = (
            f'{{"input":"{ih}","kind":{encode_string(row.kind)},"name":{encode_string(row.name)},'
            f'"output":"{oh}","prev":"{prev_hex}","run":"{rk_hex}","seq":{int(row.seq)},'
            f'"status":{encode_string(row.status)},"v":1}}'
        )
        sh = keccak(preimage.encode("utf-8"))
        new_head = next_head(head, sh)
        if ih != row.input_hash:
            findings.bad(row.seq, "input preimage does not match its stored hash")
        if oh != row.output_hash:
            findings.bad(row.seq, "output preimage does not match its stored hash")
        if row.prev != prev_hex or row.step_hash != _hex(sh) or row.head != _hex(new_head):
            findings.bad(row.seq, "stored hashes disagree with the recomputed chain")
        hashes.append(sh)
        head = new_head
    return hashes, head


async def _payload_json(client: Client, payloads: Any) -> Any:
    if not payloads or not payloads.payloads:
        return None
    first = payloads.payloads[0]
    codec = client.data_converter.payload_codec
    if codec is not None:  # encrypted history (ledgerflow.codec): raw history is ciphertext
        (first,) = await codec.decode([first])
    return json.loads(first.data)


async def _check_history(
    client: Client, workflow_id: str, run_id: str, hashes: list[str], head: str
) -> tuple[bool, list[Finding]]:
    """Cross-check against Temporal history; (False, []) when it is no longer retained."""
    from temporalio.api.enums.v1 import EventType
    from temporalio.service import RPCError

    handle = client.get_workflow_handle(workflow_id, run_id=run_id)
    try:
        history = await handle.fetch_history()
    except RPCError:
        return False, []
    out: list[Finding] = []
    acked: list[str] = []
    activity_types: dict[int, str] = {}
    result: Any = None
    for ev in history.events:
        if ev.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            scheduled = ev.activity_task_scheduled_event_attributes
            activity_types[ev.event_id] = scheduled.activity_type.name
        elif ev.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            completed = ev.activity_task_completed_event_attributes
            if activity_types.get(completed.scheduled_event_id, "") in CHECKPOINT_ACTIVITIES:
                acked += (await _payload_json(client, completed.result) or {}).get(
                    "step_hashes", []
                )
        elif ev.event_type == EventType.EVENT_TYPE_MARKER_RECORDED:
            marker = ev.marker_recorded_event_attributes
            data = (
                await _payload_json(client, marker.details["data"])
                if "data" in marker.details
                else None
            )
            kind = (
                (data.get("activity_type") or data.get("activityType"))
                if isinstance(data, dict)
                else None
            )
            if kind in CHECKPOINT_ACTIVITIES:
                result_payloads = marker.details["result"] if "result" in marker.details else None  # noqa: SIM401
                acked += (await _payload_json(client, result_payloads) or {}).get("step_hashes", [])
        elif ev.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED:
            result = await _payload_json(
                client, ev.workflow_execution_completed_event_attributes.result
            )
    for seq, (a, b) in enumerate(zip(acked, hashes, strict=False)):
        if a != b:
            out.append(
                Finding(
                    step=seq,
                    code="history",
                    message="the step hash differs from the one in Temporal history",
                )
            )
            break
    else:
        if len(acked) > len(hashes):
            out.append(
                Finding(
                    step=len(hashes),
                    code="history",
                    message="Temporal history has steps the store lacks",
                )
            )
    if isinstance(result, dict) and "head" in result:
        if result.get("steps") != len(hashes):
            out.append(
                Finding(
                    step=min(int(result.get("steps") or 0), len(hashes)),
                    code="history",
                    message=f"the workflow result reports {result.get('steps')} steps, "
                    f"the store {len(hashes)}",
                )
            )
        elif result["head"] != head:
            out.append(
                Finding(
                    step=max(len(hashes) - 1, 0),
                    code="history",
                    message="the workflow result's head differs from the recomputed one",
                )
            )
    return True, out


def _step_hashes(bundle: dict[str, Any]) -> list[str]:
    from ledgerflow.checkpoint.bundle import _record_preimage

    return ["0x" + keccak(_record_preimage(st["record"])).hex() for st in bundle["steps"]]


def trust_root(rt: Runtime) -> TrustRoot:
    """The runtime's trust root: its deployments file, with ``LEDGERFLOW_REGISTRY_ADDRESS`` (any
    case) as the registry when set."""
    return TrustRoot.from_deployment(rt.deployment, registry=rt.address("CheckpointRegistry"))


def export_run(rt: Runtime, workflow_id: str, run_id: str | None = None) -> dict[str, Any]:
    """The audit bundle of a stored run (synchronous: call it in a thread from async code)."""
    return export_stored(
        rt.store, rt.deployment, rt.address("CheckpointRegistry"), workflow_id, run_id
    )


def export_stored(
    store: Any,
    deployment: Any,
    registry: str,
    workflow_id: str,
    run_id: str | None = None,
) -> dict[str, Any]:
    """:func:`export_run` from its parts: a store, the deployment the run used (``chain_id``,
    ``block_number``, ``contracts``) and the registry address in force."""
    contracts = {name: str(addr) for name, addr in deployment.contracts.items()}
    contracts["CheckpointRegistry"] = registry
    own = str(deployment.contracts["CheckpointRegistry"]).lower() == registry.lower()
    return build_bundle(
        store,
        workflow_id,
        run_id,
        chain_id=int(deployment.chain_id),
        registry=registry,
        registry_deployment_block=int(deployment.block_number) if own else 0,
        contracts=contracts,
    )


async def verify_run(
    rt: Runtime,
    workflow_id: str,
    run_id: str | None = None,
    *,
    client: Client | None = None,
    trust: TrustRoot | None = None,
    allow_unsealed_v1: bool = False,
    timings: dict[str, float] | None = None,
) -> VerifyReport:
    """Verify one stored run (the latest of ``workflow_id`` unless ``run_id`` is given) as its
    audit bundle, against ``trust`` (default: the runtime's deployments file).

    Raises:
        StoreError: no such run in the store.
        ConfigError: no deployments file (and no ``trust``).
        ChainError: the node cannot be queried.
    """
    return await verify_stored(
        rt.store,
        rt.deployment,
        rt.address("CheckpointRegistry"),
        workflow_id,
        run_id,
        chain=Web3Chain(rt.w3),
        client=client,
        trust=trust or trust_root(rt),
        allow_unsealed_v1=allow_unsealed_v1,
        timings=timings,
    )


async def verify_stored(
    store: Any,
    deployment: Any,
    registry: str,
    workflow_id: str,
    run_id: str | None = None,
    *,
    chain: Chain,
    trust: TrustRoot,
    client: Client | None = None,
    allow_unsealed_v1: bool = False,
    timings: dict[str, float] | None = None,
) -> VerifyReport:
    """:func:`verify_run` from its parts (what ``ledgerflow verify <id>`` calls: a store, the
    deployment, the registry in force and any :class:`~ledgerflow.checkpoint.bundle.Chain`,
    without a runtime).

    ``timings``, when given, receives the seconds per phase: ``load`` (the store read and the
    bundle built from it), ``history`` and those of :func:`verify_bundle`.

    Raises:
        StoreError: no such run in the store.
        ChainError: the node cannot be queried.
    """
    t0 = time.perf_counter()
    bundle = await asyncio.to_thread(
        export_stored, store, deployment, registry, workflow_id, run_id
    )
    if timings is not None:
        timings["load"] = time.perf_counter() - t0
    extra: list[Finding] = []
    history_checked = False
    if client is not None:
        hashes = _step_hashes(bundle)
        head = bundle["run_key"]
        for h in hashes:
            head = "0x" + next_head(bytes.fromhex(head[2:]), bytes.fromhex(h[2:])).hex()
        history_checked, extra = await _check_history(
            client, bundle["workflow_id"], bundle["run_id"], hashes, head
        )
    if timings is not None:
        timings["history"] = time.perf_counter() - t0 - timings["load"]
    report = await verify_bundle(
        bundle,
        trust,
        chain,
        allow_unsealed_v1=allow_unsealed_v1,
        extra_findings=extra,
        timings=timings,
    )
    report.history_checked = history_checked
    return report
