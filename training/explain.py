"""Integrated gradients written as a plain forward pass, so explanations export to ONNX and serve without torch.

Integrated gradients (Sundararajan et al., 2017) attributes p_c(x) − p_c(x') to the features:
a_i = (x_i − x'_i) ∫₀¹ ∂p_c(x' + α(x − x'))/∂x_i dα. The baseline x' is the training mean (the scaler's
mean), which standardizes to the zero vector, so the path is simply α·z in standardized space, and
(x_i − x'_i)·∂/∂x_i = z_i·∂/∂z_i: attributions come out in probability units, in raw-feature terms.

torch.onnx cannot export autograd, so `IntegratedGradients` writes the backward pass of the MLP by hand as
ordinary ops: the softmax Jacobian row of the explained class, then each layer's derivative in reverse.
It reads the `Classifier`'s own parameters and buffers, including a `temperature` if the classifier has one,
and `check_explainer_parity` compares the exported graph with torch autograd through `Classifier.forward`
itself, so a backward pass that no longer matches the forward is a `ParityError` and nothing is published.

The integral is a Gauss–Legendre quadrature (Captum's default rule): exact for polynomials of degree
2·steps − 1, so for smooth activations (tanh, the default; sigmoid, GELU) the error falls exponentially with
the steps. ReLU networks are piecewise linear, their gradient jumps along the path and any fixed rule
converges only like 1/steps; `choose_steps` therefore measures, per model, the fewest steps whose
completeness error and change on doubling stay within bounds, and records what it measured.
"""

from __future__ import annotations

import copy
import itertools
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from bundle.manifest import Explanation
from training.errors import ParityError
from training.export import onnx_session
from training.model import Classifier

STEP_CANDIDATES = (16, 32, 64, 128, 256, 512)
COMPLETENESS_TARGET = 1e-4
"""Max |Σ attributions − (p(x) − p(baseline))| the chosen steps must reach on the held-out rows (the bar is 1e-3)."""
CONVERGENCE_TARGET = 2e-5
"""Max change of any attribution when the steps double: the quadrature error of the chosen steps, roughly."""
PARITY_TOLERANCE = 1e-5
ONNX_OPSET = 20
log = logging.getLogger("tabserve.explain")


def gauss_legendre(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of the `steps`-point Gauss–Legendre rule on [0, 1] (weights sum to 1)."""
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    return (nodes + 1) / 2, weights / 2


def _layer_gradient(layer: nn.Module, inputs: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """∂loss/∂inputs from ∂loss/∂outputs for one layer of the MLP, as forward ops (matches autograd's choices)."""
    if isinstance(layer, nn.Linear):
        return grad @ layer.weight
    if isinstance(layer, nn.Tanh):
        return grad * (1 - torch.tanh(inputs) ** 2)
    if isinstance(layer, nn.Sigmoid):
        s = torch.sigmoid(inputs)
        return grad * s * (1 - s)
    if isinstance(layer, nn.ReLU):
        return grad * (inputs > 0).to(grad.dtype)
    if isinstance(layer, nn.LeakyReLU):
        return grad * torch.where(inputs > 0, 1.0, layer.negative_slope).to(grad.dtype)
    if isinstance(layer, nn.GELU) and layer.approximate == "none":
        cdf = 0.5 * (1 + torch.erf(inputs / np.sqrt(2.0)))
        pdf = torch.exp(-0.5 * inputs**2) / np.sqrt(2 * np.pi)
        return grad * (cdf + inputs * pdf)
    raise NotImplementedError(f"no explanation gradient for layer {layer!r}")


def probability_gradient(classifier: Classifier, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """∂p_target/∂z for standardized rows `z` [rows, F] and class indices `target` [rows]: the backward pass."""
    temperature = getattr(classifier, "temperature", 1.0)
    tape, h = [], z
    for layer in classifier.mlp.layers:
        if isinstance(layer, nn.Dropout):  # identity in eval mode
            continue
        tape.append((layer, h))
        h = layer(h)
    p = torch.softmax(h / temperature, dim=-1)
    onehot = (torch.arange(p.shape[-1]) == target[:, None]).to(p.dtype)
    p_target = (p * onehot).sum(-1, keepdim=True)
    grad = p_target * (onehot - p) / temperature  # the softmax Jacobian row of the target class
    for layer, inputs in reversed(tape):
        grad = _layer_gradient(layer, inputs, grad)
    return grad


class IntegratedGradients(nn.Module):
    """The exported explanation graph.

    features [N, F] and target [N] (a class index, or −1 for the predicted class) → probabilities [N, C] (at
    x), class_index [N] (the class explained), baseline_probability [N] (p of that class at the training
    mean) and attributions [N, F] (summing to probability − baseline_probability, up to the quadrature error).
    The N·steps path points run as one batch: one matmul per layer, whatever N.
    """

    def __init__(self, classifier: Classifier, steps: int):
        super().__init__()
        self.classifier = classifier.eval()
        alphas, weights = gauss_legendre(steps)
        self.register_buffer("alphas", torch.tensor(alphas, dtype=torch.float32))
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float32))

    def forward(self, features: torch.Tensor, target: torch.Tensor):
        c = self.classifier
        probabilities = c(features)
        target = torch.where(target < 0, probabilities.argmax(dim=-1), target)
        baseline = c(c.mean.unsqueeze(0))[0]
        z = (features - c.mean) / c.scale
        steps, rows, width = self.alphas.shape[0], z.shape[0], z.shape[1]
        path = (self.alphas[:, None, None] * z.unsqueeze(0)).reshape(steps * rows, width)
        grad = probability_gradient(c, path, target.repeat(steps)).reshape(steps, rows, width)
        average = (self.weights[:, None, None] * grad).sum(dim=0)
        return probabilities, target, baseline[target], z * average


def autograd_ig(classifier: Classifier, X: np.ndarray, target: np.ndarray, steps: int) -> np.ndarray:
    """Integrated gradients by torch autograd through `Classifier.forward` (float64), the same quadrature rule.

    The reference the exported graph is checked against: nothing here is written by hand.
    """
    model = _float64(classifier)
    x = torch.as_tensor(np.asarray(X), dtype=torch.float64)
    alphas, weights = (torch.as_tensor(a, dtype=torch.float64) for a in gauss_legendre(steps))
    delta = x - model.mean
    path = (model.mean + alphas[:, None, None] * delta).reshape(-1, x.shape[1]).requires_grad_(True)
    index = torch.as_tensor(np.asarray(target), dtype=torch.int64).repeat(steps)
    chosen = model(path).gather(1, index[:, None]).sum()
    (grad,) = torch.autograd.grad(chosen, path)
    average = (weights[:, None, None] * grad.reshape(steps, *x.shape)).sum(dim=0)
    return (delta * average).detach().numpy()


def _float64(classifier: Classifier) -> Classifier:
    return copy.deepcopy(classifier).eval().double()


def _probabilities(classifier: Classifier, X: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return _float64(classifier)(torch.as_tensor(X, dtype=torch.float64)).numpy()


def predicted_classes(classifier: Classifier, X: np.ndarray) -> np.ndarray:
    """The class the float32 graph picks (float64 could break a near-tie the other way)."""
    with torch.no_grad():
        return classifier.eval()(torch.as_tensor(X, dtype=torch.float32)).argmax(dim=-1).numpy()


def _mean_row(classifier: Classifier) -> np.ndarray:
    return classifier.mean.detach().cpu().numpy()[None].astype(np.float32)


def completeness_errors(classifier: Classifier, X: np.ndarray, target: np.ndarray, attributions: np.ndarray):
    """|Σ attributions − (p_target(x) − p_target(mean))| per row, with probabilities from `Classifier.forward`."""
    model = _float64(classifier)
    with torch.no_grad():
        p = model(torch.as_tensor(np.asarray(X), dtype=torch.float64)).numpy()
        baseline = model(model.mean.unsqueeze(0))[0].numpy()
    rows = np.arange(len(X))
    return np.abs(attributions.sum(axis=1) - (p[rows, target] - baseline[target]))


@dataclass(frozen=True)
class StepChoice:
    steps: int
    completeness_max_error: float
    convergence_max_change: float


def choose_steps(classifier: Classifier, X: np.ndarray) -> StepChoice:
    """The fewest candidate steps meeting both targets on `X` (for each row's predicted class), else the most."""
    target = predicted_classes(classifier, X)
    previous = autograd_ig(classifier, X, target, STEP_CANDIDATES[0])
    for steps, doubled in itertools.pairwise(STEP_CANDIDATES):
        finer = autograd_ig(classifier, X, target, doubled)
        completeness = float(completeness_errors(classifier, X, target, previous).max())
        change = float(np.abs(finer - previous).max())
        if completeness <= COMPLETENESS_TARGET and change <= CONVERGENCE_TARGET:
            return StepChoice(steps, completeness, change)
        previous = finer
    completeness = float(completeness_errors(classifier, X, target, previous).max())
    return StepChoice(STEP_CANDIDATES[-1], completeness, change)


def export_explainer(classifier: Classifier, steps: int, n_features: int, path: Path) -> None:
    """features FP32 [batch, F], target INT64 [batch] → the four outputs of `IntegratedGradients`."""
    module = IntegratedGradients(classifier.eval().cpu(), steps)
    example = (torch.zeros(2, n_features, dtype=torch.float32), torch.tensor([-1, 0], dtype=torch.int64))
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            example,
            None,
            input_names=["features", "target"],
            output_names=["probabilities", "class_index", "baseline_probability", "attributions"],
            dynamic_shapes=({0: "batch"}, {0: "batch"}),
            external_data=False,
            opset_version=ONNX_OPSET,
            verbose=False,
        )
    model = program.model_proto
    onnx.helper.set_model_props(model, {"method": "integrated_gradients", "baseline": "mean", "steps": str(steps)})
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, str(path))


def check_explainer_parity(path: Path, classifier: Classifier, X: np.ndarray, steps: int) -> float:
    """Max |ORT − torch autograd| over every output for `X`, explaining the predicted class and then every class
    in turn (row i explains class i mod C); raises `ParityError` above the tolerance or for a wrong class."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    n_classes = int(classifier.mlp.layers[-1].out_features)
    predicted = predicted_classes(classifier, X)
    session = onnx_session(path)
    cycling = np.arange(len(X)) % n_classes
    cases = [(np.full(len(X), -1), predicted), (cycling, cycling)]
    difference = 0.0
    for requested, explained in cases:
        probabilities, index, baseline, got = session.run(None, {"features": X, "target": requested.astype(np.int64)})
        if not np.array_equal(index, explained):
            raise ParityError(f"{path.name}: explains classes {index[:8]}..., expected {explained[:8]}...")
        p = _probabilities(classifier, np.concatenate([X, _mean_row(classifier)]))
        difference = max(
            difference,
            float(np.abs(probabilities - p[:-1]).max()),
            float(np.abs(baseline - p[-1][explained]).max()),
            float(np.abs(got - autograd_ig(classifier, X, explained, steps)).max()),
        )
    if not difference <= PARITY_TOLERANCE:
        raise ParityError(
            f"{path.name}: ONNX Runtime and torch autograd differ by {difference:.2e} > {PARITY_TOLERANCE}"
        )
    return difference


def write_explainer(classifier: Classifier, held_out: np.ndarray, probe: np.ndarray, path: Path) -> Explanation:
    """Choose the steps on the held-out rows, export `path`, check it against autograd, record the probe."""
    held_out = np.ascontiguousarray(held_out, dtype=np.float32)
    choice = choose_steps(classifier, held_out)
    if choice.completeness_max_error > COMPLETENESS_TARGET:
        log.warning(
            "explanations: %d steps leave a completeness error of %.1e (target %.0e); answers report theirs",
            choice.steps, choice.completeness_max_error, COMPLETENESS_TARGET,
        )  # fmt: skip
    export_explainer(classifier, choice.steps, held_out.shape[1], path)
    check_explainer_parity(path, classifier, held_out, choice.steps)
    probe = np.ascontiguousarray(probe, dtype=np.float32)
    target = np.full(len(probe), -1, dtype=np.int64)
    attributions = onnx_session(path).run(["attributions"], {"features": probe, "target": target})[0]
    return Explanation(
        steps=choice.steps,
        completeness_max_error=choice.completeness_max_error,
        convergence_max_change=choice.convergence_max_change,
        probe_inputs=probe.tolist(),
        probe_attributions=attributions.tolist(),
    )
