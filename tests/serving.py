"""Start a real `python -m service` on 127.0.0.1 for tests, and stop it leaving nothing behind."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import onnx

from bundle import repository
from bundle.atomic import sha256_file
from bundle.integrity import onnx_metadata
from bundle.manifest import Manifest
from tests.conftest import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def republish(
    source: Path,
    repo: Path,
    name: str,
    corrupt: bool = False,
    edit: Callable[[Path], None] | None = None,
    before_explanations: bool = False,
) -> Path:
    """Publish a copy of an existing bundle as the next version of `name`: metadata and hashes rewritten.

    With `corrupt`, model.onnx is damaged after hashing, inside the atomic publish: the version appears
    broken from its first moment, as a half-copied or tampered upload would be. `edit(folder)` changes the
    files before they are hashed: a version whose hashes match what a hostile publisher made. With
    `before_explanations`, the version looks as bundles did before explanations existed (no explain.onnx).
    """
    template = json.loads(Manifest.read(source).model_dump_json())
    if before_explanations:
        template.pop("explanation", None)

    def build(staging: Path, version: int) -> Manifest:
        for path in source.iterdir():
            if path.name != "manifest.json" and not (before_explanations and path.name == repository.EXPLAIN_FILE):
                shutil.copy(path, staging / path.name)
        model = onnx.load(staging / repository.MODEL_FILE)
        onnx.helper.set_model_props(model, onnx_metadata(name, version, template["features"], template["classes"]))
        onnx.save(model, staging / repository.MODEL_FILE)
        if edit is not None:
            edit(staging)
        files = {p.name: sha256_file(p) for p in staging.iterdir()}
        manifest = Manifest.model_validate({**template, "name": name, "version": version, "files": files})
        manifest.write(staging)
        if corrupt:
            (staging / repository.MODEL_FILE).write_bytes(b"not an onnx graph")
        return manifest

    return repository.publish(repo, name, build)


class Server:
    def __init__(self, repo: Path, *flags: str, log_level: str = "info", env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Never the default 8001: gRPC binds with SO_REUSEPORT, so servers of parallel test runs would share it.
        self.grpc_port = 0 if "--grpc-port" in flags else free_port()
        self.grpc_address = f"127.0.0.1:{self.grpc_port}"
        flags = flags if "--grpc-port" in flags else (*flags, "--grpc-port", str(self.grpc_port))
        self.log = Path(os.environ.get("TMPDIR", "/tmp")) / f"tabserve-test-{self.port}.log"
        command = [sys.executable, "-m", "service", "--repository", str(repo), "--port", str(self.port),
                   "--log-level", log_level, *flags]  # fmt: skip
        # Each server its own state folder (the SQLite prediction log), unless the test names one.
        env = env or {}
        self.state_dir = Path(env.get("TABSERVE_STATE_DIR") or tempfile.mkdtemp(prefix=f"tabserve-state-{self.port}-"))
        env = {**os.environ, "TABSERVE_STATE_DIR": str(self.state_dir), **env}
        with open(self.log, "w") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
            )
        self.wait_ready()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/v2/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server not ready in {timeout} s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def descendants(self) -> list[int]:
        """Every process in the server's session (it was started in a new one): main and all children."""
        result = subprocess.run(["ps", "-o", "pid=", "-s", str(self.process.pid)], capture_output=True, text=True)
        return [int(p) for p in result.stdout.split()]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> float:
        """Send `sig` to the main process only, as an orchestrator does; return how long shutdown took."""
        started = time.monotonic()
        if self.process.poll() is None:
            self.process.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        deadline = time.monotonic() + 5
        while self.descendants() and time.monotonic() < deadline:
            time.sleep(0.1)
        elapsed = time.monotonic() - started
        leftovers = self.descendants()
        for pid in leftovers:
            os.kill(pid, signal.SIGKILL)
        if leftovers:
            raise AssertionError(f"processes left behind after {signal.Signals(sig).name}: {leftovers}")
        return elapsed
