"""Metric names, labels and buckets follow Prometheus conventions; dead processes' live gauges are dropped."""

import subprocess
import sys
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

from bundle.manifest import ScalerParams
from service.core import metrics
from tests.metrics_text import Scrape

BOUNDED_LABELS = {
    "decision",
    "outcome",
    "model",
    "version",
    "endpoint",
    "code",
    "reason",
    "label",
    "predicted",
    "feature",
    "provider",
    "action",
}
"""Label names whose values come from the repository, manifests or fixed code lists, never from request data."""

ALL = [m for m in vars(metrics).values() if isinstance(m, Counter | Gauge | Histogram)]


def test_every_metric_is_named_by_convention():
    assert len(ALL) == 35
    for metric in ALL:
        assert metric._name.startswith("tabserve_"), metric._name
        assert set(metric._labelnames) <= BOUNDED_LABELS, (metric._name, metric._labelnames)
        if isinstance(metric, Counter):
            assert not metric._name.endswith("_total")  # prometheus-client appends it once
        if isinstance(metric, Histogram) and "duration" in metric._name:
            assert metric._name.endswith("_seconds") and metric._upper_bounds[:-1] == list(metrics.LATENCY_BUCKETS)
        assert metric._documentation


def test_latency_buckets_span_sub_millisecond_to_seconds():
    buckets = metrics.LATENCY_BUCKETS
    assert list(buckets) == sorted(set(buckets))
    assert buckets[0] <= 0.0001 and sum(b < 0.001 for b in buckets) >= 3  # a single row answers in ~0.5 ms
    assert buckets[-1] >= 5  # a 100,000-row request takes about a second
    assert metrics.ROW_BUCKETS[0] == 1 and 1024 in metrics.ROW_BUCKETS  # the default max batch is a boundary


CHILD = """
import os, sys
from prometheus_client import Counter, Gauge
Gauge("tabserve_requests_in_flight", "", multiprocess_mode="livesum").inc(2)
Counter("tabserve_rows", "").inc(5)
"""


def test_dead_processes_keep_their_counts_but_lose_their_live_gauges(tmp_path):
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", textwrap.dedent(CHILD)], env=env, check=True)

    def scrape() -> Scrape:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, str(tmp_path))
        return Scrape(generate_latest(registry).decode())

    assert scrape().sum("tabserve_requests_in_flight") == 2  # the child is gone but not yet marked
    metrics.mark_dead_processes(tmp_path)
    after = scrape()
    assert after.sum("tabserve_requests_in_flight") == 0
    assert after.sum("tabserve_rows_total") == 5


@pytest.mark.parametrize("z, expected", [(4.0, [1, 0]), (0.5, [2, 1])])
def test_drift_counts_rows_beyond_z_training_deviations_per_feature(z, expected):
    manifest = SimpleNamespace(  # only what VersionSignals reads
        name="unit", version=99, classes=["a", "b"], features=["f0", "f1"], class_prior={"a": 0.5, "b": 0.5},
        scaler=ScalerParams(mean=[10.0, 0.0], scale=[2.0, 1.0]),
    )  # fmt: skip
    signals = metrics.VersionSignals(manifest, drift_z=z)
    rows = np.array([[10.0, 0.0], [30.0, 0.2], [11.5, -0.9]], dtype=np.float32)  # z: (0, 0), (10, 0.2), (0.75, -0.9)
    before = [child._value.get() for child in signals.out_of_range]
    signals.observe_call(rows, np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], np.float32), 0.001)
    assert [child._value.get() - b for child, b in zip(signals.out_of_range, before, strict=True)] == expected
