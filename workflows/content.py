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

from typing import Any, Literal

from pydantic import ConfigDict, Field
from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from ledgerflow.activities.content import (
        CanonicalContent,
        ClassifyRequest,
        ContentCategory,
        ContentDocument,
        canonicalize,
        classify_content,
        find_policy_terms,
    )
    from ledgerflow.activities.provenance import REGISTRY, ClaimDraft, ProvenanceActivities
    from ledgerflow.flow import (
        CheckpointedWorkflow,
        Run,
        RunState,
        register,
        search,
        update_handler,
    )
    from ledgerflow.flow.ledger import failure_output
    from ledgerflow.flow.workflow import ledger_details
    from ledgerflow.provenance.claims import ZERO32, Origin, SignedClaim, claim_json, claim_signer
    from ledgerflow.provenance.identity import Did, did_pkh
    from ledgerflow.types import (
        AnchorMode,
        Bytes32,
        StrictInput,
        StrictModel,
        Text,
        WaitSeconds,
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

#: Runs started before signed provenance claims replay without them (workflow.patched).
PROVENANCE_PATCH = "content.provenance-claims-1"


class ContentRequest(ContentDocument):
    """Input of ContentProvenanceWorkflow. Every field has a default, so ``{}`` starts it.

    Strict (no coercion, unknown fields refused) and bounded (docs/workflows.md).
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    require_review: bool = Field(False, description="ask a human even when nothing is flagged")
    review_timeout_seconds: WaitSeconds = Field(
        86_400, description="how long flagged content waits for the `review` update"
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
    trigger: Text | None = Field(
        None, max_length=300, description="what started the run (webhook id, event, ...)"
    )
    origin: Origin | None = Field(
        None,
        description="human or synthetic (AI-generated); null = synthetic when generator_model "
        "is set, else human",
    )
    generator_model: Text = Field("", max_length=200, description="the model that generated it")
    generator_provider: Text = Field("", max_length=200, description="who runs that model")
    prompt_hash: Bytes32 | None = Field(
        None, description="keccak-256 of the prompt that generated it (AI-generated content)"
    )
    author_did: Did | None = Field(None, description="the author's did:pkh, if known")
    asset_hash: Bytes32 | None = Field(
        None,
        description="keccak-256 of a binary asset's bytes: registered instead of the body's "
        "canonical hash (the file `ledgerflow provenance` is given)",
    )
    publish: bool = Field(
        True, description="register approved content in the public ProvenanceRegistry"
    )

    def document(self) -> ContentDocument:
        return ContentDocument(
            title=self.title, body=self.body, source_url=self.source_url, author=self.author
        )


class ReviewDecision(StrictInput):
    """Update ``review``: a human's verdict on flagged content."""

    action: Literal["approve", "reject"] = Field(description="approve or reject the content")
    reviewer: Text = Field("operator", min_length=1, max_length=128)
    reason: Text = Field("", max_length=1000)


class ContentState(RunState):
    """Query ``state`` of ContentProvenanceWorkflow."""

    content_hash: str | None = None
    category: ContentCategory | None = None
    flagged: bool | None = None
    policy_terms: list[str] = Field(default_factory=list)
    claim_hash: str | None = None


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
    # Signed provenance claim (runs started after PROVENANCE_PATCH).
    registered_hash: str | None = None
    origin: Origin | None = None
    claim_hash: str | None = None
    claim_step: int | None = None
    agent_did: str | None = None
    registered: bool = False
    registration_tx: str | None = None


@register
@workflow.defn(name="ContentProvenanceWorkflow")
class ContentProvenanceWorkflow(CheckpointedWorkflow):
    State = ContentState
    state: ContentState
    #: The step hash of the signed claim's step (what the registration ties the content to).
    _claim_step_hash: str = ""

    review = update_handler(
        "review",
        ReviewDecision,
        into="review",
        reply=lambda d: "approved" if d.action == "approve" else "rejected",
        pending_message="no review is pending for this content",
    )

    @classmethod
    def describe(cls, request: ContentRequest) -> tuple[str, str]:
        title = request.title[:120]
        summary = f"Register the provenance of '{title}'"
        details = (
            f"**Register '{title}'**"
            + (f" by {request.author}" if request.author else "")
            + ": hash its canonical form, classify it (an LLM bounded by policy-term rules), "
            "ask a human when it is flagged, and anchor the verdict."
        )
        return summary, details

    def current_details(self) -> str:
        st = self.state
        lines = [f"**{st.phase}**"]
        if st.content_hash:
            lines.append(f"Content hash `{st.content_hash}`")
        if st.claim_hash:
            lines.append(f"Signed claim `{st.claim_hash}`")
        if st.category is not None:
            flag = "flagged: " + ", ".join(st.policy_terms) if st.flagged else "not flagged"
            lines.append(f"**Classification**: {st.category} ({flag})")
        if st.awaiting == "review":
            lines.append("**Waiting for** a reviewer's `review` Update (approve or reject)")
        run = self._run
        if run is not None and run.finished:
            lines.append(f"**Outcome**: {run.outcome}" + (f": {run.reason}" if run.reason else ""))
        return "\n\n".join(lines) + "\n\n" + "\n".join(ledger_details(run))

    def search_fields(self) -> dict[str, object]:
        reviewer = self._run.fields.get("reviewed_by") if self._run is not None else None
        return {"approver": reviewer} if reviewer and reviewer != "auto" else {}

    @workflow.run
    async def run(self, request: ContentRequest) -> ContentResult:
        async with self.checkpointed(request) as run:
            await self._register(run, request)
        return run.result(ContentResult)

    async def _register(self, run: Run, request: ContentRequest) -> None:
        st = self.state
        st.phase = "hashing"
        canon = await run.step(canonicalize, request.document())
        st.content_hash = canon.content_hash
        if run.v2:
            workflow.upsert_search_attributes([search.SUBJECT.value_set(canon.content_hash)])

        result: dict[str, Any] = {
            "content_hash": canon.content_hash,
            "body_hash": canon.body_hash,
            "title": canon.title,
        }
        signed: SignedClaim | None = None
        if run.v2 and workflow.patched(PROVENANCE_PATCH):
            signed = await self._sign_claim(run, request, canon, result)

        st.phase = "classifying"
        flagged = await self._classify(run, request, canon, result)

        outcome: ContentOutcome = "approved"
        if not (flagged or request.require_review):
            result.update(
                review="not-required",
                reviewed_by="auto",
                reason="nothing flagged: approved without review",
            )
        else:
            why = "flagged" if flagged else "review required by the request"
            decision = await self._await_review(run, request, why)
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
        run.record(
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
        if signed is not None and outcome == "approved" and request.publish:
            await self._publish(run, signed, result)
        run.fields.update(result)
        run.outcome, run.reason = outcome, result["reason"]

    async def _sign_claim(
        self, run: Run, request: ContentRequest, canon: CanonicalContent, result: dict[str, Any]
    ) -> SignedClaim:
        """The agent signs the provenance claim (one step: its output is the signed claim);
        the signature is checked here, in the sandbox, before anything relies on it."""
        self.state.phase = "signing"
        info = workflow.info()
        origin: Origin = request.origin or ("synthetic" if request.generator_model else "human")
        draft = ClaimDraft(
            # Lower-case hex, as the claim's canonical JSON has it (checkpoint spec, 15.2).
            content_hash=(request.asset_hash or canon.body_hash).lower(),
            document_hash=canon.content_hash,
            canon_version=0 if request.asset_hash else canon.version,
            origin=origin,
            generator_model=request.generator_model,
            generator_provider=request.generator_provider,
            prompt_hash=(request.prompt_hash or ZERO32).lower(),
            author=request.author_did or "",
            workflow_id=info.workflow_id,
            run_id=info.run_id,
            step_seq=run.steps,
        )
        signed = await run.step(ProvenanceActivities.sign_claim, draft)
        self._claim_step_hash = run.last_step_hash
        claim = signed.claim
        signer = claim_signer(signed)
        expected = draft.model_dump()
        got = claim.model_dump(exclude={"agent"})
        if signer is None or signer != signed.signer or got != expected:
            raise run.stop("rejected", "the agent's provenance claim does not verify")
        if claim.agent != did_pkh(signed.chain_id, signer):
            raise run.stop("rejected", "the claim's agent DID is not the signer's")
        self.state.claim_hash = signed.claim_hash
        result.update(
            registered_hash=claim.content_hash,
            origin=claim.origin,
            claim_hash=signed.claim_hash,
            claim_step=claim.step_seq,
            agent_did=claim.agent,
        )
        return signed

    async def _publish(self, run: Run, signed: SignedClaim, result: dict[str, Any]) -> None:
        """Register the claim in the public ProvenanceRegistry (exactly once: the outbox and an
        idempotency key the registry refuses twice)."""
        self.state.phase = "registering"
        claim = signed.claim
        step_hash = self._claim_step_hash
        tx = await run.call(
            REGISTRY,
            "register",
            [
                claim.content_hash,
                signed.claim_hash,
                step_hash,
                run.key("provenance.register"),
                signed.signer,
                claim_json(claim),
                signed.signature,
            ],
            name="provenance.register",
        )
        result.update(registered=True, registration_tx=getattr(tx, "tx_hash", None))

    async def _classify(
        self, run: Run, request: ContentRequest, canon: CanonicalContent, result: dict[str, Any]
    ) -> bool:
        """Classify (one checkpointed LLM step) and fill ``result``; return whether flagged.

        An unusable answer from the model flags the content (a human decides) instead of
        failing the run.
        """
        req = ClassifyRequest(
            content_hash=canon.content_hash,
            title=request.title,
            body=request.body,
            source_url=request.source_url,
            author=request.author,
        )
        try:
            answer = await run.step(classify_content, req)
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
            self.state.flagged, self.state.policy_terms = True, terms
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
        self.state.category = final.category
        self.state.flagged, self.state.policy_terms = flagged, terms
        return flagged

    async def _await_review(
        self, run: Run, request: ContentRequest, why: str
    ) -> ReviewDecision | None:
        """Wait for the ``review`` update; ``None`` when the review timed out."""
        self.state.phase = "awaiting-review"
        answered = await run.wait_for(
            "review",
            lambda: self.received("review") is not None,
            timeout=request.review_timeout_seconds,
        )
        if not answered:
            run.record(
                "timer",
                "review.timeout",
                {
                    "timeout_seconds": request.review_timeout_seconds,
                    "on_review_timeout": request.on_review_timeout,
                    "why": why,
                },
                # Spec v2: a failed step's output is the error shape (v1 runs recorded this).
                {"error": {"type": "ReviewTimeout", "message": "no review before the timeout"}}
                if run.v2
                else {"expired": True},
                ok=False,
            )
            return None
        decision: ReviewDecision = self.received("review")
        run.record("update", f"review.{decision.action}", decision, {"action": decision.action})
        return decision
