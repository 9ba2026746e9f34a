"""Model control (after Triton's `--model-control-mode`): who decides what is served, and the repository API.

Every mode starts by loading every model in the repository (Triton's `--load-model=*`: a server that starts
with nothing to serve helps nobody). Then:

- `poll` (default): the repository is re-read every `poll_interval` seconds; publishing, rolling back or
  deleting a version is how models change. Load and unload requests are refused, as in Triton: two masters
  (the poller and an operator) would undo each other.
- `explicit`: nothing is re-read on its own; `POST /v2/repository/models/{name}/load` re-reads that one
  model (new versions, policy) and serves it again if it was unloaded, `.../unload` stops serving it.
- `none`: what was there at start, nothing else.

In `explicit` mode the last load or unload of each model is also written down beside the metrics files (a
folder the server owns; the record is deleted at start). An HTTP process that crashed is replaced from the main
process's view at startup, and the replacement repeats those requests before it serves (`restore`): what an
operator loaded stays loaded, and what they unloaded stays unloaded.

Load and unload take a model name only: a plain name whose folder, symlinks resolved, is directly inside the
repository. They need the management key when one is set (service/core/auth.py). Their routes, and the read-only
index behind the API key like the other reads, are service/rest/repository.py.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

from bundle import repository
from bundle.atomic import write_text_atomic
from service.core import auth, metrics
from service.core.errors import BadRequest, Forbidden, ModelNotFound, ModelNotReady, ServiceError, describe

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""A model name as the repository API accepts it: no separators, no leading dot, so no `..` and no path."""


def polling_interval(settings) -> float:
    """Seconds between re-reads of the repository: only `poll` mode polls."""
    return settings.poll_interval if settings.model_control_mode == "poll" else 0.0


def refusal(settings) -> Forbidden | None:
    """Why load and unload are refused in this mode (None in `explicit` mode, where they are the only way)."""
    if settings.model_control_mode == "poll":
        every = f"every {settings.poll_interval:g} s" if settings.poll_interval > 0 else "only at start"
        return Forbidden(
            f"model control mode is 'poll': the server reads the repository {every} and follows it, so load "
            "and unload are refused; publish, roll back or remove versions in the repository instead, or start "
            "the server with --model-control-mode explicit (TABSERVE_MODEL_CONTROL_MODE) to use this API",
            reason="model_control_disabled",
        )
    if settings.model_control_mode == "none":
        return Forbidden(
            "model control mode is 'none': the server serves what the repository held at start and nothing "
            "changes it; start it with --model-control-mode explicit (TABSERVE_MODEL_CONTROL_MODE) to load and "
            "unload through this API",
            reason="model_control_disabled",
        )
    return None


STATE_FILE = "model-control.json"


def _state_path() -> Path:
    return Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]) / STATE_FILE


def _requested() -> dict[str, str]:
    """Model name → its last load or unload request since the server started."""
    try:
        return json.loads(_state_path().read_text())
    except FileNotFoundError:
        return {}


def _remember(action: str, name: str) -> None:
    write_text_atomic(_state_path(), json.dumps({**_requested(), name: action}))


def forget_requests() -> None:
    """At startup: every model is loaded anew, whatever an earlier server was asked."""
    _state_path().unlink(missing_ok=True)


async def restore(registry, reloader) -> None:
    """In a replaced HTTP process (explicit mode): the load and unload requests its predecessor was sent, again.
    A repeated load reads the model's folder as it is now, as a new load request would."""
    requested = _requested()
    for name, action in requested.items():
        _mark(registry, action, name)
    if requested:
        await reloader.reload(set(requested))


def _mark(registry, action: str, name: str) -> None:
    """What the next re-read of `name` does with it: serve it (load) or list it as unloaded (unload)."""
    if action == "load":
        registry.unloaded.discard(name)
    else:
        registry.unloaded.add(name)


def check_name(root: Path, name: str, served: Iterable[str] = ()) -> None:
    """Refuse `name` unless it is a plain name of a model directly inside `root` (or one still `served` whose
    folder was removed: unloading it must stay possible)."""
    if not NAME.fullmatch(name):
        raise BadRequest(
            f"model name {describe(name)} is not valid: letters, digits, '.', '_', '-', at most 64, "
            "starting with a letter or digit",
            reason="invalid_model_name",
            field="name",
            expected=NAME.pattern,
            got=describe(name),
        )
    folder = Path(root) / name
    if folder.resolve().parent != Path(root).resolve():  # a symlink pointing out of the repository
        raise Forbidden(
            f"model {name!r} resolves to a folder outside the repository", reason="outside_repository", got=name
        )
    if name not in repository.model_names(root) and name not in served:
        raise ModelNotFound(f"model {name!r} is not in the repository", field="model", got=name)


async def change(action: str, name: str, headers: dict[bytes, bytes], settings, registry, reloader) -> None:
    """Carry out one load or unload request (service/rest/repository.py routes them), counted by its outcome."""
    try:
        auth.check_management(headers, settings)
        if refused := refusal(settings):
            raise refused
        check_name(registry.root, name, registry.models)
        _mark(registry, action, name)
        _remember(action, name)
        await reloader.reload({name})
        if action == "load":
            try:
                registry.get(name)
            except ModelNotReady as e:  # as Triton: a model that fails to load is the request's 400
                raise BadRequest(e.message, reason="load_failed", field="model", got=name) from None
    except ServiceError as e:
        metrics.model_control_requests_total.labels(action, str(e.status)).inc()
        raise
    metrics.model_control_requests_total.labels(action, "200").inc()
