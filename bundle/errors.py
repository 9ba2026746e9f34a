"""The one error of the bundle package: a version that must not be served, and why."""

from __future__ import annotations


class BundleError(Exception):
    """A version folder that must not be served; the message says which file and what is wrong.

    `reason` is a short fixed code (a metric label: `tabserve_model_load_failures_total{reason}`).
    """

    def __init__(self, message: str, reason: str = "invalid_bundle"):
        super().__init__(message)
        self.reason = reason
