"""`fleet k8s apply` and `status` through the real kubernetes client against a small in-process API server
that speaks discovery, server-side apply (PATCH application/apply-patch+yaml) and GET, with controllers that
report every workload rolled out; plus the rollout and pod-health rules on live-object shapes."""

from __future__ import annotations

import json
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import typer
import yaml
from typer.testing import CliRunner

from fleet.k8s import k8s_app
from fleet.k8s.cluster import pod_health, rollout_state
from fleet.k8s.kustomize import render

RESOURCES = {  # group/version -> [(plural, kind, namespaced)]
    "v1": [
        ("namespaces", "Namespace", False),
        ("serviceaccounts", "ServiceAccount", True),
        ("configmaps", "ConfigMap", True),
        ("secrets", "Secret", True),
        ("services", "Service", True),
        ("persistentvolumeclaims", "PersistentVolumeClaim", True),
        ("pods", "Pod", True),
    ],
    "apps/v1": [("deployments", "Deployment", True), ("statefulsets", "StatefulSet", True)],
    "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget", True)],
    "networking.k8s.io/v1": [("networkpolicies", "NetworkPolicy", True)],
    "ray.io/v1": [("rayclusters", "RayCluster", True)],
}


class FakeApiServer(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.objects: dict[str, dict] = {}
        self.patches: list[tuple[str, dict, str, dict]] = []  # (path, query, content type, body)
        self.pods: list[dict] = []


class _Handler(BaseHTTPRequestHandler):
    server: FakeApiServer

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, code: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        path = urlparse(self.path).path
        if path == "/version":
            return self._send(200, {"major": "1", "minor": "32", "gitVersion": "v1.32.0"})
        if path == "/api":
            return self._send(200, {"kind": "APIVersions", "versions": ["v1"]})
        if path == "/apis":
            groups = [
                {
                    "name": gv.split("/")[0],
                    "versions": [{"groupVersion": gv, "version": "v1"}],
                    "preferredVersion": {"groupVersion": gv, "version": "v1"},
                }
                for gv in RESOURCES
                if "/" in gv
            ]
            return self._send(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        gv = path.removeprefix("/api/").removeprefix("/apis/")
        if gv in RESOURCES:
            res = [
                {
                    "name": p,
                    "singularName": "",
                    "namespaced": ns,
                    "kind": k,
                    "verbs": ["get", "list", "patch"],
                }
                for p, k, ns in RESOURCES[gv]
            ]
            return self._send(200, {"kind": "APIResourceList", "groupVersion": gv, "resources": res})
        if path.endswith("/pods"):
            return self._send(200, {"kind": "PodList", "apiVersion": "v1", "items": self.server.pods})
        if path in self.server.objects:
            return self._send(200, self.server.objects[path])
        return self._send(404, {"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404})

    def do_PATCH(self) -> None:
        url = urlparse(self.path)
        body = yaml.safe_load(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.patches.append((url.path, parse_qs(url.query), self.headers["Content-Type"], body))
        live = {**body, "metadata": {**body["metadata"], "generation": 1}}
        replicas = body.get("spec", {}).get("replicas", 1)
        # controllers that finish at once: every workload reports itself rolled out
        live["status"] = {"RayCluster": {"state": "ready", "readyWorkerReplicas": 1}}.get(
            body["kind"],
            {
                "observedGeneration": 1,
                "replicas": replicas,
                "updatedReplicas": replicas,
                "readyReplicas": replicas,
                "availableReplicas": replicas,
                "currentRevision": "r1",
                "updateRevision": "r1",
            },
        )
        self.server.objects[url.path] = live
        self._send(200, live)


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeApiServer]:
    server = FakeApiServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}],
        "users": [{"name": "fake", "user": {"token": "t"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
    }
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(kubeconfig))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the client's discovery cache goes here
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(k8s_app, name="k8s")
    return app


def test_apply_is_server_side_in_order_and_waits_for_rollout(api: FakeApiServer, k8s_tree: Path) -> None:
    out = CliRunner().invoke(_cli(), ["k8s", "apply", "dev", "--root", str(k8s_tree), "--timeout", "20"])
    assert out.exit_code == 0, out.output
    objs = render(k8s_tree / "overlays" / "dev")
    assert [b["metadata"]["name"] for *_, b in api.patches] == [o["metadata"]["name"] for o in objs]
    for (path, query, ctype, body), obj in zip(api.patches, objs, strict=True):
        assert ctype == "application/apply-patch+yaml" and body == obj
        assert query == {"fieldManager": ["molmofleet"], "force": ["true"]}
        ns = obj["metadata"].get("namespace")
        assert (f"/namespaces/{ns}/" in path) == (ns is not None), path
    assert api.patches[0][0] == "/api/v1/namespaces/molmofleet-dev"
    assert "RayCluster/molmofleet: state ready" in out.output


def test_apply_refuses_when_referenced_secrets_are_missing(api: FakeApiServer, k8s_tree: Path) -> None:
    out = CliRunner().invoke(_cli(), ["k8s", "apply", "prod", "--root", str(k8s_tree)])
    assert out.exit_code == 2 and "molmofleet-fleet, molmofleet-redis" in out.output
    assert not api.patches


def test_status_reports_unhealthy_pods(api: FakeApiServer, k8s_tree: Path) -> None:
    assert CliRunner().invoke(_cli(), ["k8s", "apply", "dev", "--root", str(k8s_tree)]).exit_code == 0
    ok = {
        "metadata": {"name": "redis-0", "labels": {"app.kubernetes.io/name": "redis"}},
        "spec": {"nodeName": "n1", "containers": [{"name": "redis"}]},
        "status": {
            "phase": "Running",
            "containerStatuses": [
                {"name": "redis", "ready": True, "restartCount": 0, "state": {"running": {}}}
            ],
        },
    }
    api.pods = [ok]
    out = CliRunner().invoke(_cli(), ["k8s", "status", "dev", "--root", str(k8s_tree)])
    assert out.exit_code == 0, out.output
    crashing = json.loads(json.dumps(ok))
    crashing["metadata"]["name"] = "dashboard-1"
    crashing["status"]["containerStatuses"][0] |= {
        "ready": False,
        "restartCount": 7,
        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
    }
    api.pods = [ok, crashing]
    out = CliRunner().invoke(_cli(), ["k8s", "status", "dev", "--root", str(k8s_tree)])
    assert out.exit_code == 1 and "CrashLoopBackOff" in out.output


def test_rollout_and_health_rules() -> None:
    dep = {
        "kind": "Deployment",
        "metadata": {"generation": 2},
        "spec": {"replicas": 2},
        "status": {"observedGeneration": 1, "updatedReplicas": 2, "availableReplicas": 2},
    }
    assert not rollout_state(dep)[0]
    dep["status"]["observedGeneration"] = 2
    assert rollout_state(dep) == (True, "2/2 ready")
    dep["status"]["availableReplicas"] = 1
    assert rollout_state(dep) == (False, "2/2 updated, 1/2 ready")
    sts = {
        "kind": "StatefulSet",
        "metadata": {"generation": 1},
        "spec": {"replicas": 1},
        "status": {
            "observedGeneration": 1,
            "updatedReplicas": 1,
            "readyReplicas": 1,
            "currentRevision": "a",
            "updateRevision": "b",
        },
    }
    assert not rollout_state(sts)[0]
    assert not rollout_state({"kind": "RayCluster", "metadata": {}, "status": {"state": "suspended"}})[0]
    pending = {
        "status": {
            "phase": "Pending",
            "initContainerStatuses": [
                {"name": "render-acl", "state": {"waiting": {"reason": "CreateContainerConfigError"}}}
            ],
        },
        "spec": {"containers": [{"name": "redis"}]},
    }
    healthy, text = pod_health(pending)
    assert not healthy and "render-acl: CreateContainerConfigError" in text and "0/1 ready" in text
