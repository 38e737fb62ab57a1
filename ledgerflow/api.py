"""The HTTP API (FastAPI): health, and webhooks that start and steer workflows."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from fastapi import FastAPI

from ledgerflow import __version__
from ledgerflow.settings import Settings

__all__ = ["create_app", "serve_api"]


def create_app(settings: Settings) -> FastAPI:
    app = FastAPI(
        title="ledgerflow",
        version=__version__,
        description="Start and steer ledgerflow workflows over HTTP (Standard Webhooks).",
    )

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "task_queue": settings.task_queue}

    return app


async def serve_api(settings: Settings, stop: asyncio.Event) -> None:
    """Serve the API until ``stop`` is set."""
    config = uvicorn.Config(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_level="warning",
        lifespan="on",
    )
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    await stop.wait()
    server.should_exit = True
    await task
