"""``fleet k8s``: render, apply and watch the Kubernetes deployment kept in ``infra/k8s``.

yamlio.py reads and writes YAML the way kustomize does, kustomize.py renders an overlay (our subset, identical to
``kubectl kustomize``), cluster.py applies it server-side and reports rollout and pod health, cli.py holds the
typer commands. Imports only the standard library, yaml, typer and rich; ``kubernetes`` lazily.
"""

from fleet.k8s.cli import k8s_app
from fleet.k8s.kustomize import KustomizeError, render

__all__ = ["KustomizeError", "k8s_app", "render"]
