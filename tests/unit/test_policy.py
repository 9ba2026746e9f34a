"""Version policy: which versions load and which answers by default."""

import pytest
from pydantic import ValidationError

from bundle import policy
from bundle.policy import VersionPolicy


def test_defaults_load_the_newest_three_and_pin_nothing(tmp_path):
    chosen = policy.read(tmp_path)  # no file: the defaults
    assert chosen.selects([1, 2, 3, 4, 5]) == [3, 4, 5] and chosen.pinned is None


def test_specific_versions_and_a_pinned_version_is_always_loaded():
    assert VersionPolicy(versions=[1, 4]).selects([1, 2, 3, 4]) == [1, 4]
    assert VersionPolicy(latest=2, pinned=1).selects([1, 2, 3, 4]) == [1, 3, 4]
    assert VersionPolicy(latest=2, pinned=9).selects([1, 2, 3]) == [2, 3]  # a pin on a missing version is ignored


def test_round_trip_is_atomic_and_strict(tmp_path):
    policy.write(tmp_path, VersionPolicy(pinned=2))
    assert policy.read(tmp_path) == VersionPolicy(pinned=2)
    assert [p.name for p in tmp_path.iterdir()] == ["policy.json"]  # no temporary file left behind
    (tmp_path / "policy.json").write_text('{"latest": 0}')
    with pytest.raises(ValidationError):
        policy.read(tmp_path)
    (tmp_path / "policy.json").write_text('{"lastest": 2}')
    with pytest.raises(ValidationError, match="lastest"):
        policy.read(tmp_path)


def test_serving_order_tries_the_pinned_version_then_the_newest():
    """The order the server's registry and python -m batch try versions in for the default answer."""
    assert VersionPolicy().serving_order([1, 2, 3]) == [3, 2, 1]
    assert VersionPolicy(pinned=1).serving_order([1, 2, 3]) == [1, 3, 2]
    assert VersionPolicy(pinned=7).serving_order([1, 2, 3]) == [3, 2, 1]  # a pinned version that is not there
