"""`python -m service [--flags]`: every flag mirrors a `TABSERVE_*` setting; flags win over the environment."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from pydantic import ValidationError

from service.core.settings import Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    for name, info in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        kind = {int: int, float: float, Path: Path}.get(info.annotation, str)
        help_text = (info.description or "") + f" [env TABSERVE_{name.upper()}]"
        parser.add_argument(flag, dest=name, type=kind, default=None, help=help_text)
    return parser


def prepare_metrics_dir(folder: Path | None) -> Path:
    """Create (or empty) the folder of per-process metric files and point prometheus-client at it.

    Must run before prometheus_client is first imported, in this process and so in every child. Emptying
    matters: files left by an earlier server would add their counts to ours.
    """
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before the metrics folder was prepared")
    folder = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="tabserve-metrics-"))
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):  # only prometheus-client's files: the folder may hold other things
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    return folder


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    given = {k: v for k, v in vars(args).items() if v is not None}
    try:
        settings = Settings(**given)
    except ValidationError as e:
        for error in e.errors():
            name = str(error["loc"][0]) if error["loc"] else "settings"
            print(
                f"error: invalid setting --{name.replace('_', '-')} / TABSERVE_{name.upper()}: {error['msg']} "
                f"(got {error.get('input')!r})",
                file=sys.stderr,
            )
        return 2
    metrics_dir = prepare_metrics_dir(settings.metrics_dir)
    from service.server import serve  # imports LitServe and ONNX Runtime only once the settings are valid

    try:
        serve(settings)
    finally:
        if settings.metrics_dir is None:  # our own temporary folder
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0
