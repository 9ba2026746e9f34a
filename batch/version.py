"""Which version a run scores with: the one the server would answer with by default, unless one is named.

The model repository's version policy (bundle/policy.py) decides, as in the server's registry: the pinned version,
else the newest selected one, skipping any that fail verification (a broken pinned version never answers).
"""

from __future__ import annotations

import sys
from pathlib import Path

from batch.errors import BatchError
from bundle import policy, repository
from bundle.errors import BundleError
from bundle.session import VerifiedModel, open_verified


def open_served(root: Path, name: str, version: int | None = None) -> VerifiedModel:
    available = repository.versions(root, name)
    if not available:
        raise BatchError(f"model {name!r} has no version in {root}; models there: {repository.model_names(root)}")
    if version is not None:
        if version not in available:
            raise BatchError(f"model {name!r} has no version {version}; versions: {available}")
        return _verified(root, name, version)
    try:
        chosen = policy.read(Path(root) / name)
    except (OSError, ValueError) as e:
        raise BatchError(f"{name}/{policy.POLICY_FILE}: unreadable: {e}") from None
    failures = []
    for candidate in chosen.serving_order(chosen.selects(available)):
        try:
            return _verified(root, name, candidate)
        except BatchError as e:
            failures.append(str(e))
            print(f"skipping: {e}", file=sys.stderr)
    raise BatchError(f"model {name!r} has no servable version ({chosen.describe()}): {'; '.join(failures)}")


def _verified(root: Path, name: str, version: int) -> VerifiedModel:
    try:
        return open_verified(repository.version_dir(root, name, version))
    except BundleError as e:
        raise BatchError(f"{name} v{version} must not be served: {e}") from None
