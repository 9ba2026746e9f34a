"""The model repository on disk: `<repository>/<name>/<version>/`, laid out so Triton can serve it too.

A version folder appears in one `rename` of a fully written staging folder, so a reader (a server
polling the repository, a user listing it) never sees half a version, and a crashed publish leaves only
a hidden `.staging-*` folder that the next publish removes.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bundle.atomic import make_readable, write_text_atomic
from bundle.manifest import Manifest

MODEL_FILE = "model.onnx"
EXPLAIN_FILE = "explain.onnx"
SCALER_FILE = "scaler.onnx"
LABEL_ENCODER_FILE = "label_encoder.onnx"
REPORT_FILE = "report.json"
CHECKPOINT_FILE = "checkpoint.pt"
TRITON_CONFIG_FILE = "config.pbtxt"
TRITON_LABELS_FILE = "labels.txt"
TRITON_MAX_BATCH_SIZE = 1024
STAGING_PREFIX = ".staging-"


class PublishError(RuntimeError):
    pass


def versions(repository: Path, name: str) -> list[int]:
    """Published versions of a model, oldest first. Hidden and non-numeric folders are not versions."""
    folder = Path(repository) / name
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0)


def model_names(repository: Path) -> list[str]:
    root = Path(repository)
    if not root.is_dir():
        return []
    return sorted(
        p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and versions(root, p.name)
    )


def version_dir(repository: Path, name: str, version: int) -> Path:
    return Path(repository) / name / str(version)


@contextmanager
def _publish_lock(model_folder: Path) -> Iterator[None]:
    """Serialize publishers of one model, so two concurrent runs never pick the same version number."""
    with open(model_folder / ".publish.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def publish(repository: Path, name: str, build: Callable[[Path, int], Manifest]) -> Path:
    """Publish the next version of `name`: `build(staging, version)` writes every file and returns the manifest.

    The staging folder lives inside the model folder (same filesystem), so the final `rename` is atomic.
    Nothing is ever overwritten: the new version is max(existing) + 1.
    """
    model_folder = Path(repository) / name
    model_folder.mkdir(parents=True, exist_ok=True)
    with _publish_lock(model_folder):
        for stale in model_folder.glob(f"{STAGING_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a crashed publish; we hold the lock
        version = max(versions(repository, name), default=0) + 1
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=model_folder))
        try:
            manifest = build(staging, version)
            if manifest.version != version or manifest.name != name:
                raise PublishError(f"built {manifest.name}/{manifest.version}, expected {name}/{version}")
            _fsync_tree(staging)
            make_readable(staging)
            target = model_folder / str(version)
            if target.exists():
                raise PublishError(f"{target} already exists; refusing to overwrite it")
            os.rename(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        write_triton_files(model_folder, manifest)
    return target


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())


def triton_config(manifest: Manifest) -> str:
    """Triton's config.pbtxt for this model (shared/REFERENCE.md): dims exclude the dynamic batch."""
    return (
        f'name: "{manifest.name}"\n'
        'platform: "onnxruntime_onnx"\n'
        f"max_batch_size: {TRITON_MAX_BATCH_SIZE}\n"
        "input [\n"
        f'  {{ name: "features", data_type: TYPE_FP32, dims: [ {manifest.n_features} ] }}\n'
        "]\n"
        "output [\n"
        f'  {{ name: "probabilities", data_type: TYPE_FP32, dims: [ {manifest.n_classes} ], '
        f'label_filename: "{TRITON_LABELS_FILE}" }}\n'
        "]\n"
        "dynamic_batching { max_queue_delay_microseconds: 500 }\n"
    )


def write_triton_files(model_folder: Path, manifest: Manifest) -> None:
    write_text_atomic(model_folder / TRITON_CONFIG_FILE, triton_config(manifest))
    write_text_atomic(model_folder / TRITON_LABELS_FILE, "".join(f"{label}\n" for label in manifest.classes))
