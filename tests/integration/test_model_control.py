"""Model control modes (after Triton's --model-control-mode) and the management key, on a real server."""

import shutil
import time

import httpx
import pytest

from tests.metrics_text import Scrape
from tests.serving import Server, republish

ROWS = [[5.1, 3.5, 1.4, 0.2]]
API, MANAGEMENT = "api-key-1", "management-key-2"


def bearer(key: str) -> dict:
    return {"authorization": f"Bearer {key}"}


@pytest.fixture
def repo(trained, tmp_path):
    folder, _, _ = trained
    shutil.copytree(folder.parent, tmp_path / "models" / "iris")
    return tmp_path / "models"


@pytest.mark.parametrize(("flags", "mode"), [((), "poll"), (("--model-control-mode", "none"), "none")])
def test_load_and_unload_are_refused_unless_explicit(repo, flags, mode):
    server = Server(repo, *flags)
    try:
        for action in ("load", "unload"):
            response = httpx.post(f"{server.url}/v2/repository/models/iris/{action}")
            assert response.status_code == 403, response.text
            body = response.json()
            assert body["reason"] == "model_control_disabled"
            assert (
                f"model control mode is '{mode}'" in body["error"] and "--model-control-mode explicit" in body["error"]
            )
        assert httpx.post(server.url + "/predict", json={"instances": ROWS}).status_code == 200  # still serving
        assert httpx.post(server.url + "/v2/repository/index").status_code == 200  # reads stay open
        scrape = Scrape.of(server.url)
        assert scrape.sum("tabserve_model_control_requests_total", action="load", code="403") == 1
        assert scrape.sum("tabserve_model_control_requests_total", action="unload", code="403") == 1
    finally:
        server.stop()


def test_none_mode_never_reads_the_repository_again(repo):
    server = Server(repo, "--model-control-mode", "none", "--poll-interval", "0.1")
    try:
        republish(repo / "iris" / "1", repo, "iris")
        time.sleep(0.5)  # five poll intervals: the interval means nothing outside poll mode
        index = httpx.post(server.url + "/v2/repository/index").json()
        assert [(e["name"], e["version"]) for e in index] == [("iris", "1")]
    finally:
        server.stop()


def test_explicit_mode_changes_only_what_load_and_unload_name(repo, tmp_path):
    republish(repo / "iris" / "1", repo, "flowers")
    server = Server(repo, "--model-control-mode", "explicit", "--api-key", API, "--management-key", MANAGEMENT)
    url, headers = server.url, bearer(MANAGEMENT)

    def index() -> list[tuple[str, str, str]]:
        entries = httpx.post(url + "/v2/repository/index", headers=bearer(API)).json()
        return [(e["name"], e["version"], e["state"]) for e in entries]

    def predict(model: str) -> httpx.Response:
        return httpx.post(f"{url}/v1/models/{model}/predict", json={"instances": ROWS}, headers=bearer(API))

    try:
        assert index() == [("flowers", "1", "READY"), ("iris", "1", "READY")]  # everything present at start
        republish(repo / "iris" / "1", repo, "iris")
        republish(repo / "iris" / "1", repo, "flowers")
        republish(repo / "iris" / "1", repo, "tulips")
        time.sleep(0.5)
        assert index() == [("flowers", "1", "READY"), ("iris", "1", "READY")]  # no polling

        assert httpx.post(url + "/v2/repository/models/iris/load", headers=headers).json() == {}
        assert index() == [("flowers", "1", "READY"), ("iris", "1", "READY"), ("iris", "2", "READY")]
        assert predict("iris").json()["version"] == 2 and predict("flowers").json()["version"] == 1
        assert httpx.post(url + "/v2/repository/models/tulips/load", headers=headers).status_code == 200
        assert predict("tulips").status_code == 200

        assert httpx.post(url + "/v2/repository/models/iris/unload", headers=headers).status_code == 200
        unloaded = predict("iris")
        assert unloaded.status_code == 503 and "unloaded" in unloaded.json()["error"]
        assert predict("flowers").status_code == 200
        assert httpx.post(url + "/v2/repository/models/iris/load", headers=headers).status_code == 200
        assert predict("iris").json()["version"] == 2

        shutil.rmtree(repo / "flowers")
        assert predict("flowers").status_code == 200  # explicit mode does not look at the repository
        assert httpx.post(url + "/v2/repository/models/flowers/unload", headers=headers).status_code == 200
        assert predict("flowers").status_code == 404  # an operator can still stop a model whose folder is gone

        unknown = httpx.post(url + "/v2/repository/models/nope/load", headers=headers)
        assert unknown.status_code == 404 and "not in the repository" in unknown.json()["error"]
        for bad in (".hidden", "-x", "a" * 65, "a b", "..."):
            response = httpx.post(f"{url}/v2/repository/models/{bad}/load", headers=headers)
            assert response.status_code == 400 and response.json()["reason"] == "invalid_model_name", bad
        outside = tmp_path / "elsewhere"
        shutil.copytree(repo / "iris", outside / "iris")
        (repo / "escape").symlink_to(outside / "iris")
        escaping = httpx.post(url + "/v2/repository/models/escape/load", headers=headers)
        assert escaping.status_code == 403 and escaping.json()["reason"] == "outside_repository"

        for key, status, reason in ((None, 401, "unauthorized"), ("wrong", 401, "unauthorized"),
                                    (API, 403, "management_key_required")):  # fmt: skip
            response = httpx.post(url + "/v2/repository/models/iris/unload", headers=bearer(key) if key else {})
            assert (response.status_code, response.json()["reason"]) == (status, reason), key
        assert httpx.post(url + "/v2/repository/models/iris/load", headers={"x-api-key": MANAGEMENT}).status_code == 200
        assert httpx.get(url + "/v1/models", headers=bearer(MANAGEMENT)).status_code == 200  # an operator reads too
        assert httpx.get(url + "/v1/models").status_code == 401
        scrape = Scrape.of(url, headers=bearer(API))
        assert scrape.sum("tabserve_model_control_requests_total", action="load", code="200") == 4
        assert scrape.sum("tabserve_model_control_requests_total", action="unload", code="403") == 1
    finally:
        server.stop()
