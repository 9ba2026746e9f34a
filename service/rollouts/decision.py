"""When a rollout decides: guards that need no labels (errors, p99 latency), then a sequential test on live accuracy.

The test is looked at after every batch of labels, so a fixed-sample test (a z-test at 0.05) would, by peeking,
end up "significant" far more often than 5 % of the time. The mixture sequential probability ratio test (mSPRT,
Johari, Pekelis and Walsh, "Always valid inference", 2017; Robbins 1970) stays valid however often it is looked
at: with θ̂ = challenger accuracy − champion accuracy, V = p₁(1−p₁)/n₁ + p₀(1−p₀)/n₀ and a normal mixture of
effect sizes N(0, τ²),

    Λ = √(V / (V + τ²)) · exp(τ² θ̂² / (2 V (V + τ²)))

and the always-valid p-value is 1/Λ (its running minimum): under "no difference", the chance that it ever drops
below α is at most α. The rollout stops the first time it does: promoted when θ̂ > 0, rolled back when θ̂ < 0.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

MIXTURE_SD = 0.05
"""τ: the spread of accuracy differences the test is tuned to find quickly (5 points). Any τ keeps the test valid;
a τ near the real difference finds it with the fewest labels."""
MIN_REQUESTS = 100
"""Requests per arm before the error and latency guards may act."""
LATENCY_SLACK_SECONDS = 0.005
"""p99 is compared as challenger > bound × champion + this: on sub-millisecond answers a ratio alone is noise."""


@dataclass(frozen=True)
class ArmEvidence:
    version: int
    requests: int = 0
    errors: int = 0  # 5xx answers other than 503 (shed load is the server's, not the version's)
    p99_ms: float | None = None
    labelled: int = 0  # rows with a label, predicted while the rollout ran
    correct: int = 0

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def public(self) -> dict:
        return {**asdict(self), "accuracy": self.accuracy}


@dataclass(frozen=True)
class Limits:
    alpha: float
    min_labels: int
    max_error_increase: float
    max_p99_ratio: float


def always_valid_p(champion: ArmEvidence, challenger: ArmEvidence, tau: float = MIXTURE_SD) -> float:
    """1/Λ of the mSPRT for the difference of two accuracies (1.0 while either arm has no labels)."""
    if not champion.labelled or not challenger.labelled:
        return 1.0
    p0, p1 = champion.accuracy, challenger.accuracy
    variance = p0 * (1 - p0) / champion.labelled + p1 * (1 - p1) / challenger.labelled
    variance = max(variance, 0.25 / (champion.labelled + challenger.labelled) ** 2)  # both arms at 0 % or 100 %
    difference, tau2 = p1 - p0, tau * tau
    spread = variance + tau2
    log_lambda = 0.5 * math.log(variance / spread) + tau2 * difference**2 / (2 * variance * spread)
    return math.exp(-log_lambda) if log_lambda < 700 else 0.0


def decide(champion: ArmEvidence, challenger: ArmEvidence, limits: Limits) -> tuple[str, str] | None:
    """("promoted" | "rolled_back", why), or None to keep running."""
    if champion.requests >= MIN_REQUESTS and challenger.requests >= MIN_REQUESTS:
        if challenger.error_rate > champion.error_rate + limits.max_error_increase:
            return "rolled_back", (f"error rate {challenger.error_rate:.2%} against the champion's "
                                   f"{champion.error_rate:.2%} (bound +{limits.max_error_increase:.2%})")  # fmt: skip
        if challenger.p99_ms is not None and champion.p99_ms is not None:
            bound = limits.max_p99_ratio * champion.p99_ms + 1000 * LATENCY_SLACK_SECONDS
            if challenger.p99_ms > bound:
                return "rolled_back", (f"p99 latency {challenger.p99_ms:.2f} ms against the champion's "
                                       f"{champion.p99_ms:.2f} ms (bound {bound:.2f} ms)")  # fmt: skip
    if min(champion.labelled, challenger.labelled) < limits.min_labels:
        return None
    p = always_valid_p(champion, challenger)
    if p > limits.alpha:
        return None
    better = challenger.accuracy > champion.accuracy
    return ("promoted" if better else "rolled_back"), (
        f"live accuracy {challenger.accuracy:.2%} on {challenger.labelled} labelled rows against the champion's "
        f"{champion.accuracy:.2%} on {champion.labelled}: always-valid p {_p(p)} <= alpha {limits.alpha:g} (mSPRT)"
    )


def _p(p: float) -> str:
    return "< 1e-12" if p < 1e-12 else f"= {p:.2g}"


def p99_ms(buckets: list[float], counts: list[int]) -> float | None:
    """The 99th percentile from histogram bucket counts (upper bounds `buckets`, one more count for +Inf), by
    linear interpolation within the bucket, as Prometheus's histogram_quantile."""
    total = sum(counts)
    if not total:
        return None
    rank, seen, lower = 0.99 * total, 0, 0.0
    for upper, count in zip([*buckets, buckets[-1]], counts, strict=True):
        if seen + count >= rank and count:
            return 1000 * (lower + (upper - lower) * (rank - seen) / count)
        seen, lower = seen + count, upper
    return 1000 * buckets[-1]
