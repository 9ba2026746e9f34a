"""Limits, API keys, settings errors, and shutdown: the server's behaviour at its edges."""

import signal
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest

from tests.conftest import ROOT
from tests.serving import Server


@pytest.fixture(scope="module")
def limited(repo):
    process = Server(repo, "--max-rows-per-request", "10", "--max-body-bytes", "2048", "--api-key", "s3cret")
    yield process
    process.stop()


KEY = {"authorization": "Bearer s3cret"}


def test_api_key_guards_everything_but_health_probes(limited):
    assert httpx.get(limited.url + "/v2/health/live").status_code == 200
    assert httpx.get(limited.url + "/v2/health/ready").status_code == 200
    health = httpx.get(limited.url + "/health")  # LitServe's answered text without a content type
    assert (health.status_code, health.text, health.headers["content-type"]) == (200, "ok", "text/plain; charset=utf-8")
    for method, path in (("GET", "/v1/models"), ("POST", "/predict"), ("GET", "/v2/models/iris"), ("GET", "/")):
        response = httpx.request(method, limited.url + path, json={"instances": [[1, 2, 3, 4]]})
        assert response.status_code == 401 and "API key" in response.json()["error"]
    assert httpx.get(limited.url + "/v1/models", headers={"x-api-key": "s3cret"}).status_code == 200
    assert httpx.post(limited.url + "/predict", json={"instances": [[1, 2, 3, 4]]}, headers=KEY).status_code == 200


def test_too_many_rows_and_too_many_bytes_are_413(limited):
    rows = httpx.post(limited.url + "/predict", json={"instances": [[1, 2, 3, 4]] * 11}, headers=KEY)
    assert rows.status_code == 413 and "11 rows, the limit per request is 10" in rows.json()["error"]
    big = httpx.post(limited.url + "/predict", content=b'{"instances": [' + b" " * 4096 + b"]}",
                     headers={**KEY, "content-type": "application/json"})  # fmt: skip
    assert big.status_code == 413 and "exceeds the limit of 2048 bytes" in big.json()["error"]
    oip = {"inputs": [{"name": "features", "shape": [11, 4], "datatype": "FP32", "data": [1.0] * 44}]}
    assert httpx.post(limited.url + "/v2/models/iris/infer", json=oip, headers=KEY).status_code == 413


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--port", "0"], "invalid setting --port / TABSERVE_PORT: Input should be greater than or equal to 1"),
        (["--repository", "/no/such/dir"], "'/no/such/dir' is not a directory"),
        (["--device", "tpu"], "invalid setting --device / TABSERVE_DEVICE"),
        (["--max-batch-rows", "-5"], "--max-batch-rows / TABSERVE_MAX_BATCH_ROWS"),
        (["--model-control-mode", "manual"], "--model-control-mode / TABSERVE_MODEL_CONTROL_MODE: Input should be"),
    ],
)
def test_bad_settings_stop_startup_with_a_clear_message(flags, message):
    result = subprocess.run([sys.executable, "-m", "service", *flags], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_settings_come_from_the_environment_too():
    result = subprocess.run([sys.executable, "-m", "service"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin", "TABSERVE_WORKERS": "0"})  # fmt: skip
    assert result.returncode == 2 and "TABSERVE_WORKERS" in result.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_shutdown_finishes_in_flight_requests_and_leaves_no_process(repo, sig):
    server = Server(repo)
    rows = np.tile([[5.1, 3.5, 1.4, 0.2]], (60_000, 1)).tolist()
    result = {}

    def slow_request():
        result["response"] = httpx.post(server.url + "/predict", json={"instances": rows}, timeout=60)

    thread = threading.Thread(target=slow_request)
    thread.start()
    time.sleep(0.3)  # the request is being read, decoded or predicted
    elapsed = server.stop(sig)
    thread.join(60)
    assert result["response"].status_code == 200 and len(result["response"].json()["predictions"]) == 60_000
    assert elapsed < 15
