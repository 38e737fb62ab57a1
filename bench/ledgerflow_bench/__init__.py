"""``ledgerflow bench``: the benchmark harness (checkout only, not part of the product wheel)."""
