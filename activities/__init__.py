"""Activities: every piece of I/O a workflow needs (chain, store, LLM)."""
