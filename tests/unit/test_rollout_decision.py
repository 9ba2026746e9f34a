"""The rollout decision: the error and latency guards, the sequential test's validity under peeking (an A/A test
looked at after every batch of labels stops wrongly at most about alpha of the time, where a repeated z-test does
far more often), its power on a real difference, and p99 from merged histogram buckets."""

import math

import numpy as np

from service.rollouts.decision import ArmEvidence, Limits, always_valid_p, decide, p99_ms

LIMITS = Limits(alpha=0.05, min_labels=200, max_error_increase=0.02, max_p99_ratio=1.5)


def arm(version, requests=0, errors=0, p99=None, labelled=0, correct=0) -> ArmEvidence:
    return ArmEvidence(version, requests, errors, p99, labelled, correct)


def test_guards_roll_back_without_labels():
    champion = arm(1, requests=500, errors=1, p99=2.0)
    assert decide(champion, arm(2, requests=500, errors=40, p99=2.0), LIMITS)[0] == "rolled_back"
    assert decide(champion, arm(2, requests=500, errors=2, p99=20.0), LIMITS)[0] == "rolled_back"
    assert decide(champion, arm(2, requests=500, errors=2, p99=2.5), LIMITS) is None
    assert decide(champion, arm(2, requests=50, errors=40, p99=20.0), LIMITS) is None  # too few requests to tell


def test_accuracy_decides_only_with_enough_labels_and_significance():
    assert decide(arm(1, labelled=150, correct=15), arm(2, labelled=150, correct=149), LIMITS) is None
    decision, reason = decide(arm(1, labelled=400, correct=40), arm(2, labelled=200, correct=190), LIMITS)
    assert decision == "promoted" and "mSPRT" in reason
    assert decide(arm(1, labelled=400, correct=380), arm(2, labelled=200, correct=20), LIMITS)[0] == "rolled_back"
    assert decide(arm(1, labelled=400, correct=360), arm(2, labelled=200, correct=182), LIMITS) is None  # 90 vs 91 %


def peeking_false_positive_rates(runs=400, looks=60, batch=25, accuracy=0.8, seed=0) -> tuple[float, float]:
    """An A/A test (both arms right 80 % of the time), looked at after every batch of labels: the share of runs
    that ever stop, by the mSPRT and by a naive two-sided z-test at 0.05."""
    rng = np.random.default_rng(seed)
    stopped_sequential = stopped_naive = 0
    for _ in range(runs):
        a = rng.random((looks, batch)) < accuracy
        b = rng.random((looks, batch)) < accuracy
        na = nb = ca = cb = 0
        sequential = naive = False
        for look in range(looks):
            na, nb = na + batch, nb + batch
            ca, cb = ca + int(a[look].sum()), cb + int(b[look].sum())
            champion, challenger = arm(1, labelled=na, correct=ca), arm(2, labelled=nb, correct=cb)
            sequential |= always_valid_p(champion, challenger) <= 0.05
            pa, pb = ca / na, cb / nb
            se = math.sqrt(pa * (1 - pa) / na + pb * (1 - pb) / nb) or 1.0
            naive |= abs(pb - pa) / se > 1.96
        stopped_sequential += sequential
        stopped_naive += naive
    return stopped_sequential / runs, stopped_naive / runs


def test_the_sequential_test_stays_valid_when_looked_at_after_every_batch():
    sequential, naive = peeking_false_positive_rates()
    assert sequential <= 0.06  # at most alpha (+ Monte Carlo noise of 400 runs)
    assert naive > 0.15  # the peeking z-test "finds" a difference in many of the same runs


def test_p99_interpolates_within_the_bucket_like_histogram_quantile():
    buckets = [0.001, 0.01, 0.1]
    assert p99_ms(buckets, [0, 0, 0, 0]) is None
    assert math.isclose(p99_ms(buckets, [0, 100, 0, 0]), 1 + 9 * 0.99)  # all in (1 ms, 10 ms]
    assert math.isclose(p99_ms(buckets, [98, 1, 1, 0]), 10 + 90 * 0.0)  # rank 99 closes the second bucket
