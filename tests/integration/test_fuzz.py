"""Fuzz a real server from its own OpenAPI document with schemathesis: every route, every phase.

Phases: examples, coverage (boundary and invalid values of every field), fuzzing (generated valid and invalid
requests) and stateful (sequences that follow the links between operations). Checks: all of them except
`positive_data_acceptance` (a body can match the generic schema and still be wrong for this model: 422 is
right). So: no 5xx, no undocumented status code, content type or header, every response matches its
declared schema, invalid data is refused, 405s carry `Allow`, routes behind the API key refuse requests
without it. The server runs in the default `poll` mode (load and unload are refused: an unload in
explicit mode would turn the next requests into legitimate 503s) with an API key, well below capacity.

Fixed seed and example budget keep the run bounded (about a minute here) and repeatable.
"""

import re
import shutil
import subprocess

import pytest

from tests.conftest import require_tool
from tests.serving import Server

KEY = "fuzz-key"
CONFIG = """
# Half of the generated model names and versions are real ones, so requests get past the 404s to the models.
[dictionaries.models]
values = ["iris"]

[dictionaries.versions]
values = ["1"]

[parameters]
"path.name" = { dictionary = "models", probability = 0.5 }
"path.version" = { dictionary = "versions", probability = 0.5 }

# schemathesis's defaults plus 413: a body over --max-body-bytes is refused before it is parsed.
[checks.negative_data_rejection]
expected-statuses = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429, "5xx"]
"""


@pytest.fixture
def server(trained, tmp_path):
    folder, _, _ = trained
    shutil.copytree(folder.parent, tmp_path / "models" / "iris")
    process = Server(tmp_path / "models", "--api-key", KEY, "--max-body-bytes", "65536")
    yield process
    process.stop()


def test_schemathesis_finds_nothing_in_any_phase(server, tmp_path):
    (tmp_path / "schemathesis.toml").write_text(CONFIG)
    command = [
        require_tool("schemathesis"),
        "--config-file", str(tmp_path / "schemathesis.toml"),
        "run", server.url + "/openapi.json",
        "--header", f"Authorization: Bearer {KEY}",
        "--phases", "examples,coverage,fuzzing,stateful",
        "--checks", "all",
        "--exclude-checks", "positive_data_acceptance",
        "--max-examples", "40",
        "--seed", "1",
        "--workers", "1",
        "--request-timeout", "30",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    report = result.stdout + result.stderr
    assert result.returncode == 0, report[-20_000:]
    assert re.search(r"Operations: +(\d+) selected / \1 total", report) and "Stateful" in report, report[-5_000:]
    assert "Schema Error" not in report, report[-5_000:]
