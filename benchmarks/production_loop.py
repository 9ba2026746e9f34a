"""`python -m benchmarks.production_loop` (`make bench-loop`): the production loop, end to end, on a real server.

digits v1 weak (`--max-epochs 1 --hidden 4 --lr 1e-4`), v2 default, v3 weak; v1 made the champion with
`python -m training rollback`; an automatic canary of v2 at 25 %; one-row requests (rows of scikit-learn's
digits), each followed by its label. It checks: v2 is promoted within 6,000 requests and then answers everything;
an automatic canary of v3 at 25 % is rolled back; no request or feedback call fails; `tabserve_feedback_*` per
version match the labels sent; after a restart v2 answers. Prints the figures the docs quote and writes them to
benchmarks/results/production_loop.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
from sklearn.datasets import load_digits

from benchmarks import model
from benchmarks.procs import free_port, running

CACHE = model.CACHE / "loop"
WEAK = ("--max-epochs", "1", "--hidden", "4", "--lr", "1e-4")
MAX_REQUESTS = 6000
RESULTS = model.ROOT / "benchmarks" / "results" / "production_loop.json"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def repository() -> Path:
    """digits v1 weak, v2 default, v3 weak (trained once into benchmarks/.cache/loop)."""
    root = CACHE / "models"
    if not (root / "digits" / "3").is_dir():
        for flags in (WEAK, (), WEAK):
            log(f"training digits {' '.join(flags) or '(default)'} …")
            subprocess.run([sys.executable, "-m", "training", "train", "--dataset", "digits", "--name", "digits",
                            "--repository", str(root), "--quiet", *flags], check=True, cwd=model.ROOT)  # fmt: skip
    subprocess.run([sys.executable, "-m", "training", "rollback", "--name", "digits", "--version", "1",
                    "--repository", str(root)], check=True, cwd=model.ROOT, capture_output=True)  # fmt: skip
    return root


def drive(client: httpx.Client, rows, labels, start: int, until, tally: Counter) -> int:
    """One-row requests, each followed by its label, until `until(state)` or MAX_REQUESTS; returns requests sent."""
    sent = 0
    while sent < MAX_REQUESTS:
        i = (start + sent) % len(rows)
        answer = client.post("/v1/models/digits/predict", json={"instances": [rows[i]]})
        tally["requests"] += 1
        if answer.status_code != 200:
            tally["failed requests"] += 1
            continue
        version = answer.json()["version"]
        tally[f"answers v{version}"] += 1
        request_id = answer.headers["x-request-id"]
        given = client.post("/v1/models/digits/feedback", json={"request_id": request_id, "labels": [labels[i]]})
        tally["failed feedback"] += given.status_code != 200
        tally[f"labels v{version}"] += 1
        sent += 1
        if sent % 50 == 0 and until(client.get("/v1/models/digits/rollout").json()):
            return sent
    return sent


def main() -> int:
    root = repository()
    x, y = load_digits(return_X_y=True)
    rows, labels = x.astype("float32").tolist(), [str(v) for v in y]
    port, state = free_port(), tempfile.mkdtemp(prefix="loop-state-")
    command = [sys.executable, "-m", "service", "--repository", str(root), "--port", str(port), "--grpc-port", "0",
               "--state-dir", state, "--poll-interval", "1"]  # fmt: skip
    url, results, tally = f"http://127.0.0.1:{port}", {}, Counter()
    logs = CACHE / "server.log"
    with running(command, url + "/v2/health/ready", logs, 90, model.ROOT), httpx.Client(base_url=url) as client:
        for challenger, expected in ((2, "promoted"), (3, "rolled_back")):
            started = client.post("/v1/models/digits/rollout", json={"challenger": challenger, "percent": 25})
            assert started.status_code == 200, started.text
            log(f"canary of v{challenger} at 25 % against v{started.json()['champion']} …")
            sent = drive(client, rows, labels, len(tally), lambda s: s["state"] != "running", tally)
            status = client.get("/v1/models/digits/rollout").json()
            log(f"v{challenger}: {status['state']} after {sent} requests: {status['reason']}")
            results[f"v{challenger}"] = {"requests": sent, **status}
            assert status["state"] == expected, status
        time.sleep(1.5)
        after = Counter(client.post("/v1/models/digits/predict", json={"instances": [rows[i]]}).json()["version"]
                        for i in range(300))  # fmt: skip
        results["after_promotion"] = dict(after)
        metrics = client.get("/metrics").text
    with running(command, url + "/v2/health/ready", logs, 90, model.ROOT), httpx.Client(base_url=url) as client:
        restarted = Counter(client.post("/v1/models/digits/predict", json={"instances": [rows[0]]}).json()["version"]
                            for _ in range(50))  # fmt: skip
        results["after_restart"] = dict(restarted)
    results["tally"] = dict(tally)
    results["metrics"] = [line for line in metrics.splitlines() if line.startswith("tabserve_feedback_rows_total")]
    results["audit"] = [json.loads(line) for line in (Path(state) / "rollouts.jsonl").read_text().splitlines()]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    log(f"tally {dict(tally)}; after promotion {dict(after)}; after restart {dict(restarted)}")
    log(f"results: {RESULTS}")
    ok = (after == Counter({2: 300}) and restarted == Counter({2: 50}) and not tally["failed requests"]
          and not tally["failed feedback"] and results["v2"]["requests"] <= MAX_REQUESTS)  # fmt: skip
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
