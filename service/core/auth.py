"""API keys: which key a request carries, and whether it may pass. Keys are compared in constant time.

Two keys, both optional: the API key (`TABSERVE_API_KEY`) guards every route except the health probes, and
the management key (`TABSERVE_MANAGEMENT_KEY`) guards the routes that change what is served (repository
load and unload). When a management key is set, those routes need it and refuse the API key; the management
key also passes wherever the API key does, so one operator credential is enough.
"""

from __future__ import annotations

import hmac

from pydantic import SecretStr

from service.core.errors import Forbidden, Unauthorized
from service.core.settings import Settings


def _secret(key: SecretStr | None) -> bytes | None:
    return key.get_secret_value().encode() if key is not None else None


def gate_keys(settings: Settings) -> frozenset[bytes]:
    """Keys accepted at the front door; empty when no API key is set (then every route is open there)."""
    api, management = _secret(settings.api_key), _secret(settings.management_key)
    return frozenset(k for k in (api, management) if api is not None and k is not None)


def token(headers: dict[bytes, bytes]) -> bytes:
    """The key a request carries: `Authorization: Bearer <key>`, else `X-API-Key: <key>`; empty if none."""
    bearer = headers.get(b"authorization", b"")
    return bearer[7:] if bearer[:7].lower() == b"bearer " else headers.get(b"x-api-key", b"")


def matches(candidate: bytes, keys: frozenset[bytes]) -> bool:
    """Constant-time comparison against every key (no early exit: timing says nothing about which key)."""
    found = False
    for key in keys:
        found |= hmac.compare_digest(candidate, key)
    return found


def authorized(headers: dict[bytes, bytes], keys: frozenset[bytes]) -> bool:
    return not keys or matches(token(headers), keys)


def check_management(headers: dict[bytes, bytes], settings: Settings) -> None:
    """Raise unless the request may load or unload models (the management key when one is set)."""
    management = _secret(settings.management_key)
    if management is None:
        return  # the API key, if any, was already checked at the front door
    candidate = token(headers)
    if matches(candidate, frozenset({management})):
        return
    if candidate and matches(candidate, gate_keys(settings)):
        raise Forbidden(
            "this route changes what is served and needs the management key (TABSERVE_MANAGEMENT_KEY), not the API key",
            reason="management_key_required",
        )
    raise Unauthorized(
        "missing or wrong management key: send 'Authorization: Bearer <key>' or 'X-API-Key' "
        "with TABSERVE_MANAGEMENT_KEY"
    )
