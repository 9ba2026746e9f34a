"""The Kubernetes manifests (deploy/k8s), checked without a cluster: every kustomization renders; built-in kinds
pass the API schemas of Kubernetes 1.29 and 1.37 with unknown fields rejected; custom resources pass their CRD
schemas (../shared/k8s-schemas) likewise; the pieces agree with each other and with the server; and the base's
Deployment runs under `podman kube play` on the built serving image, its probes answering."""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import uuid
from pathlib import Path

import httpx
import jsonschema
import kubernetes_validate
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from service.core import metrics
from tests.conftest import ROOT, require_tool
from tests.containers import podman, wait_ready
from tests.serving import Server, free_port

K8S = ROOT / "deploy" / "k8s"
KUSTOMIZATIONS = sorted(path.parent.relative_to(K8S).as_posix() for path in K8S.rglob("kustomization.yaml"))


def _schemas() -> Path:
    """The shared CRD schemas: `shared/` beside this checkout (as CI checks it out), else beside the repository this
    one was cloned from (a throw-away clone in /tmp), else TABSERVE_K8S_SCHEMAS."""
    if os.environ.get("TABSERVE_K8S_SCHEMAS"):
        return Path(os.environ["TABSERVE_K8S_SCHEMAS"])
    here = ROOT.parent / "shared" / "k8s-schemas"
    origin = subprocess.run(["git", "-C", str(ROOT), "config", "remote.origin.url"], capture_output=True, text=True)
    cloned_from = Path(origin.stdout.strip()).parent / "shared" / "k8s-schemas" if origin.stdout.strip() else here
    return here if here.is_dir() or not cloned_from.is_dir() else cloned_from


SCHEMAS = _schemas()
CUSTOM_RESOURCES = {
    ("serving.kserve.io/v1beta1", "InferenceService"): "inferenceservice.serving.kserve.io.v1beta1.json",
    ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"): "clusterservingruntime.serving.kserve.io.v1alpha1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.monitoring.coreos.com.v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule.monitoring.coreos.com.v1.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject.keda.sh.v1alpha1.json",
    ("ray.io/v1", "RayJob"): "rayjob.ray.io.v1.json",
}
GRACEFUL_SECONDS = int(re.search(r"^GRACEFUL_SECONDS = (\d+)", (ROOT / "service/server.py").read_text(), re.M)[1])


@functools.cache
def rendered(folder: str) -> tuple[dict, ...]:
    result = subprocess.run([require_tool("kubectl"), "kustomize", str(K8S / folder)], capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return tuple(yaml.safe_load_all(result.stdout))


def one(folder: str, kind: str) -> dict:
    (document,) = [d for d in rendered(folder) if d["kind"] == kind]
    return document


def container(deployment: dict) -> dict:
    (main,) = deployment["spec"]["template"]["spec"]["containers"]
    return main


def env(container: dict) -> dict[str, str]:
    return {item["name"]: item.get("value") for item in container.get("env", [])}


def strict(schema):
    """Close every object that lists its properties (the shared schemas' README): unknown fields are errors, as
    with the API server's strict field validation."""
    if isinstance(schema, dict):
        schema = {key: strict(value) for key, value in schema.items()}
        if (schema.get("type") == "object" and "properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):  # fmt: skip
            schema["additionalProperties"] = False
        return schema
    return [strict(value) for value in schema] if isinstance(schema, list) else schema


@functools.cache
def crd_validator(api_version: str, kind: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / CUSTOM_RESOURCES[api_version, kind]).read_text())
    return jsonschema.Draft202012Validator(strict(schema))


def test_every_overlay_is_here():
    assert KUSTOMIZATIONS == [
        "base", "batch", "overlays/autoscaling", "overlays/gpu", "overlays/kserve", "overlays/monitoring",
        "overlays/production-loop", "overlays/tracing", "train",
    ]  # fmt: skip


@pytest.mark.parametrize("folder", KUSTOMIZATIONS)
@pytest.mark.parametrize("version", ["1.29", "1.37"])
def test_built_in_kinds_pass_the_kubernetes_schemas_strictly(folder, version):
    built_in = [d for d in rendered(folder) if (d["apiVersion"], d["kind"]) not in CUSTOM_RESOURCES]
    for document in built_in:
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{document['kind']}/{document['metadata']['name']} on {version}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError:
            pytest.fail(f"{document['apiVersion']} {document['kind']}: neither built in nor a known custom resource")


@pytest.mark.parametrize("folder", KUSTOMIZATIONS)
def test_custom_resources_pass_their_crd_schemas_strictly(folder):
    for document in rendered(folder):
        if (document["apiVersion"], document["kind"]) in CUSTOM_RESOURCES:
            validator = crd_validator(document["apiVersion"], document["kind"])
            errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]
            assert not errors, f"{document['kind']}/{document['metadata']['name']}: {errors}"


def test_strict_schemas_catch_a_typo():
    monitor = copy.deepcopy(one("overlays/monitoring", "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    assert not crd_validator(monitor["apiVersion"], monitor["kind"]).is_valid(monitor)
    deployment = copy.deepcopy(one("base", "Deployment"))
    deployment["spec"]["minReplica"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.37", strict=True)


def probes(container: dict) -> dict[str, dict]:
    return {kind: container[kind]["httpGet"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")
            if kind in container}  # fmt: skip


def test_the_base_deployment_is_hardened_and_drains_within_its_grace_period():
    deployment = one("base", "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    main = container(deployment)
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    for each in pod["initContainers"] + pod["containers"]:
        hardening = each["securityContext"]
        assert hardening["readOnlyRootFilesystem"] and not hardening["allowPrivilegeEscalation"], each["name"]
    assert set(probes(main)) == {"startupProbe", "readinessProbe", "livenessProbe"}
    assert probes(main)["livenessProbe"]["path"] == "/v2/health/live"
    assert {p["path"] for k, p in probes(main).items() if k != "livenessProbe"} == {"/v2/health/ready"}
    pre_stop = main["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep" and pod["terminationGracePeriodSeconds"] > int(pre_stop[1]) + GRACEFUL_SECONDS
    assert main["resources"]["requests"]["cpu"] and main["resources"]["limits"]["memory"]
    # The server writes only under TMPDIR (its metrics folder): an emptyDir; the repository is a read-only volume.
    mounts = {m["mountPath"]: m for m in main["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts[env(main)["TMPDIR"]]["name"]]
    repository = mounts[env(main)["TABSERVE_REPOSITORY"]]
    assert repository["readOnly"] and volumes[repository["name"]]["persistentVolumeClaim"]["claimName"] in {
        d["metadata"]["name"] for d in rendered("base") if d["kind"] == "PersistentVolumeClaim"
    }
    budget = one("base", "PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert budget["spec"]["minAvailable"] < deployment["spec"]["replicas"]


def test_ports_and_selectors_agree():
    deployment, service = one("base", "Deployment"), one("base", "Service")
    main = container(deployment)
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert ports["http"] == int(env(main)["TABSERVE_PORT"])
    assert ports["health"] == int(env(main)["TABSERVE_HEALTH_PORT"])
    assert ports["grpc"] == int(env(main)["TABSERVE_GRPC_PORT"])
    assert {p["name"] for p in service["spec"]["ports"]} == {"http", "grpc"}
    assert {probe["port"] for probe in probes(main).values()} == {"health"}  # never behind client connections
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= set(ports)
    monitor = one("overlays/monitoring", "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
    assert {e["path"] for e in monitor["spec"]["endpoints"]} == {"/metrics"}


def test_the_prometheus_rule_is_generated_from_the_rules_file():
    generator = K8S / "overlays/monitoring/make_prometheusrule.py"
    spec = importlib.util.spec_from_file_location("make_prometheusrule", generator)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rules = ROOT / "deploy/prometheus/rules/tabserve.yml"
    committed = module.OUTPUT.read_text()
    assert committed == module.render(rules.read_text()), f"stale: run python {generator.relative_to(ROOT)}"
    assert yaml.safe_load(committed)["spec"] == yaml.safe_load(rules.read_text())
    assert one("overlays/monitoring", "PrometheusRule")["spec"] == yaml.safe_load(rules.read_text())


def exported_metrics() -> set[str]:
    return {m._name for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)}


def test_the_base_logs_nothing_and_the_production_loop_overlay_shares_one_postgresql():
    assert env(container(one("base", "Deployment")))["TABSERVE_PREDICTION_LOG"] == "off"  # two replicas, no DB
    folder = "overlays/production-loop"
    main = container(one(folder, "Deployment"))
    (log,) = [item for item in main["env"] if item["name"] == "TABSERVE_PREDICTION_LOG"]
    assert log == {"name": "TABSERVE_PREDICTION_LOG", "valueFrom": {"secretKeyRef": {"name": "tabserve-postgres",
                                                                                       "key": "url"}}}  # fmt: skip
    secret = one(folder, "Secret")["stringData"]
    (postgres,) = [d for d in rendered(folder) if d["kind"] == "Service" and d["metadata"]["name"] != "tabserve"]
    database = one(folder, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
    settings = {item["name"]: item.get("value") for item in database["env"]}
    host = f"{postgres['metadata']['name']}:{postgres['spec']['ports'][0]['port']}"
    user, name = settings["POSTGRES_USER"], settings["POSTGRES_DB"]
    assert secret["url"] == f"postgresql://{user}:{secret['password']}@{host}/{name}"
    (models,) = [m for m in main["volumeMounts"] if m["name"] == "models"]
    assert models["readOnly"] is False  # a promotion writes policy.json


def test_the_base_logs_json_and_the_tracing_overlay_exports_to_its_collector():
    base = env(container(one("base", "Deployment")))
    assert (base["TABSERVE_LOG_FORMAT"], base["TABSERVE_ACCESS_LOG"]) == ("json", "json")
    folder = "overlays/tracing"
    (server,) = [d for d in rendered(folder) if d["kind"] == "Deployment" and d["metadata"]["name"] == "tabserve"]
    settings = env(container(server))
    collector = [d for d in rendered(folder) if d["kind"] == "Service" and d["metadata"]["name"] == "otel-collector"]
    ports = {p["name"]: p["port"] for p in collector[0]["spec"]["ports"]}
    assert settings["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://otel-collector:{ports['otlp-grpc']}"
    assert settings["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"
    assert (
        settings["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
        and float(settings["OTEL_TRACES_SAMPLER_ARG"]) == 0.1
    )
    config = yaml.safe_load(one(folder, "ConfigMap")["data"]["config.yaml"])
    assert config["service"]["pipelines"]["traces"]["receivers"] == ["otlp"]


def test_the_autoscaler_targets_the_deployment_on_metrics_the_server_exports():
    scaler = one("overlays/autoscaling", "HorizontalPodAutoscaler")
    deployment = one("overlays/autoscaling", "Deployment")
    target = scaler["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    kinds = {m["type"]: m for m in scaler["spec"]["metrics"]}
    assert kinds["Resource"]["resource"]["name"] == "cpu" and "cpu" in container(deployment)["resources"]["requests"]
    assert kinds["Pods"]["pods"]["metric"]["name"] in exported_metrics()
    for folder in KUSTOMIZATIONS:  # KEDA makes its own HPA: never both on one Deployment
        kinds_here = {d["kind"] for d in rendered(folder)}
        assert not {"HorizontalPodAutoscaler", "ScaledObject"} <= kinds_here


def test_the_gpu_overlay_asks_for_a_gpu_and_runs_the_gpu_image():
    main = container(one("overlays/gpu", "Deployment"))
    assert main["image"].startswith("tabserve-serve-gpu:")
    assert main["resources"]["limits"]["nvidia.com/gpu"] == main["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert env(main)["TABSERVE_DEVICE"] == "cuda"
    assert (ROOT / "deploy/docker/serve-gpu.Dockerfile").exists()


def test_the_kserve_runtime_matches_its_inference_service():
    runtime = one("overlays/kserve", "ClusterServingRuntime")
    service = one("overlays/kserve", "InferenceService")
    (main,) = runtime["spec"]["containers"]
    assert main["name"] == "kserve-container"  # KServe finds the model server by this name
    assert {"v1", "v2", "grpc-v2"} <= set(runtime["spec"]["protocolVersions"])
    assert {"onnx"} == {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert env(main)["TABSERVE_REPOSITORY"] == "/mnt/models"  # where the storage initializer puts storageUri
    assert int(env(main)["TABSERVE_PORT"]) == main["ports"][0]["containerPort"] == 8080
    grpc_port = main["ports"][1]  # KServe names a gRPC port h2c
    assert (grpc_port["name"], grpc_port["containerPort"]) == ("h2c", int(env(main)["TABSERVE_GRPC_PORT"]))
    assert {p["port"] for p in probes(main).values()} == {8080}
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"] and model["modelFormat"]["name"] == "onnx"
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"] and model["storageUri"]
    assert service["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"


def test_the_training_job_publishes_into_the_serving_repository():
    """The Job writes where the Deployment reads; its read-only root holds nothing the trainer writes (run and
    checked with `podman run --read-only` on the training image: it published iris/1)."""
    job = one("train", "Job")
    (train,) = job["spec"]["template"]["spec"]["containers"]
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in train["volumeMounts"]}
    args = train["args"]
    repository = args[args.index("--repository") + 1]
    claim = volumes[mounts[repository]]["persistentVolumeClaim"]["claimName"]
    assert claim == one("base", "PersistentVolumeClaim")["metadata"]["name"]
    assert train["image"].split(":")[0] == "tabserve-train" and train["securityContext"]["readOnlyRootFilesystem"]
    assert args[args.index("--workdir") + 1].startswith("/tmp/") and "emptyDir" in volumes[mounts["/tmp"]]
    assert job["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 10001  # as the images' user


def test_every_probe_path_answers_on_a_real_server(tmp_path):
    """The probe paths of the Deployment and the KServe runtime, asked of a real server, and present in its API."""
    paths = {p["path"] for p in probes(container(one("base", "Deployment"))).values()}
    (runtime_container,) = one("overlays/kserve", "ClusterServingRuntime")["spec"]["containers"]
    paths |= {p["path"] for p in probes(runtime_container).values()}
    shutil.copytree(ROOT / "models", tmp_path / "models")
    server = Server(tmp_path / "models")
    try:
        documented = httpx.get(f"{server.url}/openapi.json").json()["paths"]
        for path in sorted(paths):
            assert httpx.get(server.url + path).status_code == 200, path
            assert path in documented, f"{path} not in the server's OpenAPI routes"
        # The runtime declares protocol v1 too: KServe V1 prediction and readiness
        v1 = httpx.post(f"{server.url}/v1/models/iris:predict", json={"instances": [[5.1, 3.5, 1.4, 0.2]]})
        assert v1.status_code == 200 and len(v1.json()["predictions"]) == 1
        assert httpx.get(f"{server.url}/v1/models/iris").json()["ready"] is True
    finally:
        server.stop()


def kube_play_manifest(deployment: dict, image: str, repository: Path, port: int) -> dict:
    """The rendered Deployment, adapted to one machine without a cluster: the image just built, the repository
    in a host folder instead of the PersistentVolumeClaim, the container ports published on free host ports,
    one replica, a name of its own."""
    deployment = copy.deepcopy(deployment)
    deployment["metadata"]["name"] = f"tabserve-test-{uuid.uuid4().hex[:8]}"  # its own pod name
    deployment["spec"]["replicas"] = 1
    pod = deployment["spec"]["template"]["spec"]
    for each in pod["initContainers"] + pod["containers"]:
        each["image"] = image
    for offset, each in enumerate(container(deployment)["ports"]):  # http, then health
        each["hostPort"] = port + offset
    for volume in pod["volumes"]:
        if volume.pop("persistentVolumeClaim", None):
            volume["hostPath"] = {"path": str(repository), "type": "Directory"}
    return deployment


def free_port_pair() -> int:
    """A free port whose successor is free too."""
    while True:
        port = free_port()
        with contextlib.suppress(OSError), socket.socket() as s:
            s.bind(("127.0.0.1", port + 1))
            return port


def run_init_containers(deployment: dict, repository: Path) -> None:
    """Run the pod's init containers before `kube play`, one `podman run` each, as the kubelet would: same image,
    command, user, read-only root, the repository mounted where they mount it. podman 4.3's own init containers
    race with themselves ("failed to remove once init container ...: it is running") often enough to fail CI."""
    pod = deployment["spec"]["template"]["spec"]
    user = f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"
    for init in pod.pop("initContainers"):
        volumes = [f"--volume={repository}:{m['mountPath']}" for m in init["volumeMounts"] if m["name"] == "models"]
        assert init["securityContext"]["readOnlyRootFilesystem"]
        podman("run", "--rm", "--read-only", "--user", user, "--network", "none", *volumes, init["image"],
               *init["command"], timeout=120)  # fmt: skip


def test_the_base_deployment_runs_under_podman_kube_play(serve_image, tmp_path):
    deployment = one("base", "Deployment")
    port = free_port_pair()  # http, health
    (tmp_path / "models").mkdir()  # empty, as a new volume is: the init container seeds the default model
    os.chown(tmp_path / "models", 10001, 10001)  # as fsGroup makes a volume writable for the pod's user
    manifest = tmp_path / "deployment.yaml"
    played = kube_play_manifest(deployment, serve_image, tmp_path / "models", port)
    run_init_containers(played, tmp_path / "models")
    manifest.write_text(yaml.safe_dump(played))
    name = f"{played['metadata']['name']}-pod-0"
    url = f"http://127.0.0.1:{port}"
    try:
        podman("kube", "play", str(manifest), timeout=120)
        ctr = f"{name}-{container(deployment)['name']}"
        wait_ready(url, lambda: podman("logs", ctr, check=False).stderr)
        for kind, probe in probes(container(deployment)).items():  # on the health port
            assert httpx.get(f"http://127.0.0.1:{port + 1}{probe['path']}", timeout=2).status_code == 200, kind
        answer = httpx.post(f"{url}/predict", json={"instances": [[5.1, 3.5, 1.4, 0.2]]}).json()
        assert answer["predictions"][0]["label"] == "setosa"
        inspect = json.loads(podman("container", "inspect", ctr).stdout)[0]
        assert inspect["HostConfig"]["ReadonlyRootfs"] and inspect["Config"]["User"].split(":")[0] == "10001"
        assert podman("exec", ctr, "touch", "/home/tabserve/x", check=False).returncode != 0  # read-only root
        assert podman("exec", ctr, "touch", "/tmp/x", check=False).returncode == 0  # the emptyDir
        assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["iris"]  # seeded, no copy left behind
    finally:
        podman("kube", "down", str(manifest), check=False, timeout=60)
