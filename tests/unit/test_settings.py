"""Settings: `PORT` for KServe and Knative, and the overload bounds' validation."""

import pytest
from pydantic import ValidationError

from service.settings import Settings


def test_port_comes_from_tabserve_port_then_port_then_the_default(monkeypatch, tmp_path):
    monkeypatch.delenv("TABSERVE_PORT", raising=False)
    monkeypatch.delenv("PORT", raising=False)
    assert Settings(repository=tmp_path).port == 8000
    monkeypatch.setenv("PORT", "8080")  # KServe and Knative set it
    assert Settings(repository=tmp_path).port == 8080
    monkeypatch.setenv("TABSERVE_PORT", "9000")
    assert Settings(repository=tmp_path).port == 9000
    assert Settings(repository=tmp_path, port=9100).port == 9100  # a flag wins over both


@pytest.mark.parametrize(
    "field, value",
    [("max_queue_rows", 0), ("max_queue_bytes", 10), ("max_queue_time_ms", 0), ("header_timeout", 301),
     ("max_header_bytes", 100), ("port", 80)],
)  # fmt: skip
def test_bounds_are_checked_at_startup(tmp_path, field, value):
    with pytest.raises(ValidationError, match=field):
        Settings(repository=tmp_path, **{field: value})


def test_grpc_port_defaults_to_tritons_and_may_not_share_a_port(tmp_path):
    assert Settings(repository=tmp_path).grpc_port == 8001
    assert Settings(repository=tmp_path, grpc_port=0).grpc_port == 0  # no gRPC
    for clash in ({"port": 9000, "grpc_port": 9000}, {"health_port": 9002, "grpc_port": 9002}, {"grpc_port": 80}):
        with pytest.raises(ValidationError, match="grpc_port"):
            Settings(repository=tmp_path, **clash)
