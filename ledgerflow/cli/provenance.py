"""``ledgerflow provenance FILE`` and ``ledgerflow redact``.

Kept apart from :mod:`ledgerflow.cli`, which registers both commands.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from ledgerflow.errors import ConfigError, LedgerflowError
from ledgerflow.settings import Settings, get_settings

__all__ = ["provenance", "redact"]

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def _settings() -> Settings:
    from ledgerflow.log import configure_logging

    s = get_settings()
    configure_logging(s.log_level, s.log_format)
    return s


def _registry_of(
    settings: Settings, registry: str | None, chain_id: int | None, from_block: int | None
) -> tuple[str, int, int]:
    """The ProvenanceRegistry to trust: --registry and --chain-id, else the deployments file."""
    if registry is not None or chain_id is not None:
        if registry is None or chain_id is None:
            raise ConfigError("--registry and --chain-id go together")
        from web3 import Web3

        if not Web3.is_address(registry.lower()):
            raise ConfigError(f"--registry {registry!r} is not an address")
        return Web3.to_checksum_address(registry.lower()), chain_id, from_block or 0
    from ledgerflow.chain.deploy import load_deployment

    path = settings.deployments_path
    if not path.exists():
        raise ConfigError(
            f"no deployments file at {path}; pass --registry ADDR --chain-id N "
            "(or set LEDGERFLOW_DEPLOYMENTS_FILE)"
        )
    d = load_deployment(path)
    if "ProvenanceRegistry" not in d.contracts:
        raise ConfigError(
            "the deployment has no ProvenanceRegistry (redeploy with `ledgerflow deploy`), or "
            "pass --registry ADDR --chain-id N"
        )
    # No registration can precede the deployment's last block (its role grants).
    start = int(d.block_number) if from_block is None else from_block
    return str(d.contracts["ProvenanceRegistry"]), int(d.chain_id), start


def provenance(
    file: Annotated[Path, typer.Argument(help="the file to look up (text or binary)")],
    registry: Annotated[
        str | None, typer.Option("--registry", help="the ProvenanceRegistry to trust")
    ] = None,
    chain_id: Annotated[int | None, typer.Option("--chain-id", help="its chain id")] = None,
    from_block: Annotated[
        int | None, typer.Option("--from-block", help="scan the registry's logs from this block")
    ] = None,
    rpc_url: Annotated[str | None, typer.Option("--rpc-url", help="JSON-RPC endpoint")] = None,
    no_store: Annotated[
        bool, typer.Option("--no-store", help="answer from the chain alone (no step proof)")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Was FILE registered, by whom, when, by which generator, human or synthetic?

    Answered from the ProvenanceRegistry's logs on chain (the deployments file, or --registry
    ADDR --chain-id N); with the store, each registration also carries the step proof of the
    signed claim. Exit 0 when registered, 1 when not, 2 on an error.
    """
    settings = _settings()
    try:
        data = file.read_bytes()
    except OSError as exc:
        err.print(f"[red]error:[/red] cannot read {file}: {exc.strerror}")
        raise typer.Exit(2) from None

    async def _main() -> Any:
        from web3 import AsyncHTTPProvider, AsyncWeb3

        from ledgerflow.activities.provenance import file_hashes
        from ledgerflow.provenance.lookup import add_store_proofs, lookup

        address, chain, start = _registry_of(settings, registry, chain_id, from_block)
        w3 = AsyncWeb3(AsyncHTTPProvider(rpc_url or settings.rpc_url))
        try:
            report = await lookup(
                w3,
                file_hashes(data),
                chain_id=chain,
                registry=address,
                from_block=start,
                file=file.name,
            )
        finally:
            await w3.provider.disconnect()
        if no_store or not report.registrations:
            return report
        from ledgerflow.runtime import Runtime
        from ledgerflow.store import Store

        try:
            runtime = Runtime(settings, store=Store(settings.database_url, create=False))
        except LedgerflowError:
            return report  # no store here: the chain's answer is the answer
        try:
            await add_store_proofs(runtime, report)
        finally:
            await runtime.aclose()
        return report

    try:
        report = asyncio.run(_main())
    except LedgerflowError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    if as_json:
        sys.stdout.write(report.model_dump_json(indent=2) + "\n")
    else:
        _print(report)
    raise typer.Exit(0 if report.registered else 1)


def _print(report: Any) -> None:
    if not report.registered:
        out.print(f"{report.file}: [red]not registered[/red]")
        for h in report.hashes:
            out.print(f"  looked up {h.content_hash} ({h.method})")
    else:
        out.print(f"{report.file}: [green]registered[/green] ({report.content_hash})")
    out.print(f"registry {report.registry} on chain {report.chain_id} ({report.source})")
    for r in report.registrations:
        mark = "[green]ok[/green]" if r.ok else "[red]INVALID[/red]"
        out.print(f"- {mark} {r.origin or '?'} by {r.agent_did or r.agent}, at {r.block_time}")
        if r.generator_model or r.generator_provider:
            out.print(f"  generator: {r.generator_model} ({r.generator_provider or '?'})")
        if r.author_did:
            out.print(f"  author: {r.author_did}")
        out.print(f"  claim {r.claim_hash}, tx {r.tx_hash} (block {r.block_number})")
        out.print(f"  step {r.step_seq} of {r.workflow_id}/{r.run_id}: {r.step_hash}")
        if r.proof_ok is not None:
            out.print(f"  step proof: {'ok' if r.proof_ok else 'FAILED'}")
        if r.proof_note:
            out.print(f"  step proof: {r.proof_note}", markup=False)
        for p in r.problems:
            out.print(f"  - {p}", markup=False)


def redact(
    workflow_id: str,
    step: Annotated[int, typer.Option("--step", "-n", help="the step's seq (0-based)")],
    run_id: Annotated[str | None, typer.Option(help="a specific run (default: the latest)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Erase one step's preimages and salts from the store (the record and its anchor stay).

    The run still verifies: the step is reported redacted, never tampered. Temporal's history
    keeps its own copy until its retention ends. Exit 2 for an unknown run or step.
    """
    from ledgerflow.store import Store

    settings = _settings()
    try:
        store = Store(settings.database_url, create=False)
        row = store.redact_step(workflow_id, step, run_id)
    except LedgerflowError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    doc = {
        "workflow_id": row.workflow_id,
        "run_id": row.run_id,
        "step": row.seq,
        "name": row.name,
        "redacted_at": row.redacted_at.isoformat() if row.redacted_at else None,
    }
    if as_json:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        out.print(
            f"step {row.seq} ({row.name}) of {row.workflow_id}/{row.run_id}: preimages and "
            "salts erased"
        )
