"""The Open Inference Protocol repository extension over REST: the index (read-only), load and unload.

What load and unload do, and when they are allowed, is model control's business (service/models/control.py);
these routes only translate.
"""

from __future__ import annotations

from fastapi import FastAPI, Request

from service.core import schemas
from service.dataplane.gateway import Gateway
from service.models import control


def register(app: FastAPI, gateway: Gateway, errors: dict) -> None:
    registry = gateway.registry
    errors = {**errors, 403: {"model": schemas.ErrorResponse}}

    @app.post("/v2/repository/index", response_model=list[schemas.RepositoryIndexEntry], tags=["repository"])
    def repository_index():
        """Every version this server has read and its state (polling keeps it fresh in `poll` mode)."""
        return [
            schemas.RepositoryIndexEntry(name=e.name, version=str(e.version), state=e.state, reason=e.reason or "")
            for e in sorted(registry.entries(), key=lambda e: (e.name, e.version))
        ]

    for action, description in (
        ("load", "`explicit` mode: re-read model `name` now and serve it (again); 400 if no version can serve."),
        ("unload", "`explicit` mode: stop serving `name` until it is loaded again (queued requests still finish)."),
    ):
        app.add_api_route(
            f"/v2/repository/models/{{name}}/{action}",
            _handler(gateway, action),
            methods=["POST"],
            description=description,
            response_model=schemas.Empty,
            responses=errors,
            tags=["repository"],
        )


def _handler(gateway: Gateway, action: str):
    async def handler(name: str, request: Request):
        headers = dict(request.scope["headers"])
        await control.change(action, name, headers, gateway.settings, gateway.registry, gateway.reloader)
        return {}

    handler.__name__ = f"repository_{action}"
    return handler
