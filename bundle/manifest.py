"""The manifest: the one contract between training (which writes it) and serving (which reads it).

Every field a server needs to load, validate and explain a model version lives here, so serving never
has to open the checkpoint (and never needs torch). Both halves read and write it only through
`Manifest`, which makes a drifting schema a validation error instead of a silent misread.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bundle.atomic import write_text_atomic

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
"""Model names become folder names and URL segments (and Triton model names), so keep them plain."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Strict):
    """One graph input or output, in Open Inference Protocol terms (`-1` marks the dynamic batch)."""

    name: str
    datatype: Literal["FP32", "INT64", "BYTES"]
    shape: list[int]


class ScalerParams(_Strict):
    """StandardScaler fitted on the training split; serving uses it for drift signals (z-scores)."""

    mean: list[float]
    scale: list[float]


class Probe(_Strict):
    """A few test rows and the probabilities the exported graph gave for them at training time.

    Loaders run them again (on the execution provider they will serve with) before a version takes traffic.
    """

    inputs: list[list[float]]
    probabilities: list[list[float]]


class Explanation(_Strict):
    """The explanation graph (`explain.onnx`): integrated gradients from the training mean, and how well its
    quadrature did on the held-out rows at training time. Absent in bundles published before explanations."""

    method: Literal["integrated_gradients"] = "integrated_gradients"
    baseline: Literal["training_mean"] = Field("training_mean", description="The scaler's mean (`scaler.mean`).")
    rule: Literal["gauss_legendre"] = "gauss_legendre"
    steps: int = Field(ge=1, description="Quadrature points along the path from the baseline to the row.")
    completeness_max_error: float = Field(
        description="Max |sum of attributions - (p(x) - p(baseline))| over the validation and test rows."
    )
    convergence_max_change: float = Field(description="Max change of an attribution when the steps double.")
    probe_inputs: list[list[float]] = Field(description="A few test rows (the parity probe's).")
    probe_attributions: list[list[float]] = Field(description="Their attributions for the predicted class.")


class Calibration(_Strict):
    """Temperature scaling folded into model.onnx: probabilities = softmax(logits / temperature).

    Informational for serving (the graph already applies it); absent in bundles from before calibration
    and in those trained with `--no-calibrate`.
    """

    method: Literal["temperature"] = "temperature"
    temperature: float = Field(gt=0, description="1.0 when the fit did not help on the validation split.")


class DatasetInfo(_Strict):
    source: str = Field(description="Built-in dataset name or the data file's path as given.")
    fingerprint: str = Field(description="sha256 over feature names, values and labels of all rows.")
    rows: int
    split: dict[str, int] = Field(description="Rows per split: train, val, test.")


class Manifest(_Strict):
    schema_version: Literal[1] = SCHEMA_VERSION
    name: str = Field(pattern=MODEL_NAME_PATTERN)
    version: int = Field(ge=1)
    created_at: datetime
    features: list[str] = Field(min_length=1)
    classes: list[str] = Field(min_length=2)
    class_prior: dict[str, float] = Field(description="Share of each class in the training split.")
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    scaler: ScalerParams
    probe: Probe | None = Field(None, description="Parity probe; absent in bundles from before it existed.")
    explanation: Explanation | None = Field(None, description="Absent in bundles from before explanations.")
    metrics: dict[str, float] = Field(description="Test-split metrics: accuracy, log_loss, macro_f1, ece, ...")
    calibration: Calibration | None = Field(None, description="Absent: not calibrated (T = 1).")
    training: dict[str, Any] = Field(description="The training configuration that produced the model.")
    dataset: DatasetInfo
    files: dict[str, str] = Field(description="sha256 of every other file in the version folder.")
    libraries: dict[str, str]

    @field_validator("features", "classes")
    @classmethod
    def _unique(cls, values: list[str]) -> list[str]:
        duplicates = sorted({v for v in values if values.count(v) > 1})
        if duplicates:
            raise ValueError(f"duplicate entries: {duplicates}")
        if any("\n" in v or "\r" in v for v in values):
            raise ValueError("names and labels cannot contain line breaks (labels.txt has one per line)")
        return values

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        n_features, n_classes = len(self.features), len(self.classes)
        if len(self.scaler.mean) != n_features or len(self.scaler.scale) != n_features:
            raise ValueError(f"scaler has {len(self.scaler.mean)} means for {n_features} features")
        signature = [(t.name, t.shape) for t in (*self.inputs, *self.outputs)]
        if signature != [("features", [-1, n_features]), ("probabilities", [-1, n_classes])]:
            raise ValueError(f"inputs/outputs {signature} do not match {n_features} features and {n_classes} classes")
        if set(self.class_prior) != set(self.classes):
            raise ValueError("class_prior must name exactly the classes")
        if MANIFEST_FILE in self.files:
            raise ValueError("the manifest cannot hash itself")
        return self

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def write(self, folder: Path) -> Path:
        path = Path(folder) / MANIFEST_FILE
        write_text_atomic(path, self.model_dump_json(indent=2) + "\n")
        return path

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        """Read `folder/manifest.json`; raises `ValueError` (pydantic's) naming the bad field."""
        text = (Path(folder) / MANIFEST_FILE).read_text()
        return cls.model_validate(json.loads(text))
