"""Deadlines from the server default, the header and OIP `parameters.timeout`; drain rates for Retry-After."""

import pytest

from service.core import deadlines
from service.core.errors import BadRequest
from service.engine.dispatch import DrainRate


def test_the_header_and_the_oip_timeout_only_ever_shorten_the_default():
    assert deadlines.from_headers(100.0, 5.0, {}) == 105.0
    assert deadlines.from_headers(100.0, 5.0, {b"x-request-timeout-ms": b"250"}) == 100.25
    assert deadlines.from_headers(100.0, 5.0, {b"x-request-timeout-ms": b"60000"}) == 105.0  # never longer
    assert deadlines.shorten(105.0, 100.0, 2_000_000) == 102.0  # µs, Triton's semantics
    assert deadlines.shorten(105.0, 100.0, 0) == 105.0  # 0: no timeout of its own
    assert deadlines.shorten(105.0, 100.0, 9_000_000) == 105.0


@pytest.mark.parametrize("value", [b"soon", b"0", b"-5", b"inf", b"nan"])
def test_a_malformed_timeout_header_is_a_400_naming_it(value):
    with pytest.raises(BadRequest, match="X-Request-Timeout-Ms") as raised:
        deadlines.from_headers(0.0, 5.0, {b"x-request-timeout-ms": value})
    assert raised.value.field == "x-request-timeout-ms"


def test_drain_rate_is_the_recent_slope_of_a_running_total(monkeypatch):
    now = [0.0]
    monkeypatch.setattr("service.engine.dispatch.time.monotonic", lambda: now[0])
    rate = DrainRate()
    assert rate.update(0) == 0.0  # nothing known yet
    for second in range(1, 11):
        now[0] = float(second)
        measured = rate.update(100 * second)  # 100 rows per second
    assert measured == pytest.approx(100.0)
    now[0] = 20.0
    assert rate.update(1000) < 100.0  # stalled for ten seconds: the rate falls
