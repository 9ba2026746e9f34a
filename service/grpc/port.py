"""Check, before LitServe forks, that the gRPC port can be bound: a port taken by another program must stop
startup with a message, not leave a server that answers REST and silently no gRPC.

Plain sockets only: no gRPC object may exist in the main process before the fork (service/grpc/server.py).
The check binds as gRPC will, with SO_REUSEPORT, so the HTTP processes of this same server never trip it.
"""

from __future__ import annotations

import socket


def check_bindable(host: str, port: int) -> None:
    """Raise `OSError` naming the port when `host:port` cannot be bound with SO_REUSEPORT."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            raise OSError(e.errno, f"cannot listen for gRPC on {host}:{port} (TABSERVE_GRPC_PORT): {e.strerror}") from e
