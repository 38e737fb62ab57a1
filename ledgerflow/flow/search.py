"""ledgerflow's custom search attributes: declared once, registered by the dev server and the
worker, set by the workflow base class, filterable in the Temporal UI and with ``temporal
workflow list --query``.

| attribute | type | what |
|---|---|---|
| ``LedgerflowStatus`` | Keyword | ``running``, ``awaiting-<what>``, then the final status |
| ``LedgerflowOutcome`` | Keyword | the typed outcome (``completed``, ``compensated``, ...) |
| ``LedgerflowSubject`` | Keyword | what the run is about: a SKU, an invoice, a content hash |
| ``LedgerflowCounterparty`` | Keyword | the supplier or vendor address |
| ``LedgerflowAmount`` | Int | the amount at stake, in token units |
| ``LedgerflowApprover`` | Keyword | who approved (or rejected) |
| ``LedgerflowAnchorState`` | Keyword | ``pending`` or ``anchored`` |
| ``LedgerflowAnchorMode`` | Keyword | ``batched`` or ``per-step`` |
"""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

__all__ = [
    "AMOUNT",
    "ANCHOR_MODE",
    "ANCHOR_STATE",
    "APPROVER",
    "COUNTERPARTY",
    "OUTCOME",
    "SEARCH_ATTRIBUTES",
    "STATUS",
    "SUBJECT",
]

STATUS = SearchAttributeKey.for_keyword("LedgerflowStatus")
OUTCOME = SearchAttributeKey.for_keyword("LedgerflowOutcome")
SUBJECT = SearchAttributeKey.for_keyword("LedgerflowSubject")
COUNTERPARTY = SearchAttributeKey.for_keyword("LedgerflowCounterparty")
AMOUNT = SearchAttributeKey.for_int("LedgerflowAmount")
APPROVER = SearchAttributeKey.for_keyword("LedgerflowApprover")
ANCHOR_STATE = SearchAttributeKey.for_keyword("LedgerflowAnchorState")
ANCHOR_MODE = SearchAttributeKey.for_keyword("LedgerflowAnchorMode")

#: Name -> Temporal type, as ``temporal server start-dev --search-attribute`` takes them.
SEARCH_ATTRIBUTES = {
    "LedgerflowStatus": "Keyword",
    "LedgerflowAnchorState": "Keyword",
    "LedgerflowAnchorMode": "Keyword",
    "LedgerflowOutcome": "Keyword",
    "LedgerflowSubject": "Keyword",
    "LedgerflowCounterparty": "Keyword",
    "LedgerflowAmount": "Int",
    "LedgerflowApprover": "Keyword",
}
