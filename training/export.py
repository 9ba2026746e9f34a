"""ONNX export of the classifier, the scaler and the label decoder, each checked against what it came from.

A graph that disagrees with its source is a `ParityError`, and the trainer publishes nothing.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.preprocessing import LabelEncoder, StandardScaler

from bundle import cpus
from training.errors import ParityError
from training.model import Classifier

PARITY_TOLERANCE = 1e-5
ONNX_OPSET = 20
ONNX_ML_OPSET = 3


def onnx_session(path: Path) -> ort.InferenceSession:
    """A CPU session with a thread per usable CPU: ONNX Runtime's default counts the node's cores, more than a
    container's CPU quota may run (`bundle/cpus.py`)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = cpus.usable()
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def export_classifier(classifier: Classifier, n_features: int, metadata: dict[str, str], path: Path) -> None:
    """features float32 [batch, n_features] → probabilities float32 [batch, n_classes], batch dynamic."""
    classifier = classifier.eval().cpu()
    example = torch.zeros(2, n_features, dtype=torch.float32)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            classifier,
            (example,),
            None,
            input_names=["features"],
            output_names=["probabilities"],
            dynamic_shapes=({0: "batch"},),
            external_data=False,
            opset_version=ONNX_OPSET,
            verbose=False,
        )
    model = program.model_proto
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, str(path))


def check_classifier_parity(path: Path, classifier: Classifier, X: np.ndarray) -> float:
    """Max |ORT − torch| over every probability of `X`; raises `ParityError` above the tolerance."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    got = onnx_session(path).run(["probabilities"], {"features": X})[0]
    with torch.no_grad():
        expected = classifier.eval().cpu()(torch.from_numpy(X)).numpy()
    difference = float(np.abs(got - expected).max())
    if not difference <= PARITY_TOLERANCE:
        raise ParityError(f"{path.name}: ONNX Runtime and torch differ by {difference:.2e} > {PARITY_TOLERANCE}")
    return difference


def export_scaler(scaler: StandardScaler, n_features: int, path: Path, X: np.ndarray) -> None:
    """The fitted StandardScaler alone (features → standardized), verified on `X`."""
    model = convert_sklearn(
        scaler,
        name="scaler",
        initial_types=[("features", FloatTensorType([None, n_features]))],
        final_types=[("standardized", FloatTensorType([None, n_features]))],
        target_opset={"": ONNX_OPSET, "ai.onnx.ml": ONNX_ML_OPSET},
    )
    onnx.save_model(model, str(path))
    X = np.ascontiguousarray(X, dtype=np.float32)
    got = onnx_session(path).run(None, {"features": X})[0]
    if not np.allclose(got, scaler.transform(X), rtol=1e-5, atol=1e-5):
        raise ParityError(f"{path.name}: does not match the fitted StandardScaler")


def export_label_decoder(encoder: LabelEncoder, classes: list[str], path: Path) -> None:
    """class index int64 [batch] → label string [batch]: the inverse skl2onnx cannot export.

    Built from ONNX-ML's LabelEncoder operator; an index outside the classes decodes to "".
    """
    node = helper.make_node(
        "LabelEncoder",
        ["index"],
        ["label"],
        domain="ai.onnx.ml",
        keys_int64s=list(range(len(classes))),
        values_strings=classes,
        default_string="",
    )
    graph = helper.make_graph(
        [node],
        "label_decoder",
        [helper.make_tensor_value_info("index", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("label", TensorProto.STRING, ["batch"])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET), helper.make_opsetid("ai.onnx.ml", ONNX_ML_OPSET)]
    )
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, str(path))
    indices = np.arange(len(classes), dtype=np.int64)
    decoded = [str(label) for label in onnx_session(path).run(None, {"index": indices})[0]]
    expected = [str(label) for label in encoder.inverse_transform(indices)]
    if decoded != expected:
        raise ParityError(f"{path.name}: decodes {decoded}, the fitted encoder gives {expected}")
