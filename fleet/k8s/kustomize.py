"""A small Kustomize: the subset our overlays use, rendered byte-identical to ``kubectl kustomize``.

Supported: ``resources`` (files and directories), ``components``, ``namespace``, ``labels`` (metadata only),
``images``, ``patches`` (strategic merge for built-in kinds, JSON merge for custom ones, JSON 6902 with a target),
``configMapGenerator``/``secretGenerator`` (files, envs, literals, behavior, content-hash suffix),
``generatorOptions.disableNameSuffixHash`` and ``configurations`` (nameReference only). Anything else is refused by
name, so a render never silently differs from kubectl's; ``fleet k8s render --engine kubectl`` uses the real one.
Each kustomization level generates, then patches, sets the namespace, labels and images on what it accumulated
(kustomize's order); at the top, generated names get their hash and references to them are rewritten.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from copy import deepcopy
from pathlib import Path
from typing import Any

import yaml

from fleet.k8s.yamlio import Loader, load_docs

Obj = dict[str, Any]
LEGACY_FIRST = [
    "Namespace",
    "ResourceQuota",
    "StorageClass",
    "CustomResourceDefinition",
    "ServiceAccount",
    "PodSecurityPolicy",
    "Role",
    "ClusterRole",
    "RoleBinding",
    "ClusterRoleBinding",
    "ConfigMap",
    "Secret",
    "Endpoints",
    "Service",
    "LimitRange",
    "PriorityClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "Deployment",
    "StatefulSet",
    "CronJob",
    "PodDisruptionBudget",
]
LEGACY_LAST = ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"]
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "IngressClass",
    "RuntimeClass",
    "APIService",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
}
KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_FIELDS = {
    "apiVersion",
    "kind",
    "resources",
    "namespace",
    "labels",
    "images",
    "patches",
    "configMapGenerator",
    "secretGenerator",
    "generatorOptions",
    "configurations",
    "components",
}
# Strategic-merge keys of the built-in lists our patches touch; other lists are replaced whole, as in kubectl.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "env": "name",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
}
BUILTIN_GROUPS = {
    "",
    "apps",
    "batch",
    "policy",
    "networking.k8s.io",
    "rbac.authorization.k8s.io",
    "autoscaling",
}
POD_SPECS = {
    "Pod": "spec",
    "Deployment": "spec/template/spec",
    "StatefulSet": "spec/template/spec",
    "DaemonSet": "spec/template/spec",
    "ReplicaSet": "spec/template/spec",
    "Job": "spec/template/spec",
    "CronJob": "spec/jobTemplate/spec/template/spec",
}
_REFS = {
    "ConfigMap": [
        "volumes/configMap/name",
        "volumes/projected/sources/configMap/name",
        "containers/env/valueFrom/configMapKeyRef/name",
        "initContainers/env/valueFrom/configMapKeyRef/name",
        "containers/envFrom/configMapRef/name",
        "initContainers/envFrom/configMapRef/name",
    ],
    "Secret": [
        "volumes/secret/secretName",
        "volumes/projected/sources/secret/name",
        "imagePullSecrets/name",
        "containers/env/valueFrom/secretKeyRef/name",
        "initContainers/env/valueFrom/secretKeyRef/name",
        "containers/envFrom/secretRef/name",
        "initContainers/envFrom/secretRef/name",
    ],
}
# (referenced kind, referring kind, path) for built-in workloads: kustomize's own nameReference table, our subset.
BUILTIN_NAME_REFS = [
    (ref, kind, f"{prefix}/{p}")
    for ref, paths in _REFS.items()
    for kind, prefix in POD_SPECS.items()
    for p in paths
]


class KustomizeError(ValueError):
    """A kustomization this renderer cannot or will not render; the message says what to change."""


def _gvk(o: Obj) -> tuple[str, str, str]:
    group, _, version = o.get("apiVersion", "").rpartition("/")
    return group, version, o.get("kind", "")


def _smp(dst: Any, patch: Any, builtin: bool, path: tuple[str, ...]) -> Any:
    """Strategic merge patch (maps merge, keyed lists merge by key, null deletes); JSON merge when not builtin."""
    if not isinstance(patch, dict) or not isinstance(dst, dict):
        return deepcopy(patch)
    out = dict(dst)
    for k, v in patch.items():
        if isinstance(k, str) and k.startswith("$"):
            raise KustomizeError(f"patch directive {k!r} is not supported by the built-in renderer")
        if v is None:
            out.pop(k, None)
        elif isinstance(v, list) and builtin and isinstance(out.get(k), list) and _merge_key(k, path):
            out[k] = _merge_list(out[k], v, _merge_key(k, path), (*path, k))
        else:
            out[k] = _smp(out.get(k), v, builtin, (*path, k))
    return out


def _merge_key(field: str, path: tuple[str, ...]) -> str | None:
    if field == "ports":  # container ports merge on containerPort, Service ports on port
        return "port" if path == ("spec",) else "containerPort"
    return MERGE_KEYS.get(field)


def _merge_list(dst: list, patch: list, key: str, path: tuple[str, ...]) -> list:
    by_key = {d.get(key): d for d in dst if isinstance(d, dict)}
    merged = [_smp(by_key.get(p.get(key), {}), p, True, path) for p in patch]
    seen = {p.get(key) for p in patch}
    return merged + [
        d for d in dst if d.get(key) not in seen
    ]  # patch order first, then the rest (apimachinery)


def _pointer(path: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]


def _json6902(obj: Obj, ops: list[Obj]) -> Obj:
    obj = deepcopy(obj)
    for op in ops:
        if op.get("op") not in ("add", "replace", "remove", "test"):
            raise KustomizeError(f"JSON patch op {op.get('op')!r} is not supported by the built-in renderer")
        *parents, last = _pointer(op["path"])
        node: Any = obj
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        kind = op["op"]
        if isinstance(node, list):
            i = len(node) if last == "-" else int(last)
            if kind == "add":
                node.insert(i, deepcopy(op["value"]))
            elif kind == "replace":
                node[i] = deepcopy(op["value"])
            elif kind == "remove":
                del node[i]
            elif kind == "test" and node[i] != op["value"]:
                raise KustomizeError(f"JSON patch test failed at {op['path']}")
        elif kind in ("add", "replace"):
            if kind == "replace" and last not in node:
                raise KustomizeError(f"JSON patch replace: {op['path']} does not exist")
            node[last] = deepcopy(op["value"])
        elif kind == "remove":
            del node[last]
        elif node.get(last) != op["value"]:  # test
            raise KustomizeError(f"JSON patch test failed at {op['path']}")
    return obj


def _matches(o: Obj, target: Obj) -> bool:
    g, v, k = _gvk(o)
    want = {
        "group": g,
        "version": v,
        "kind": k,
        "name": o["metadata"].get("name"),
        "namespace": o["metadata"].get("namespace"),
    }
    unsupported = set(target) - set(want)
    if unsupported:
        raise KustomizeError(
            f"patch target fields {sorted(unsupported)} are not supported by the built-in renderer"
        )
    return all(want[f] == val for f, val in target.items())


# ---------------------------------------------------------------- generators


def _env_pairs(text: str, source: Path) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for n, line in enumerate(text.lstrip("\ufeff").split("\n"), 1):
        line = line.rstrip("\r").lstrip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[-._a-zA-Z][-._a-zA-Z0-9]*", key):
            raise KustomizeError(f"{source}:{n}: expected KEY=VALUE")
        pairs[key] = value
    return pairs


def _generated_data(spec: Obj, root: Path) -> dict[str, str]:
    data: dict[str, str] = {}
    for env in spec.get("envs", []) + ([spec["env"]] if spec.get("env") else []):
        path = root / env
        if not path.is_file():
            raise KustomizeError(f"{path} does not exist (secret env files are not in git: see its .example)")
        data.update(_env_pairs(path.read_text(), path))
    for f in spec.get("files", []):
        key, _, rel = f.partition("=") if "=" in f else (Path(f).name, "", f)
        data[key] = (root / rel).read_text()
    for lit in spec.get("literals", []):
        key, sep, value = lit.partition("=")
        if not sep:
            raise KustomizeError(f"literal {lit!r} must look like KEY=VALUE")
        data[key] = value.strip("\"'") if value[:1] in "\"'" and value[-1:] == value[:1] else value
    return data


def content_hash(o: Obj) -> str:
    """kustomize's name suffix: sha256 of a JSON digest of the data (its name field is always empty)."""
    if o["kind"] == "ConfigMap":
        m = {"kind": "ConfigMap", "name": "", "data": o.get("data", "")}
        if isinstance(o.get("binaryData"), dict):
            m["binaryData"] = o["binaryData"]
    else:
        m = {"kind": "Secret", "type": o.get("type", ""), "name": "", "data": o.get("data", "")}
    text = json.dumps(m, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for ch, esc in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(ch, esc)
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return digest.translate(str.maketrans({"0": "g", "1": "h", "3": "k", "a": "m", "e": "t"}))


# ---------------------------------------------------------------- the renderer

# Marks a generated object whose name gets a content-hash suffix at the top level; removed before output.
_HASH = "\0needs-hash"


class _Level:
    """One kustomization's accumulated objects and name-reference field specs."""

    def __init__(self) -> None:
        self.objs: list[Obj] = []
        self.name_refs: list[tuple[str, str, str]] = []


def _accumulate(root: Path, stack: tuple[Path, ...] = (), into: _Level | None = None) -> _Level:
    """Build one kustomization; with ``into``, apply ``root`` as a Component to the parent's accumulation."""
    kfile = next((root / n for n in KUSTOMIZATION_FILES if (root / n).is_file()), None)
    if kfile is None:
        raise KustomizeError(f"{root}: no kustomization.yaml")
    if root in stack:
        raise KustomizeError(f"{root}: kustomization cycle")
    k = yaml.load(kfile.read_text(), Loader=Loader) or {}
    unknown = set(k) - SUPPORTED_FIELDS
    if unknown:
        raise KustomizeError(
            f"{kfile}: {sorted(unknown)} not supported by the built-in renderer; use --engine kubectl"
        )
    if (k.get("kind") == "Component") != (into is not None):
        raise KustomizeError(f"{kfile}: a Component goes under components:, a Kustomization under resources:")
    lvl = into if into is not None else _Level()
    for res in k.get("resources", []):
        path = (root / res).resolve()
        if path.is_dir():
            sub = _accumulate(path, (*stack, root))
            lvl.objs += sub.objs
            lvl.name_refs += sub.name_refs
        elif path.is_file():
            lvl.objs += load_docs(path.read_text())
        else:
            raise KustomizeError(
                f"{root}: resource {res} does not exist (remote resources are not supported)"
            )
    # components see (and patch) everything accumulated so far, before this level's own generators
    for comp in k.get("components", []):
        _accumulate((root / comp).resolve(), (*stack, root), into=lvl)
    for conf in k.get("configurations", []):
        c = yaml.load((root / conf).read_text(), Loader=Loader) or {}
        if set(c) - {"nameReference"}:
            raise KustomizeError(f"{root / conf}: only nameReference configurations are supported")
        lvl.name_refs += [
            (r["kind"], fs["kind"], fs["path"])
            for r in c.get("nameReference", [])
            for fs in r.get("fieldSpecs", [])
        ]
    _generate(k, root, lvl)
    _transform(k, root, lvl)
    return lvl


def _generate(k: Obj, root: Path, lvl: _Level) -> None:
    opts = k.get("generatorOptions", {})
    if set(opts) - {"disableNameSuffixHash"}:
        raise KustomizeError(f"{root}: generatorOptions other than disableNameSuffixHash are not supported")
    for kind, field in (("ConfigMap", "configMapGenerator"), ("Secret", "secretGenerator")):
        for spec in k.get(field, []):
            if set(spec) - {"name", "behavior", "files", "envs", "env", "literals", "type", "options"}:
                raise KustomizeError(f"{root}: {field} {spec.get('name')}: unsupported fields")
            data = _generated_data(spec, root)
            if kind == "Secret":
                data = {key: base64.b64encode(v.encode()).decode() for key, v in data.items()}
            behavior = spec.get("behavior", "create")
            existing = next(
                (o for o in lvl.objs if o["kind"] == kind and o["metadata"]["name"] == spec["name"]), None
            )
            if behavior == "create":
                if existing is not None:
                    raise KustomizeError(f"{root}: {kind} {spec['name']} already exists; use behavior: merge")
                o: Obj = {"apiVersion": "v1", "kind": kind, "metadata": {"name": spec["name"]}}
                if data:
                    o["data"] = data
                if kind == "Secret":
                    o["type"] = spec.get("type", "Opaque")
                lvl.objs.append(o)
            elif existing is None:
                raise KustomizeError(f"{root}: {kind} {spec['name']} to {behavior} does not exist")
            else:
                o = existing
                o["data"] = {**o.get("data", {}), **data} if behavior == "merge" else data
            disable = (spec.get("options") or {}).get(
                "disableNameSuffixHash", opts.get("disableNameSuffixHash")
            )
            if disable:
                o.pop(_HASH, None)
            else:
                o[_HASH] = True


def _transform(k: Obj, root: Path, lvl: _Level) -> None:
    for p in k.get("patches", []):
        if set(p) - {"path", "patch", "target"}:
            raise KustomizeError(
                f"{root}: patch options {sorted(set(p) - {'path', 'patch', 'target'})} unsupported"
            )
        docs = load_docs(p["patch"] if "patch" in p else (root / p["path"]).read_text())
        if docs and isinstance(docs[0], list):
            if "target" not in p:
                raise KustomizeError(f"{root}: a JSON 6902 patch needs a target")
            lvl.objs = [_json6902(o, docs[0]) if _matches(o, p["target"]) else o for o in lvl.objs]
            continue
        for doc in docs:
            target = p.get("target") or {"kind": doc["kind"], "name": doc["metadata"]["name"]}
            hits = [i for i, o in enumerate(lvl.objs) if _matches(o, target)]
            if not hits:
                raise KustomizeError(f"{root}: patch target {target} matches nothing")
            body = {f: v for f, v in doc.items() if f not in ("apiVersion", "kind")}
            body["metadata"] = {
                f: v for f, v in doc.get("metadata", {}).items() if f not in ("name", "namespace")
            }
            for i in hits:
                lvl.objs[i] = _smp(lvl.objs[i], body, _gvk(lvl.objs[i])[0] in BUILTIN_GROUPS, ())
    ns = k.get("namespace")
    for o in lvl.objs if ns else []:
        if o["kind"] == "Namespace":
            o["metadata"]["name"] = ns
        elif o["kind"] not in CLUSTER_SCOPED:
            o["metadata"]["namespace"] = ns
    for spec in k.get("labels", []):
        if (
            spec.get("includeSelectors")
            or spec.get("includeTemplates")
            or set(spec) - {"pairs", "includeSelectors", "includeTemplates"}
        ):
            raise KustomizeError(
                f"{root}: labels with selectors/templates are not supported; label templates directly"
            )
        for o in lvl.objs:
            o["metadata"].setdefault("labels", {}).update(spec["pairs"])
    for img in k.get("images", []):
        for o in lvl.objs:
            for c in _containers(o):
                c["image"] = _retag(c["image"], img)


def _containers(node: Any) -> Iterator[Obj]:
    """Every container and init container anywhere in an object (kustomize's image transformer does the same)."""
    if isinstance(node, dict):
        for key, val in node.items():
            if key in ("containers", "initContainers") and isinstance(val, list):
                yield from (c for c in val if isinstance(c, dict) and "image" in c)
            else:
                yield from _containers(val)
    elif isinstance(node, list):
        for v in node:
            yield from _containers(v)


def _retag(image: str, spec: Obj) -> str:
    name, _, digest = image.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = name[colon + 1 :] if colon > slash else ""
    name = name[:colon] if colon > slash else name
    if name != spec["name"]:
        return image
    name = spec.get("newName", name)
    if "digest" in spec:
        return f"{name}@{spec['digest']}"
    if "newTag" in spec:
        return f"{name}:{spec['newTag']}"
    return name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


def walk_set(node: Any, parts: list[str], fix: Callable[[str], str]) -> None:
    if not parts or node is None:
        return
    if isinstance(node, list):
        for item in node:
            walk_set(item, parts, fix)
        return
    if not isinstance(node, dict) or parts[0] not in node:
        return
    if len(parts) == 1:
        if isinstance(node[parts[0]], str):
            node[parts[0]] = fix(node[parts[0]])
        return
    walk_set(node[parts[0]], parts[1:], fix)


def _legacy_sort_key(o: Obj) -> tuple:
    g, v, kind = _gvk(o)
    rank = (
        LEGACY_FIRST.index(kind) - len(LEGACY_FIRST)
        if kind in LEGACY_FIRST
        else 1 + LEGACY_LAST.index(kind)
        if kind in LEGACY_LAST
        else 0
    )
    gvk = "_".join([g or "~G", v or "~V", kind or "~K"])
    ident = "|".join(
        [
            f"{kind or '~K'}.{v or '~V'}.{g or '~G'}",
            o["metadata"].get("namespace") or "~X",
            o["metadata"].get("name") or "~N",
        ]
    )
    return rank, gvk, ident


def render(root: Path) -> list[Obj]:
    """The objects ``kubectl kustomize root`` builds (within the subset), in its order."""
    lvl = _accumulate(Path(root).resolve())
    renamed: dict[tuple[str, str | None, str], str] = {}
    for o in lvl.objs:
        if o.pop(_HASH, False):
            old = o["metadata"]["name"]
            o["metadata"]["name"] = f"{old}-{content_hash(o)}"
            renamed[(o["kind"], o["metadata"].get("namespace"), old)] = o["metadata"]["name"]
    for ref_kind, kind, path in BUILTIN_NAME_REFS + lvl.name_refs:
        for o in lvl.objs:
            if o["kind"] == kind:
                key = functools.partial(
                    lambda rk, ns, n: renamed.get((rk, ns, n), n), ref_kind, o["metadata"].get("namespace")
                )
                walk_set(o, path.split("/"), key)
    return sorted(lvl.objs, key=_legacy_sort_key)


def render_kubectl(root: Path) -> str:
    """``kubectl kustomize root`` (kubectl on PATH or beside this interpreter), else ``kustomize build``."""
    beside = str(Path(sys.executable).parent)
    if exe := shutil.which("kubectl") or shutil.which("kubectl", path=beside):
        cmd = [exe, "kustomize", str(root)]
    elif exe := shutil.which("kustomize") or shutil.which("kustomize", path=beside):
        cmd = [exe, "build", str(root)]
    else:
        raise KustomizeError("neither kubectl nor kustomize is installed; use --engine python")
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise KustomizeError(f"{' '.join(cmd)} failed: {done.stderr.strip()}")
    return done.stdout
