"""Offline schema validation: core objects against the Kubernetes OpenAPI schemas (strict: unknown fields fail),
the RayCluster against KubeRay's CRD schema (vendored in infra/k8s/crds) and its pod templates against core's."""

from __future__ import annotations

from copy import deepcopy
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from fleet.k8s.kustomize import Obj
from tests.infra.conftest import K8S, OVERLAYS

K8S_VERSIONS = ["1.30.0", "1.32.0"]  # the oldest and a current minor our manifests must suit


def _strict(schema: Any) -> Any:
    """Close every object with declared properties, as `kubectl apply --validate=strict` does for CRDs."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        if schema.get("x-kubernetes-int-or-string"):
            schema.pop("type", None)
    elif isinstance(schema, list):
        schema = [_strict(v) for v in schema]
    return schema


@pytest.fixture(scope="module")
def raycluster_validator() -> jsonschema.Draft7Validator:
    doc = yaml.safe_load((K8S / "crds" / "ray.io_rayclusters.v1.schema.yaml").read_text())
    return jsonschema.Draft7Validator(_strict(doc["openAPIV3Schema"]))


def _pod_templates(ray: Obj) -> list[Obj]:
    spec = ray["spec"]
    return [spec["headGroupSpec"]["template"], *(g["template"] for g in spec["workerGroupSpecs"])]


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_core_objects_match_kubernetes_schemas(renders: dict, overlay: str, version: str) -> None:
    objs = renders[overlay]
    for o in objs:
        if o["apiVersion"].startswith("ray.io/"):
            for i, tmpl in enumerate(_pod_templates(o)):
                wrapped = {
                    "apiVersion": "v1",
                    "kind": "PodTemplate",
                    "metadata": {"name": f"t{i}"},
                    "template": tmpl,
                }
                kubernetes_validate.validate(wrapped, version, strict=True)
            continue
        kubernetes_validate.validate(o, version, strict=True)
    assert any(o["kind"] == "StatefulSet" for o in objs)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_raycluster_matches_kuberay_crd(renders: dict, overlay: str, raycluster_validator: Any) -> None:
    (ray,) = [o for o in renders[overlay] if o["kind"] == "RayCluster"]
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in raycluster_validator.iter_errors(ray)
    ]
    assert not errors, errors
    groups = [g["groupName"] for g in ray["spec"]["workerGroupSpecs"]]
    assert groups == ["gpu", "cpu"]  # the overlays' JSON patches index the groups in this order
    for g in ray["spec"]["workerGroupSpecs"]:
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]


def test_validators_reject_what_is_wrong(renders: dict, raycluster_validator: Any) -> None:
    (ray,) = [deepcopy(o) for o in renders["prod"] if o["kind"] == "RayCluster"]
    ray["spec"]["workerGroupSpecs"][0]["replica"] = 3  # a typo of "replicas"
    assert list(raycluster_validator.iter_errors(ray))
    del ray["spec"]["workerGroupSpecs"][0]["replica"]
    ray["spec"]["workerGroupSpecs"][0].pop("groupName")
    assert list(raycluster_validator.iter_errors(ray))
    (sts,) = [deepcopy(o) for o in renders["prod"] if o["kind"] == "StatefulSet"]
    sts["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, K8S_VERSIONS[-1], strict=True)
