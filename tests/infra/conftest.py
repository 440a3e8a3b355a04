"""Fixtures for the deployment tests: a copy of infra/k8s with throwaway dev secrets, and its renders."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fleet.k8s.cli import secrets_cmd
from fleet.k8s.kustomize import Obj, render

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "infra" / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file())


@pytest.fixture(scope="session")
def k8s_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """infra/k8s copied aside, with random secret env files written the way an operator would (`fleet k8s secrets`)."""
    root = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, root, ignore=shutil.ignore_patterns("*.env"))
    for overlay in OVERLAYS:
        secrets_cmd(overlay, force=True, root=root)
    return root


@pytest.fixture(scope="session")
def renders(k8s_tree: Path) -> dict[str, list[Obj]]:
    return {o: render(k8s_tree / "overlays" / o) for o in OVERLAYS}
