"""The models a server knows: every version in the repository, loaded and verified, or refused with a reason.

A broken version (bad hash, missing file, invalid graph) is recorded as UNAVAILABLE with its reason and
skipped; it never stops the server or the other versions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort

from bundle import repository
from bundle.integrity import BundleError, check_bundle
from bundle.manifest import Manifest
from service.errors import ModelNotFound, ModelNotReady
from service.instances import InputSpec

log = logging.getLogger("tabserve.registry")

State = Literal["READY", "UNAVAILABLE"]


def session_options() -> ort.SessionOptions:
    """One thread per session and no spinning: a multi-process server must not have idle workers burn cores."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


def providers_for(device: str) -> list[str]:
    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise BundleError(f"device 'cuda' requested but ONNX Runtime offers only {available}", "provider_unavailable")
    return ["CPUExecutionProvider"]


@dataclass
class ModelVersion:
    name: str
    version: int
    state: State
    reason: str | None = None
    reason_code: str | None = None  # a fixed code for metrics, e.g. "hash_mismatch"
    manifest: Manifest | None = None
    session: ort.InferenceSession | None = None
    provider: str | None = None
    spec: InputSpec | None = None

    def predict(self, features: np.ndarray) -> np.ndarray:
        assert self.session is not None
        return self.session.run(["probabilities"], {"features": features})[0]


def load_version(folder: Path, device: str, max_rows: int, session: bool = True) -> ModelVersion:
    """Verify (and with `session`, open) one version folder; a failure is an UNAVAILABLE entry with its reason.

    API processes load without sessions: they validate requests against the manifest and never run the model,
    which keeps ONNX Runtime (and CUDA) out of the forked HTTP processes.
    """
    name, version = folder.parent.name, int(folder.name)
    try:
        manifest = check_bundle(folder)
        providers = providers_for(device)
        onnx_session = None
        if session:
            onnx_session = ort.InferenceSession(
                str(folder / repository.MODEL_FILE), sess_options=session_options(), providers=providers
            )
            providers = onnx_session.get_providers()
    except BundleError as e:
        log.error("skipping %s/%s: %s", name, version, e)
        return ModelVersion(name, version, "UNAVAILABLE", reason=str(e), reason_code=e.reason)
    except Exception as e:  # ORT raises several types (e.g. a provider failing to initialize)
        log.error("skipping %s/%s: %s", name, version, e)
        return ModelVersion(
            name, version, "UNAVAILABLE", reason=f"{type(e).__name__}: {e}", reason_code="session_error"
        )
    spec = InputSpec(features=tuple(manifest.features), max_rows=max_rows)
    loaded = ModelVersion(
        name, version, "READY", manifest=manifest, session=onnx_session, spec=spec, provider=providers[0]
    )
    log.info("loaded %s/%s on %s", name, version, loaded.provider)
    return loaded


class Registry:
    def __init__(self, models: dict[str, dict[int, ModelVersion]], default_model: str | None = None):
        self.models = models
        self.default_model = default_model or self._pick_default()

    @classmethod
    def load(
        cls, root: Path, device: str, max_rows: int, default_model: str | None = None, sessions: bool = False
    ) -> Registry:
        models = {
            name: {
                v: load_version(repository.version_dir(root, name, v), device, max_rows, sessions)
                for v in repository.versions(root, name)
            }
            for name in repository.model_names(root)
        }
        return cls(models, default_model)

    def entries(self) -> list[ModelVersion]:
        return [entry for versions in self.models.values() for entry in versions.values()]

    def _pick_default(self) -> str | None:
        names = sorted(self.models)
        if len(names) == 1 or "iris" not in names:
            return names[0] if names else None
        return "iris"

    def get(self, name: str | None, version: int | None = None) -> ModelVersion:
        """The requested version, or the newest READY one; 404 for unknown names and versions."""
        if name is None:
            name = self.default_model
        versions = self.models.get(name or "")
        if not versions:
            raise ModelNotFound(f"model {name!r} not found; available: {sorted(self.models)}", field="model", got=name)
        if version is None:
            ready = [v for v in versions.values() if v.state == "READY"]
            if not ready:
                raise ModelNotReady(f"model {name!r} has no loadable version", field="model", got=name)
            return max(ready, key=lambda v: v.version)
        entry = versions.get(version)
        if entry is None:
            raise ModelNotFound(
                f"model {name!r} has no version {version}; versions: {sorted(versions)}", field="version", got=version
            )
        if entry.state != "READY":
            raise ModelNotReady(
                f"model {name!r} version {version} is unavailable: {entry.reason}", field="version", got=version
            )
        return entry
