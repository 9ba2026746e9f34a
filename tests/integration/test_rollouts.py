"""Rollouts on a real server: every bad request gets its named 4xx; a canary splits the traffic by hash (one
`X-Rollout-Key` stays on one side) and counts each arm; stop and promote by hand; an automatic canary of a better
version is promoted on live accuracy (pinned in policy.json, followed after a restart, and `rollback` still works
afterwards) and one of a worse version is rolled back, each decision in the audit log and the metrics."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections import Counter

import httpx
import pytest
from sklearn.datasets import load_iris

from bundle import policy
from tests.conftest import ROOT, run_cli
from tests.metrics_text import Scrape
from tests.serving import Server, republish

X, Y = load_iris(return_X_y=True)
CLASSES = ["setosa", "versicolor", "virginica"]


@pytest.fixture(scope="module")
def weak(tmp_path_factory):
    """An iris version that is right about a third of the time (one epoch of a 4-unit network, lr 1e-4)."""
    from training import pipeline
    from training.config import TrainConfig

    tmp = tmp_path_factory.mktemp("weak")
    config = TrainConfig(name="iris", dataset="iris", max_epochs=1, model={"hidden": (4,)}, lr=1e-4, calibrate=False)
    folder, _ = pipeline.train(config, tmp / "models", tmp / "run", progress=False)
    return folder


def rollout(server: Server, method: str = "GET", path: str = "", **kwargs) -> httpx.Response:
    return httpx.request(method, f"{server.url}/v1/models/iris/rollout{path}", timeout=10, **kwargs)


def cli(*args: str) -> dict:
    """`python -m service.rollouts …`, as `make canary` and friends run it."""
    result = subprocess.run([sys.executable, "-m", "service.rollouts", *args], capture_output=True, text=True,
                            timeout=60, cwd=ROOT)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def answered_by(server: Server, n: int, **headers) -> Counter:
    return Counter(
        httpx.post(server.url + "/v1/models/iris/predict", json={"instances": [X[i % 150].tolist()]}, headers=headers,
                   timeout=10).json()["version"]
        for i in range(n)
    )  # fmt: skip


@pytest.fixture
def three(trained, tmp_path):
    """iris v1 and v2 (the same good model) and a broken v3."""
    root = tmp_path / "models"
    for corrupt in (False, False, True):
        republish(trained[0], root, "iris", corrupt=corrupt)
    return root


def test_every_bad_rollout_request_gets_its_named_4xx(three):
    server = Server(three, "--management-key", "boss")
    boss = {"authorization": "Bearer boss"}
    try:
        assert (rollout(server).status_code, rollout(server).json()["reason"]) == (404, "no_rollout")
        cases = [
            ({"challenger": 1, "percent": 10}, {}, 401, "unauthorized"),
            ({"challenger": 9, "percent": 10}, boss, 404, "model_not_found"),
            ({"challenger": 3, "percent": 10}, boss, 409, "version_unavailable"),
            ({"challenger": 2, "percent": 150}, boss, 422, "invalid_input"),
            ({"challenger": 1, "percent": 10, "mode": "blue"}, boss, 422, "invalid_input"),
        ]
        for body, headers, status, reason in cases:
            response = rollout(server, "POST", json=body, headers=headers)
            assert (response.status_code, response.json()["reason"]) == (status, reason), (body, response.text)
        started = rollout(server, "POST", json={"challenger": 1, "percent": 10, "auto": False}, headers=boss)
        assert started.status_code == 200 and started.json()["champion"] == 2  # the newest ready version answers
        again = rollout(server, "POST", json={"challenger": 1, "percent": 10}, headers=boss)
        assert (again.status_code, again.json()["reason"]) == (409, "rollout_running")
        assert rollout(server, "DELETE", headers=boss).json()["state"] == "stopped"
        late = rollout(server, "POST", path="/promote", headers=boss)
        assert (late.status_code, late.json()["reason"]) == (409, "no_running_rollout")
        same = rollout(server, "POST", json={"challenger": 2, "percent": 10}, headers=boss)
        assert (same.status_code, same.json()["reason"]) == (409, "challenger_is_champion")
        check_shadow(server, boss)
    finally:
        server.stop()
    off = Server(three, "--prediction-log", "off")
    try:
        response = rollout(off, "POST", json={"challenger": 1, "percent": 10})
        assert (response.status_code, response.json()["reason"]) == (404, "prediction_log_off")
    finally:
        off.stop()


def check_shadow(server: Server, boss: dict) -> None:
    """A shadow at 100 %: the champion answers every client; the challenger runs a copy of each, logged as a
    shadow record, compared with the client's answer and counted in its arm."""
    shadow = rollout(server, "POST", json={"challenger": 1, "mode": "shadow", "percent": 100, "auto": False},
                     headers=boss)  # fmt: skip
    assert shadow.status_code == 200, shadow.text
    time.sleep(1.5)
    assert answered_by(server, 60) == Counter({2: 60})
    time.sleep(1.5)
    evidence = rollout(server).json()["evidence"]
    assert evidence["champion"]["requests"] == 60 and 0 < evidence["challenger"]["requests"] <= 60
    scrape = Scrape.of(server.url)
    copies = sum(scrape.sum("tabserve_shadow_requests_total", version="1", outcome=o) for o in ("agreed", "disagreed"))
    assert copies == evidence["challenger"]["requests"]
    assert scrape.sum("tabserve_shadow_requests_total", version="1", outcome="agreed") == copies  # the same model
    with sqlite3.connect(server.state_dir / "predictions.db") as db:
        assert db.execute("SELECT COUNT(*) FROM predictions WHERE shadow = 1 AND version = 1").fetchone()[0] == copies
    assert rollout(server, "DELETE", headers=boss).json()["state"] == "stopped"


def test_a_canary_splits_by_hash_counts_each_arm_and_stops_or_promotes_by_hand(trained, tmp_path):
    root = tmp_path / "models"
    for _ in range(2):
        republish(trained[0], root, "iris")
    run_cli("rollback", "--name", "iris", "--version", "1", "--repository", str(root))
    server = Server(root, "--poll-interval", "1")
    try:
        canary = cli("canary", "--model", "iris", "--version", "2", "--percent", "50", "--manual", "--url", server.url)
        assert (canary["champion"], canary["challenger"], canary["auto"]) == (1, 2, False)
        time.sleep(1.5)  # every HTTP process reads the rollout within a second
        split = answered_by(server, 200)
        assert split.keys() == {1, 2} and 60 <= split[2] <= 140
        assert len(answered_by(server, 30, **{"x-rollout-key": "customer-17"})) == 1  # one client, one side
        pinned = httpx.post(server.url + "/v1/models/iris/versions/1/predict", json={"instances": [X[0].tolist()]})
        assert pinned.json()["version"] == 1  # a request naming its version is not part of the rollout
        time.sleep(1.5)  # each process saves its arms' totals every second
        evidence = rollout(server).json()["evidence"]
        assert evidence["champion"]["requests"] + evidence["challenger"]["requests"] == 230
        assert evidence["challenger"]["requests"] in (split[2], split[2] + 30)
        assert evidence["champion"]["p99_ms"] > 0 and evidence["challenger"]["errors"] == 0
        assert cli("promote", "--model", "iris", "--url", server.url)["state"] == "promoted"
        assert policy.read(root / "iris").pinned == 2
        time.sleep(1.5)  # every HTTP process has followed the decision
        assert answered_by(server, 40) == Counter({2: 40})
        assert Scrape.of(server.url).sum("tabserve_rollout_decisions_total", decision="promoted") == 1
        run_cli("rollback", "--name", "iris", "--version", "1", "--repository", str(root))  # still works afterwards
        time.sleep(2.5)
        assert answered_by(server, 20) == Counter({1: 20})
    finally:
        server.stop()


def label_until_decided(server: Server, limit: int = 3000) -> tuple[dict, int]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for n in range(1, limit + 1):
            i = n % 150
            answer = client.post("/v1/models/iris/predict", json={"instances": [X[i].tolist()]})
            assert answer.status_code == 200
            label = {"request_id": answer.headers["x-request-id"], "labels": [CLASSES[Y[i]]]}
            given = client.post("/v1/models/iris/feedback", json=label)
            assert given.status_code == 200, given.text
            if n % 20 == 0 and (status := client.get("/v1/models/iris/rollout").json())["state"] != "running":
                return status, n
    raise AssertionError(f"no decision after {limit} labelled requests: {client.get('/v1/models/iris/rollout').text}")


def test_automatic_canaries_promote_a_better_version_and_roll_back_a_worse_one(trained, weak, tmp_path):
    root = tmp_path / "models"
    republish(weak, root, "iris")  # v1 weak, the champion
    republish(trained[0], root, "iris")  # v2 good
    republish(weak, root, "iris")  # v3 weak
    run_cli("rollback", "--name", "iris", "--version", "1", "--repository", str(root))
    flags = ("--rollout-min-labels", "30", "--poll-interval", "1")
    server = Server(root, *flags)
    try:
        rollout(server, "POST", json={"challenger": 2, "percent": 30})
        status, _ = label_until_decided(server)
        assert status["state"] == "promoted" and "mSPRT" in status["reason"], status
        challenger = status["evidence"]["challenger"]
        assert challenger["labelled"] >= 30 and challenger["accuracy"] > status["evidence"]["champion"]["accuracy"]
        deadline = time.monotonic() + 10  # the decision is recorded first, then policy.json written (controller.py)
        while policy.read(root / "iris").pinned != 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert policy.read(root / "iris").pinned == 2
        time.sleep(1.5)
        rollout(server, "POST", json={"challenger": 3, "percent": 30})
        status, _ = label_until_decided(server)
        assert (status["state"], status["champion"]) == ("rolled_back", 2), status
        time.sleep(1.5)
        assert answered_by(server, 30) == Counter({2: 30})
        scrape = Scrape.of(server.url)
        assert scrape.sum("tabserve_rollout_decisions_total", decision="promoted") == 1
        assert scrape.sum("tabserve_rollout_decisions_total", decision="rolled_back") == 1
        audit = [json.loads(line) for line in (server.state_dir / "rollouts.jsonl").read_text().splitlines()]
        assert [(a["challenger"], a["decision"]) for a in audit] == [(2, "promoted"), (3, "rolled_back")]
        assert audit[0]["evidence"]["challenger"]["labelled"] >= 30
        # Retrain on the labelled traffic, and hand the challenger to an automatic canary: the champion stays.
        retrained = subprocess.run(
            [sys.executable, "-m", "training", "retrain", "--name", "iris", "--data", "feedback", "--canary", "30",
             "--server", server.url, "--repository", str(root), "--workdir", str(tmp_path / "run"), "--quiet",
             "--f1-tolerance", "1", "--max-recall-drop", "1"],  # the gate has its own tests; a small split varies
            cwd=ROOT, capture_output=True, text=True, timeout=300,
            env={**os.environ, "TABSERVE_STATE_DIR": str(server.state_dir)},
        )  # fmt: skip
        assert retrained.returncode == 0, retrained.stdout + retrained.stderr
        assert "labelled rows of iris from the prediction log" in retrained.stdout
        assert "Canary of v4 against v2" in retrained.stdout
        assert (rollout(server).json()["state"], policy.read(root / "iris").pinned) == ("running", 2)
        rollout(server, "DELETE")
        state_dir = server.state_dir
    finally:
        server.stop()
    restarted = Server(root, *flags, env={"TABSERVE_STATE_DIR": str(state_dir)})
    try:
        assert answered_by(restarted, 20) == Counter({2: 20})
        assert rollout(restarted).json()["state"] == "stopped"  # the database remembers (the v4 canary, stopped)
    finally:
        restarted.stop()
