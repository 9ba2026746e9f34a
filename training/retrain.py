"""Retrain the served model (the champion) and publish the challenger only if the gate says it is not worse.

The challenger is trained with the champion's recorded configuration (flags override it) on the given data,
or the champion's own. Both are scored on the challenger's held-out test split, each through its exported
ONNX graph (the thing that would serve). The gate: macro-F1 not below the champion's minus a tolerance, and
no class's recall dropping by more than a bound. The side-by-side comparison is printed and, when the
challenger passes, written into its report; a rejected challenger leaves the repository untouched.

If the new data overlaps the champion's training data, the champion is scored partly on rows it has seen,
which favours it: the gate errs on the side of keeping what serves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field
from sklearn.metrics import accuracy_score, f1_score, recall_score

from bundle import policy, repository
from bundle.integrity import BundleError, check_bundle
from bundle.manifest import Manifest
from training import data, pipeline
from training.config import TrainConfig
from training.errors import DataError, TrainingError

EXIT_REJECTED = 3


class Gate(BaseModel):
    f1_tolerance: float = Field(0.01, ge=0, le=1, description="Macro-F1 may drop by at most this much.")
    max_recall_drop: float = Field(0.05, ge=0, le=1, description="No class's recall may drop by more than this.")
    allow_new_classes: bool = Field(False, description="Accept classes the champion does not know.")


class ChallengerRejected(TrainingError):
    exit_code = EXIT_REJECTED

    def __init__(self, comparison: Comparison):
        super().__init__("challenger rejected: " + "; ".join(comparison.failures))
        self.comparison = comparison


@dataclass
class Scores:
    accuracy: float
    macro_f1: float
    recall: dict[str, float]


@dataclass
class Comparison:
    champion_version: int
    champion: Scores
    challenger: Scores
    gate: Gate
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def table(self) -> str:
        rows = [("accuracy", self.champion.accuracy, self.challenger.accuracy),
                ("macro F1", self.champion.macro_f1, self.challenger.macro_f1)]  # fmt: skip
        for label, recall in self.challenger.recall.items():
            rows.append((f"recall {label}", self.champion.recall.get(label), recall))
        width = max(len(name) for name, _, _ in rows)
        lines = [f"{'':{width}}  {'champion v' + str(self.champion_version):>13}  {'challenger':>10}  {'change':>7}"]
        for name, old, new in rows:
            before = f"{old:.4f}" if old is not None else "new"
            change = f"{new - old:+.4f}" if old is not None else ""
            lines.append(f"{name:{width}}  {before:>13}  {new:>10.4f}  {change:>7}")
        floor = self.champion.macro_f1 - self.gate.f1_tolerance
        lines.append(
            f"gate: macro F1 >= {floor:.4f} (champion - {self.gate.f1_tolerance}), no recall drop over "
            f"{self.gate.max_recall_drop}: " + ("pass" if self.passed else "FAIL — " + "; ".join(self.failures))
        )
        return "\n".join(lines)

    def report(self) -> dict:
        return {
            "champion_comparison": {
                "champion_version": self.champion_version,
                "champion": vars(self.champion),
                "challenger": vars(self.challenger),
                "gate": self.gate.model_dump(),
                "passed": self.passed,
                "failures": self.failures,
                "table": self.table().splitlines(),
            }
        }


def served_version(repo: Path, name: str) -> tuple[Path, Manifest]:
    """The version the server answers with by default (pinned, else the newest that verifies)."""
    available = repository.versions(repo, name)
    if not available:
        raise TrainingError(f"{name!r} has no version in {repo}: train one first (python -m training train)")
    pinned = policy.read(Path(repo) / name).pinned
    candidates = ([pinned] if pinned in available else []) + sorted(available, reverse=True)
    for version in candidates:
        folder = repository.version_dir(repo, name, version)
        try:
            return folder, check_bundle(folder)
        except BundleError:
            continue
    raise TrainingError(f"no version of {name!r} in {repo} passes verification")


def check_compatible(dataset: data.Dataset, champion: Manifest, gate: Gate) -> None:
    """New data must have the champion's feature columns in the champion's order; new classes only if allowed."""
    who = f"{champion.name} v{champion.version}"
    if dataset.features != champion.features:
        missing = [f for f in champion.features if f not in dataset.features]
        extra = [f for f in dataset.features if f not in champion.features]
        if missing or extra:
            raise DataError(f"feature columns differ from {who}: missing {missing}, unexpected {extra}")
        raise DataError(f"feature columns are in another order than {who}: expected {champion.features}")
    new = sorted({str(label) for label in dataset.y} - set(champion.classes))
    if new and not gate.allow_new_classes:
        raise DataError(
            f"classes {new} are new to {who} (it knows {champion.classes}); pass --allow-new-classes to accept them"
        )


def score(probabilities: np.ndarray, classes: list[str], truth: list[str], labels: list[str]) -> Scores:
    predicted = [classes[i] for i in probabilities.argmax(axis=1)]
    recall = recall_score(truth, predicted, labels=labels, average=None, zero_division=0)
    return Scores(
        accuracy=float(accuracy_score(truth, predicted)),
        macro_f1=float(f1_score(truth, predicted, labels=labels, average="macro", zero_division=0)),
        recall={label: float(r) for label, r in zip(labels, recall, strict=True)},
    )


def compare(champion: Scores, challenger: Scores, version: int, gate: Gate) -> Comparison:
    comparison = Comparison(version, champion, challenger, gate)
    floor = champion.macro_f1 - gate.f1_tolerance
    if challenger.macro_f1 < floor - 1e-12:
        comparison.failures.append(f"macro F1 {challenger.macro_f1:.4f} < {floor:.4f}")
    for label, before in champion.recall.items():
        after = challenger.recall.get(label, 0.0)
        if before - after > gate.max_recall_drop + 1e-12:
            comparison.failures.append(f"recall of {label!r} drops {before - after:.4f} ({before:.4f} -> {after:.4f})")
    return comparison


def retrain(
    name: str,
    repo: Path,
    workdir: Path,
    gate: Gate,
    dataset_source: str | None = None,
    overrides: dict | None = None,
    progress: bool = True,
    keep_champion: bool = False,
) -> tuple[Path, Manifest, Comparison]:
    """Train a challenger and publish it if it passes `gate`; raises `ChallengerRejected` otherwise.

    `keep_champion`: the champion stays the served version (pinned before the challenger is published, so a
    server never sees the challenger answer by default), for a canary to decide (`--canary`)."""
    champion_folder, champion = served_version(repo, name)
    recorded = TrainConfig.model_validate(champion.training).model_dump()
    changes = {"dataset": dataset_source or champion.dataset.source, **(overrides or {})}
    model_changes = changes.pop("model", {})
    config = TrainConfig.model_validate({**recorded, **changes, "model": {**recorded["model"], **model_changes}})
    dataset = data.load(config.dataset, config.label_column, config.features)
    check_compatible(dataset, champion, gate)
    fitted = pipeline.fit(config, workdir, progress=progress, dataset=dataset)

    test = fitted.prepared.test
    truth = [fitted.prepared.classes[i] for i in test.y]
    labels = list(dict.fromkeys([*champion.classes, *fitted.prepared.classes]))
    champion_probabilities = pipeline.onnx_probabilities(champion_folder / repository.MODEL_FILE, test.X)
    champion_scores = score(champion_probabilities, champion.classes, truth, labels)
    champion_scores.recall = {k: v for k, v in champion_scores.recall.items() if k in champion.classes}
    comparison: Comparison | None = None

    def review(model_path: Path) -> dict:
        nonlocal comparison
        challenger = score(pipeline.onnx_probabilities(model_path, test.X), fitted.prepared.classes, truth, labels)
        comparison = compare(champion_scores, challenger, champion.version, gate)
        if not comparison.passed:
            raise ChallengerRejected(comparison)  # inside the publish: nothing is written
        return comparison.report()

    current = policy.read(Path(repo) / name)
    if keep_champion:
        policy.write(Path(repo) / name, current.model_copy(update={"pinned": champion.version}))
    folder, manifest = pipeline.publish(fitted, repo, review)
    if (
        current.pinned is not None and not keep_champion
    ):  # a rollback pinned an older version: the better one takes over
        policy.write(Path(repo) / name, current.model_copy(update={"pinned": None}))
    return folder, manifest, comparison


def rollback(name: str, repo: Path, version: int | None = None) -> tuple[int, int]:
    """Pin `version` (default: the newest verifiable one below the served one) as the default; returns
    (old, new) served versions. Nothing is deleted; `unpin` undoes it."""
    _, current = served_version(repo, name)
    if version is None:
        older = [v for v in repository.versions(repo, name) if v < current.version]
        for candidate in sorted(older, reverse=True):
            try:
                check_bundle(repository.version_dir(repo, name, candidate))
            except BundleError:
                continue
            version = candidate
            break
        else:
            raise TrainingError(f"{name!r} has no verifiable version older than {current.version} to roll back to")
    folder = repository.version_dir(repo, name, version)
    if not folder.is_dir():
        raise TrainingError(f"{name!r} has no version {version}; versions: {repository.versions(repo, name)}")
    try:
        check_bundle(folder)
    except BundleError as e:
        raise TrainingError(f"refusing to roll back to a version that fails verification: {e}") from None
    policy.write(Path(repo) / name, policy.read(Path(repo) / name).model_copy(update={"pinned": version}))
    return current.version, version


def unpin(name: str, repo: Path) -> int:
    """Serve the newest verifiable version again; returns it."""
    policy.write(Path(repo) / name, policy.read(Path(repo) / name).model_copy(update={"pinned": None}))
    return served_version(repo, name)[1].version
