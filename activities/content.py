"""Activities of ContentProvenanceWorkflow: canonicalize and hash, classify.

``content.canonicalize`` is pure (see :func:`ledgerflow.decisions.canonicalize_content`); it is
an activity so that the hashing of a large body runs on the worker, not in the workflow sandbox,
and its result is a recorded, checkpointed step. The source URL is recorded, never fetched.
"""

from __future__ import annotations

from typing import Any

from temporalio import activity

from ledgerflow.activities.llm import _logger, run_with_provider
from ledgerflow.llm import decisions
from ledgerflow.llm.decisions import ClassifyRequest, ClassifyResult
from ledgerflow.types import CanonicalContent, ContentDocument

__all__ = ["canonicalize", "classify_content", "content_activities"]


@activity.defn(name="content.canonicalize")
async def canonicalize(doc: ContentDocument) -> CanonicalContent:
    """Canonical form and hashes of ``doc`` (the body itself is not echoed back)."""
    return decisions.canonicalize_content(doc)


@activity.defn(name="llm.classify_content")
async def classify_content(request: ClassifyRequest) -> ClassifyResult:
    """Classify content with the worker's provider, then apply the policy-term rule check.

    Raises:
        ApplicationError: typed as in :mod:`activities.llm`.
    """
    result = await run_with_provider(lambda provider: decisions.classify_content(request, provider))
    final = result.classification
    _logger().info(
        "llm.classify",
        provider=result.meta.provider,
        model=result.meta.model,
        content_hash=request.content_hash,
        category=final.category,
        flagged=final.flagged,
        overridden=result.overridden_by_rules,
        prompt_hash=result.meta.prompt_hash,
    )
    return result


def content_activities() -> list[Any]:
    return [canonicalize, classify_content]
