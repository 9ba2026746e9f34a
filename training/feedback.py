"""Training data from served traffic: the labelled rows of the prediction log, as a file `retrain` reads.

`make retrain MODEL=m DATA=feedback` exports every row that received a label (`--since`: only labels received
since then), with the features exactly as the server validated them, to a Parquet file in the run's folder, and
retrains on it (`--mix-original`: with the champion's own dataset too). A snapshot file rather than a live
query keeps the run reproducible: the manifest names the file and fingerprints its rows. The database is the
server's (`TABSERVE_PREDICTION_LOG`, `TABSERVE_STATE_DIR`, the same defaults; service/predictions/store.py).
"""

from __future__ import annotations

import datetime
import os
import time
from pathlib import Path

import numpy as np
import orjson
import pandas as pd

from training import data
from training.errors import DataError

MIN_ROWS = 30
LABEL_COLUMN = "label"


def since_time(text: str | None) -> float:
    """`--since`: an age (`7d`, `12h`), an ISO date or time, or None (everything)."""
    if not text:
        return 0.0
    from service.core.log_policy import parse_age  # the server's own reading of an age

    if (age := parse_age(text)) is not None:
        return time.time() - age
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise DataError(f"--since: expected an age like '7d' or an ISO date, got {text!r}") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)).timestamp()


def export(model: str, features: list[str], since: float, out: Path, log_url: str | None = None,
           state_dir: str | None = None) -> tuple[Path, int]:  # fmt: skip
    """Write the labelled rows of `model` (versions with these features) to `out`; returns (path, rows)."""
    from service.core.log_policy import parse_url  # the server's own reading of the setting
    from service.predictions.store import Store, StoreError

    url = log_url or os.environ.get("TABSERVE_PREDICTION_LOG", "sqlite://")
    kind, target = parse_url(url, Path(state_dir or os.environ.get("TABSERVE_STATE_DIR", ".tabserve")))
    if kind == "off":
        raise DataError("DATA=feedback needs the prediction log; TABSERVE_PREDICTION_LOG is off")
    if kind == "sqlite" and not Path(target).is_file():
        raise DataError(f"no prediction log at {target} (set TABSERVE_PREDICTION_LOG or TABSERVE_STATE_DIR)")
    try:
        store = Store(kind, target)
        same = {v for v, names in store.features_of(model).items() if names == features}
        records = [r for r in store.labelled(model, since) if r[0] in same]
    except StoreError as e:
        raise DataError(f"the prediction log cannot be read: {e}") from None
    rows, labels = [], []
    for _, count, blob, given in records:
        values = np.frombuffer(blob, "<f4").reshape(count, len(features))
        for row, label in zip(values, orjson.loads(given), strict=True):
            if label is not None:
                rows.append(row)
                labels.append(label)
    if len(rows) < MIN_ROWS:
        raise DataError(f"only {len(rows)} labelled rows of {model!r} in the prediction log (at least {MIN_ROWS})")
    frame = pd.DataFrame(np.asarray(rows, dtype=np.float64), columns=features)
    frame[LABEL_COLUMN] = labels
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial")
    frame.to_parquet(partial, index=False)
    partial.replace(out)  # whole or not at all
    return out, len(rows)


def mixed(exported: Path, original: str, features: list[str], out: Path) -> Path:
    """The exported rows and the champion's original dataset, in one file."""
    source = data.load(original)
    if source.features != features:
        raise DataError(f"--mix-original: {original!r} has other features than the model")
    original_rows = pd.DataFrame(source.X, columns=features).assign(**{LABEL_COLUMN: [str(v) for v in source.y]})
    frame = pd.concat([pd.read_parquet(exported), original_rows])
    frame.to_parquet(out, index=False)
    return out
