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

from bundle import policy, repository
from bundle.integrity import BundleError, check_bundle
from bundle.manifest import Manifest
from bundle.session import open_explainer, open_model, providers_for
from service.codecs import explain
from service.codecs.spec import InputSpec
from service.core.errors import ModelNotFound, ModelNotReady

log = logging.getLogger("tabserve.registry")

State = Literal["READY", "UNAVAILABLE"]


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
    explainer: ort.InferenceSession | None = None  # explain.onnx, for versions published with one

    def predict(self, features: np.ndarray) -> np.ndarray:
        assert self.session is not None
        return self.session.run(["probabilities"], {"features": features})[0]

    def explain(self, packed: np.ndarray) -> np.ndarray:
        """Rows packed by `explain.packed_rows` → per row: class index, probability, baseline's, attributions."""
        explain.require_explanation(self.name, self.version, self.manifest)
        return explain.run_packed(self.explainer, packed)


def load_version(folder: Path, device: str, max_rows: int, session: bool = True) -> ModelVersion:
    """Verify (and with `session`, open) one version folder; a failure is an UNAVAILABLE entry with its reason.

    API processes load without sessions: they validate requests against the manifest and never run the model,
    which keeps ONNX Runtime (and CUDA) out of the forked HTTP processes.
    """
    name, version = folder.parent.name, int(folder.name)
    try:
        manifest = check_bundle(folder)
        providers = providers_for(device)
        onnx_session = explainer = None
        if session:
            onnx_session = open_model(folder, manifest, providers)  # probed on the provider that will serve
            providers = onnx_session.get_providers()
            explainer = open_explainer(folder, manifest, providers)
    except BundleError as e:
        log.error("skipping %s/%s: %s", name, version, e)
        return ModelVersion(name, version, "UNAVAILABLE", reason=str(e), reason_code=e.reason)
    except Exception as e:  # ORT raises several types (e.g. a provider failing to initialize)
        log.error("skipping %s/%s: %s", name, version, e)
        return ModelVersion(
            name, version, "UNAVAILABLE", reason=f"{type(e).__name__}: {e}", reason_code="session_error"
        )
    spec = InputSpec(features=tuple(manifest.features), max_rows=max_rows, classes=tuple(manifest.classes))
    loaded = ModelVersion(
        name, version, "READY", manifest=manifest, session=onnx_session, spec=spec, provider=providers[0],
        explainer=explainer,
    )  # fmt: skip
    log.info("loaded %s/%s on %s", name, version, loaded.provider)
    return loaded


def stamp(folder: Path) -> tuple:
    """What a version folder looks like on disk (names, sizes, mtimes): a change means verify it again."""
    try:
        return tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()))
    except OSError:
        return ()


class Registry:
    """Every version of every model in the repository, as this process sees it.

    `refresh` re-reads the repository: versions that appeared (or changed on disk) are verified and loaded,
    unchanged ones are kept as they are (no re-verification, no new session), vanished ones are dropped, and
    each model's `policy.json` decides which versions are loaded and which answers by default. The new state
    is swapped in at once, so a request sees the old registry or the new one, never a mix.
    """

    def __init__(
        self, root: Path, device: str, max_rows: int, default_model: str | None = None, sessions: bool = False
    ):
        self.root, self.device, self.max_rows, self.sessions = Path(root), device, max_rows, sessions
        self.requested_default = default_model
        self.models: dict[str, dict[int, ModelVersion]] = {}
        self.policies: dict[str, policy.VersionPolicy] = {}
        self.stamps: dict[tuple[str, int], tuple] = {}
        self.unloaded: set[str] = set()  # models unloaded through the repository API (until loaded again)
        self.default_model: str | None = None

    @classmethod
    def load(
        cls, root: Path, device: str, max_rows: int, default_model: str | None = None, sessions: bool = False
    ) -> Registry:
        registry = cls(root, device, max_rows, default_model, sessions)
        registry.refresh()
        return registry

    def refresh(self, names: set[str] | None = None) -> list[ModelVersion]:
        """Bring the registry up to date with the repository; returns the versions that newly failed to load.

        With `names`, only those models are re-read and every other one stays exactly as it is (explicit model
        control: loading one model must not pick up new versions of the others).
        """
        keep = set() if names is None else set(self.models) - names
        models = {name: self.models[name] for name in keep}
        policies = {name: self.policies[name] for name in keep}
        stamps = {key: value for key, value in self.stamps.items() if key[0] in keep}
        failures = []
        for name in repository.model_names(self.root):
            if names is not None and name not in names:
                continue
            policies[name] = self._policy(name)
            entries = {}
            available = repository.versions(self.root, name)
            selected = policies[name].selects(available)
            for version in available:
                folder = repository.version_dir(self.root, name, version)
                if name in self.unloaded:
                    entries[version] = ModelVersion(
                        name, version, "UNAVAILABLE", "unloaded through the repository API", "unloaded"
                    )
                    continue
                if version not in selected:
                    reason = f"not selected by the version policy ({policies[name].describe()})"
                    entries[version] = ModelVersion(name, version, "UNAVAILABLE", reason, "policy")
                    continue
                stamps[name, version] = now = stamp(folder)
                known = self.models.get(name, {}).get(version)
                if (
                    known is not None
                    and known.reason_code not in ("policy", "unloaded")
                    and self.stamps.get((name, version)) == now
                ):
                    entries[version] = known
                    continue
                entries[version] = load_version(folder, self.device, self.max_rows, self.sessions)
                if entries[version].state != "READY":
                    failures.append(entries[version])
            models[name] = entries
        self.models, self.policies, self.stamps = models, policies, stamps
        self.default_model = self.requested_default or self._pick_default()
        return failures

    def ensure(self, name: str, version: int) -> ModelVersion:
        """This version, loading it now if this process has not (a worker asked for a version it never saw)."""
        entry = self.models.get(name, {}).get(version)
        if entry is not None and entry.state == "READY":
            return entry
        folder = repository.version_dir(self.root, name, version)
        if not folder.is_dir():
            return self.get(name, version)  # the usual 404 / 503
        entry = load_version(folder, self.device, self.max_rows, self.sessions)
        self.models = {**self.models, name: {**self.models.get(name, {}), version: entry}}
        self.stamps[name, version] = stamp(folder)
        return self.get(name, version)

    def _policy(self, name: str) -> policy.VersionPolicy:
        try:
            return policy.read(self.root / name)
        except (OSError, ValueError) as e:  # a bad policy file must not take the model down: keep the last good one
            log.error("%s: unreadable %s, keeping the previous policy: %s", name, policy.POLICY_FILE, e)
            return self.policies.get(name, policy.VersionPolicy())

    def entries(self) -> list[ModelVersion]:
        return [entry for versions in self.models.values() for entry in versions.values()]

    def _pick_default(self) -> str | None:
        names = sorted(self.models)
        if len(names) == 1 or "iris" not in names:
            return names[0] if names else None
        return "iris"

    def get(self, name: str | None, version: int | None = None) -> ModelVersion:
        """The requested version, or the default one (pinned, else newest READY); 404 for unknown names and versions."""
        if name is None:
            name = self.default_model
        versions = self.models.get(name or "")
        if not versions:
            raise ModelNotFound(f"model {name!r} not found; available: {sorted(self.models)}", field="model", got=name)
        if version is None:
            return self._default_version(name, versions)
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

    def _default_version(self, name: str, versions: dict[int, ModelVersion]) -> ModelVersion:
        for version in self.policies[name].serving_order(sorted(versions)):  # a broken pinned version never answers
            if versions[version].state == "READY":
                return versions[version]
        reasons = sorted({v.reason or "" for v in versions.values()})
        raise ModelNotReady(f"model {name!r} has no loadable version: {'; '.join(reasons)}", field="model", got=name)
