"""Deterministic workflow code only: no I/O here, everything else happens in activities."""
