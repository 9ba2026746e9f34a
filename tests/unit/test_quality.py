"""`make quality`'s verdict: which bars a dataset's row misses."""

import pytest

from training.quality import verdict

OURS = {"accuracy": 0.95, "seconds": 0.3, "ece_before": 0.04, "ece_after": 0.02}
THEIRS = {"accuracy": 0.95, "seconds": 0.4}


def test_a_row_meeting_every_bar_misses_none():
    assert verdict("wine", OURS, THEIRS) == []


@pytest.mark.parametrize(
    ("name", "ours", "missed"),
    [
        ("wine", {"accuracy": 0.939}, "accuracy < 0.940"),  # more than a point below scikit-learn
        ("iris", {"accuracy": 0.92}, "accuracy < 0.940"),  # a point below scikit-learn, under the floor too
        ("spiral", {"accuracy": 0.96}, "accuracy < 0.970"),  # the seed tutorials' floor binds
        ("wine", {"seconds": 0.41}, "slower than scikit-learn"),
        ("wine", {"ece_after": 0.05}, "ECE > 0.040"),  # calibration made it worse
        ("digits", {"accuracy": 0.98, "ece_after": 0.031, "ece_before": 0.05}, "ECE > 0.030"),  # the bar on digits
    ],
)
def test_each_bar_is_missed_alone(name, ours, missed):
    assert verdict(name, {**OURS, **ours}, THEIRS) == [missed]
