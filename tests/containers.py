"""Build and run tabserve's images with podman, from a local Debian base (no registry can be pulled here).

Builds are slow (base ~40 s, serving image ~1 min, training image ~2.5 min cold), so each image is tagged with a
hash of its inputs and rebuilt only when they change; the base's root filesystem tarball and the torch wheel are
kept under .cache/containers/.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import ssl
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT

CACHE = ROOT / ".cache" / "containers"
DOCKER = ROOT / "deploy" / "docker"
ENV = {**os.environ, "CONTAINERS_CONF": str(ROOT / "tests" / "containers.conf")}
TOOLS = ("podman", "runc", "catatonit", "mmdebstrap", "podman-compose")  # catatonit: kube play's pause
BASE_PACKAGES = "python3,python3-venv,python-is-python3,ca-certificates"
SOURCES = ("pyproject.toml", "constraints.txt", "README.md", "bundle", "service", "training", "models")
"""What the Dockerfiles copy from the build context (.dockerignore lets only these through)."""


def require_podman() -> None:
    """Skip where podman is missing, except in CI, where `make tools` installs it: there, fail."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        message = f"not installed: {', '.join(missing)} (`make tools` installs them)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["podman", *args], env=ENV, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args)} exited with {result.returncode}:\n{result.stderr[-3000:]}")
    return result


def base_image() -> str:
    """Debian bookworm with Python 3.11, made with mmdebstrap and imported: stands in for `python:3.11-slim`."""
    tag = "localhost/tabserve-base:" + hashlib.sha256(f"bookworm {BASE_PACKAGES}".encode()).hexdigest()[:12]
    if podman("image", "exists", tag, check=False).returncode == 0:
        return tag
    tarball = CACHE / f"rootfs-{tag.rsplit(':', 1)[1]}.tar"
    if not tarball.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        partial = tarball.with_name("partial-" + tarball.name)  # mmdebstrap reads the format from ".tar"
        command = ["mmdebstrap", "--quiet", "--variant=minbase", f"--include={BASE_PACKAGES}", "bookworm", str(partial)]
        subprocess.run(command, check=True, capture_output=True, timeout=600)
        partial.rename(tarball)
    podman("import", str(tarball), tag, timeout=300)
    return tag


def torch_wheels() -> Path:
    """A folder holding the torch wheel the training image pins, fetched by this machine's pip (which finds
    the CPU build here); PyTorch's CPU index, the image's default source, cannot be reached from here."""
    version = re.search(r"torch==([\w.+]+)", (DOCKER / "train.Dockerfile").read_text()).group(1)
    folder = CACHE / "wheels"
    if not list(folder.glob(f"torch-{version}*.whl")):
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", f"torch=={version}", "-d", folder]
        subprocess.run(command, check=True, capture_output=True, timeout=600)
    return folder


def host_pip_index() -> str | None:
    """The package index this machine's pip uses, if one is configured: the build uses the same one."""
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"]
    result = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"], capture_output=True,
                            text=True)  # fmt: skip
    return result.stdout.strip() if result.returncode == 0 and result.stdout.startswith("http") else None


def source_files() -> list[Path]:
    files = []
    for name in SOURCES:
        path = ROOT / name
        files += [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [f for f in files if "__pycache__" not in f.parts and ".staging-" not in str(f)]


def build(dockerfile: str, build_args: dict[str, str] | None = None, volumes: dict[Path, str] | None = None) -> str:
    """Build deploy/docker/<dockerfile> on the local base, once per content of its inputs; return the tag.

    The host's CA certificates are mounted into the build so pip inside it can reach the package index.
    """
    build_args = {"BASE_IMAGE": base_image(), **(build_args or {})}
    if index := host_pip_index():
        build_args["PIP_INDEX_URL"] = index
    volumes = dict(volumes or {})
    ca_folder = Path(ssl.get_default_verify_paths().capath or "")
    if ca_folder.is_dir():
        volumes[ca_folder] = str(ca_folder)
    digest = hashlib.sha256((DOCKER / dockerfile).read_bytes() + repr(sorted(build_args.items())).encode())
    for file in source_files():
        digest.update(str(file.relative_to(ROOT)).encode() + b"\0" + file.read_bytes())
    name = "localhost/tabserve-" + dockerfile.removesuffix(".Dockerfile")
    tag = f"{name}:{digest.hexdigest()[:12]}"
    if podman("image", "exists", tag, check=False).returncode == 0:
        return tag
    args = ["build", "--quiet", "--format", "docker", "--network", "host", "-f", str(DOCKER / dockerfile), "-t", tag]
    args += [f"--build-arg={key}={value}" for key, value in build_args.items()]
    args += [f"--volume={source}:{target}:ro" for source, target in volumes.items()]
    podman(*args, str(ROOT), timeout=1200)
    for old in podman("images", "--format", "{{.Repository}}:{{.Tag}}", name).stdout.split():
        if old != tag:  # earlier builds of this image: their shared layers stay
            podman("rmi", old, check=False)
    return tag


def image_size_mb(tag: str) -> float:
    return int(podman("image", "inspect", "--format", "{{.Size}}", tag).stdout) / 1e6


@contextlib.contextmanager
def running(
    image: str,
    *args: str,
    env: dict[str, str] | None = None,
    volumes: tuple[str, ...] = (),
    options: tuple[str, ...] = (),
):
    """A detached container on the host network (it listens where TABSERVE_PORT says), removed on exit; `args`
    go to the image's command, `options` to `podman run`."""
    name = f"tabserve-test-{uuid.uuid4().hex[:8]}"
    flags = [f"--env={key}={value}" for key, value in (env or {}).items()]
    flags += [f"--volume={volume}" for volume in volumes]
    podman("run", "--detach", "--name", name, "--network", "host", *flags, *options, image, *args)
    try:
        yield name
    finally:
        podman("rm", "--force", "--time", "0", name, check=False)


def wait_ready(url: str, logs: callable, timeout: float = 90) -> None:
    """Until `url`/v2/health/ready answers 200; on timeout, fail with what `logs()` returns."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    pytest.fail(f"{url} not ready in {timeout} s:\n{logs()[-3000:]}")


def wait_for_version(url: str, version: int, timeout: float = 60) -> dict:
    """Until a default-model prediction names `version`; returns that answer."""
    deadline = time.monotonic() + timeout
    while True:
        answer = httpx.post(f"{url}/predict", json={"instances": [[5.1, 3.5, 1.4, 0.2]]}, timeout=5).json()
        if answer.get("version") == version or time.monotonic() > deadline:
            return answer
        time.sleep(0.5)
