"""The HTTP API: health and signed webhooks that start and steer workflows."""

from ledgerflow.api.webhooks import create_app, serve_api

__all__ = ["create_app", "serve_api"]
