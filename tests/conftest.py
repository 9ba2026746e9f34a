"""Shared fixtures. Training and ONNX export cost seconds, so one small bundle is trained per session."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A published iris version (short training) in a temporary repository: (folder, manifest, repository)."""
    from training import pipeline
    from training.config import TrainConfig

    tmp = tmp_path_factory.mktemp("trained")
    config = TrainConfig(name="iris", dataset="iris", max_epochs=40)
    folder, manifest = pipeline.train(config, tmp / "models", tmp / "run", progress=False)
    return folder, manifest, tmp / "models"


def require_tool(name: str) -> str:
    """An external program the tests run for real (on PATH, or installed into this venv); fail, never skip."""
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        pytest.fail(f"{name} is not installed: `make setup tools` installs it")
    return path


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m training ...` as a user runs it, from the repository root (or `cwd`)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "training", *args],
        cwd=cwd or ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
