"""The trainer as users run it: `python -m training ...` in a subprocess, into temporary repositories."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from bundle.manifest import Manifest
from tests.conftest import ROOT, run_cli
from training import data


def test_train_then_verify_iris(tmp_path):
    repo = tmp_path / "models"
    result = run_cli("train", "--dataset", "iris", "--name", "flowers", "--repository", str(repo),
                     "--workdir", str(tmp_path / "run"), "--max-epochs", "30", "--quiet")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"published {repo / 'flowers' / '1'}" in result.stdout
    for name in ("model.onnx", "scaler.onnx", "label_encoder.onnx", "manifest.json", "report.json",
                 "curves.png", "confusion_matrix.png", "checkpoint.pt"):  # fmt: skip
        assert (repo / "flowers" / "1" / name).is_file(), name
    assert (repo / "flowers" / "config.pbtxt").is_file() and (repo / "flowers" / "labels.txt").is_file()
    report = json.loads((repo / "flowers" / "1" / "report.json").read_text())
    assert report["epochs_run"] == 30 and len(report["history"]) == 30
    assert set(report["test"]["per_class"]) == {"setosa", "versicolor", "virginica"}
    assert report["test"]["confusion_matrix"]["labels"] == ["setosa", "versicolor", "virginica"]
    assert (repo / "flowers" / "1" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    verified = run_cli("verify", str(repo / "flowers" / "1"))
    assert verified.returncode == 0 and "ok flowers/1" in verified.stdout

    second = run_cli("train", "--dataset", "iris", "--name", "flowers", "--repository", str(repo),
                     "--workdir", str(tmp_path / "run"), "--max-epochs", "5", "--quiet")  # fmt: skip
    assert second.returncode == 0 and (repo / "flowers" / "2").is_dir()

    (repo / "flowers" / "1" / "report.json").write_text("{}")
    tampered = run_cli("verify", str(repo / "flowers" / "1"))
    assert tampered.returncode == 1
    assert "report.json: sha256 is" in tampered.stderr and "Traceback" not in tampered.stderr


def test_csv_with_string_labels(tmp_path):
    dataset = data.load("wine")
    names = np.array(["barolo", "grignolino", "barbera"])[[int(label[-1]) for label in dataset.y]]
    lines = [",".join([*dataset.features, "cultivar"])]
    lines += [",".join([*map(repr, row.tolist()), label]) for row, label in zip(dataset.X, names, strict=True)]
    csv = tmp_path / "wine.csv"
    csv.write_text("\n".join(lines) + "\n")
    repo = tmp_path / "models"
    result = run_cli("train", "--data", str(csv), "--label-column", "cultivar", "--name", "wine-csv",
                     "--repository", str(repo), "--workdir", str(tmp_path / "run"),
                     "--max-epochs", "40", "--quiet")  # fmt: skip
    assert result.returncode == 0, result.stderr
    manifest = Manifest.read(repo / "wine-csv" / "1")
    assert manifest.classes == ["barbera", "barolo", "grignolino"]
    assert manifest.features == dataset.features and manifest.dataset.source == str(csv)
    assert manifest.metrics["accuracy"] >= 0.9
    assert run_cli("verify", str(repo / "wine-csv" / "1")).returncode == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "{csv}", "--label-column", "nope"], "error: {csv}: label column 'nope' not found"),
        (["--data", "{csv}", "--label-column", "y", "--lr", "-1"], "error: --lr: Input should be greater than 0"),
        (["--dataset", "nope"], "error: 'nope' is neither a built-in dataset"),
        (["--dataset", "iris", "--hidden", "8,0"], "hidden layer sizes must be positive"),
    ],
)
def test_bad_input_gives_one_clear_line_not_a_traceback(tmp_path, args, message):
    csv = tmp_path / "d.csv"
    csv.write_text("a,y\n1,x\n2,y\n")
    args = [a.replace("{csv}", str(csv)) for a in args]
    result = run_cli("train", "--name", "m", "--repository", str(tmp_path / "models"), *args)
    assert result.returncode == 2
    assert message.replace("{csv}", str(csv)) in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "models" / "m").exists()


def last_epoch(path):
    try:
        return torch.load(path, weights_only=True)["state"]["epoch"]
    except (FileNotFoundError, RuntimeError, EOFError):
        return 0


# Long enough (several seconds of epochs, checkpoints at most once a second) for a Ctrl-C to land mid-training.
EPOCHS = 150
COMMON = ["--dataset", "digits", "--name", "digits", "--batch-size", "8", "--max-epochs", str(EPOCHS),
          "--patience", "1000", "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run both Ctrl-C tests must end equal to: (repository, workdir)."""
    base = tmp_path_factory.mktemp("straight")
    result = run_cli("train", *COMMON, "--repository", str(base / "a"), "--workdir", str(base / "run-a"))
    assert result.returncode == 0, result.stderr
    return base / "a", base / "run-a"


def interrupt_then_resume(tmp_path, ready) -> int:
    """Start the run, Ctrl-C it once `ready(epoch of last.pt)`, check it stopped cleanly, resume it; the epoch it
    had reached."""
    workdir = tmp_path / "run-b"
    command = [sys.executable, "-m", "training", "train", *COMMON, "--repository", str(tmp_path / "b"),
               "--workdir", str(workdir)]  # fmt: skip
    interrupted = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not ready(last_epoch(workdir / "last.pt")) and time.monotonic() < deadline:
        time.sleep(0.02)
    interrupted.send_signal(signal.SIGINT)  # Ctrl-C
    _, stderr = interrupted.communicate(timeout=60)
    assert interrupted.returncode == 130, stderr  # an exit code, not a death by SIGINT (training/cli.py)
    assert "--resume" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "b" / "digits" / "1").exists()  # nothing published by an interrupted run, even mid-export
    stopped_at = last_epoch(workdir / "last.pt")
    resumed = run_cli("train", "--name", "digits", "--resume", "--workdir", str(workdir),
                      "--repository", str(tmp_path / "b"), "--quiet")  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    return stopped_at


def assert_same_run(straight, tmp_path):
    (repo_a, run_a), repo_b, run_b = straight, tmp_path / "b", tmp_path / "run-b"
    a = torch.load(repo_a / "digits" / "1" / "checkpoint.pt", weights_only=True)
    b = torch.load(repo_b / "digits" / "1" / "checkpoint.pt", weights_only=True)
    assert a["state"] == b["state"]  # same history, losses and best epoch
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    last_a, last_b = torch.load(run_a / "last.pt", weights_only=True), torch.load(run_b / "last.pt", weights_only=True)
    for key, tensor in last_a["model"].items():
        assert torch.equal(tensor, last_b["model"][key]), key
    assert Manifest.read(repo_a / "digits" / "1").metrics == Manifest.read(repo_b / "digits" / "1").metrics


def test_ctrl_c_then_resume_ends_with_the_same_weights_as_an_uninterrupted_run(straight, tmp_path):
    stopped_at = interrupt_then_resume(tmp_path, lambda epoch: epoch >= 4)  # somewhere inside a later epoch
    assert 4 <= stopped_at < EPOCHS
    assert_same_run(straight, tmp_path)


def test_ctrl_c_during_export_exits_130_and_resume_publishes_the_same_model(straight, tmp_path):
    """Every epoch done, the ONNX export running (its first import of torch.onnx defines many dataclasses: the
    Ctrl-C that CPython would otherwise turn into a death by SIGINT, training/cli.py `interrupted`)."""
    assert interrupt_then_resume(tmp_path, lambda epoch: epoch >= EPOCHS) == EPOCHS
    assert_same_run(straight, tmp_path)


def test_resume_without_a_checkpoint_says_so(tmp_path):
    result = run_cli("train", "--name", "x", "--resume", "--workdir", str(tmp_path / "nothing"))
    assert result.returncode == 2 and "no checkpoint to resume from" in result.stderr
