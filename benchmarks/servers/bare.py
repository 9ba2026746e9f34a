"""The HTTP floor: a raw Starlette endpoint that reads the body and returns a constant JSON, no model.

No server with a model can beat it on this machine; the gap between it and a model server is the cost of that
server's parsing, validation, inference and IPC.
"""

from __future__ import annotations

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from benchmarks.servers import parse_args

CONSTANT = b'{"predictions":[]}'


async def predict(request: Request) -> Response:
    await request.body()
    return Response(CONSTANT, media_type="application/json")


async def ready(request: Request) -> Response:
    return Response(b"ok")


app = Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/health", ready)])


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], needs_model=False)
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
