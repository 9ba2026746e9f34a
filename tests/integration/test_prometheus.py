"""A real Prometheus (Debian's package) scrapes a real tabserve with our config and rules, and its query API
returns the expected `rate()` and `histogram_quantile()` values; promtool checks and unit-tests the rules;
every Grafana panel's query runs against that Prometheus."""

import json
import math
import re
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from service.core import metrics
from tests.conftest import ROOT, require_tool
from tests.serving import Server, free_port

DEPLOY = ROOT / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "tabserve.json"
ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]], dtype=np.float32)


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [require_tool("promtool"), *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120
    )


def shipped_rules() -> list[dict]:
    return [
        rule
        for path in PROMETHEUS.glob("rules/*.yml")
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def test_promtool_accepts_the_config_and_rules():
    for args in (["check", "config", "prometheus.yml"], ["check", "rules", *map(str, PROMETHEUS.glob("rules/*.yml"))]):
        result = promtool(*args)
        assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_promtool_unit_tests_that_pass():
    alerts = {rule["alert"] for rule in shipped_rules() if "alert" in rule}
    cases = [
        case
        for path in PROMETHEUS.glob("tests/*.yml")
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    ]
    for alert in alerts:  # each alert is shown firing at some time and silent at another
        assert any(c["alertname"] == alert and c["exp_alerts"] for c in cases), f"{alert}: no firing case"
        assert any(c["alertname"] == alert and not c["exp_alerts"] for c in cases), f"{alert}: no silent case"
    result = promtool("test", "rules", *map(str, PROMETHEUS.glob("tests/*.yml")))
    assert result.returncode == 0, result.stdout + result.stderr


class Prometheus:
    """Our prometheus.yml with the target, intervals and paths adapted to a test on loopback."""

    def __init__(self, target: str, folder: Path):
        config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(PROMETHEUS / pattern) for pattern in config["rule_files"]]
        (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "tabserve"]
        job["static_configs"] = [{"targets": [target]}]
        config["scrape_configs"] = [job]
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = open(folder / "prometheus.log", "w")  # noqa: SIM115  (closed in stop)
        self.process = subprocess.Popen(
            [require_tool("prometheus"), f"--config.file={folder / 'prometheus.yml'}",
             f"--storage.tsdb.path={folder / 'data'}", f"--web.listen-address={self.url.removeprefix('http://')}"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.wait(lambda: httpx.get(self.url + "/-/ready", timeout=1).status_code == 200, "ready")

    def query(self, expr: str) -> list[dict]:
        response = httpx.get(self.url + "/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        assert body["status"] == "success", (expr, body)
        return body["data"]["result"]

    def value(self, expr: str) -> float:
        result = self.query(expr)
        assert len(result) == 1, (expr, result)
        return float(result[0]["value"][1])

    def wait(self, condition, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if condition():
                    return
            except (httpx.TransportError, AssertionError):
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.25)
        raise AssertionError(f"prometheus: not {what} in {timeout} s: {Path(self.log.name).read_text()[-2000:]}")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(20)
        self.log.close()


@pytest.fixture(scope="module")
def observed(repo, tmp_path_factory):
    """tabserve (two workers) after 40 requests of exactly 7 rows, one at a time, and 3 rejected ones;
    scraped every second by a real Prometheus until it has seen all of them."""
    server = Server(repo, "--workers", "2")
    prometheus = Prometheus(server.url.removeprefix("http://"), tmp_path_factory.mktemp("prometheus"))
    try:
        prometheus.wait(lambda: prometheus.value('up{job="tabserve"}') == 1, "scraping tabserve")
        predict, seven = server.url + "/v1/models/iris/predict", {"instances": ROWS[[0, 1, 2, 0, 1, 2, 0]].tolist()}

        def reject():
            assert httpx.post(predict, json={"instances": [["x", 1, 2, 3]]}, timeout=30).status_code == 422

        reject()  # a counter's first sample is its baseline: let Prometheus see it before it grows
        prometheus.wait(lambda: prometheus.value("sum(tabserve_input_rejected_total)") == 1, "seeing a rejection")
        predicted = []
        for i in range(40):
            answer = httpx.post(predict, json=seven, headers={"x-request-id": f"seven-{i}"}, timeout=30)
            predicted += [p["label"] for p in answer.raise_for_status().json()["predictions"]]
        reject()
        # The true labels of the first 10 requests (70 rows), all "virginica": live accuracy is the share of
        # those rows predicted virginica.
        feedback = {"feedback": [{"request_id": f"seven-{i}", "labels": ["virginica"] * 7} for i in range(10)]}
        matched = httpx.post(server.url + "/v1/models/iris/feedback", json=feedback, timeout=30).json()["matched"]
        assert matched == 70
        prometheus.live_accuracy = predicted[:70].count("virginica") / 70
        reject()
        prometheus.wait(
            lambda: (
                prometheus.value('sum(tabserve_rows_total{model="iris"})') == 280
                and prometheus.value('sum(tabserve_requests_total{model="iris"})') == 43
                and prometheus.value('sum(tabserve_feedback_rows_total{model="iris"})') == 70
            ),
            "showing all requests",
        )
        time.sleep(3)  # a few more scrapes and rule evaluations after the last request
        yield prometheus
    finally:
        prometheus.stop()
        server.stop()


def test_rate_and_histogram_quantile_return_the_expected_values(observed):
    iris = 'model="iris", version="2"'
    assert observed.value('sum(tabserve_requests_total{model="iris", code="200"})') == 40
    assert observed.value(f"sum(tabserve_predictions_total{{{iris}}})") == 280
    assert observed.value(f"sum(rate(tabserve_rows_total{{{iris}}}[1m]))") > 0
    # Every call ran exactly one 7-row request: rows per call, and its median from the (4, 8] bucket.
    ratio = f"sum(rate(tabserve_rows_total{{{iris}}}[1m])) / sum(rate(tabserve_batch_rows_count{{{iris}}}[1m]))"
    assert observed.value(ratio) == pytest.approx(7, rel=1e-9)
    median = f"histogram_quantile(0.5, sum by (le) (rate(tabserve_batch_rows_bucket{{{iris}}}[1m])))"
    assert observed.value(median) == pytest.approx(6, rel=1e-9)  # 4 + (8 - 4) * 0.5: linear within the bucket
    p99 = 'histogram_quantile(0.99, sum by (le) (rate(tabserve_request_duration_seconds_bucket{model="iris"}[1m])))'
    assert 0 < observed.value(p99) <= metrics.LATENCY_BUCKETS[-1]
    assert observed.value('sum(tabserve_input_rejected_total{model="iris", reason="non_numeric"})') == 3
    assert observed.value('sum(tabserve_requests_total{model="iris", code="422"})') == 3
    assert observed.value('sum(rate(tabserve_input_rejected_total{model="iris"}[1m]))') > 0


def test_rules_evaluate_on_real_data(observed):
    groups = httpx.get(observed.url + "/api/v1/rules", timeout=10).json()["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) == 20
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
    observed.wait(lambda: observed.query('tabserve:requests:rate5m{model="iris", code="200"}'), "recording")
    assert 0 < observed.value('tabserve:input_rejected:ratio5m{model="iris"}') < 1
    shares = observed.query('tabserve:class_share:ratio1h{model="iris", version="2"}')
    assert math.isclose(sum(float(s["value"][1]) for s in shares), 1.0)
    alerts = {
        a["labels"]["alertname"]
        for a in httpx.get(observed.url + "/api/v1/alerts", timeout=10).json()["data"]["alerts"]
    }
    assert not alerts & {"TabserveDown", "TabserveNoReadyModel", "TabserveCrashLooping"}
    live = observed.value('tabserve:feedback_accuracy:ratio6h{model="iris", version="2"}')
    assert live == pytest.approx(observed.live_accuracy)  # the labels sent, as a real Prometheus computes them
    assert 0 < observed.value('tabserve:feedback_accuracy:margin6h{model="iris", version="2"}') < 1


def panel_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_every_dashboard_query_runs_and_names_only_metrics_we_export(observed):
    exported = {m._name + suffix for m in vars(metrics).values() if hasattr(m, "_upper_bounds")
                for suffix in ("_bucket", "_sum", "_count")}  # fmt: skip
    exported |= {m.describe()[0].name for m in vars(metrics).values() if hasattr(m, "_labelnames")}
    exported |= {name + "_total" for name in exported}
    recorded = {rule["record"] for rule in shipped_rules() if "record" in rule}
    queries = panel_queries()
    assert len(queries) >= 12
    for expr in queries:
        names = set(re.findall(r"\btabserve[:_][a-zA-Z0-9_:]*", expr))
        assert names and names <= exported | recorded, (expr, names - exported - recorded)
        concrete = expr.replace("$__rate_interval", "1m").replace('"$model"', '".*"')
        result = observed.query(concrete)
        if "request_errors" not in expr:  # no 5xx happened: that ratio alone has no series
            assert result, f"no data for {concrete}"
