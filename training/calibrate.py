"""Calibration: can a served 0.9 be read as 90 %? Temperature scaling, and the numbers that say whether it worked.

Temperature scaling (Guo et al., 2017) divides the logits by one scalar T before the softmax. It never changes
which class wins (accuracy and F1 stay exactly as trained), only how sure the model says it is. T is fitted on
the validation split by minimising its negative log-likelihood with a bounded 1-D search over log T. It is
applied only if it helps there beyond noise: validation ECE and log-loss not worse, and the per-row log-loss
gain at least `MIN_EVIDENCE_Z` standard errors (fitted and judged on the same rows, so the bar is not low).
Otherwise T = 1 and the report says why. Early stopping already keeps the epoch with the lowest validation
log-loss, so a T near 1 is the usual outcome on small data. The temperature lives inside `Classifier`, so
`model.onnx` (and its parity check) carry it and serving needs nothing new.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from training.evaluate import calibration_scores as scores
from training.model import Classifier
from training.preprocess import Split

T_BOUNDS = (0.2, 10.0)
"""Search range for T. A validation split the model gets entirely right has no finite optimum (its NLL keeps
falling as T shrinks); such a fit ends on a bound and is not used."""


MIN_EVIDENCE_Z = 2.0
"""How clearly T must lower the validation log-loss: mean per-row gain / its standard error."""


@dataclass(frozen=True)
class Temperature:
    """The fitted temperature and why it is (or is not) applied; goes into report.json."""

    temperature: float
    fitted: float
    applied: bool
    evidence_z: float
    reason: str
    validation: dict[str, dict[str, float]]


def logits(classifier: Classifier, X: np.ndarray) -> np.ndarray:
    """The network's logits for raw features, before any temperature (float64 for the fit)."""
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
        return classifier.eval().logits(x).double().numpy()


def fit_temperature(z: np.ndarray, y: np.ndarray) -> Temperature:
    """T minimising the validation NLL of softmax(z / T); applied only if it clearly helps there."""

    def row_nll(t: float) -> np.ndarray:
        return -log_softmax(z / t, axis=1)[np.arange(len(y)), y]

    low, high = (math.log(b) for b in T_BOUNDS)
    search = minimize_scalar(lambda log_t: row_nll(math.exp(log_t)).mean(), bounds=(low, high), method="bounded")
    fitted = math.exp(search.x)
    gain = row_nll(1.0) - row_nll(fitted)
    evidence = float(gain.mean() / (gain.std(ddof=1) / math.sqrt(len(gain)))) if len(gain) > 1 and gain.std() else 0.0
    before, after = scores(softmax(z, axis=1), y), scores(softmax(z / fitted, axis=1), y)
    keep = Temperature(1.0, fitted, False, evidence, "", {"before": before, "fitted": after})
    if not T_BOUNDS[0] * 1.01 < fitted < T_BOUNDS[1] / 1.01:
        why = f"validation log-loss has no minimum inside T in {list(T_BOUNDS)} (the fit ran to {fitted:.3g})"
    elif after["ece"] > before["ece"] or after["log_loss"] > before["log_loss"]:
        why = f"T = {fitted:.3f} would make the validation ECE or log-loss worse"
    elif evidence < MIN_EVIDENCE_Z:
        why = f"T = {fitted:.3f} lowers the validation log-loss by only {evidence:.2f} standard errors (noise)"
    else:
        reason = f"T = {fitted:.3f} lowers the validation log-loss by {evidence:.1f} standard errors, and its ECE"
        return replace(keep, temperature=fitted, applied=True, reason=reason)
    return replace(keep, reason=why + ": kept T = 1")


def calibrate(classifier: Classifier, val: Split) -> Temperature:
    """Fit T on `val` and set it on `classifier` (in place)."""
    result = fit_temperature(logits(classifier, val.X), val.y)
    classifier.set_temperature(result.temperature)
    return result


def report(result: Temperature | None, test: dict[str, dict[str, float]]) -> dict:
    """The report.json section: what was fitted, on which split, why it is (not) applied, and the test split's
    scores `before` (T = 1), `after` (as served) and, when not applied, at the `fitted` T."""
    if result is None:
        return {"method": "none", "reason": "--no-calibrate", "test": test}
    return {"method": "temperature", "fitted_on": "validation", **asdict(result), "test": test}
