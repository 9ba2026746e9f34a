"""The deployment files, checked without a Docker engine: the compose file and Dockerfiles validate, agree
with each other, and the exact commands the containers run work on this machine (the serving one without
torch)."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import ROOT, require_tool
from tests.serving import free_port

COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKER = ROOT / "deploy" / "docker"
COMPOSE = yaml.safe_load(COMPOSE_FILE.read_text())
SERVICES = COMPOSE["services"]
NO_TORCH = """
import sys

class NoTorch:
    '''The serving image has no torch: any attempt to import it fails, as it would there.'''

    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError("No module named 'torch'", name=name)

sys.meta_path.insert(0, NoTorch())
"""


def dockerfile_stages(path: Path) -> list[list[str]]:
    """Instructions per build stage, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("FROM "):
            stages.append([])
        if stages and line and not line.startswith("#"):
            stages[-1].append(line)
    return stages


def dockerfile_env(stage: list[str]) -> dict[str, str]:
    env = {}
    for line in stage:
        if line.startswith("ENV "):
            env.update(dict(re.findall(r"(\w+)=(\S+)", line)))
    return env


def test_compose_file_validates():
    command = [require_tool("docker-compose"), "-f", str(COMPOSE_FILE), "config", "-q"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("dockerfile", sorted(DOCKER.glob("*.Dockerfile")), ids=lambda p: p.name)
def test_dockerfiles_pass_hadolint_and_our_rules(dockerfile):
    result = subprocess.run([require_tool("hadolint"), str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    stages = dockerfile_stages(dockerfile)
    for stage in stages:
        base = stage[0].split()[1]
        assert ":" in base and not base.endswith(":latest"), f"unpinned base image {base}"
    final = stages[-1]
    users = [line.split()[1] for line in final if line.startswith("USER ")]
    assert users and users[-1].isdigit() and users[-1] != "0", "the final stage must run as a non-root user"
    if dockerfile.name.startswith("serve"):
        text = " ".join(final)
        assert not re.search(r"\b(gcc|build-essential|g\+\+|pip install)\b", text), "build tools in the serving image"
        assert "training/" not in dockerfile.read_text() and "torch" not in dockerfile.read_text().replace(
            "no torch", ""
        )


def test_every_service_has_a_health_check_and_pinned_image():
    assert set(SERVICES) == {"tabserve", "prometheus", "grafana", "trainer"}
    for name, service in SERVICES.items():
        assert service.get("healthcheck", {}).get("test"), f"{name}: no health check"
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: unpinned image {image}"
    assert SERVICES["trainer"]["profiles"] == ["train"]  # only on demand: `docker compose --profile train run`


def test_services_agree_on_paths_and_names():
    serve_env = dockerfile_env(dockerfile_stages(DOCKER / "serve.Dockerfile")[-1])
    repository = SERVICES["tabserve"]["environment"]["TABSERVE_REPOSITORY"]
    assert repository == serve_env["TABSERVE_REPOSITORY"]
    assert f"models:{repository}" in SERVICES["tabserve"]["volumes"]
    assert f"models:{repository}" in SERVICES["trainer"]["volumes"]
    assert SERVICES["trainer"]["command"][-1] == repository

    prometheus = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    (job,) = [job for job in prometheus["scrape_configs"] if job["job_name"] == "tabserve"]
    port = SERVICES["tabserve"]["environment"]["TABSERVE_PORT"]
    assert job["static_configs"][0]["targets"] == [f"tabserve:{port}"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in SERVICES["prometheus"]["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in SERVICES["prometheus"]["command"]

    datasource = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    (source,) = datasource["datasources"]
    assert source["url"] == "http://prometheus:9090"
    dashboard = (ROOT / "deploy/grafana/dashboards/tabserve.json").read_text()
    assert set(re.findall(r'"uid": "([^"]+)"', dashboard)) == {source["uid"], "tabserve"}
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/tabserve.yml").read_text())
    mounted = {v.split(":")[1] for v in SERVICES["grafana"]["volumes"]}
    assert provider["providers"][0]["options"]["path"] in mounted


def container_env(service: dict, dockerfile: Path, **overrides: str) -> dict[str, str]:
    env = {**dockerfile_env(dockerfile_stages(dockerfile)[-1]), **service.get("environment", {}), **overrides}
    env.pop("PATH", None)  # the image's venv; here, this interpreter's
    return {**os.environ, **{k: str(v) for k, v in env.items()}}


def test_the_serving_container_command_runs_without_torch_and_passes_its_health_check(tmp_path):
    """The compose command and environment, as the container runs them, with only the address and the
    repository moved (a copy of the image's models/); torch imports fail, as in the image."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(NO_TORCH)
    shutil.copytree(ROOT / "models", tmp_path / "models")
    port = free_port()
    service = SERVICES["tabserve"]
    moved = {"TABSERVE_HOST": "127.0.0.1", "TABSERVE_PORT": str(port), "TABSERVE_REPOSITORY": str(tmp_path / "models")}
    env = container_env(service, DOCKER / "serve.Dockerfile", **moved, PYTHONPATH=f"{tmp_path / 'site'}:{ROOT}")
    command = [sys.executable if part == "python" else part for part in service["command"]]
    health = [sys.executable if part == "python" else part for part in service["healthcheck"]["test"][1:]]
    health = [part.replace("8000", str(port)) for part in health]
    process = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)  # fmt: skip
    try:
        for _ in range(120):
            if subprocess.run(health, env=env, capture_output=True).returncode == 0:
                break
            assert process.poll() is None, process.stdout.read().decode()
            time.sleep(0.5)
        else:
            pytest.fail("the compose health check never passed")
        response = httpx.post(f"http://127.0.0.1:{port}/predict", json={"instances": [[5.1, 3.5, 1.4, 0.2]]})
        assert response.status_code == 200 and response.json()["predictions"][0]["label"] == "setosa"
        process.send_signal(signal.SIGTERM)  # what `docker stop` sends
        assert process.wait(timeout=int(service["stop_grace_period"].rstrip("s"))) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


def test_the_trainer_container_command_publishes_a_verified_version(tmp_path):
    service = SERVICES["trainer"]
    command = [sys.executable if part == "python" else part for part in service["command"]]
    command = [str(tmp_path / "models") if part == "/models" else part for part in command]
    env = container_env(service, DOCKER / "train.Dockerfile", PYTHONPATH=str(ROOT))
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    (version,) = (tmp_path / "models" / "iris").glob("[0-9]*")
    verify = subprocess.run([sys.executable, "-m", "training", "verify", str(version)], env=env, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
