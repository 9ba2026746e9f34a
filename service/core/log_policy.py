"""What the prediction log keeps: where (`TABSERVE_PREDICTION_LOG`), what share of each model's requests
(`TABSERVE_PREDICTION_LOG_SAMPLE`), for how long (`TABSERVE_PREDICTION_LOG_RETENTION`), and how much may wait
in a process's buffer while the database is slow or gone (`TABSERVE_PREDICTION_LOG_BUFFER_ROWS`)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
ROWS = re.compile(r"^(\d+)rows$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_url(url: str, state_dir: Path) -> tuple[str, str]:
    """`off`, `sqlite:///PATH` (relative paths from the working directory), `sqlite://` alone (the state folder's
    predictions.db) or `postgresql://…` → (kind, target)."""
    if url == "off":
        return "off", ""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql", url
    if url.startswith("sqlite://"):
        path = url.removeprefix("sqlite://").removeprefix("/")
        return "sqlite", str(Path(path) if path else Path(state_dir) / "predictions.db")
    raise ValueError(f"expected 'off', 'sqlite:///PATH' or 'postgresql://…', got {url!r}")


def parse_age(text: str) -> float | None:
    """`30d`, `12h`, `15m`, `90s` → seconds; None for anything else."""
    m = AGE.match(text.strip())
    return float(m.group(1)) * UNITS[m.group(2)] if m else None


def parse_retention(text: str) -> tuple[float | None, int | None]:
    """`30d`, `12h`, `5000000rows`, both (`30d,5000000rows`) or `none` → (max age in seconds, max rows)."""
    max_age = max_rows = None
    for part in filter(None, (p.strip() for p in text.lower().split(","))):
        if part == "none":
            continue
        if (age := parse_age(part)) is not None:
            max_age = age
        elif m := ROWS.match(part):
            max_rows = int(m.group(1))
        else:
            raise ValueError(f"expected an age ('30d', '12h'), a row count ('5000000rows') or both, got {part!r}")
    return max_age, max_rows


def parse_sample(text: str) -> tuple[float, dict[str, float]]:
    """`1`, `0.1`, or per model `iris=1,digits=0.05,*=0.5` (`*`: the others) → (default rate, per model)."""
    default, per_model = 1.0, {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, rate = part.rpartition("=")
        try:
            value = float(rate)
        except ValueError:
            raise ValueError(f"expected a rate from 0 to 1 (or model=rate), got {part!r}") from None
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"a sampling rate is from 0 to 1, got {value} in {part!r}")
        if name in ("", "*"):
            default = value
        else:
            per_model[name] = value
    return default, per_model


@dataclass(frozen=True)
class LogPolicy:
    kind: str  # "off", "sqlite", "postgresql"
    target: str  # the SQLite file, or the PostgreSQL URL
    default_rate: float = 1.0
    rates: dict[str, float] = field(default_factory=dict)
    max_age: float | None = None
    max_rows: int | None = None
    buffer_rows: int = 200_000

    @classmethod
    def from_settings(cls, url: str, state_dir: Path, sample: str, retention: str, buffer_rows: int) -> LogPolicy:
        kind, target = parse_url(url, state_dir)
        default_rate, rates = parse_sample(sample)
        max_age, max_rows = parse_retention(retention)
        return cls(kind, target, default_rate, rates, max_age, max_rows, buffer_rows)

    def rate(self, model: str) -> float:
        return self.rates.get(model, self.default_rate)
