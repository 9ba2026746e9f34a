"""The deployment files, checked statically: the compose file and Dockerfiles validate and agree with each other.
The images themselves are built and run in test_containers.py."""

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, require_tool

COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKER = ROOT / "deploy" / "docker"
COMPOSE = yaml.safe_load(COMPOSE_FILE.read_text())
SERVICES = COMPOSE["services"]


def dockerfile_stages(path: Path) -> list[list[str]]:
    """Instructions per build stage, continuation lines joined, `${ARG}`s declared before the first FROM
    replaced by their defaults."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    for name, default in re.findall(r"^ARG (\w+)=(\S+)", text.split("\nFROM ")[0], re.M):
        text = text.replace("${" + name + "}", default)
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
