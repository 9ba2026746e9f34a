import pytest

from tests import containers
from tests.serving import Server, republish


@pytest.fixture(scope="session")
def repo(trained, tmp_path_factory):
    """iris v1, v2 (copies of the trained bundle), a corrupted v3; and `flowers` v1, a second model."""
    folder, _, _ = trained
    root = tmp_path_factory.mktemp("served") / "models"
    for _ in range(3):
        republish(folder, root, "iris")
    (root / "iris" / "3" / "model.onnx").write_bytes(b"corrupted")
    republish(folder, root, "flowers")
    return root


@pytest.fixture
def iris_repo(trained, tmp_path):
    """A repository of its own for one test: iris v1 only (tests that publish versions or count requests)."""
    root = tmp_path / "models"
    republish(trained[0], root, "iris")
    return root


@pytest.fixture(scope="session")
def server(repo):
    """The server most tests share: small max batch (so big requests are split), debug log (to count calls), and
    room in the queue for the 8 × 20,000-row requests of test_server.py, in rows and in bytes, even if all of them
    reach one HTTP process: the bounds are split between the HTTP processes (admission control has its own tests;
    too small a share refused some of them at random)."""
    room = ("--max-queue-rows", "1000000", "--max-queue-bytes", str(128 << 20), "--max-pending-bytes", str(128 << 20))
    process = Server(repo, "--max-batch-rows", "64", "--default-model", "iris", *room, log_level="debug")
    yield process
    process.stop()


@pytest.fixture(scope="session")
def serve_image():
    """The CPU serving image, built from the local Debian base (cached by a hash of its inputs)."""
    containers.require_podman()
    return containers.build("serve.Dockerfile")


@pytest.fixture(scope="session")
def train_image():
    """The training image, with torch from a folder of wheels instead of PyTorch's index."""
    containers.require_podman()
    wheels = containers.torch_wheels()
    return containers.build("train.Dockerfile", {"TORCH_SOURCE": "--find-links /wheels"}, {wheels: "/wheels"})
