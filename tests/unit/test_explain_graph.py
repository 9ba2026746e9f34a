"""The explanation graph: integrated gradients from the training mean, exported to ONNX, against torch autograd.

The reference here is written independently of training/explain.py: autograd through `Classifier.forward`
in float64 with a fine midpoint rule (another quadrature than the graph's), so it approximates the true
integral, not the graph's own arithmetic.
"""

import numpy as np
import onnxruntime as ort
import pytest
import torch

from bundle.integrity import check_bundle
from bundle.manifest import Manifest
from training import checkpoint, data, explain, pipeline
from training.config import TrainConfig
from training.errors import ParityError
from training.model import Classifier
from training.preprocess import prepare

REFERENCE_STEPS = 1024
COMPLETENESS_BAR = 1e-3
AGREEMENT_BAR = 1e-4


def reference_ig(classifier: Classifier, X: np.ndarray, target: np.ndarray, chunk: int = 16) -> np.ndarray:
    """Integrated gradients by autograd, float64, midpoint rule with `REFERENCE_STEPS` points, baseline the mean."""
    model = classifier.double().eval()
    alphas = (torch.arange(REFERENCE_STEPS, dtype=torch.float64) + 0.5) / REFERENCE_STEPS
    out = []
    for start in range(0, len(X), chunk):
        x = torch.as_tensor(X[start : start + chunk], dtype=torch.float64)
        delta = x - model.mean
        path = (model.mean + alphas[:, None, None] * delta).reshape(-1, x.shape[1]).requires_grad_(True)
        index = torch.as_tensor(target[start : start + chunk]).repeat(REFERENCE_STEPS)
        (grad,) = torch.autograd.grad(model(path).gather(1, index[:, None]).sum(), path)
        out.append((delta * grad.reshape(REFERENCE_STEPS, *x.shape).mean(dim=0)).numpy())
    classifier.float()
    return np.concatenate(out)


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module", params=["iris", "digits", "breast_cancer"])
def published(request, tmp_path_factory):
    """A short training of each dataset the bars name, published: (folder, manifest, classifier, test rows)."""
    tmp = tmp_path_factory.mktemp(request.param)
    config = TrainConfig(name=request.param, dataset=request.param, max_epochs=40)
    folder, manifest = pipeline.train(config, tmp / "models", tmp / "run", progress=False)
    classifier = checkpoint.rebuild_classifier(checkpoint.load(folder / "checkpoint.pt"))
    prepared = prepare(data.load(request.param), seed=0, val_fraction=0.15, test_fraction=0.15)
    return folder, manifest, classifier, prepared.test.X.astype(np.float32)


def test_attributions_are_complete_and_agree_with_torch_on_every_test_row(published):
    folder, manifest, classifier, X = published
    graph = session(folder / "explain.onnx")
    n_classes = manifest.n_classes
    for requested in (np.full(len(X), -1), np.arange(len(X)) % n_classes):  # predicted class, then every class
        probabilities, index, baseline, attributions = graph.run(
            None, {"features": X, "target": requested.astype(np.int64)}
        )
        expected_index = np.where(requested < 0, probabilities.argmax(axis=1), requested)
        assert np.array_equal(index, expected_index)
        rows = np.arange(len(X))
        completeness = np.abs(attributions.sum(axis=1) - (probabilities[rows, index] - baseline))
        assert completeness.max() <= COMPLETENESS_BAR
        agreement = np.abs(attributions - reference_ig(classifier, X, index))
        assert agreement.max() <= AGREEMENT_BAR
    recorded = manifest.explanation
    assert (recorded.method, recorded.baseline, recorded.rule) == (
        "integrated_gradients",
        "training_mean",
        "gauss_legendre",
    )
    assert recorded.completeness_max_error <= explain.COMPLETENESS_TARGET


def test_baseline_probability_is_the_models_answer_at_the_training_mean(published):
    folder, manifest, _, X = published
    mean = np.asarray([manifest.scaler.mean], dtype=np.float32)
    at_mean = session(folder / "model.onnx").run(None, {"features": mean})[0][0]
    _, index, baseline, _ = session(folder / "explain.onnx").run(
        None, {"features": X[:5], "target": np.full(5, -1, np.int64)}
    )
    assert np.allclose(baseline, at_mean[index], atol=1e-6)


def test_the_bundle_verifies_with_its_explanation_graph(published):
    folder, manifest, _, _ = published
    assert check_bundle(folder).explanation == manifest.explanation
    assert "explain.onnx" in manifest.files


class Tempered(Classifier):
    """The calibrated classifier another change adds: softmax(logits / temperature)."""

    def __init__(self, classifier: Classifier, temperature: float):
        super().__init__(classifier.mlp, classifier.mean, classifier.scale)
        self.register_buffer("temperature", torch.tensor(temperature))

    def forward(self, features):
        return torch.softmax(self.mlp((features - self.mean) / self.scale) / self.temperature, dim=-1)


def test_explanations_follow_a_temperature_in_the_classifier(trained, tmp_path):
    folder, _, _ = trained
    classifier = Tempered(checkpoint.rebuild_classifier(checkpoint.load(folder / "checkpoint.pt")), 2.5).eval()
    X = prepare(data.load("iris"), seed=0, val_fraction=0.15, test_fraction=0.15).test.X.astype(np.float32)
    explain.export_explainer(classifier, 32, X.shape[1], tmp_path / "explain.onnx")
    assert explain.check_explainer_parity(tmp_path / "explain.onnx", classifier, X, 32) <= explain.PARITY_TOLERANCE
    probabilities, index, _, attributions = session(tmp_path / "explain.onnx").run(
        None, {"features": X, "target": np.full(len(X), -1, np.int64)}
    )
    with torch.no_grad():
        assert np.allclose(probabilities, classifier(torch.from_numpy(X)).numpy(), atol=1e-6)
    assert np.abs(attributions - reference_ig(classifier, X, index)).max() <= AGREEMENT_BAR


def test_a_graph_that_disagrees_with_autograd_is_refused(trained):
    folder, _, _ = trained
    classifier = checkpoint.rebuild_classifier(checkpoint.load(folder / "checkpoint.pt"))
    steps = Manifest.read(folder).explanation.steps
    X = np.asarray(Manifest.read(folder).explanation.probe_inputs, dtype=np.float32)
    with torch.no_grad():
        classifier.mlp.layers[0].weight.mul_(1.1)
    with pytest.raises(ParityError, match="differ by"):
        explain.check_explainer_parity(folder / "explain.onnx", classifier, X, steps)


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "leaky_relu", "gelu"])
def test_every_activation_has_a_backward_pass_matching_autograd(trained, tmp_path, activation):
    from training.model import MLP

    torch.manual_seed(0)
    mlp = MLP(4, (16, 8), 3, activation=activation, dropout=0.1).eval()
    classifier = Classifier(mlp, torch.tensor([5.8, 3.0, 3.8, 1.2]), torch.tensor([0.8, 0.4, 1.7, 0.8])).eval()
    X = (np.random.default_rng(0).normal(size=(32, 4)) * [0.8, 0.4, 1.7, 0.8] + [5.8, 3.0, 3.8, 1.2]).astype(np.float32)
    explain.export_explainer(classifier, 16, 4, tmp_path / "explain.onnx")
    assert explain.check_explainer_parity(tmp_path / "explain.onnx", classifier, X, 16) <= explain.PARITY_TOLERANCE


def test_gauss_legendre_weights_integrate_polynomials_exactly_on_the_unit_interval():
    nodes, weights = explain.gauss_legendre(8)
    assert (nodes > 0).all() and (nodes < 1).all()
    for degree in range(16):
        assert np.isclose((weights * nodes**degree).sum(), 1 / (degree + 1))


def test_a_hostile_or_wrong_explanation_graph_refuses_the_version(trained, tmp_path):
    import onnx

    from bundle.integrity import BundleError
    from tests.serving import republish

    folder, _, _ = trained

    def custom_domain(staging):
        graph = onnx.load(staging / "explain.onnx")
        graph.opset_import.append(onnx.helper.make_opsetid("com.example.custom", 1))
        onnx.save(graph, staging / "explain.onnx")

    def another_models_graph(staging):  # a valid explain graph, of weights other than this version's
        classifier = checkpoint.rebuild_classifier(checkpoint.load(folder / "checkpoint.pt"))
        with torch.no_grad():
            classifier.mlp.layers[0].bias += 0.5
        explain.export_explainer(classifier, Manifest.read(folder).explanation.steps, 4, staging / "explain.onnx")

    for edit, reason in ((custom_domain, "onnx_custom_domain"), (another_models_graph, "parity_mismatch")):
        version = republish(folder, tmp_path / "models", "iris", edit=edit)
        with pytest.raises(BundleError) as error:
            check_bundle(version)
        assert error.value.reason == reason


def test_verify_rechecks_the_explanation_graph_against_autograd(trained):
    from training.verify import verify

    folder, _, _ = trained
    assert verify(folder)[0].explanation is not None
