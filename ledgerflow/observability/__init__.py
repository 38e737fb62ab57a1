"""The operator's view: Prometheus metrics, OpenTelemetry traces and the Temporal runtime that
forwards the SDK core's logs (see docs/operations.md, "Metrics, traces and logs")."""
