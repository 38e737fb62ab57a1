"""LLM decisions: providers (offline rules, OpenAI-compatible endpoints), structured outputs."""
