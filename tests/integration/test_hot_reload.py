"""Hot reload under load: a retrain publishes, a rollback pins, a corrupted version appears, and not one
request fails; versions switch in the server without a restart; the broken version never answers."""

import shutil
import threading
import time
from collections import Counter

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.conftest import run_cli
from tests.metrics_text import Scrape
from tests.serving import Server, republish

ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]], dtype=np.float32).tolist()


class Load:
    """Threads posting to the default version until stopped; every answer is kept as (sent at, status, version)."""

    def __init__(self, url: str, threads: int = 4):
        self.url, self.answers, self.running = url + "/v1/models/iris/predict", [], True
        self.threads = [threading.Thread(target=self._send, daemon=True) for _ in range(threads)]
        for thread in self.threads:
            thread.start()

    def _send(self) -> None:
        with httpx.Client(timeout=30) as client:
            while self.running:
                sent = time.monotonic()
                try:
                    response = client.post(self.url, json={"instances": ROWS})
                    version = response.json().get("version") if response.status_code == 200 else response.text
                    self.answers.append((sent, response.status_code, version))
                except httpx.HTTPError as e:
                    self.answers.append((sent, type(e).__name__, None))

    def wait_for_version(self, version: int, after: float = 0.0, timeout: float = 60) -> float:
        """When the first request sent after `after` and answered by `version` was sent."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sent = [s for s, status, v in list(self.answers) if status == 200 and v == version and s > after]
            if sent:
                return min(sent)
            time.sleep(0.05)
        raise AssertionError(f"version {version} never answered; last answers: {self.answers[-5:]}")

    def stop(self) -> list:
        self.running = False
        for thread in self.threads:
            thread.join(30)
        return sorted(self.answers)


@pytest.fixture
def repo(trained, tmp_path):
    folder, _, _ = trained
    shutil.copytree(folder.parent, tmp_path / "models" / "iris")
    return tmp_path / "models"


def test_retrain_rollback_and_a_corrupted_version_under_load(repo, tmp_path):
    server = Server(repo, "--poll-interval", "0.2", "--workers", "2")
    load = Load(server.url)
    phases = []  # (from, to, version): every request sent in between must be answered by that version

    def expect(version: int, change_started: float) -> None:
        load.wait_for_version(version, after=change_started)
        seen = time.monotonic()  # a request sent from now on is validated after the switch
        time.sleep(0.5)
        phases.append((seen, time.monotonic(), version))

    try:
        started = time.monotonic()
        retrained = run_cli("retrain", "--name", "iris", "--repository", str(repo), "--workdir", str(tmp_path / "run"),
                            "--quiet")  # fmt: skip
        assert retrained.returncode == 0, retrained.stdout + retrained.stderr
        expect(2, started)

        started = time.monotonic()
        rolled_back = run_cli("rollback", "--name", "iris", "--repository", str(repo))
        assert rolled_back.returncode == 0, rolled_back.stderr
        expect(1, started)

        started = time.monotonic()
        republish(repo / "iris" / "1", repo, "iris", corrupt=True)  # v3: broken from its first moment
        unpinned = run_cli("rollback", "--name", "iris", "--unpin", "--repository", str(repo))
        assert unpinned.returncode == 0 and "version 2 answers by default" in unpinned.stdout
        expect(2, started)
        time.sleep(1.0)  # several more polls with the broken v3 in the repository
    finally:
        answers = load.stop()
        scrape = Scrape.of(server.url)
        listing = httpx.get(server.url + "/v1/models").json()
        pinned_v3 = httpx.post(server.url + "/v1/models/iris/versions/3/predict", json={"instances": ROWS})
        server.stop()

    assert len(answers) > 100
    assert Counter(status for _, status, _ in answers) == {200: len(answers)}  # zero failed requests
    assert {v for _, _, v in answers} == {1, 2}  # the corrupted v3 never answered
    # Once a version has answered, every request sent afterwards (until the next change) got it.
    assert [version for _, _, version in phases] == [2, 1, 2]
    for start, end, version in phases:
        assert {v for sent, _, v in answers if start < sent < end} == {version}

    (iris,) = listing["models"]
    states = {v["version"]: (v["state"], v["reason"]) for v in iris["versions"]}
    assert states[1][0] == states[2][0] == "READY" and iris["served_version"] == 2
    assert states[3][0] == "UNAVAILABLE" and "model.onnx: sha256 is" in states[3][1]
    assert pinned_v3.status_code == 503 and "sha256" in pinned_v3.json()["error"]
    assert scrape.sum("tabserve_served_version", model="iris") == 2
    assert scrape.sum("tabserve_model_load_failures_total", model="iris", reason="hash_mismatch") == 1
    assert scrape.sum("tabserve_model_info", model="iris", version="1") == 1
    assert scrape.sum("tabserve_model_info", model="iris", version="2") == 1
    assert scrape.sum("tabserve_model_info", model="iris", version="3") == 0
    assert scrape.sum("tabserve_requests_total", code="200") == len(answers)


def test_repository_extension_loads_and_unloads_on_demand(repo):
    """Explicit model control: a new version waits for `load`; `unload` stops a model; the Triton client drives it."""
    server = Server(repo, "--model-control-mode", "explicit")
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        republish(repo / "iris" / "1", repo, "iris")
        time.sleep(0.5)
        assert [(e["name"], e["version"]) for e in client.get_model_repository_index()] == [("iris", "1")]
        client.load_model("iris")
        assert [(e["version"], e["state"]) for e in client.get_model_repository_index()] == [("1", "READY"),
                                                                                            ("2", "READY")]  # fmt: skip
        assert httpx.post(server.url + "/predict", json={"instances": ROWS}).json()["version"] == 2

        client.unload_model("iris")
        assert not client.is_model_ready("iris")
        unloaded = httpx.post(server.url + "/predict", json={"instances": ROWS})
        assert unloaded.status_code == 503 and "unloaded" in unloaded.json()["error"]
        client.load_model("iris")
        assert client.is_model_ready("iris")
        assert httpx.post(server.url + "/predict", json={"instances": ROWS}).status_code == 200

        with pytest.raises(InferenceServerException, match="not in the repository"):
            client.load_model("nope")
    finally:
        server.stop()
