"""`make retrain` and `make rollback` as users run them, on a built-in dataset and on a CSV."""

import json
import shutil
import subprocess

import numpy as np
import pytest

from bundle import policy
from tests.conftest import ROOT, run_cli
from tests.serving import republish
from training import data
from training.retrain import EXIT_REJECTED


def make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


@pytest.fixture
def champion(trained, tmp_path):
    """A repository holding a copy of the session's iris bundle as iris v1 (trained for 40 epochs)."""
    folder, _, _ = trained
    repo = tmp_path / "models"
    shutil.copytree(folder.parent, repo / "iris")
    return repo


def versions(repo, name="iris"):
    return sorted(int(p.name) for p in (repo / name).iterdir() if p.name.isdigit())


def test_make_retrain_on_a_builtin_publishes_a_challenger_that_is_not_worse(champion, tmp_path):
    result = make("retrain", "MODEL=iris", f"REPOSITORY={champion}", f"ARGS=--quiet --workdir {tmp_path / 'run'}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "champion v1" in result.stdout and "gate:" in result.stdout and "pass" in result.stdout
    assert versions(champion) == [1, 2]
    comparison = json.loads((champion / "iris" / "2" / "report.json").read_text())["champion_comparison"]
    assert comparison["passed"] and comparison["champion_version"] == 1
    assert set(comparison["challenger"]["recall"]) == {"setosa", "versicolor", "virginica"}
    # Same data, same recorded configuration and seed: the challenger reproduces the champion exactly.
    assert comparison["challenger"] == comparison["champion"]
    assert run_cli("verify", str(champion / "iris" / "2")).returncode == 0


def test_a_worse_challenger_is_not_published_and_says_why(champion, tmp_path):
    args = "--quiet --max-epochs 1 --hidden 2 --lr 0.0001 --workdir " + str(tmp_path / "run")
    result = make("retrain", "MODEL=iris", f"REPOSITORY={champion}", f"ARGS={args}")
    assert f"Error {EXIT_REJECTED}" in result.stderr  # make reports the command's own exit code
    assert "not published: challenger rejected: macro F1" in result.stderr
    assert "FAIL" in result.stdout and "champion v1" in result.stdout
    assert versions(champion) == [1]
    assert [p.name for p in (champion / "iris").iterdir() if p.name.startswith(".staging")] == []


def iris_csv(path, columns=None, extra_rows=()):
    dataset = data.load("iris")  # labels are the species names already
    names = dataset.y
    columns = columns or dataset.features
    index = [dataset.features.index(c) for c in columns]
    lines = [",".join([*columns, "species"])]
    lines += [",".join([*map(str, row[index]), label]) for row, label in zip(dataset.X, names, strict=True)]
    lines += [",".join([*map(str, row), label]) for row, label in extra_rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_make_retrain_on_a_csv_and_mismatched_columns(tmp_path):
    repo, run = tmp_path / "models", tmp_path / "run"
    csv = iris_csv(tmp_path / "flowers.csv")
    trained = run_cli("train", "--data", str(csv), "--label-column", "species", "--name", "flowers", "--repository",
                      str(repo), "--workdir", str(run), "--max-epochs", "20", "--quiet")  # fmt: skip
    assert trained.returncode == 0, trained.stderr

    result = make("retrain", "MODEL=flowers", f"DATA={csv}", f"REPOSITORY={repo}", f"ARGS=--quiet --workdir {run}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert versions(repo, "flowers") == [1, 2]

    features = data.load("iris").features
    swapped = iris_csv(tmp_path / "swapped.csv", columns=[features[1], features[0], *features[2:]])
    order = run_cli("retrain", "--name", "flowers", "--data", str(swapped), "--repository", str(repo), "--quiet")
    assert order.returncode == 2 and "feature columns are in another order than flowers v2" in order.stderr
    missing = iris_csv(tmp_path / "missing.csv", columns=features[:3])
    short = run_cli("retrain", "--name", "flowers", "--data", str(missing), "--repository", str(repo), "--quiet")
    assert short.returncode == 2 and "missing ['petal width (cm)'], unexpected []" in short.stderr
    assert versions(repo, "flowers") == [1, 2]


def test_new_classes_need_an_explicit_flag(champion, tmp_path):
    rng = np.random.default_rng(0)
    giants = [(row, "giganteus") for row in rng.normal(30, 1, (60, 4))]
    csv = iris_csv(tmp_path / "more.csv", extra_rows=giants)
    refused = run_cli("retrain", "--name", "iris", "--data", str(csv), "--label-column", "species", "--repository",
                      str(champion), "--quiet")  # fmt: skip
    assert refused.returncode == 2
    assert "classes ['giganteus'] are new to iris v1" in refused.stderr and "--allow-new-classes" in refused.stderr
    accepted = run_cli("retrain", "--name", "iris", "--data", str(csv), "--label-column", "species", "--repository",
                       str(champion), "--allow-new-classes", "--workdir", str(tmp_path / "run"), "--quiet")  # fmt: skip
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    manifest = json.loads((champion / "iris" / "2" / "manifest.json").read_text())
    assert "giganteus" in manifest["classes"] and "recall giganteus" in accepted.stdout


def test_make_rollback_pins_an_earlier_version_and_never_a_broken_one(champion):
    republish(champion / "iris" / "1", champion, "iris")  # a valid v2
    shutil.copytree(champion / "iris" / "2", champion / "iris" / "3")  # v3's manifest says 2: fails verification

    back = make("rollback", "MODEL=iris", f"REPOSITORY={champion}")  # v3 is broken, so v2 serves: back to v1
    assert back.returncode == 0, back.stderr
    assert "iris: version 1 answers by default (was 2); nothing deleted" in back.stdout
    assert policy.read(champion / "iris").pinned == 1 and versions(champion) == [1, 2, 3]

    refused = make("rollback", "MODEL=iris", "VERSION=3", f"REPOSITORY={champion}")
    assert refused.returncode != 0 and "refusing to roll back to a version that fails verification" in refused.stderr
    nothing = make("rollback", "MODEL=iris", f"REPOSITORY={champion}")
    assert nothing.returncode != 0 and "no verifiable version older than 1" in nothing.stderr
    assert policy.read(champion / "iris").pinned == 1

    undone = run_cli("rollback", "--name", "iris", "--unpin", "--repository", str(champion))
    assert undone.returncode == 0 and "version 2 answers by default" in undone.stdout
    assert policy.read(champion / "iris").pinned is None
