"""What the server says about itself and its models, the same over every protocol: server metadata (name,
version, extensions), a model's Open Inference Protocol metadata, and the simple API's model details."""

from __future__ import annotations

from service.core import schemas
from service.core.errors import ServiceError
from service.dataplane.gateway import Gateway
from service.models.registry import ModelVersion

SERVER_NAME = "tabserve"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ["binary_tensor_data", "model_repository"]


def server_metadata() -> schemas.OipServerMetadata:
    return schemas.OipServerMetadata(name=SERVER_NAME, version=SERVER_VERSION, extensions=EXTENSIONS)


def oip_metadata(gateway: Gateway, model: ModelVersion) -> schemas.OipModelMetadata:
    ready = [str(v.version) for v in gateway.registry.models[model.name].values() if v.state == "READY"]
    return schemas.OipModelMetadata(
        name=model.name,
        versions=ready,
        platform="onnxruntime_onnx",
        inputs=[schemas.TensorMetadata(name="features", datatype="FP32", shape=[-1, model.manifest.n_features])],
        outputs=[
            schemas.TensorMetadata(name="probabilities", datatype="FP32", shape=[-1, model.manifest.n_classes]),
            schemas.TensorMetadata(name="label", datatype="BYTES", shape=[-1]),
        ],
        parameters={"version": str(model.version), "provider": model.provider, "labels": model.manifest.classes},
    )


def states(gateway: Gateway, name: str) -> list[schemas.VersionState]:
    return [
        schemas.VersionState(version=v.version, state=v.state, reason=v.reason)
        for v in sorted(gateway.registry.models.get(name, {}).values(), key=lambda v: v.version)
    ]


def details(gateway: Gateway, model: ModelVersion) -> schemas.ModelDetails:
    m = model.manifest
    return schemas.ModelDetails(
        name=model.name,
        ready=gateway.ready(),
        version=model.version,
        versions=states(gateway, model.name),
        features=m.features,
        classes=m.classes,
        metrics=m.metrics,
        provider=model.provider,
        created_at=m.created_at.isoformat(),
        dataset=m.dataset.model_dump(),
    )


def listing(gateway: Gateway) -> schemas.ModelsResponse:
    """Every model and version in the repository, with the reason a version could not be loaded."""
    registry = gateway.registry
    return schemas.ModelsResponse(
        models=[
            schemas.ModelListing(
                name=name,
                default=name == registry.default_model,
                versions=states(gateway, name),
                served_version=served_version(gateway, name),
                policy=registry.policies[name].describe(),
            )
            for name in sorted(registry.models)
        ]
    )


def served_version(gateway: Gateway, name: str) -> int | None:
    try:
        return gateway.registry.get(name).version
    except ServiceError:
        return None
