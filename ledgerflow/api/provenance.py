"""``GET /provenance/{content_hash}``: the public, read-only provenance lookup.

The same answer as ``ledgerflow provenance`` for a hash: from the ProvenanceRegistry's logs on
the chain of the deployments file, plus the step proof of each claim when the store is readable.
Unsigned (anyone may ask), nothing is written, and nothing in the answer is secret: the claim and
its signature are public on chain, and a step proof discloses one record's hashes.
"""

from __future__ import annotations

from typing import Annotated, Any

import structlog
from fastapi import APIRouter, HTTPException, Path

from ledgerflow.errors import ChainError, ConfigError, LedgerflowError
from ledgerflow.provenance.lookup import (
    FileHash,
    ProvenanceReport,
    add_store_proofs,
    lookup,
    parse_content_hash,
)
from ledgerflow.settings import Settings

__all__ = ["provenance_router"]

log = structlog.get_logger(__name__)


def provenance_router(settings: Settings) -> APIRouter:
    """The router of ``GET /provenance/{content_hash}`` for the app built from ``settings``."""
    router = APIRouter()
    cache: dict[str, Any] = {}

    def _runtime() -> Any:
        if "runtime" not in cache:
            from ledgerflow.runtime import Runtime
            from ledgerflow.store import Store

            store = None
            try:
                store = Store(settings.database_url, create=False)
            except LedgerflowError:
                store = None
            cache["runtime"] = Runtime(settings, store=store) if store is not None else None
            cache["has_store"] = store is not None
        return cache["runtime"]

    @router.get(
        "/provenance/{content_hash}",
        response_model=ProvenanceReport,
        summary="Who registered this content hash, when, and how",
        description=(
            "Public and read-only. `content_hash` is keccak-256 of a file's canonical text "
            "(content canonicalization v1) or of its bytes, as `ledgerflow provenance` computes "
            "it. `registered` is true when a ContentRegistered log names the hash and its "
            "signed claim checks."
        ),
        responses={503: {"description": "the chain cannot be asked"}},
    )
    async def get_provenance(
        content_hash: Annotated[
            str, Path(pattern=r"^(0x)?[0-9a-fA-F]{64}$", description="0x-hex keccak-256")
        ],
    ) -> ProvenanceReport:
        try:
            digest = parse_content_hash(content_hash)
        except ConfigError as exc:
            raise HTTPException(400, str(exc)) from None
        from web3 import AsyncHTTPProvider, AsyncWeb3

        from ledgerflow.chain.deploy import load_deployment

        try:
            d = load_deployment(settings.deployments_path)
            registry = d.contracts.get("ProvenanceRegistry")
            if registry is None:
                raise ConfigError("the deployment has no ProvenanceRegistry")
            if "w3" not in cache:
                cache["w3"] = AsyncWeb3(AsyncHTTPProvider(settings.rpc_url))
            report = await lookup(
                cache["w3"],
                [FileHash(content_hash=digest, canon_version=-1, method="hash")],
                chain_id=int(d.chain_id),
                registry=str(registry),
                from_block=int(d.block_number),
            )
            runtime = _runtime() if report.registrations else None
            if runtime is not None:
                await add_store_proofs(runtime, report)
        except ConfigError:
            # The reason names server paths: it goes to the log, not to the public.
            log.warning("provenance.unavailable", reason="no ProvenanceRegistry deployment")
            raise HTTPException(
                503, "provenance lookup unavailable: no registry deployed"
            ) from None
        except ChainError as exc:
            log.warning("provenance.unavailable", reason=type(exc).__name__)
            raise HTTPException(
                503, "provenance lookup unavailable: the chain does not answer"
            ) from None
        return report

    return router
