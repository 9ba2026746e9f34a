"""The retrain gate: macro-F1 within a tolerance, no class's recall dropping more than a bound."""

import numpy as np

from training.retrain import Gate, Scores, compare, score

CHAMPION = Scores(accuracy=0.9, macro_f1=0.90, recall={"a": 1.0, "b": 0.8})


def test_equal_or_better_passes_and_the_table_shows_both_sides():
    comparison = compare(CHAMPION, Scores(0.92, 0.91, {"a": 1.0, "b": 0.85}), 4, Gate())
    assert comparison.passed
    table = comparison.table()
    assert "champion v4" in table and "+0.0100" in table and "recall b" in table and table.endswith("pass")


def test_f1_within_tolerance_passes_beyond_fails():
    assert compare(CHAMPION, Scores(0.9, 0.895, {"a": 1.0, "b": 0.8}), 1, Gate(f1_tolerance=0.01)).passed
    failed = compare(CHAMPION, Scores(0.9, 0.88, {"a": 1.0, "b": 0.8}), 1, Gate(f1_tolerance=0.01))
    assert failed.failures == ["macro F1 0.8800 < 0.8900"]


def test_one_class_losing_recall_fails_even_when_f1_improves():
    failed = compare(CHAMPION, Scores(0.95, 0.95, {"a": 1.0, "b": 0.7}), 1, Gate(max_recall_drop=0.05))
    assert not failed.passed and failed.failures == ["recall of 'b' drops 0.1000 (0.8000 -> 0.7000)"]


def test_new_classes_are_scored_but_only_known_classes_are_gated():
    truth = ["a", "a", "b", "c"]
    probabilities = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.1, 0.9, 0.0], [0.1, 0.1, 0.8]])
    scores = score(probabilities, ["a", "b", "c"], truth, ["a", "b", "c"])
    assert scores.accuracy == 1.0 and scores.recall == {"a": 1.0, "b": 1.0, "c": 1.0}
    champion = Scores(1.0, 1.0, {"a": 1.0, "b": 1.0})
    assert compare(champion, scores, 1, Gate()).passed
