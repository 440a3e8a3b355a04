"""The ``fleet k8s`` commands: render, secrets, apply, status (mounted by fleet/cli.py as ``fleet k8s``)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from fleet.k8s.cluster import (
    WORKLOADS,
    apply_objects,
    dynamic_client,
    pod_health,
    referenced_secrets,
    rollout_state,
    wait_rollout,
)
from fleet.k8s.kustomize import KustomizeError, render, render_kubectl
from fleet.k8s.yamlio import dump_docs

Obj = dict[str, Any]
K8S_ROOT_ENV = "MOLMOFLEET_K8S_ROOT"
k8s_app = typer.Typer(help="Deploy molmofleet on Kubernetes (KubeRay) from infra/k8s.", no_args_is_help=True)
console = Console()
RootOpt = Annotated[
    Path | None,
    typer.Option(
        "--root",
        help=f"infra/k8s directory (default: ${K8S_ROOT_ENV}, ./infra/k8s, or the one beside this package)",
    ),
]
ContextOpt = Annotated[str | None, typer.Option("--context", help="kubeconfig context (default: current)")]


def k8s_root(root: Path | None = None) -> Path:
    for cand in (
        root,
        os.environ.get(K8S_ROOT_ENV),
        Path.cwd() / "infra" / "k8s",
        Path(__file__).resolve().parents[2] / "infra" / "k8s",
    ):
        if cand and (Path(cand) / "overlays").is_dir():
            return Path(cand)
    raise typer.BadParameter(f"no infra/k8s found: pass --root or set {K8S_ROOT_ENV}")


def overlay_dir(overlay: str, root: Path | None = None) -> Path:
    path = Path(overlay)
    if (path / "kustomization.yaml").is_file():
        return path
    path = k8s_root(root) / "overlays" / overlay
    if not (path / "kustomization.yaml").is_file():
        raise typer.BadParameter(
            f"no overlay {overlay!r} (have: {', '.join(sorted(p.name for p in path.parent.iterdir()))})"
        )
    return path


def _render_or_exit(path: Path) -> list[Obj]:
    try:
        return render(path)
    except KustomizeError as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None


@k8s_app.command("render")
def render_cmd(
    overlay: Annotated[str, typer.Argument(help="overlay name (dev, prod) or a kustomization directory")],
    engine: Annotated[str, typer.Option(help="python (built in) or kubectl")] = "python",
    root: RootOpt = None,
) -> None:
    """Print the manifests of an overlay, exactly as `kubectl kustomize` prints them."""
    path = overlay_dir(overlay, root)
    if engine not in ("python", "kubectl"):
        raise typer.BadParameter("engine must be python or kubectl")
    if engine == "python":
        typer.echo(dump_docs(_render_or_exit(path)), nl=False)
        return
    try:
        typer.echo(render_kubectl(path), nl=False)
    except KustomizeError as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None


@k8s_app.command("secrets")
def secrets_cmd(
    overlay: Annotated[str, typer.Argument(help="overlay whose secrets/*.env to create")] = "dev",
    force: Annotated[bool, typer.Option(help="overwrite existing files")] = False,
    root: RootOpt = None,
) -> None:
    """Write random secret env files for an overlay's secretGenerator (gitignored; never commit them)."""
    for example in sorted((overlay_dir(overlay, root) / "secrets").glob("*.env.example")):
        target = example.with_suffix("")
        if target.exists() and not force:
            console.print(f"{target} exists, kept (--force to replace)")
            continue
        keys = [ln.split("=", 1)[0] for ln in example.read_text().splitlines() if "=" in ln and ln[:1] != "#"]
        target.write_text("".join(f"{k}={secrets.token_urlsafe(32)}\n" for k in keys))
        target.chmod(0o600)
        console.print(f"wrote {target} ({', '.join(keys)})")


@k8s_app.command("apply")
def apply_cmd(
    overlay: Annotated[str, typer.Argument(help="overlay name (dev, prod) or a kustomization directory")],
    context: ContextOpt = None,
    wait: Annotated[bool, typer.Option(help="wait for Deployments, StatefulSets, RayCluster")] = True,
    timeout: Annotated[float, typer.Option(help="rollout wait, seconds")] = 900,
    dry_run: Annotated[bool, typer.Option(help="server-side dry run only")] = False,
    root: RootOpt = None,
) -> None:
    """Server-side apply an overlay, then watch it roll out."""
    objs = _render_or_exit(overlay_dir(overlay, root))
    dyn = dynamic_client(context)
    ns = next((o["metadata"]["name"] for o in objs if o["kind"] == "Namespace"), None)
    rendered = {o["metadata"]["name"] for o in objs if o["kind"] == "Secret"}
    missing = []
    for name in sorted(referenced_secrets(objs) - rendered):
        try:
            dyn.get(dyn.resources.get(api_version="v1", kind="Secret"), name=name, namespace=ns)
        except Exception:  # NotFoundError, or the namespace itself is new
            missing.append(name)
    if missing:
        console.print(
            f"[red]Secrets {', '.join(missing)} must exist in namespace {ns} first "
            "(infra/README.md, 'Secrets').[/red]"
        )
        raise typer.Exit(2)
    apply_objects(dyn, objs, dry_run=dry_run)
    console.print(f"applied {len(objs)} objects{' (dry run)' if dry_run else ''}")
    if wait and not dry_run and not wait_rollout(dyn, objs, timeout, report=console.print):
        raise typer.Exit(1)


@k8s_app.command("status")
def status_cmd(
    overlay: Annotated[str, typer.Argument(help="overlay whose namespace to inspect")] = "dev",
    context: ContextOpt = None,
    root: RootOpt = None,
) -> None:
    """Health of the fleet's pods; exits 1 if any pod is unhealthy."""
    objs = _render_or_exit(overlay_dir(overlay, root))
    ns = next((o["metadata"]["name"] for o in objs if o["kind"] == "Namespace"), "default")
    dyn = dynamic_client(context)
    pods = (
        dyn.get(
            dyn.resources.get(api_version="v1", kind="Pod"),
            namespace=ns,
            label_selector="app.kubernetes.io/part-of=molmofleet",
        )
        .to_dict()
        .get("items", [])
    )
    table = Table(title=f"molmofleet pods in {ns}")
    for col in ("pod", "component", "node", "health"):
        table.add_column(col)
    bad = 0
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        ok, text = pod_health(pod)
        bad += not ok
        labels = pod["metadata"].get("labels", {})
        table.add_row(
            pod["metadata"]["name"],
            labels.get("app.kubernetes.io/component") or labels.get("app.kubernetes.io/name", ""),
            pod.get("spec", {}).get("nodeName") or "-",
            f"[{'green' if ok else 'red'}]{text}[/]",
        )
    console.print(table)
    for o in objs:
        if o["kind"] in WORKLOADS:
            live = dyn.get(
                dyn.resources.get(api_version=o["apiVersion"], kind=o["kind"]),
                name=o["metadata"]["name"],
                namespace=ns,
            ).to_dict()
            done, why = rollout_state(live)
            bad += not done
            console.print(f"{o['kind']}/{o['metadata']['name']}: {why}")
    if bad or not pods:
        raise typer.Exit(1)
