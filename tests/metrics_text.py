"""Read a `/metrics` scrape into numbers tests can compare exactly."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families


class Scrape:
    def __init__(self, text: str):
        self.samples = [
            (sample.name, sample.labels, sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        ]

    @classmethod
    def of(cls, url: str, **kwargs) -> Scrape:
        response = httpx.get(url + "/metrics", timeout=10, **kwargs)
        response.raise_for_status()
        return cls(response.text)

    def sum(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        return sum(v for n, ls, v in self.samples if n == name and labels.items() <= ls.items())

    def series(self, name: str) -> list[dict[str, str]]:
        return [ls for n, ls, _ in self.samples if n == name]

    def names(self) -> set[str]:
        return {n for n, _, _ in self.samples}
