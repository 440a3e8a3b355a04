"""Policy checks on the rendered manifests: hardened pods, probes and limits everywhere, pinned images, no secret
value in git, and NetworkPolicies that let only fleet components reach Redis and expose only the dashboard."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from ipaddress import ip_address, ip_network
from urllib.parse import urlparse

import pytest
import yaml

from fleet.config import FleetConfig
from fleet.k8s.kustomize import Obj
from tests.infra.conftest import K8S, OVERLAYS, REPO

SECRETISH = re.compile(r"PASSWORD|SECRET|TOKEN|PASSWD|API_?KEY|PRIVATE", re.I)


def pods(objs: list[Obj]) -> Iterator[tuple[str, dict, dict]]:
    """(name, pod labels as the cluster will see them, pod spec) of every pod template in a render."""
    for o in objs:
        if o["kind"] in ("Deployment", "StatefulSet"):
            t = o["spec"]["template"]
            yield o["metadata"]["name"], t["metadata"]["labels"], t["spec"]
        elif o["kind"] == "RayCluster":
            # KubeRay adds these labels to every pod it creates
            base = {"ray.io/cluster": o["metadata"]["name"]}
            head = o["spec"]["headGroupSpec"]["template"]
            yield "ray-head", {**head["metadata"]["labels"], **base, "ray.io/node-type": "head"}, head["spec"]
            for g in o["spec"]["workerGroupSpecs"]:
                t = g["template"]
                labels = {
                    **t["metadata"]["labels"],
                    **base,
                    "ray.io/node-type": "worker",
                    "ray.io/group": g["groupName"],
                }
                yield f"ray-{g['groupName']}", labels, t["spec"]


def quantity(q: str | int) -> float:
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(q))
    assert m, q
    return float(m.group(1)) * units.get(m.group(2), 1)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_are_non_root_and_restricted(renders: dict, overlay: str) -> None:
    for name, _, spec in pods(renders[overlay]):
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True and psc.get("runAsUser", 1) != 0, name
        assert psc["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec["automountServiceAccountToken"] is False, name
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), name
        assert not any("hostPath" in v for v in spec.get("volumes", [])), name
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and not sc.get("privileged"), (name, c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add"), (
                name,
                c["name"],
            )
            assert sc["readOnlyRootFilesystem"] is True, (name, c["name"])
            assert sc.get("runAsUser", 1) != 0, (name, c["name"])
    ns = next(o for o in renders[overlay] if o["kind"] == "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_probes_and_limits(renders: dict, overlay: str) -> None:
    for name, _, spec in pods(renders[overlay]):
        for c in spec["containers"]:
            assert "readinessProbe" in c and "livenessProbe" in c, (name, c["name"])
        for c in spec.get("initContainers", []) + spec["containers"]:
            res = c["resources"]
            for r in ("cpu", "memory"):
                assert quantity(res["requests"][r]) <= quantity(res["limits"][r]), (name, c["name"], r)
            assert c["image"].rpartition(":")[2] not in ("", "latest") or "@sha256:" in c["image"], c["image"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secret_values_never_inline(renders: dict, overlay: str) -> None:
    for name, _, spec in pods(renders[overlay]):
        for c in spec.get("initContainers", []) + spec["containers"]:
            for e in c.get("env", []):
                assert not (SECRETISH.search(e["name"]) and "value" in e), (name, e["name"])
            assert not any(SECRETISH.search(a) and "=" in a for a in c.get("args", []) + c.get("command", []))
    rendered = [o for o in renders[overlay] if o["kind"] == "Secret"]
    # the only Secrets rendered are generated from (gitignored) env files: they carry the content-hash suffix
    assert all(
        re.fullmatch(r"molmofleet-(redis|fleet)-[a-z0-9]{10}", s["metadata"]["name"]) for s in rendered
    )


def test_no_secret_material_in_git() -> None:
    files = [p for p in K8S.rglob("*") if p.is_file() and not p.name.endswith(".env")]
    for path in files:
        if path.suffix in (".yaml", ".yml"):
            for doc in yaml.safe_load_all(path.read_text()):
                if not isinstance(doc, dict):
                    continue
                assert not (doc.get("kind") == "Secret" and (doc.get("data") or doc.get("stringData"))), path
                for gen in doc.get("secretGenerator", []):
                    assert not gen.get("literals") and not gen.get("files"), (
                        f"{path}: use envs from gitignored files"
                    )
                    for env in gen.get("envs", []):
                        ignored = subprocess.run(
                            ["git", "check-ignore", "-q", str(path.parent / env)], cwd=REPO
                        )
                        assert ignored.returncode == 0, f"{path.parent / env} is not gitignored"
                        assert (path.parent / f"{env}.example").is_file(), f"{env}.example documents the keys"
    assert "requirepass" not in (K8S / "base" / "config" / "redis.conf").read_text()
    cfg = FleetConfig.load(K8S / "base" / "config" / "fleet.yaml")
    assert urlparse(cfg.redis.url).password is None and cfg.weights.secret_file is None


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secret_keys_and_config_are_consistent(renders: dict, overlay: str) -> None:
    objs = renders[overlay]
    examples = {}
    for ex in (K8S / "overlays" / "dev" / "secrets").glob("*.env.example"):
        keys = {
            ln.split("=")[0] for ln in ex.read_text().splitlines() if "=" in ln and not ln.startswith("#")
        }
        examples[f"molmofleet-{ex.name.split('.')[0]}"] = keys
    generated = {s["metadata"]["name"]: set(s["data"]) for s in objs if s["kind"] == "Secret"}
    for name, _, spec in pods(objs):
        for c in spec.get("initContainers", []) + spec["containers"]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    keys = generated.get(ref["name"], examples.get(ref["name"]))
                    assert keys is not None and ref["key"] in keys, (name, ref)
    cm = next(
        o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("fleet-config-")
    )
    cfg = FleetConfig.model_validate(yaml.safe_load(cm["data"]["fleet.yaml"]))
    ray = next(o for o in objs if o["kind"] == "RayCluster")
    assert cfg.ray_address == f"ray://{ray['metadata']['name']}-head-svc:10001"
    assert urlparse(cfg.redis.url).hostname == "redis" and cfg.redis.user == "admin"
    assert cfg.mlflow.tracking_uri == "http://mlflow:5000"


def _selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()) and not selector.get(
        "matchExpressions"
    )


class Peer:
    """A traffic source: a pod of the fleet's namespace, a pod of another namespace, or an outside address."""

    def __init__(self, labels: dict | None = None, namespace: dict | None = None, ip: str | None = None):
        self.labels, self.namespace, self.ip = labels, namespace, ip

    def matches(self, peer: dict) -> bool:
        if "ipBlock" in peer:
            block = peer["ipBlock"]
            return (
                self.ip is not None
                and ip_address(self.ip) in ip_network(block["cidr"])
                and not any(ip_address(self.ip) in ip_network(e) for e in block.get("except", []))
            )
        if self.labels is None:  # an outside address matches no pod or namespace selector
            return False
        if "namespaceSelector" in peer:
            return (
                self.namespace is not None
                and _selects(peer["namespaceSelector"], self.namespace)
                and (_selects(peer.get("podSelector", {}), self.labels))
            )
        return self.namespace is None and _selects(peer["podSelector"], self.labels)


def ingress_allowed(objs: list[Obj], src: Peer, dst: dict, port: int) -> bool:
    """NetworkPolicy ingress semantics for the fleet's namespace (a pod no policy selects accepts everything)."""
    policies = [p for p in objs if p["kind"] == "NetworkPolicy" and _selects(p["spec"]["podSelector"], dst)]
    policies = [p for p in policies if "Ingress" in p["spec"].get("policyTypes", ["Ingress"])]
    if not policies:
        return True
    for p in policies:
        for rule in p["spec"].get("ingress", []):
            ports = rule.get("ports")
            if ports and not any(pp.get("port") == port for pp in ports):
                continue
            if not rule.get("from") or any(src.matches(peer) for peer in rule["from"]):
                return True
    return False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_guard_redis_and_expose_only_the_dashboard(renders: dict, overlay: str) -> None:
    objs = renders[overlay]
    fleet = {name: labels for name, labels, _ in pods(objs)}
    gateway = "robot-gateway" in fleet  # the prod-robots overlay: robots' mutual-TLS entry point
    needs_redis = {
        name
        for name, _, spec in pods(objs)
        if any(
            e["name"].startswith("MOLMOFLEET_REDIS_") for c in spec["containers"] for e in c.get("env", [])
        )
    } | ({"robot-gateway"} if gateway else set())
    redis = fleet.pop("redis")
    reach = {name for name, labels in fleet.items() if ingress_allowed(objs, Peer(labels), redis, 6379)}
    assert reach == needs_redis
    assert {"orchestrator", "dashboard", "ray-gpu", "ray-cpu"} <= reach
    ports = {
        name: [p["containerPort"] for c in spec["containers"] for p in c.get("ports", [])] + [52365]
        for name, _, spec in pods(objs)
    }
    strangers = [
        Peer({"app": "debug-shell"}),
        Peer({}, {"kubernetes.io/metadata.name": "default"}),
        Peer(ip="192.0.2.7"),
    ]
    robot_site = Peer(ip="203.0.113.20")
    for name, labels in {**fleet, "redis": redis}.items():
        for port in ports[name]:
            public = name == "dashboard" and port == 8080
            assert any(ingress_allowed(objs, s, labels, port) for s in strangers) == public, (name, port)
            from_robots = public or (name == "robot-gateway" and port in (6380, 5555, 5556))
            assert ingress_allowed(objs, robot_site, labels, port) == from_robots, (name, port)
            if gateway and name != "robot-gateway":
                via_gateway = (name in ("ray-gpu",) and port in (5555, 5556)) or (
                    name == "redis" and port == 6379
                )
                assert ingress_allowed(objs, Peer(fleet["robot-gateway"]), labels, port) >= via_gateway
    monitoring = Peer({}, {"kubernetes.io/metadata.name": "monitoring"})
    assert ingress_allowed(objs, monitoring, fleet["orchestrator"], 9100)
    assert not ingress_allowed(objs, monitoring, redis, 6379)
    exposed_services = [
        s["metadata"]["name"]
        for s in objs
        if s["kind"] == "Service" and s["spec"].get("type", "ClusterIP") in ("LoadBalancer", "NodePort")
    ]
    assert set(exposed_services) <= {"dashboard", "robot-gateway"} and not [
        o for o in objs if o["kind"] == "Ingress"
    ]
    for s in objs:
        if s["metadata"]["name"] == "robot-gateway" and s["kind"] == "Service":
            assert s["spec"]["loadBalancerSourceRanges"] == ["203.0.113.0/24"]
