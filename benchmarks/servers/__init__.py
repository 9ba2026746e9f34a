"""The comparison servers, each runnable as `python -m benchmarks.servers.<name> --model <version dir> --port P`.

They are written the way a user would write them, not tuned: they are the baselines tabserve must beat.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def parse_args(description: str, needs_model: bool = True, flags: tuple[str, ...] = ()) -> argparse.Namespace:
    """The command line every comparison server shares, so the harness starts them all the same way (`flags`: a
    server's own on/off switches)."""
    parser = argparse.ArgumentParser(description=description)
    for flag in flags:
        parser.add_argument(flag, action="store_true")
    parser.add_argument("--model", type=Path, required=needs_model, help="a version folder: <repo>/<name>/<v>")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    return parser.parse_args()


def load_classes(version_dir: Path) -> list[str]:
    """Labels in output order, from the version's manifest (what a user would read, without our `bundle` code)."""
    return [str(c) for c in json.loads((version_dir / "manifest.json").read_text())["classes"]]


def session_options():
    """One intra-op and one inter-op thread: the setting every server in the benchmark runs ONNX Runtime with."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return options
