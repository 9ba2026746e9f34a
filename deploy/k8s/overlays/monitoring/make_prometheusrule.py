"""Write prometheusrule.yaml from deploy/prometheus/rules/tabserve.yml: the rules have one source of truth, the
file promtool tests; this is its prometheus-operator wrapping. Run after changing the rules (a test checks it):

    python deploy/k8s/overlays/monitoring/make_prometheusrule.py
"""

from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
RULES = HERE.parents[2] / "prometheus" / "rules" / "tabserve.yml"
OUTPUT = HERE / "prometheusrule.yaml"


class _Dumper(yaml.SafeDumper):
    """Multi-line expressions stay readable block scalars, as in the rules file."""


_Dumper.add_representer(
    str, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None)
)


def render(rules_text: str) -> str:
    groups = yaml.safe_load(rules_text)["groups"]
    document = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "tabserve"},
        "spec": {"groups": groups},
    }
    header = "# Generated from deploy/prometheus/rules/tabserve.yml by make_prometheusrule.py: do not edit.\n"
    return header + yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=120)


if __name__ == "__main__":
    OUTPUT.write_text(render(RULES.read_text()))
    print(f"wrote {OUTPUT}")
