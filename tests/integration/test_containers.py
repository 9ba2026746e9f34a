"""The images, built and run for real with podman: the serving image answers as a non-root user without torch,
and the compose file's trainer publishes a version that its running tabserve container then serves."""

import shutil
import subprocess
import time
import uuid

import httpx
import pytest
import yaml

from tests.conftest import ROOT
from tests.containers import ENV, image_size_mb, podman, running, wait_for_version, wait_ready
from tests.serving import free_port

pytestmark = pytest.mark.timeout(1200)  # a cold build of the training image takes minutes
COMPOSE_FILE = ROOT / "docker-compose.yml"
SERVICES = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
IRIS_ROW = {"instances": [[5.1, 3.5, 1.4, 0.2]]}


def test_serving_image_answers_as_non_root_without_torch_and_stops_cleanly(serve_image, capsys):
    port = free_port()
    # --cpus 1: a CPU quota the container's core count does not show; the server sizes itself by the quota
    with running(serve_image, env={"TABSERVE_PORT": str(port)}, options=("--cpus=1",)) as name:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, lambda: podman("logs", name).stderr)
        assert "(HTTP processes: 1, workers: 1)" in podman("logs", name).stderr
        answer = httpx.post(f"{url}/predict", json=IRIS_ROW).json()
        assert (answer["model"], answer["version"]) == ("iris", 1)
        assert answer["predictions"][0]["label"] == "setosa"
        assert podman("exec", name, "id", "-u").stdout.strip() == "10001"
        no_torch = podman("exec", name, "python", "-c", "import torch", check=False)
        assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
        assert podman("healthcheck", "run", name, check=False).returncode == 0, "the image's HEALTHCHECK fails"
        started = time.monotonic()
        podman("stop", "--time", "15", name, timeout=30)  # SIGTERM, then SIGKILL after 15 s
        assert podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip() == "0"
        assert time.monotonic() - started < 15
    with capsys.disabled():
        print(f"\n{serve_image}: {image_size_mb(serve_image):.0f} MB")


def compose(project: str, *args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    command = ["podman-compose", "-p", project, "-f", str(COMPOSE_FILE), *args]
    result = subprocess.run(command, cwd=ROOT, env={**ENV, **env}, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_compose_trainer_publishes_a_version_the_running_tabserve_container_serves(serve_image, train_image, capsys):
    """`compose up tabserve`, then `compose run trainer` (podman-compose 1.0.3 needs --no-deps there): the trainer
    writes iris/2 into the shared named volume, and the server, polling it, answers with version 2. The compose
    file names the images; the builds just made are tagged with those names."""
    for built, service in ((serve_image, "tabserve"), (train_image, "trainer")):
        podman("tag", built, "localhost/" + SERVICES[service]["image"])
    project = f"tabserve-test-{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = {"TABSERVE_PUBLISH_PORT": str(port), "TABSERVE_POLL_INTERVAL": "0.5"}
    url = f"http://127.0.0.1:{port}"
    try:
        compose(project, "up", "-d", "tabserve", env=env)
        wait_ready(url, lambda: podman("logs", f"{project}_tabserve_1", check=False).stderr)
        assert podman("healthcheck", "run", f"{project}_tabserve_1", check=False).returncode == 0, "compose healthcheck"
        assert httpx.post(f"{url}/predict", json=IRIS_ROW).json()["version"] == 1
        started = time.monotonic()
        compose(project, "run", "--no-deps", "--rm", "trainer", env=env, timeout=600)
        trained = time.monotonic() - started
        answer = wait_for_version(url, 2, timeout=30)
        assert answer["version"] == 2 and answer["predictions"][0]["label"] == "setosa", answer
    finally:
        subprocess.run(["podman-compose", "-p", project, "-f", str(COMPOSE_FILE), "down", "-v"],
                       cwd=ROOT, env=ENV, capture_output=True, timeout=120)  # fmt: skip
        podman("network", "rm", "--force", f"{project}_default", check=False)
        if (ROOT / "data").is_dir() and not any((ROOT / "data").iterdir()):
            shutil.rmtree(ROOT / "data")  # created by podman-compose for the trainer's ./data mount
    with capsys.disabled():
        print(f"\n{train_image}: {image_size_mb(train_image):.0f} MB; trainer container ran {trained:.0f} s")
