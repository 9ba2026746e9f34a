"""`python -m service [--flags]`: every flag mirrors a `TABSERVE_*` setting; flags win over the environment."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import ValidationError

from service.settings import Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    for name, info in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        kind = {int: int, float: float, Path: Path}.get(info.annotation, str)
        help_text = (info.description or "") + f" [env TABSERVE_{name.upper()}]"
        parser.add_argument(flag, dest=name, type=kind, default=None, help=help_text)
    return parser


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
    from service.server import serve  # imports LitServe and ONNX Runtime only once the settings are valid

    serve(settings)
    return 0
