"""ContentProvenanceWorkflow: make a piece of content's hash, classification and approval provable.

canonicalize + hash (activity) → LLM classification with a policy-term rule check (the model can
flag more than the rules, never less) → when flagged (or when the input asks for it) a human
answers the ``review`` update, or the review times out and ``on_review_timeout`` decides →
typed outcome (``approved | rejected``) carrying the content hash.

Every step is checkpointed and anchored, and so is the verdict (the ``content.outcome`` step), so
anyone holding the content can recompute its hash and prove what was decided about it, by whom,
and when. The source URL is recorded as given and never fetched.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from pydantic import Field
from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from ledgerflow.activities.content import (
        CanonicalContent,
        ClassifyRequest,
        ClassifyResult,
        ContentCategory,
        ContentDocument,
        find_policy_terms,
    )
    from ledgerflow.flow.ledger import Ledger, failure_output
    from ledgerflow.types import AnchorMode, StrictModel

from ledgerflow.flow.policies import (
    ACTIVITY_RETRY_POLICY,
    ACTIVITY_START_TO_CLOSE_TIMEOUT,
    LLM_RETRY_POLICY,
    LLM_START_TO_CLOSE_TIMEOUT,
)

__all__ = [
    "ContentProvenanceWorkflow",
    "ContentRequest",
    "ContentResult",
    "ContentState",
    "ReviewDecision",
]


# ---- input, messages, state and result --------------------------------------------------------

ContentOutcome = Literal["approved", "rejected"]


class ContentRequest(ContentDocument):
    """Input of ContentProvenanceWorkflow. Every field has a default, so ``{}`` starts it."""

    require_review: bool = Field(False, description="ask a human even when nothing is flagged")
    review_timeout_seconds: int = Field(
        86_400, gt=0, description="how long flagged content waits for the `review` update"
    )
    on_review_timeout: Literal["approve", "reject"] = Field(
        "reject", description="what an unanswered review means"
    )
    anchor_mode: AnchorMode | None = Field(
        None, description="per-run anchoring mode; null = the starter's or workflow default"
    )
    wait_for_anchor: bool | None = Field(
        None, description="complete only after the last step is anchored; null = default (true)"
    )
    trigger: str | None = Field(None, description="what started the run (webhook id, event, ...)")

    def document(self) -> ContentDocument:
        return ContentDocument(
            title=self.title, body=self.body, source_url=self.source_url, author=self.author
        )


class ReviewDecision(StrictModel):
    """Update ``review``: a human's verdict on flagged content."""

    action: Literal["approve", "reject"] = Field(description="approve or reject the content")
    reviewer: str = Field("operator", max_length=128)
    reason: str = Field("", max_length=1000)


class ContentState(StrictModel):
    """Query ``state`` of ContentProvenanceWorkflow."""

    phase: str
    content_hash: str | None = None
    category: ContentCategory | None = None
    flagged: bool | None = None
    policy_terms: list[str] = Field(default_factory=list)
    awaiting: str | None = None
    steps: int = 0
    head: str | None = None


class ContentResult(StrictModel):
    outcome: ContentOutcome
    reason: str = ""
    content_hash: str
    body_hash: str
    title: str
    category: ContentCategory | None = None
    flagged: bool
    policy_terms: list[str] = Field(default_factory=list)
    overridden_by_rules: bool = False
    decided_by: str | None = None
    review: Literal["approve", "reject", "timeout", "not-required"]
    reviewed_by: str
    steps: int
    head: str
    anchor_mode: AnchorMode
    anchored: bool


@workflow.defn(name="ContentProvenanceWorkflow")
class ContentProvenanceWorkflow:
    def __init__(self) -> None:
        self._state = ContentState(phase="starting")
        self._review: ReviewDecision | None = None
        self._ledger: Ledger | None = None

    # ---- messages -----------------------------------------------------------------------------

    @workflow.query(name="state")
    def state(self) -> ContentState:
        if self._ledger is not None:
            self._state.steps = self._ledger.steps
            self._state.head = self._ledger.head
        return self._state

    @workflow.update(name="review")
    async def review(self, decision: ReviewDecision) -> str:
        """Approve or reject content that is waiting for review."""
        self._review = decision
        return "approved" if decision.action == "approve" else "rejected"

    @review.validator
    def _validate_review(self, decision: ReviewDecision) -> None:
        if self._state.awaiting != "review" or self._review is not None:
            raise ValueError("no review is pending for this content")

    # ---- the run --------------------------------------------------------------------------

    @workflow.run
    async def run(self, request: ContentRequest) -> ContentResult:
        ledger = self._ledger = Ledger(
            request.anchor_mode, wait_for_anchor=request.wait_for_anchor is not False
        )
        doc = request.document()
        self._state.phase = "hashing"
        canon: CanonicalContent = await ledger.step(
            "activity",
            "content.canonicalize",
            doc,
            lambda: workflow.execute_activity(
                "content.canonicalize",
                doc,
                result_type=CanonicalContent,
                start_to_close_timeout=ACTIVITY_START_TO_CLOSE_TIMEOUT,
                retry_policy=ACTIVITY_RETRY_POLICY,
            ),
        )
        self._state.content_hash = canon.content_hash

        self._state.phase = "classifying"
        result: dict[str, Any] = {
            "content_hash": canon.content_hash,
            "body_hash": canon.body_hash,
            "title": canon.title,
        }
        flagged = await self._classify(request, canon, result)

        outcome: ContentOutcome = "approved"
        if not (flagged or request.require_review):
            result.update(
                review="not-required",
                reviewed_by="auto",
                reason="nothing flagged: approved without review",
            )
        else:
            why = "flagged" if flagged else "review required by the request"
            decision = await self._await_review(request, why)
            if decision is None:
                outcome = "approved" if request.on_review_timeout == "approve" else "rejected"
                result.update(
                    review="timeout",
                    reviewed_by="auto:timeout",
                    reason=f"{why}; no review before the timeout: {outcome} per on_review_timeout",
                )
            else:
                outcome = "approved" if decision.action == "approve" else "rejected"
                text = f"{outcome} by {decision.reviewer}"
                result.update(
                    review=decision.action,
                    reviewed_by=decision.reviewer,
                    reason=f"{text}: {decision.reason}" if decision.reason else text,
                )

        # The verdict about this content hash is itself a step: anchored, disclosable alone.
        ledger.record(
            "activity",
            "content.outcome",
            {
                "content_hash": canon.content_hash,
                "category": result.get("category"),
                "flagged": flagged,
                "policy_terms": result["policy_terms"],
            },
            {"outcome": outcome, "review": result["review"], "reviewed_by": result["reviewed_by"]},
        )
        self._state.phase = outcome
        self._state.awaiting = None
        await ledger.finish(outcome)
        return ContentResult(
            outcome=outcome,
            **result,
            steps=ledger.steps,
            head=ledger.head,
            anchor_mode=ledger.mode,
            anchored=ledger.anchored,
        )

    async def _classify(
        self, request: ContentRequest, canon: CanonicalContent, result: dict[str, Any]
    ) -> bool:
        """Classify (one checkpointed LLM step) and fill ``result``; return whether flagged.

        An unusable answer from the model flags the content (a human decides) instead of
        failing the run.
        """
        ledger = self._ledger
        assert ledger is not None
        req = ClassifyRequest(
            content_hash=canon.content_hash,
            title=request.title,
            body=request.body,
            source_url=request.source_url,
            author=request.author,
        )
        try:
            answer: ClassifyResult = await ledger.step(
                "llm",
                "llm.classify_content",
                req,
                lambda: workflow.execute_activity(
                    "llm.classify_content",
                    req,
                    result_type=ClassifyResult,
                    start_to_close_timeout=LLM_START_TO_CLOSE_TIMEOUT,
                    retry_policy=LLM_RETRY_POLICY,
                ),
            )
        except ActivityError as err:
            error = failure_output(err)["error"]
            terms = find_policy_terms(request.title, request.body)
            result.update(
                category=None,
                flagged=True,
                policy_terms=terms,
                overridden_by_rules=False,
                decided_by=f"unavailable ({error['type']})",
            )
            self._state.flagged, self._state.policy_terms = True, terms
            return True
        final = answer.classification
        # The activity applied the rule check; apply its core again here, in the workflow, so
        # that no activity implementation can clear content the rules flag.
        rule_terms = find_policy_terms(request.title, request.body)
        flagged = final.flagged or bool(rule_terms)
        terms = list(dict.fromkeys([*rule_terms, *final.policy_terms]))
        result.update(
            category=final.category,
            flagged=flagged,
            policy_terms=terms,
            overridden_by_rules=answer.overridden_by_rules or flagged != final.flagged,
            decided_by=f"{answer.meta.provider}:{answer.meta.model}",
        )
        self._state.category = final.category
        self._state.flagged, self._state.policy_terms = flagged, terms
        return flagged

    async def _await_review(self, request: ContentRequest, why: str) -> ReviewDecision | None:
        """Wait for the ``review`` update; ``None`` when the review timed out."""
        ledger = self._ledger
        assert ledger is not None
        self._state.phase = "awaiting-review"
        self._state.awaiting = "review"
        await ledger.flush()  # anchor the hash and the classification before waiting on a human
        try:
            await workflow.wait_condition(
                lambda: self._review is not None,
                timeout=timedelta(seconds=request.review_timeout_seconds),
            )
        except TimeoutError:
            ledger.record(
                "timer",
                "review.timeout",
                {
                    "timeout_seconds": request.review_timeout_seconds,
                    "on_review_timeout": request.on_review_timeout,
                    "why": why,
                },
                {"expired": True},
                ok=False,
            )
            return None
        finally:
            self._state.awaiting = None
        decision = self._review
        assert decision is not None
        ledger.record("update", f"review.{decision.action}", decision, {"action": decision.action})
        return decision
