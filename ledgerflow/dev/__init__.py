"""The embedded dev stack: Temporal's dev server and anvil as children of ``ledgerflow up``."""
