"""The server a typical user writes by hand: FastAPI + pydantic + ONNX Runtime, one process, no batching.

It is the yardstick of the performance bars (issue 3), so it is written plainly and not made slower on purpose:
a pydantic body, `np.asarray`, `session.run`, labels zipped into a dict per row, uvicorn without an access log.
The route is `async def`: measured here, a plain `def` route (run in the threadpool) was ~40% slower at c=16,
and the bars should be measured against the stronger of the two ways users write it.

`--probabilities-only` is the stricter baseline: the same server answering `{"probabilities": [[...], ...]}`,
the bare matrix, without labels or a dict per row.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from benchmarks.servers import load_classes, parse_args, session_options


class PredictRequest(BaseModel):
    instances: list[list[float]]


def build_app(version_dir, probabilities_only: bool = False) -> FastAPI:
    session = ort.InferenceSession(
        str(version_dir / "model.onnx"), sess_options=session_options(), providers=["CPUExecutionProvider"]
    )
    input_name = session.get_inputs()[0].name
    classes = load_classes(version_dir)
    app = FastAPI()

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.post("/predict")
    async def predict(body: PredictRequest):
        x = np.asarray(body.instances, dtype=np.float32)
        (probabilities,) = session.run(None, {input_name: x})
        if probabilities_only:
            return {"probabilities": probabilities.tolist()}
        predictions = []
        for row in probabilities.tolist():
            best = max(range(len(row)), key=row.__getitem__)
            predictions.append({"label": classes[best], "probabilities": dict(zip(classes, row, strict=True))})
        return {"predictions": predictions}

    return app


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], flags=("--probabilities-only",))
    app = build_app(args.model, args.probabilities_only)
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
