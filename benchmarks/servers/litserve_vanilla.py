"""Vanilla LitServe 0.2.19 with its own batching (32 requests, 5 ms timeout), as its documentation shows it.

What tabserve builds on, before any of tabserve's changes: the per-request Manager-queue IPC and the fixed batch
wait it pays are what shared/REFERENCE.md measures. Access log off, like every other server in the run.
"""

from __future__ import annotations

import litserve as ls
import numpy as np
import onnxruntime as ort

from benchmarks.servers import load_classes, parse_args, session_options


class DigitsAPI(ls.LitAPI):
    def __init__(self, version_dir) -> None:
        super().__init__(max_batch_size=32, batch_timeout=0.005)
        self.version_dir = version_dir

    def setup(self, device):
        self.session = ort.InferenceSession(
            str(self.version_dir / "model.onnx"), sess_options=session_options(), providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        self.classes = load_classes(self.version_dir)

    def decode_request(self, request):
        return request["instances"]

    def batch(self, inputs):
        # Requests carry several rows each: remember how many, to split the output again in `unbatch`.
        sizes = [len(rows) for rows in inputs]
        return np.asarray([row for rows in inputs for row in rows], dtype=np.float32), sizes

    def predict(self, x):
        features, sizes = x
        (probabilities,) = self.session.run(None, {self.input_name: features})
        return probabilities, sizes

    def unbatch(self, output):
        probabilities, sizes = output
        bounds = np.cumsum(sizes)[:-1]
        return np.split(probabilities, bounds)

    def encode_response(self, output):
        predictions = []
        for row in output.tolist():
            best = max(range(len(row)), key=row.__getitem__)
            predictions.append(
                {"label": self.classes[best], "probabilities": dict(zip(self.classes, row, strict=True))}
            )
        return {"predictions": predictions}


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    server = ls.LitServer(DigitsAPI(args.model), accelerator="cpu", workers_per_device=1)
    server.run(host=args.host, port=args.port, generate_client_file=False, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
