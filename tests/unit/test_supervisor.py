"""LitServe's private machinery that service/engine/supervisor.py overrides or calls, pinned to the pinned LitServe.

Each entry is a private method tabserve overrides or relies on, and a fingerprint of its source in LitServe 0.2.19.
When LitServe changes one, its test fails here, naming it, before a subtle failure elsewhere: re-read the new
source, adapt `PipeLitServer`, and record the new fingerprint. tests/integration/test_resilience.py and
tests/integration/test_http_processes.py run these overrides for real.
"""

from __future__ import annotations

import hashlib
import inspect

import litserve as ls
import pytest
from litserve.server import _Server

from service.engine.supervisor import PipeLitServer

PINNED = {
    # overridden by PipeLitServer
    "LitServer._init_manager": "ec955dbe647ca5b4",  # queues → pipes: litapi_request_queues and _transport replaced
    "LitServer._start_worker_monitoring": "aa423155d312a88a",  # replaced: dead workers and HTTP processes replaced
    "LitServer._start_server": "509cc1cb9ae3a09a",  # replaced: one HTTP process at a time, so replacements fork alike
    "LitServer._perform_graceful_shutdown": "25cc72bc2989abad",  # wrapped: no replacement once shutdown began
    # called by PipeLitServer
    "LitServer._prepare_app_run": "4906e194d861b2e1",  # readies each HTTP process's copy of the app
    "LitServer._inference_workers_config_for_api": "3d1fb7a526ca4712",  # how many workers to wire
    "LitServer.launch_single_inference_worker": "c2d7b5b4cdf1f0e3",  # starts a replacement worker
    "_Server.run": "f5fedc73dda49d00",  # the forked HTTP process's entry point, (index, sockets)
    # the order and arguments in which LitServe calls the above
    "LitServer.run": "a53f4b3f53ea3e13",
}
OWNERS = {"LitServer": ls.LitServer, "_Server": _Server}


def fingerprint(qualified: str) -> str:
    owner, name = qualified.split(".")
    return hashlib.sha256(inspect.getsource(getattr(OWNERS[owner], name)).encode()).hexdigest()[:16]


@pytest.mark.parametrize("qualified", sorted(PINNED))
def test_litserve_private_method_is_the_one_the_supervisor_was_written_for(qualified):
    assert fingerprint(qualified) == PINNED[qualified], (
        f"LitServe changed {qualified}: re-read it, adapt service/engine/supervisor.py, then update PINNED"
    )


def test_every_private_litserve_method_the_supervisor_overrides_is_pinned():
    overridden = {
        f"LitServer.{name}" for name in vars(PipeLitServer) if name.startswith("_") and hasattr(ls.LitServer, name)
    }
    overridden -= {"LitServer.__module__", "LitServer.__doc__", "LitServer.__annotations__"}
    assert overridden <= PINNED.keys(), f"pin these overrides too: {sorted(overridden - PINNED.keys())}"


def test_no_other_module_overrides_litserve_privately():
    """The supervisor is the only subclass of LitServer in service/ (a second one would escape these pins)."""
    import service.server  # noqa: F401 - imports every module the server runs

    subclasses = {cls.__module__ for cls in ls.LitServer.__subclasses__() if cls.__module__.startswith("service.")}
    assert subclasses == {"service.engine.supervisor"}
