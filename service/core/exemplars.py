"""OpenMetrics exemplars across processes: a traced request's trace id on the latency bucket it fell in.

prometheus-client keeps no exemplars in multiprocess mode (its mmap files hold numbers only), so each process
remembers the latest exemplar per histogram bucket itself and, at most once a second, writes them to
`exemplars_<pid>.json` in the metrics folder (from the event loop; temp file, then rename). The scrape
(service/core/metrics.py `render`, when Prometheus asks for OpenMetrics) puts the files of live processes back on
the bucket samples. Only sampled, traced requests make exemplars, so with tracing off this module does nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

from prometheus_client.samples import Exemplar, Sample
from prometheus_client.utils import floatToGoString  # how prometheus-client writes the `le` label

FLUSH_SECONDS = 1.0
PREFIX = "exemplars_"

_latest: dict[str, list] = {}  # "metric|label values|le" → [trace_id, value, unix time]
_pending: list[asyncio.TimerHandle] = []  # the write scheduled, if any


def observe(histogram, labels: tuple[str, ...], value: float, trace_id: str) -> None:
    """Remember `trace_id` as the exemplar of the bucket `value` falls in (of `histogram` with `labels`); called
    on the event loop, which writes this process's file within `FLUSH_SECONDS`."""
    bounds = histogram._upper_bounds  # the buckets it was declared with, +Inf last
    le = next(bound for bound in bounds if value <= bound)
    _latest[f"{histogram._name}|{'|'.join(labels)}|{floatToGoString(le)}"] = [trace_id, value, time.time()]
    if not _pending:
        _pending.append(asyncio.get_running_loop().call_later(FLUSH_SECONDS, _write))


def _write() -> None:
    _pending.clear()
    path = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]) / f"{PREFIX}{os.getpid()}.json"
    temporary = path.with_suffix(".tmp")
    try:
        temporary.write_text(json.dumps(_latest))
        temporary.replace(path)
    except OSError:  # a full or gone metrics folder must never fail a request
        pass


def load(folder: Path, live) -> dict[str, list]:
    """Every live process's exemplars (`live(pid)`: whether it runs), the newest per bucket."""
    merged: dict[str, list] = {}
    for path in folder.glob(f"{PREFIX}*.json"):
        pid = path.stem.removeprefix(PREFIX)
        if not (pid.isdigit() and live(int(pid))):
            path.unlink(missing_ok=True)
            continue
        try:
            found = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for key, exemplar in found.items():
            if key not in merged or merged[key][2] < exemplar[2]:
                merged[key] = exemplar
    return merged


def attach(families, found: dict[str, list], label_names: dict[str, tuple[str, ...]]):
    """The collected metric families with exemplars on the `_bucket` samples they belong to."""
    for family in families:
        names = label_names.get(family.name)
        if names is None or family.type != "histogram":
            yield family
            continue
        samples = []
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                key = f"{family.name}|{'|'.join(sample.labels.get(n, '') for n in names)}|{sample.labels['le']}"
                if (exemplar := found.get(key)) is not None:
                    sample = Sample(*sample[:4], Exemplar({"trace_id": exemplar[0]}, exemplar[1], exemplar[2]))
            samples.append(sample)
        family.samples = samples
        yield family
