"""The ``ledgerflow`` command line."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from ledgerflow import jsonsafe
from ledgerflow.errors import ConfigError, LedgerflowError
from ledgerflow.log import configure_logging
from ledgerflow.settings import Settings, get_settings

__all__ = ["app", "main"]

app = typer.Typer(
    name="ledgerflow",
    help="Durable workflows where AI decides and a blockchain keeps the books.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def _settings() -> Settings:
    s = get_settings()
    configure_logging(s.log_level, s.log_format)
    return s


def _until_signal(serve: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``serve(stop)`` until SIGINT or SIGTERM sets ``stop``."""
    import signal

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(stop)

    asyncio.run(_main())


def _serve(serve: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """A long-running service (worker, API): with JSON logs, its fatal error is a JSON line too,
    so a log pipeline never sees plain text from it."""
    from ledgerflow.log import json_logging

    try:
        _until_signal(serve)
    except LedgerflowError as exc:
        if not json_logging():
            raise
        import structlog

        structlog.get_logger("ledgerflow.cli").error(
            "service stopped", error=type(exc).__name__, detail=str(exc)
        )
        raise typer.Exit(2) from None


def _emit(data: Any, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    else:
        for k, v in data.items():
            out.print(f"[bold]{k}[/bold]: {v}")


@app.command()
def up(demo: Annotated[bool, typer.Option(help="run one demo workflow")] = True) -> None:
    """Start the embedded stack, deploy, run a demo, and serve until Ctrl-C.

    Exit code 0 after Ctrl-C or SIGTERM (1 if the demo run did not verify), 2 if something is in
    the way at start (a taken port, another `up` on the same state directory), 3 if a service died
    while it ran (every other one is stopped first).
    """
    from ledgerflow.dev.up import run_up

    raise typer.Exit(run_up(_settings(), demo=demo))


@app.command()
def worker(
    anchorer: Annotated[bool, typer.Option(help="also run the batch anchorer")] = True,
) -> None:
    """Run a worker (workflows, activities and the batch anchorer)."""
    from ledgerflow.worker.runner import run_worker

    settings = _settings()
    _serve(lambda stop: run_worker(settings, stop, anchorer=anchorer))


@app.command()
def api() -> None:
    """Serve the HTTP API (webhooks, health, OpenAPI at /docs)."""
    from ledgerflow.api.webhooks import serve_api

    settings = _settings()
    _serve(lambda stop: serve_api(settings, stop))


@app.command()
def deploy(
    seed: Annotated[
        bool | None,
        typer.Option(
            "--seed/--no-seed",
            help="seed the procurement demo data (default: only on the local dev chain, 31337)",
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="deploy even if the file is current")] = False,
    allow_dev_keys: Annotated[
        bool,
        typer.Option(help="allow anvil's public development keys on a chain other than 31337"),
    ] = False,
) -> None:
    """Deploy the contracts and write the deployment file."""
    from ledgerflow.chain import deploy as d
    from ledgerflow.settings import ANVIL_DEFAULT_KEYS, DEV_CHAIN_ID

    settings = _settings()
    path = settings.deployments_path
    if (
        not force
        and path.exists()
        and d.deployment_is_current(settings.rpc_url, d.load_deployment(path))
    ):
        out.print(f"deployment at {path} is current; use --force to redeploy")
        return
    roles = ("orchestrator", "agent", "approver")
    configured = (settings.orchestrator_key, settings.agent_key, settings.approver_key)
    keys = [(k.get_secret_value() if k else settings.dev_key(i)) for i, k in enumerate(configured)]
    chain_id = int(d.connect(settings.rpc_url).eth.chain_id)
    if chain_id != DEV_CHAIN_ID:
        public = {k.lower() for k in ANVIL_DEFAULT_KEYS}
        dev_roles = [r for r, k in zip(roles, keys, strict=True) if k.lower() in public]
        if dev_roles and not allow_dev_keys:
            names = ", ".join(f"LEDGERFLOW_{r.upper()}_KEY" for r in dev_roles)
            raise ConfigError(
                f"refusing to deploy on chain {chain_id} with anvil's public development keys "
                f"(anyone can sign with them): set {names} (or the _FILE forms), or pass "
                "--allow-dev-keys for a throwaway test chain"
            )
    explicit_seed = seed is True  # asked for by name: seeds any chain
    if seed is None:
        seed = chain_id == DEV_CHAIN_ID
        if not seed:
            err.print(f"note: not seeding the demo data on chain {chain_id} (--seed to seed it)")
    dep = d.deploy_all(
        settings.rpc_url,
        keys[0],
        agent_key=keys[1],
        approver_key=keys[2],
        allow_dev_keys=allow_dev_keys,
    )
    d.save_deployment(path, dep)
    if seed:
        d.seed_demo(
            settings.rpc_url,
            dep,
            keys[0],
            keys[1],
            approver_dir=settings.home / "approvers",
            allow_any_chain=explicit_seed,
        )
    _emit({"deployment": str(path), **dep.contracts}, False)


def _run(coro: Any) -> Any:
    try:
        return asyncio.run(coro)
    except LedgerflowError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


@app.command()
def start(
    workflow_type: Annotated[str, typer.Argument(help="e.g. ProcurementWorkflow")],
    input: Annotated[str, typer.Option("--input", "-i", help="the input as JSON")] = "{}",
    id: Annotated[str | None, typer.Option("--id", help="workflow id")] = None,
    wait: Annotated[bool, typer.Option(help="wait for the result")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Start a workflow."""
    from ledgerflow.sdk.client import LedgerflowClient

    settings = _settings()

    async def _main() -> dict[str, Any]:
        lf = await LedgerflowClient.connect(settings)
        handle = await lf.start(workflow_type, input, workflow_id=id)
        data: dict[str, Any] = {"workflow_id": handle.id, "run_id": handle.result_run_id}
        if wait:
            if not as_json:
                err.print(f"started {handle.id}; waiting for the result (Ctrl-C stops waiting)")
            data["result"] = await _wait_with_progress(lf, handle.id, show=not as_json)
        return data

    data = _run(_main())
    if as_json:
        _emit(data, True)
    elif "result" in data:
        out.print(_result_line(data["workflow_id"], data["result"]))
    else:
        out.print(f"started {data['workflow_id']} (run {data['run_id']})")


def _result_line(workflow_id: str, result: dict[str, Any]) -> str:
    """``po-1: completed — bought 25 x WIDGET-42 from 0x… for 300.00 tUSD; 8 steps, anchored``."""
    outcome = str(result.get("outcome"))
    what = ""
    if outcome == "completed" and result.get("quantity") and result.get("total") is not None:
        what = (
            f" — bought {result['quantity']} x {result.get('sku')} from {result.get('supplier')}"
            f" for {result['total'] / 1e6:,.2f} tUSD"
        )
    elif result.get("reason"):
        what = f" — {result['reason']}"
    anchored = "anchored" if result.get("anchored") else "anchoring pending"
    return f"{workflow_id}: {outcome}{what}; {result.get('steps')} steps, {anchored}"


async def _wait_with_progress(lf: Any, workflow_id: str, *, show: bool) -> dict[str, Any]:
    """Wait for the result; meanwhile print each phase and step count as the run moves."""
    result_task = asyncio.ensure_future(lf.result(workflow_id))
    last: tuple[Any, ...] = ()
    while not result_task.done():
        if show:
            try:
                st = await lf.status(workflow_id)
            except Exception:  # progress is best effort; the result decides
                st = None
            if st is not None and st.state is not None:
                now = (st.phase, st.steps, st.anchor_state)
                if now != last:
                    last = now
                    waiting = f", waiting for {st.awaiting}" if st.awaiting else ""
                    err.print(
                        f"  {now[0]}: {now[1]} step(s) checkpointed, anchors {now[2] or 'pending'}"
                        f"{waiting}"
                    )
        await asyncio.wait([result_task], timeout=0.5)
    value = result_task.result()
    result: dict[str, Any] = (
        value.model_dump(mode="json") if hasattr(value, "model_dump") else dict(value)
    )
    if show:
        err.print(
            f"  done: {result.get('outcome')} after {result.get('steps')} steps, "
            f"{'anchored' if result.get('anchored') else 'anchoring pending'}"
        )
    return result


@app.command()
def status(
    workflow_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Show a run's status, steps, head and anchor state."""
    from ledgerflow.sdk.client import LedgerflowClient

    settings = _settings()

    async def _main() -> dict[str, Any]:
        lf = await LedgerflowClient.connect(settings)
        return (await lf.status(workflow_id)).model_dump(mode="json")

    data = _run(_main())
    if as_json:
        _emit(data, True)
        return
    out.print(_status_line(data))


def _status_line(st: dict[str, Any]) -> str:
    """One line: ``po-1: running, phase awaiting-delivery (waiting for delivery), 6 steps, ...``."""
    parts = [f"{st['workflow_id']}: {st['status']}"]
    result = st.get("result") if isinstance(st.get("result"), dict) else None
    if result is not None and result.get("outcome"):
        reason = f" ({result['reason']})" if result.get("reason") else ""
        parts.append(f"outcome {result['outcome']}{reason}")
    elif st.get("phase"):
        waiting = f" (waiting for {st['awaiting']})" if st.get("awaiting") else ""
        parts.append(f"phase {st['phase']}{waiting}")
    if st.get("steps") is not None:
        parts.append(f"{st['steps']} steps")
    if st.get("head"):
        parts.append(f"head {st['head']}")
    parts.append(f"anchors {st.get('anchor_state') or 'pending'}")
    return ", ".join(parts)


@app.command()
def approve(
    workflow_id: str,
    key_file: Annotated[
        Path | None,
        typer.Option(
            "--key-file",
            help="an approver's private key file (mode 0600); the terms are signed here and "
            "only the signature is sent",
        ),
    ] = None,
    approver: Annotated[str, typer.Option(help="who approves (unsigned approvals)")] = "operator",
    reason: Annotated[str, typer.Option(help="why")] = "",
    expires_in: Annotated[
        int, typer.Option(help="seconds the signature stays valid on chain", min=300)
    ] = 86_400,
    print_typed_data: Annotated[
        bool,
        typer.Option(
            "--print-typed-data",
            help="print the EIP-712 typed data to sign elsewhere (a wallet) and send nothing",
        ),
    ] = False,
) -> None:
    """Approve what a run waits for: unsigned up to the agent's unsigned limit, signed above it."""
    import time

    from ledgerflow.sdk.client import LedgerflowClient

    settings = _settings()

    async def _main() -> dict[str, Any]:
        lf = await LedgerflowClient.connect(settings)
        if print_typed_data:
            terms = await lf.approval_terms(workflow_id)
            return terms.typed_data(int(time.time()) + expires_in)
        answer = await lf.approve(
            workflow_id, approver, reason, key_file=key_file, expires_in=expires_in
        )
        return {"workflow_id": workflow_id, "answer": answer}

    data = _run(_main())
    if print_typed_data:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        out.print(f"{data['workflow_id']}: {data['answer']}")


@app.command()
def reject(
    workflow_id: str,
    approver: Annotated[str, typer.Option(help="who rejects")] = "operator",
    reason: Annotated[str, typer.Option(help="why")] = "",
) -> None:
    """Reject what a run waits for; the run compensates and ends rejected."""
    from ledgerflow.sdk.client import LedgerflowClient

    settings = _settings()

    async def _main() -> str:
        lf = await LedgerflowClient.connect(settings)
        return await lf.reject(workflow_id, approver, reason)

    out.print(f"{workflow_id}: {_run(_main())}")


def _trust(
    settings: Settings,
    registry: str | None,
    chain_id: int | None,
    from_block: int | None,
    contracts: list[str] | None,
) -> Any:
    """The trust root: explicit flags, else the deployments file (spec section 9.4)."""
    from ledgerflow.checkpoint.bundle import TrustRoot

    if registry is not None or chain_id is not None:
        if registry is None or chain_id is None:
            raise LedgerflowError("--registry and --chain-id go together")
        trust = TrustRoot.explicit(registry, chain_id, from_block or 0)
        if contracts:
            trust.contracts = list(contracts)
        return trust
    from ledgerflow.checkpoint.bundle import read_deployment

    path = settings.deployments_path
    if not path.exists():
        raise LedgerflowError(
            f"no trust root: no deployments file at {path}; pass --registry ADDR --chain-id N "
            "(or set LEDGERFLOW_DEPLOYMENTS_FILE)"
        )
    trust = TrustRoot.from_deployment(read_deployment(path), registry=_registry_override(settings))
    if from_block is not None:
        trust.from_block = min(trust.from_block, from_block)
    return trust


def _registry_override(settings: Settings) -> str | None:
    """``LEDGERFLOW_REGISTRY_ADDRESS`` (any case) checksummed, or None when unset."""
    if not settings.registry_address:
        return None
    from ledgerflow.checkpoint.bundle import checksum_address
    from ledgerflow.errors import VerificationError

    try:
        return checksum_address(settings.registry_address.strip().lower())
    except VerificationError:
        raise LedgerflowError(
            f"LEDGERFLOW_REGISTRY_ADDRESS {settings.registry_address!r} is not an address"
        ) from None


def _reader_runtime(settings: Settings) -> Any:
    """A runtime over an existing store: never creates a database file."""
    from ledgerflow.runtime import Runtime
    from ledgerflow.store import Store

    return Runtime(settings, store=Store(settings.database_url, create=False))


_RegistryOpt = Annotated[
    str | None, typer.Option("--registry", help="trust this registry (any case) instead")
]
_ChainIdOpt = Annotated[int | None, typer.Option("--chain-id", help="the trusted chain id")]
_FromBlockOpt = Annotated[
    int | None, typer.Option("--from-block", help="scan the registry's logs from this block")
]
_ContractOpt = Annotated[
    list[str] | None,
    typer.Option("--contract", help="a trusted contract for chain-effect checks (repeatable)"),
]
_RpcOpt = Annotated[str | None, typer.Option("--rpc-url", help="JSON-RPC endpoint")]


@app.command()
def export(
    workflow_id: str,
    output: Annotated[Path, typer.Option("--out", "-o", help="write the bundle here")],
    run_id: Annotated[str | None, typer.Option(help="a specific run")] = None,
) -> None:
    """Write a run's audit bundle: one self-contained JSON document (docs/checkpoint-spec.md)."""
    settings = _settings()

    async def _main() -> dict[str, Any]:
        from ledgerflow.checkpoint.verify import export_run

        runtime = _reader_runtime(settings)
        try:
            return await asyncio.to_thread(export_run, runtime, workflow_id, run_id)
        finally:
            await runtime.aclose()

    bundle = _run(_main())
    output.write_text(json.dumps(bundle, indent=1) + "\n")
    err.print(
        f"wrote the audit bundle of {bundle['workflow_id']} ({bundle['run_id']}): "
        f"{len(bundle['steps'])} steps, {'sealed' if bundle['seal'] else 'not sealed'} -> {output}"
    )


@app.command()
def verify(
    workflow_id: Annotated[str | None, typer.Argument(help="a stored run's workflow id")] = None,
    bundle: Annotated[
        Path | None, typer.Option("--bundle", help="verify this audit bundle (no store)")
    ] = None,
    run_id: Annotated[str | None, typer.Option(help="a specific run")] = None,
    registry: _RegistryOpt = None,
    chain_id: _ChainIdOpt = None,
    from_block: _FromBlockOpt = None,
    contract: _ContractOpt = None,
    rpc_url: _RpcOpt = None,
    allow_unsealed_v1: Annotated[
        bool,
        typer.Option("--allow-unsealed-v1", help="accept version 1 runs, which have no seal"),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    no_history: Annotated[
        bool, typer.Option("--no-history", help="skip the Temporal cross-check")
    ] = False,
) -> None:
    """Verify a run (from the store, or an audit bundle with --bundle) against the chain.

    Anchors are checked only against the trusted registry and chain: the deployments file, or
    --registry ADDR --chain-id N. Exit 0 only for a sealed run whose every step is anchored and
    checks; 1 when it does not verify; 2 on an error (malformed bundle, no store, no chain).
    """
    if (workflow_id is None) == (bundle is None):
        err.print("[red]error:[/red] give a workflow id or --bundle FILE (one of the two)")
        raise typer.Exit(2)
    settings = _settings()

    async def _main() -> Any:
        trust = _trust(settings, registry, chain_id, from_block, contract)
        if bundle is not None:
            from ledgerflow.checkpoint.bundle import RpcChain, verify_bundle

            try:
                text = bundle.read_text()
            except OSError as exc:
                raise LedgerflowError(f"cannot read {bundle}: {exc}") from None
            chain = RpcChain(rpc_url or settings.rpc_url)
            try:
                return await verify_bundle(text, trust, chain, allow_unsealed_v1=allow_unsealed_v1)
            finally:
                await chain.aclose()
        # Only what verification reads: the store, the deployments file and plain JSON-RPC
        # (no runtime, no web3), Temporal only for the history cross-check.
        from ledgerflow.checkpoint.bundle import RpcChain, read_deployment
        from ledgerflow.checkpoint.sqlite_read import close_reader, open_reader
        from ledgerflow.checkpoint.verify import verify_stored

        assert workflow_id is not None
        deployment = read_deployment(settings.deployments_path)
        in_force = _registry_override(settings) or deployment.contracts["CheckpointRegistry"]
        client = None
        if not no_history:
            from ledgerflow.temporal import connect

            try:
                client = await connect(settings, timeout=5)
            except LedgerflowError as exc:
                err.print(f"note: verifying without Temporal history: {exc}", markup=False)
        store = open_reader(settings.database_url)  # SQLite: the stdlib driver, no SQLAlchemy
        chain = RpcChain(rpc_url or settings.rpc_endpoints[0])
        try:
            return await verify_stored(
                store,
                deployment,
                in_force,
                workflow_id,
                run_id,
                chain=chain,
                client=client,
                trust=trust,
                allow_unsealed_v1=allow_unsealed_v1,
            )
        finally:
            await chain.aclose()
            close_reader(store)

    report = _run(_main())
    if as_json:
        sys.stdout.write(report.model_dump_json(indent=2) + "\n")
    else:
        mark = "[green]ok[/green]" if report.ok else "[red]FAILED[/red]"
        out.print(f"{report.workflow_id} ({report.run_id}): {mark}")
        out.print(
            f"spec v{report.spec_version}, {report.steps} steps, head {report.head}, "
            f"mode {report.anchor_mode}, {'sealed' if report.sealed else 'NOT sealed'}"
        )
        out.print(f"checked against registry {report.registry} on chain {report.chain_id}")
        for r in report.redacted:
            out.print(f"  step {r['step']}: {' and '.join(r['parts'])} redacted")
        for a in report.approvals:
            verdict = "approved" if a["approved"] else "rejected"
            who = (
                f"signed by {', '.join(a['signers'])}"
                if a["signers"]
                else f"by {a['approver'] or 'an unnamed approver'} (unsigned)"
            )
            out.print(f"  step {a['step']} ({a['name']}): {verdict} {who}", markup=False)
        for p in report.problems:
            out.print(f"  - {p}")
        if report.first_bad_step is not None:
            out.print(f"first bad step: {report.first_bad_step}")
    raise typer.Exit(0 if report.ok else 1)


@app.command()
def proof(
    workflow_id: str,
    step: Annotated[int, typer.Option("--step", "-n", help="the step's seq (0-based)")],
    run_id: Annotated[str | None, typer.Option(help="a specific run")] = None,
    output: Annotated[Path | None, typer.Option("--out", "-o", help="write to this file")] = None,
    include_preimages: Annotated[
        bool, typer.Option(help="disclose this step's own input and output (with their salts)")
    ] = False,
) -> None:
    """Write the self-contained proof document of one step (reveals no other step)."""
    from ledgerflow.checkpoint.proofs import build_step_proof

    settings = _settings()

    async def _main() -> dict[str, Any]:
        runtime = _reader_runtime(settings)
        try:
            return await build_step_proof(
                runtime, workflow_id, step, run_id, include_preimages=include_preimages
            )
        finally:
            await runtime.aclose()

    doc = _run(_main())
    text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)
        err.print(f"wrote the proof of step {step} of {workflow_id} to {output}")


@app.command("verify-proof")
def verify_proof(
    file: Annotated[Path, typer.Argument(help="a proof document written by `ledgerflow proof`")],
    registry: _RegistryOpt = None,
    chain_id: _ChainIdOpt = None,
    rpc_url: _RpcOpt = None,
    offline: Annotated[bool, typer.Option(help="skip the chain checks")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Check a step proof offline and against the trusted registry and chain (the deployments
    file, or --registry ADDR --chain-id N). Exit 0 only if ok."""
    from ledgerflow.checkpoint.proofs import verify_proof_document

    settings = _settings()
    w3 = None
    trust = None
    try:
        if not offline:
            from ledgerflow.chain.deploy import connect as connect_chain

            trust = _trust(settings, registry, chain_id, None, None)
            w3 = connect_chain(rpc_url or settings.rpc_url)
        check = verify_proof_document(file.read_text(), w3=w3, trust=trust)
    except (OSError, LedgerflowError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    if as_json:
        sys.stdout.write(check.model_dump_json(indent=2) + "\n")
    else:
        mark = "[green]ok[/green]" if check.ok else "[red]FAILED[/red]"
        out.print(f"{file}: {mark}")
        if check.registry is not None:
            out.print(f"checked against registry {check.registry} on chain {check.chain_id}")
        for p in check.problems:
            out.print(f"  - {p}")
    raise typer.Exit(0 if check.ok else 1)


@app.command()
def bench(
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    quick: Annotated[bool, typer.Option(help="tiny sizes: a smoke run")] = False,
    only: Annotated[
        str | None, typer.Option(help="sections, e.g. throughput,gas,signer,verification,webhook")
    ] = None,
    runs: Annotated[int | None, typer.Option(help="throughput: N concurrent runs")] = None,
    steps: Annotated[int | None, typer.Option(help="throughput: K steps per run")] = None,
    rounds: Annotated[int | None, typer.Option(help="throughput: rounds of all modes")] = None,
    gas_sizes: Annotated[str | None, typer.Option(help="gas: batch sizes, e.g. 1,16")] = None,
    signer_txs: Annotated[int | None, typer.Option(help="signer: M concurrent sends")] = None,
    verify_steps: Annotated[int | None, typer.Option(help="verification: steps")] = None,
    webhooks: Annotated[int | None, typer.Option(help="webhook: starts per path")] = None,
    webhook_server: Annotated[
        str | None,
        typer.Option(help="webhook: `process` (ledgerflow api apart, the default) or `in-process`"),
    ] = None,
) -> None:
    """Measure checkpointing against its baselines on a throw-away stack of its own."""
    try:
        from ledgerflow_bench.harness import (
            config_from_options,
            progress_printer,
            render_report,
            run_bench_cli,
        )
    except ImportError:
        err.print(
            "[red]error:[/red] the benchmark harness is not installed: it lives in the "
            "repository's bench/ folder (`make test` and `make run` install it; or run "
            "`pip install -e bench/` in a checkout)"
        )
        raise typer.Exit(2) from None

    configure_logging("WARNING", "auto")
    try:
        cfg = config_from_options(
            quick=quick,
            sections=only,
            runs=runs,
            steps=steps,
            rounds=rounds,
            gas_batch_sizes=gas_sizes,
            signer_txs=signer_txs,
            verify_steps=verify_steps,
            webhooks=webhooks,
            webhook_server=webhook_server,
        )
    except LedgerflowError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    report = _run(run_bench_cli(cfg, progress=progress_printer()))
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2, default=str) + "\n")
    else:
        render_report(report, out)


from ledgerflow.cli.provenance import credentials, provenance, redact  # noqa: E402
from ledgerflow.cli.schedule import schedule_app, watch  # noqa: E402

app.add_typer(schedule_app, name="schedule")
app.command()(watch)
app.command()(provenance)
app.command()(redact)
app.command()(credentials)


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    code: int | str | None = 0
    # Everything this process and its children (the Temporal dev server, anvil) create is
    # readable by its owner only: the store, the Temporal database, anvil's state, the deployment
    # file, logs, exported bundles and proofs (they hold preimages).
    os.umask(os.umask(0o077) | 0o077)
    # py_ecc (through web3) raises the recursion limit to 100,000 on import, which lets deep
    # recursion overflow the C stack (a segfault) instead of raising RecursionError.
    jsonsafe.restore_recursion_limit()
    try:
        app(args=list(argv) if argv is not None else None)
    except LedgerflowError as exc:
        err.print(f"[red]error:[/red] {exc}")
        code = 2
    except SystemExit as exc:
        code = exc.code
    # Everything is done and every child stopped. Leave without interpreter finalization: the
    # Temporal SDK's native runtime can abort it (PyGILState_Release, sdk-python#300), which
    # would turn a successful command into a crash.
    sys.stdout.flush()
    sys.stderr.flush()
    if isinstance(code, str):
        err.print(code)
        code = 1
    os._exit(code or 0)


if __name__ == "__main__":
    main()
