"""Which keys pass where: the API key at the front door, the management key for load and unload."""

import pytest

from service.core import auth
from service.core.errors import Forbidden, Unauthorized
from service.core.settings import Settings


def settings(**keys) -> Settings:
    return Settings(repository=".", **keys)


def headers(key: str | None, style: str = "bearer") -> dict[bytes, bytes]:
    if key is None:
        return {}
    return {b"authorization": b"Bearer " + key.encode()} if style == "bearer" else {b"x-api-key": key.encode()}


def test_no_api_key_leaves_the_front_door_open_even_with_a_management_key():
    assert auth.gate_keys(settings()) == frozenset()
    assert auth.gate_keys(settings(management_key="m")) == frozenset()
    assert auth.authorized({}, auth.gate_keys(settings(management_key="m")))


@pytest.mark.parametrize("style", ["bearer", "x-api-key"])
def test_the_front_door_takes_the_api_key_or_the_management_key(style):
    keys = auth.gate_keys(settings(api_key="a", management_key="m"))
    assert auth.authorized(headers("a", style), keys) and auth.authorized(headers("m", style), keys)
    assert not auth.authorized(headers("b", style), keys) and not auth.authorized(headers(None), keys)
    assert not auth.authorized(headers("a" * 2, style), keys) and not auth.authorized(headers("", style), keys)


def test_management_routes_need_the_management_key_when_one_is_set():
    both = settings(api_key="a", management_key="m")
    auth.check_management(headers("m"), both)
    with pytest.raises(Forbidden, match="needs the management key"):
        auth.check_management(headers("a"), both)
    for wrong in (None, "x"):
        with pytest.raises(Unauthorized):
            auth.check_management(headers(wrong), both)
    auth.check_management(headers(None), settings(api_key="a"))  # the front door already checked the API key
