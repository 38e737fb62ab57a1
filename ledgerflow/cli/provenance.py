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

__all__ = ["credentials", "provenance", "redact"]

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
        from ledgerflow.provenance.lookup import FileHash, judge_credentials, lookup

        address, chain, start = _registry_of(settings, registry, chain_id, from_block)
        credential = _read_credentials(settings, file, data)
        hashes = file_hashes(data)
        original = credential.claim if credential is not None else None
        if original is not None and all(h.content_hash != original.content_hash for h in hashes):
            # A copy with content credentials: the registered asset is the original it names.
            named = FileHash(content_hash=original.content_hash, canon_version=-1, method="hash")
            hashes.append(named)
        w3 = AsyncWeb3(AsyncHTTPProvider(rpc_url or settings.rpc_url))
        try:
            report = await lookup(
                w3,
                hashes,
                chain_id=chain,
                registry=address,
                from_block=start,
                file=file.name,
            )
        finally:
            await w3.provider.disconnect()
        if not no_store and report.registrations:
            await _add_store_proofs(settings, report)
        if credential is not None:
            judge_credentials(report, credential)
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


def _read_credentials(settings: Settings, file: Path, data: bytes) -> Any:
    """The file's C2PA report when its type carries content credentials and it has a manifest."""
    import mimetypes

    from ledgerflow.provenance import credentials as cr

    mime = mimetypes.guess_type(file.name)[0]
    if mime is None or mime not in cr.supported_media_types(for_embedding=False):
        return None
    try:
        report = cr.read(data, mime, trust_anchors=cr.trust_anchors_from_settings(settings))
    except LedgerflowError:
        return None  # not a readable asset of that type: the byte hash is the answer
    return None if report.status == "missing" else report


async def _add_store_proofs(settings: Settings, report: Any) -> None:
    """Each registration's claim-step proof, when a store is readable here (else the chain's
    answer stands alone)."""
    from ledgerflow.provenance.lookup import add_store_proofs
    from ledgerflow.runtime import Runtime
    from ledgerflow.store import Store

    try:
        runtime = Runtime(settings, store=Store(settings.database_url, create=False))
    except LedgerflowError:
        return
    try:
        await add_store_proofs(runtime, report)
    finally:
        await runtime.aclose()


def credentials(
    file: Annotated[Path, typer.Argument(help="a registered asset (PNG, JPEG, WAV, ...)")],
    output: Annotated[Path, typer.Option("--out", "-o", help="write the copy here")],
    registry: Annotated[
        str | None, typer.Option("--registry", help="the ProvenanceRegistry to trust")
    ] = None,
    chain_id: Annotated[int | None, typer.Option("--chain-id", help="its chain id")] = None,
    rpc_url: Annotated[str | None, typer.Option("--rpc-url", help="JSON-RPC endpoint")] = None,
) -> None:
    """Write a copy of FILE with C2PA content credentials naming its on-chain registration.

    FILE must be registered (ContentProvenanceWorkflow with `asset_hash`); the manifest carries
    the claim hash, the run and step that registered it and the registration's transaction, and
    is signed with LEDGERFLOW_C2PA_CERT_CHAIN / LEDGERFLOW_C2PA_PRIVATE_KEY. `ledgerflow
    provenance` reads it back. Exit 2 when FILE is not registered or cannot carry credentials.
    """
    import mimetypes

    from ledgerflow.provenance import credentials as cr

    settings = _settings()
    try:
        data = file.read_bytes()
    except OSError as exc:
        err.print(f"[red]error:[/red] cannot read {file}: {exc.strerror}")
        raise typer.Exit(2) from None
    mime = mimetypes.guess_type(file.name)[0] or "application/octet-stream"

    async def _main() -> Any:
        from web3 import AsyncHTTPProvider, AsyncWeb3

        from ledgerflow.activities.provenance import file_hashes
        from ledgerflow.provenance.lookup import lookup

        address, chain, start = _registry_of(settings, registry, chain_id, None)
        w3 = AsyncWeb3(AsyncHTTPProvider(rpc_url or settings.rpc_url))
        try:
            report = await lookup(
                w3, file_hashes(data)[-1:], chain_id=chain, registry=address, from_block=start
            )
        finally:
            await w3.provider.disconnect()
        found = [r for r in report.registrations if r.ok]
        if not found:
            raise ConfigError(f"{file.name} is not registered in {address} on chain {chain}")
        return address, chain, found[-1]

    try:
        address, chain, reg = asyncio.run(_main())
        claim = cr.CredentialClaim(
            claim_hash=reg.claim_hash,
            content_hash=reg.content_hash,
            workflow_id=reg.workflow_id or "",
            run_id=reg.run_id or "",
            step_seq=reg.step_seq or 0,
            anchor=cr.CredentialAnchor(
                registry=address, chain_id=chain, tx_hash=reg.tx_hash, block_number=reg.block_number
            ),
            origin="synthetic" if reg.origin == "synthetic" else "human",
            generator=reg.generator_model,
            author_did=reg.author_did,
        )
        signed = cr.embed(data, mime, claim, cr.CredentialSigner.from_settings(settings))
    except LedgerflowError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    output.write_bytes(signed)
    out.print(
        f"wrote {output}: {file.name} with content credentials for claim {reg.claim_hash} "
        f"(registered in tx {reg.tx_hash})"
    )


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
    c = report.credentials
    if c is not None:
        chain_note = "its claim is on chain" if c["claim_on_chain"] else "its claim is NOT on chain"
        out.print(
            f"content credentials: {c['status']} ({chain_note}"
            f"{', AI-generated' if c['ai_generated'] else ''})"
        )


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
