"""Request and response bodies as pydantic models: the OpenAPI document at /openapi.json is built from these.

The prediction routes are decoded by hand on the fast path (service/rest/fastpath.py) for speed; these models
describe exactly what that code accepts and returns, and tests check real responses against them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel


class PredictRequest(BaseModel):
    instances: list[list[float]] | list[dict[str, float]] = Field(
        description="Rows as lists in the model's feature order, or as objects keyed by feature name.",
        examples=[[[5.1, 3.5, 1.4, 0.2]]],
    )


class Prediction(BaseModel):
    label: str
    probabilities: dict[str, float]


class PredictResponse(BaseModel):
    model: str
    version: int
    predictions: list[Prediction]


class ExplainRequest(BaseModel):
    """A predict body, and optionally a class to explain besides the predicted one."""

    model_config = ConfigDict(populate_by_name=True)
    instances: list[list[float]] | list[dict[str, float]] = Field(
        description="Rows as lists in the model's feature order, or as objects keyed by feature name.",
        examples=[[[5.1, 3.5, 1.4, 0.2]]],
    )
    class_: str | None = Field(
        None, alias="class", description="A class label to explain as well (as `requested`); 422 names the classes."
    )


class ClassExplanation(BaseModel):
    label: str = Field(description="The class explained.")
    probability: float = Field(description="Its probability for this row.")
    baseline_probability: float = Field(description="Its probability at the baseline (the training mean).")
    attributions: dict[str, float] = Field(
        description="Per feature, its share of probability - baseline_probability (integrated gradients)."
    )
    completeness_error: float = Field(
        description="sum(attributions) - (probability - baseline_probability): the quadrature's error for this row."
    )


class RowExplanation(ClassExplanation):
    """The predicted class's explanation, and the requested class's when the body named one."""

    requested: ClassExplanation | None = None


class Baseline(BaseModel):
    kind: Literal["training_mean"] = Field(description="The training split's mean (the scaler's).")
    features: dict[str, float]


class ExplainResponse(BaseModel):
    model: str
    version: int
    method: Literal["integrated_gradients"]
    steps: int = Field(description="Gauss-Legendre points along the straight path from the baseline to the row.")
    baseline: Baseline
    explanations: list[RowExplanation]


class ErrorResponse(BaseModel):
    error: str = Field(description="What is wrong: the field, what was expected, what came.")
    reason: str | None = Field(None, description="A short stable code, also the metrics label.")
    field: str | None = None
    expected: Any = None
    got: Any = None


class VersionState(BaseModel):
    version: int
    state: Literal["READY", "UNAVAILABLE"]
    reason: str | None = None


class ModelListing(BaseModel):
    name: str
    default: bool
    versions: list[VersionState]
    served_version: int | None = Field(None, description="The version answering requests that name none.")
    policy: str = Field(description="Which versions are loaded, and a pinned default if any (policy.json).")


class RepositoryIndexEntry(BaseModel):
    """One entry of the Open Inference Protocol repository index (as Triton answers it)."""

    name: str
    version: str
    state: Literal["READY", "UNAVAILABLE"]
    reason: str = ""


class Empty(BaseModel):
    """What a successful repository load or unload answers (as Triton: an empty object)."""


class ModelsResponse(BaseModel):
    models: list[ModelListing]


class ModelDetails(BaseModel):
    name: str
    ready: bool = Field(description="This version takes requests now (KServe V1 readiness reads this field).")
    version: int
    versions: list[VersionState]
    features: list[str]
    classes: list[str]
    metrics: dict[str, float]
    provider: str
    created_at: str
    dataset: dict[str, Any]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class OipModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any] = {}


class OipServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class OipTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class OipRequestedOutput(BaseModel):
    name: Literal["probabilities", "label"]
    parameters: dict[str, Any] | None = None


class OipInferRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[OipTensor] = Field(description="One FP32 tensor 'features' of shape [N, n_features].")
    outputs: list[OipRequestedOutput] | None = None


class OipInferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str
    outputs: list[OipTensor]


class Feedback(BaseModel):
    """The true labels of one answered request, in the order of its rows."""

    model_config = ConfigDict(extra="forbid")
    request_id: str = Field(
        min_length=1, max_length=256, description="The answer's `X-Request-ID` (sent by the client or generated)."
    )
    labels: list[str | int | None] = Field(
        description="One per row of that request, in order: a class label (a number matches the class of the same "
        "text), or null to leave a row unlabelled.",
        examples=[["setosa"]],
    )


class FeedbackBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    feedback: list[Feedback] = Field(min_length=1, max_length=10_000, description="Several requests' labels at once.")


class FeedbackRequest(RootModel[Feedback | FeedbackBatch]):
    """One request's labels, or a batch of them (`{"feedback": [...]}`)."""


class FeedbackResponse(BaseModel):
    matched: int = Field(description="Labelled rows matched to their predictions (a repeated identical call: again).")


class RolloutRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    challenger: int = Field(ge=1, description="The version to try against the one answering now (the champion).")
    mode: Literal["canary", "shadow"] = Field(
        "canary",
        description="`canary`: `percent` % of the requests that name no version are answered by it; `shadow`: they "
        "also run on it after the champion's answer was sent, and only its log records and metrics see its answers.",
    )
    percent: float = Field(ge=0, le=100, description="Share of requests, 0 to 100.")
    auto: bool = Field(True, description="Promote or roll back by itself on the evidence (docs/production-loop.md).")


class ArmEvidence(BaseModel):
    version: int
    requests: int = Field(description="Answers it gave in this rollout, over every process and replica.")
    errors: int = Field(description="Of them, 5xx other than 503 (shed load).")
    p99_ms: float | None
    labelled: int = Field(description="Rows it answered during the rollout that received a label.")
    correct: int
    accuracy: float | None


class RolloutEvidence(BaseModel):
    champion: ArmEvidence
    challenger: ArmEvidence


class RolloutStatus(BaseModel):
    id: int
    model: str
    champion: int
    challenger: int
    mode: str
    percent: float
    auto: bool
    state: Literal["running", "promoted", "rolled_back", "stopped"]
    evidence: RolloutEvidence
    reason: str | None = Field(description="Why it ended.")
    started_at: float
    decided_at: float | None
