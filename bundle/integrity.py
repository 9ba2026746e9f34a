"""Check a published version without torch: manifest, file hashes, and the ONNX graphs it promises.

Training's `verify` adds a torch parity check on top; the server runs exactly this before it loads a
version, so a corrupted or hand-edited bundle is refused with a reason instead of served.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from pydantic import ValidationError

from bundle.atomic import sha256_file
from bundle.errors import BundleError
from bundle.graph_safety import check_graph_safety
from bundle.manifest import MANIFEST_FILE, Manifest
from bundle.repository import EXPLAIN_FILE, LABEL_ENCODER_FILE, MODEL_FILE, SCALER_FILE

REQUIRED_FILES = (MODEL_FILE, SCALER_FILE, LABEL_ENCODER_FILE)
METADATA_KEYS = ("name", "version", "features", "labels")


def onnx_metadata(name: str, version: int, features: list[str], classes: list[str]) -> dict[str, str]:
    """What `model.onnx` carries about itself, so the graph alone still says what it predicts."""
    return {"name": name, "version": str(version), "features": json.dumps(features), "labels": json.dumps(classes)}


def read_manifest(folder: Path) -> Manifest:
    folder = Path(folder)
    if not (folder / MANIFEST_FILE).is_file():
        raise BundleError(f"{folder}: {MANIFEST_FILE} is missing", "manifest_missing")
    try:
        manifest = Manifest.read(folder)
    except (ValidationError, ValueError) as e:
        raise BundleError(f"{folder / MANIFEST_FILE}: invalid: {e}", "manifest_invalid") from None
    if folder.name != str(manifest.version) or folder.parent.name != manifest.name:
        raise BundleError(
            f"{folder}: manifest says {manifest.name}/{manifest.version}, folder is {folder.parent.name}/{folder.name}",
            "manifest_invalid",
        )
    return manifest


def check_hashes(folder: Path, manifest: Manifest) -> None:
    for required in graph_files(manifest):
        if required not in manifest.files:
            raise BundleError(f"{folder}: manifest lists no {required}", "manifest_invalid")
    for name, expected in manifest.files.items():
        path = Path(folder) / name
        if not path.is_file():
            raise BundleError(f"{path}: missing", "file_missing")
        actual = sha256_file(path)
        if actual != expected:
            raise BundleError(f"{path}: sha256 is {actual[:12]}…, manifest says {expected[:12]}…", "hash_mismatch")


def open_session(path: Path, options: ort.SessionOptions | None = None, providers: list[str] | None = None):
    """`path` in ONNX Runtime, or `BundleError`. Without `options`, on one intra-op thread: the checks run a few
    probe rows, and ORT's default is a thread per core of the node, which in a container may be far more than its
    CPU quota."""
    if options is None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers or ["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own exception types for every kind of bad graph
        raise BundleError(f"{path}: not a loadable ONNX model: {e}", "onnx_invalid") from None


def check_model_graph(folder: Path, manifest: Manifest, session: ort.InferenceSession) -> None:
    """The graph's inputs, outputs and metadata must be what the manifest promises."""
    path = Path(folder) / MODEL_FILE
    got_in = [(i.name, i.type, i.shape[1:]) for i in session.get_inputs()]
    want_in = [("features", "tensor(float)", [manifest.n_features])]
    got_out = [(o.name, o.type, o.shape[1:]) for o in session.get_outputs()]
    want_out = [("probabilities", "tensor(float)", [manifest.n_classes])]
    if got_in != want_in or got_out != want_out:
        raise BundleError(
            f"{path}: graph signature {got_in} -> {got_out}, expected {want_in} -> {want_out}", "graph_mismatch"
        )
    metadata = session.get_modelmeta().custom_metadata_map
    expected = onnx_metadata(manifest.name, manifest.version, manifest.features, manifest.classes)
    wrong = [key for key in METADATA_KEYS if metadata.get(key) != expected[key]]
    if wrong:
        raise BundleError(f"{path}: metadata {wrong} disagree with the manifest", "graph_mismatch")


PROBE_TOLERANCE = 1e-4
"""Max abs difference in probabilities: loose enough for another execution provider (CUDA), tight enough to
catch a wrong graph or a broken runtime."""


def check_probe(session: ort.InferenceSession, manifest: Manifest, path: Path) -> None:
    """The graph, run by `session`, must still give the probabilities recorded at training time."""
    if manifest.probe is None:
        return
    inputs = np.asarray(manifest.probe.inputs, dtype=np.float32)
    got = session.run(["probabilities"], {"features": inputs})[0]
    difference = float(np.abs(got - np.asarray(manifest.probe.probabilities, dtype=np.float32)).max())
    if not difference <= PROBE_TOLERANCE:
        raise BundleError(
            f"{path}: parity probe differs from training by {difference:.2e} (tolerance {PROBE_TOLERANCE})",
            "parity_mismatch",
        )


EXPLAIN_INPUTS = [("features", "tensor(float)"), ("target", "tensor(int64)")]
EXPLAIN_OUTPUTS = ["probabilities", "class_index", "baseline_probability", "attributions"]


def check_explainer(session: ort.InferenceSession, manifest: Manifest, path: Path) -> None:
    """`explain.onnx` must have the explanation signature and still give the attributions recorded at training."""
    got_in = [(i.name, i.type) for i in session.get_inputs()]
    got_out = [o.name for o in session.get_outputs()]
    if got_in != EXPLAIN_INPUTS or got_out != EXPLAIN_OUTPUTS:
        raise BundleError(
            f"{path}: graph signature {got_in} -> {got_out}, expected {EXPLAIN_INPUTS} -> {EXPLAIN_OUTPUTS}",
            "graph_mismatch",
        )
    inputs = np.asarray(manifest.explanation.probe_inputs, dtype=np.float32)
    target = np.full(len(inputs), -1, dtype=np.int64)
    got = session.run(["attributions"], {"features": inputs, "target": target})[0]
    difference = float(np.abs(got - np.asarray(manifest.explanation.probe_attributions, dtype=np.float32)).max())
    if not difference <= PROBE_TOLERANCE:
        raise BundleError(
            f"{path}: explanation probe differs from training by {difference:.2e} (tolerance {PROBE_TOLERANCE})",
            "parity_mismatch",
        )


def graph_files(manifest: Manifest) -> tuple[str, ...]:
    """The ONNX graphs a version has: the required three, and the explanation graph when it was published."""
    return (*REQUIRED_FILES, EXPLAIN_FILE) if manifest.explanation is not None else REQUIRED_FILES


def check_label_encoder(folder: Path, manifest: Manifest) -> None:
    """`label_encoder.onnx` must decode every class index to the manifest's label."""
    path = Path(folder) / LABEL_ENCODER_FILE
    session = open_session(path)
    indices = np.arange(manifest.n_classes, dtype=np.int64)
    decoded = [str(label) for label in session.run(None, {session.get_inputs()[0].name: indices})[0]]
    if decoded != manifest.classes:
        raise BundleError(f"{path}: decodes {decoded}, manifest classes are {manifest.classes}", "graph_mismatch")


def check_scaler(folder: Path, manifest: Manifest) -> None:
    """`scaler.onnx` must standardize with the manifest's mean and scale."""
    path = Path(folder) / SCALER_FILE
    session = open_session(path)
    mean = np.asarray(manifest.scaler.mean, dtype=np.float32)
    scale = np.asarray(manifest.scaler.scale, dtype=np.float32)
    probe = np.stack([mean, mean + scale, mean - 2 * scale]).astype(np.float32)
    got = session.run(None, {session.get_inputs()[0].name: probe})[0]
    expected = np.array([[0.0], [1.0], [-2.0]], dtype=np.float32) * np.ones((1, manifest.n_features), np.float32)
    if not np.allclose(got, expected, atol=1e-4):
        raise BundleError(f"{path}: does not standardize with the manifest's mean and scale", "graph_mismatch")


def check_bundle(folder: Path) -> Manifest:
    """Every check a server needs before serving `folder`; returns its manifest or raises `BundleError`."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    check_hashes(folder, manifest)
    for name in graph_files(manifest):  # before ONNX Runtime opens any of them
        check_graph_safety(folder / name)
    session = open_session(folder / MODEL_FILE)
    check_model_graph(folder, manifest, session)
    check_probe(session, manifest, folder / MODEL_FILE)
    check_scaler(folder, manifest)
    check_label_encoder(folder, manifest)
    if manifest.explanation is not None:
        check_explainer(open_session(folder / EXPLAIN_FILE), manifest, folder / EXPLAIN_FILE)
    return manifest
