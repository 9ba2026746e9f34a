"""Settings: `PORT` for KServe and Knative, and the overload bounds' validation."""

import pytest
from pydantic import ValidationError

from service.core.settings import Settings


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
     ("max_header_bytes", 100), ("port", 80), ("lingering_close_seconds", -1), ("lingering_close_seconds", 61)],
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


def test_http_processes_default_from_the_cores_and_one_in_explicit_mode(tmp_path, monkeypatch):
    monkeypatch.delenv("TABSERVE_HTTP_PROCESSES", raising=False)
    for cores, expected in ((1, 1), (2, 2), (8, 8), (96, 8)):
        monkeypatch.setattr("os.sched_getaffinity", lambda _, n=cores: set(range(n)))
        assert Settings(repository=tmp_path).http_processes == expected
        assert Settings(repository=tmp_path, model_control_mode="explicit").http_processes == 1
    assert Settings(repository=tmp_path, http_processes=3).http_processes == 3


def test_explicit_model_control_refuses_several_http_processes(tmp_path):
    with pytest.raises(ValidationError, match="reaches only the HTTP process that accepted it"):
        Settings(repository=tmp_path, model_control_mode="explicit", http_processes=2)
