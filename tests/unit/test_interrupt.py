"""A handled Ctrl-C ends `python -m training` with 130, wherever it landed (training/cli.py `interrupted`)."""

import signal
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# A KeyboardInterrupt that leaves a string exec(), as one does when Ctrl-C lands while `dataclasses` builds a class's
# methods (torch.onnx's exporter defines hundreds of dataclasses on its first import), then handled by the program.
PROBE = """
import sys
from training.cli import interrupted
try:
    exec("raise KeyboardInterrupt")
except KeyboardInterrupt:
    code = interrupted("interrupted; continue with: --resume") if sys.argv[1] == "reported" else 130
sys.exit(code)
"""


@pytest.mark.parametrize(("how", "returncode"), [("reported", 130), ("bare", -signal.SIGINT)])
def test_a_handled_interrupt_exits_130_not_by_sigint(tmp_path, how, returncode):
    """The bare case is CPython's own behaviour (it re-raises SIGINT at exit): what `interrupted` undoes."""
    (tmp_path / "probe.py").write_text(PROBE)
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "probe", how], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == returncode, result.stderr
    assert "Traceback" not in result.stderr
