"""The one model every server is measured on (digits: 64 features, 10 classes), its request bodies, and the
in-process ONNX Runtime ceiling that the binary-tensor bar is measured against.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bundle.repository import EXPLAIN_FILE, version_dir, versions

MODEL_NAME = "digits"
ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / ".cache"


def ensure_model(repository: Path) -> Path:
    """The latest digits version in `repository`, trained (a minute or two) when there is none, or when the latest
    predates explanations (its bundle has no explain graph: the explain scenario needs one)."""
    found = versions(repository, MODEL_NAME)
    if not found or not (version_dir(repository, MODEL_NAME, found[-1]) / EXPLAIN_FILE).exists():
        print(f"training {MODEL_NAME} into {repository} (once; later runs reuse it) …", flush=True)
        subprocess.run(
            [
                sys.executable, "-m", "training", "train", "--dataset", MODEL_NAME, "--name", MODEL_NAME,
                "--repository", str(repository), "--workdir", str(CACHE / "runs" / MODEL_NAME), "--quiet",
            ],
            cwd=ROOT,
            check=True,
        )  # fmt: skip
    return version_dir(repository, MODEL_NAME, versions(repository, MODEL_NAME)[-1])


def digits_rows(n: int) -> np.ndarray:
    """`n` real rows of scikit-learn's digits (repeated if `n` exceeds the 1,797 it has), float32."""
    from sklearn.datasets import load_digits

    x = load_digits().data.astype(np.float32)
    return np.resize(x, (n, x.shape[1]))


def json_body(rows: np.ndarray) -> bytes:
    """`{"instances": [[...], ...]}`: the body of the simple JSON APIs (every server accepts it)."""
    return json.dumps({"instances": rows.tolist()}).encode()


def binary_body(rows: np.ndarray) -> tuple[bytes, int]:
    """An Open Inference Protocol request with the binary tensor extension: (body, length of its JSON header)."""
    data = np.ascontiguousarray(rows, dtype="<f4").tobytes()
    header = {
        "inputs": [
            {
                "name": "features",
                "shape": list(rows.shape),
                "datatype": "FP32",
                "parameters": {"binary_data_size": len(data)},
            }
        ],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
    }
    head = json.dumps(header).encode()
    return head + data, len(head)


def parse_binary_response(body: bytes, header_length: int) -> np.ndarray:
    """The `probabilities` tensor from a binary-extension response (to check tabserve answers the right thing)."""
    header = json.loads(body[:header_length])
    (output,) = [o for o in header["outputs"] if o["name"] == "probabilities"]
    size = output["parameters"]["binary_data_size"]
    values = struct.unpack(f"<{size // 4}f", body[header_length : header_length + size])
    return np.asarray(values, dtype=np.float32).reshape(output["shape"])


def in_process_rows_per_second(model_dir: Path, batch: int = 1000, seconds: float = 2.0) -> float:
    """Rows/s of `session.run` alone, one thread, same options as the servers: the ceiling no server can pass."""
    import onnxruntime as ort

    from benchmarks.servers import session_options

    session = ort.InferenceSession(
        str(model_dir / "model.onnx"), sess_options=session_options(), providers=["CPUExecutionProvider"]
    )
    feed = {session.get_inputs()[0].name: digits_rows(batch)}
    for _ in range(20):
        session.run(None, feed)
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        session.run(None, feed)
        calls += 1
    return calls * batch / elapsed
