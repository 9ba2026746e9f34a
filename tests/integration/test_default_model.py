"""The bundle shipped in models/ is what `make run` serves on a fresh machine: it must verify."""

from bundle.manifest import Manifest
from bundle.repository import model_names, versions
from tests.conftest import ROOT, run_cli


def test_shipped_default_model_verifies():
    assert "iris" in model_names(ROOT / "models")
    for version in versions(ROOT / "models", "iris"):
        result = run_cli("verify", str(ROOT / "models" / "iris" / str(version)))
        assert result.returncode == 0, result.stderr
        assert Manifest.read(ROOT / "models" / "iris" / str(version)).probe is not None  # servers re-run it at load
