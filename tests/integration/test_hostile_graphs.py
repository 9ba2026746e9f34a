"""A served repository with hostile graphs: each is listed UNAVAILABLE with its reason and counted; the
other versions keep serving."""

import shutil

import httpx
import onnx

from tests.metrics_text import Scrape
from tests.serving import Server, republish

ROWS = [[5.1, 3.5, 1.4, 0.2]]


def custom_domain(folder):
    """scaler.onnx also imports an operator set of its own (a custom-operator library would be next)."""
    scaler = onnx.load(folder / "scaler.onnx")
    scaler.opset_import.append(onnx.helper.make_opsetid("com.example.custom", 1))
    onnx.save(scaler, folder / "scaler.onnx")


def external_data(folder):
    """model.onnx keeps its weights in a file beside it: ONNX Runtime would load this one."""
    model = onnx.load(folder / "model.onnx")
    onnx.save_model(model, folder / "model.onnx", save_as_external_data=True, location="weights.bin", size_threshold=0)


def test_graphs_with_custom_domains_or_external_data_are_refused_and_the_rest_serves(trained, tmp_path):
    folder, _, _ = trained
    repo = tmp_path / "models"
    shutil.copytree(folder.parent, repo / "iris")  # v1: as trained
    republish(folder, repo, "iris", edit=custom_domain)  # v2
    republish(folder, repo, "iris", edit=external_data)  # v3
    assert (repo / "iris" / "3" / "weights.bin").is_file()
    server = Server(repo)
    try:
        listing = httpx.get(server.url + "/v1/models").json()
        states = {v["version"]: v for v in listing["models"][0]["versions"]}
        assert states[1]["state"] == "READY"
        assert states[2]["state"] == "UNAVAILABLE" and "'com.example.custom'" in states[2]["reason"]
        assert states[3]["state"] == "UNAVAILABLE" and "external file" in states[3]["reason"]
        index = httpx.post(server.url + "/v2/repository/index").json()
        assert [(e["version"], e["state"]) for e in index] == [
            ("1", "READY"),
            ("2", "UNAVAILABLE"),
            ("3", "UNAVAILABLE"),
        ]

        answer = httpx.post(server.url + "/predict", json={"instances": ROWS})
        assert answer.status_code == 200 and answer.json()["version"] == 1
        refused = httpx.post(server.url + "/v1/models/iris/versions/3/predict", json={"instances": ROWS})
        assert refused.status_code == 503 and "external file" in refused.json()["error"]

        scrape = Scrape.of(server.url)
        assert scrape.sum("tabserve_model_load_failures_total", model="iris", reason="onnx_custom_domain") == 1
        assert scrape.sum("tabserve_model_load_failures_total", model="iris", reason="onnx_external_data") == 1
    finally:
        server.stop()
