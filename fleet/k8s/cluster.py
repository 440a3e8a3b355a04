"""The cluster side of ``fleet k8s``: server-side apply, rollout waiting and pod health.

The ``kubernetes`` client is imported only when a cluster is used, so rendering needs no cluster libraries. The
state checks are pure functions of the live objects' dicts, tested without a cluster.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from copy import deepcopy
from typing import Any

from fleet.k8s.kustomize import BUILTIN_NAME_REFS, walk_set

Obj = dict[str, Any]
FIELD_MANAGER = "molmofleet"
WORKLOADS = ("Deployment", "StatefulSet", "RayCluster")


def rollout_state(o: Obj) -> tuple[bool, str]:
    """Whether a live workload has finished rolling out, and what it is waiting for."""
    kind, spec, st = o["kind"], o.get("spec", {}), o.get("status") or {}
    if kind in ("Deployment", "StatefulSet"):
        want = spec.get("replicas", 1)
        if st.get("observedGeneration", 0) < o["metadata"].get("generation", 0):
            return False, "waiting for the controller to observe the new spec"
        ready = st.get("availableReplicas" if kind == "Deployment" else "readyReplicas", 0)
        if st.get("updatedReplicas", 0) < want or ready < want:
            return False, f"{st.get('updatedReplicas', 0)}/{want} updated, {ready}/{want} ready"
        if kind == "StatefulSet" and st.get("updateRevision") not in (None, st.get("currentRevision")):
            return False, "pods still on the previous revision"
        return True, f"{ready}/{want} ready"
    if kind == "RayCluster":
        state = st.get("state", "")
        return (
            state == "ready",
            f"state {state or 'unknown'}, {st.get('readyWorkerReplicas', 0)} workers ready",
        )
    return True, "applied"


def pod_health(pod: Obj) -> tuple[bool, str]:
    """(healthy, summary) of a live pod: ready containers, restarts and the reason a container is not running."""
    st = pod.get("status") or {}
    statuses = (st.get("initContainerStatuses") or []) + (st.get("containerStatuses") or [])
    main = st.get("containerStatuses") or []
    ready = sum(1 for c in main if c.get("ready"))
    restarts = sum(c.get("restartCount", 0) for c in statuses)
    reasons = [
        f"{c['name']}: {w['reason']}"
        for c in statuses
        if (w := (c.get("state") or {}).get("waiting")) and w.get("reason") not in (None, "PodInitializing")
    ]
    reasons += [
        f"{c['name']}: {t.get('reason')} ({t.get('exitCode')})"
        for c in main
        if (t := (c.get("state") or {}).get("terminated")) and t.get("exitCode")
    ]
    phase = st.get("phase", "Unknown")
    healthy = phase == "Succeeded" or (
        phase == "Running" and bool(main) and ready == len(main) and not reasons
    )
    text = f"{phase}, {ready}/{len(main) or len(pod.get('spec', {}).get('containers', []))} ready, {restarts} restarts"
    return healthy, text + (f"; {'; '.join(reasons)}" if reasons else "")


def referenced_secrets(objs: list[Obj]) -> set[str]:
    """Names of Secrets the rendered pods refer to."""
    names: set[str] = set()
    for ref, kind, path in BUILTIN_NAME_REFS + [
        ("Secret", "RayCluster", f"spec/{g}/template/spec/containers/env/valueFrom/secretKeyRef/name")
        for g in ("headGroupSpec", "workerGroupSpecs")
    ]:
        for o in objs:
            if ref == "Secret" and o["kind"] == kind:
                walk_set(deepcopy(o), path.split("/"), lambda n: names.add(n) or n)
    return names


def dynamic_client(context: str | None) -> Any:
    """A dynamic client for $KUBECONFIG (read now, not at import) or ~/.kube/config, else the in-cluster account."""
    from kubernetes import client, config  # lazy: render needs no cluster libraries
    from kubernetes.dynamic import DynamicClient

    cfg = client.Configuration()
    try:
        config.load_kube_config(
            config_file=os.environ.get("KUBECONFIG"), context=context, client_configuration=cfg
        )
    except config.ConfigException:
        config.load_incluster_config(client_configuration=cfg)
    return DynamicClient(client.ApiClient(cfg))


def apply_objects(dyn: Any, objs: list[Obj], dry_run: bool = False) -> None:
    """Server-side apply, in kustomize's order (namespace first), taking ownership of the fields we set."""
    for o in objs:
        api = dyn.resources.get(api_version=o["apiVersion"], kind=o["kind"])
        dyn.server_side_apply(
            api,
            body=o,
            name=o["metadata"]["name"],
            namespace=o["metadata"].get("namespace") if api.namespaced else None,
            field_manager=FIELD_MANAGER,
            force_conflicts=True,
            dry_run="All" if dry_run else None,
        )


def wait_rollout(
    dyn: Any, objs: list[Obj], timeout_s: float, poll_s: float = 2.0, report: Callable[[str], None] = print
) -> bool:
    """Poll the applied workloads until each is rolled out; report each change of state. False on timeout."""
    pending = {
        (o["apiVersion"], o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"])
        for o in objs
        if o["kind"] in WORKLOADS
    }
    deadline, last = time.monotonic() + timeout_s, {}
    while pending and time.monotonic() < deadline:
        for key in sorted(pending, key=str):
            api_version, kind, ns, name = key
            live = dyn.get(
                dyn.resources.get(api_version=api_version, kind=kind), name=name, namespace=ns
            ).to_dict()
            done, why = rollout_state(live)
            if last.get(key) != why:
                report(f"{kind}/{name}: {why}")
                last[key] = why
            if done:
                pending.discard(key)
        if pending:
            time.sleep(poll_s)
    for _, kind, _, name in sorted(pending, key=str):
        report(f"{kind}/{name}: not rolled out after {timeout_s:.0f} s")
    return not pending
