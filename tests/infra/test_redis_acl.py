"""The Redis of the deployment, run for real: our redis.conf and the ACL file that the init container's
render_acl.py writes from the Secret's passwords, exercised with the replay store itself under each role."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from fleet.acl import ROLES
from fleet.config import ReplayConfig
from fleet.redis_server import free_port
from fleet.replay import ReplayStore
from tests.factories import SCHEMAS, synthetic_episode
from tests.infra.conftest import K8S, REPO

CONFIG = K8S / "base" / "config"
pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")


def render_acl(out: Path, passwords: dict[str, str]) -> subprocess.CompletedProcess:
    """Run the init container's script the way the pod does: env from the Secret, fleet.yaml mounted."""
    env = {
        **os.environ,
        "ACL_FILE": str(out),
        "FLEET_CONFIG": str(CONFIG / "fleet.yaml"),
        "PYTHONPATH": str(REPO),
    }
    env.update({f"MOLMOFLEET_REDIS_{role.upper()}_PASSWORD": pw for role, pw in passwords.items()})
    return subprocess.run(
        [sys.executable, str(CONFIG / "render_acl.py")], env=env, capture_output=True, text=True
    )


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    passwords = {role: f"{role}-pw-{os.urandom(8).hex()}" for role in ROLES}
    done = render_acl(tmp_path / "users.acl", passwords)
    assert done.returncode == 0, done.stderr
    port = free_port()
    conf = (CONFIG / "redis.conf").read_text()
    for key, value in (
        ("bind", "127.0.0.1"),
        ("port", str(port)),
        ("dir", str(tmp_path)),
        ("aclfile", str(tmp_path / "users.acl")),
    ):
        conf = conf.replace(
            next(ln for ln in conf.splitlines() if ln.startswith(key + " ")), f"{key} {value}"
        )
    (tmp_path / "redis.conf").write_text(conf)
    proc = subprocess.Popen(
        ["redis-server", str(tmp_path / "redis.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        admin = redis.Redis(port=port, username="admin", password=passwords["admin"])
        for _ in range(200):
            try:
                admin.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.02)
        yield port, passwords
    finally:
        proc.terminate()
        proc.wait(10)


def test_render_acl_refuses_weak_or_missing_passwords(tmp_path: Path) -> None:
    done = render_acl(tmp_path / "users.acl", {"admin": "short", "actor": "x" * 20})
    assert done.returncode != 0 and "MOLMOFLEET_REDIS_ADMIN_PASSWORD" in done.stderr
    assert "MOLMOFLEET_REDIS_LEARNER_PASSWORD" in done.stderr and not (tmp_path / "users.acl").exists()


def test_each_role_can_do_its_job_and_nothing_more(
    acl_redis: tuple[int, dict[str, str]], tmp_path: Path
) -> None:
    port, pw = acl_redis

    def client(user: str) -> redis.Redis:
        return redis.Redis(port=port, username=user, password=pw[user])

    assert all(p not in (tmp_path / "users.acl").read_text() for p in pw.values())  # digests only
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port).ping()  # the default user is off
    assert client("admin").config_get("appendonly") == {"appendonly": "yes"}
    cfg = ReplayConfig(chunk_steps=8)

    actor = ReplayStore(client("actor"), cfg, schemas=SCHEMAS, decode_workers=0)
    first = synthetic_episode(seed=1)
    assert actor.append(first).status == "stored"
    assert actor.append(first).status == "duplicate"
    with pytest.raises(redis.exceptions.NoPermissionError):
        client("actor").hset("mf:weights:versions", "7", "forged")  # robots never write weights
    with pytest.raises(redis.exceptions.NoPermissionError):
        client("actor").set("other:key", "1")  # nothing outside the fleet's prefix

    learner = ReplayStore(client("learner"), cfg, schemas=SCHEMAS, decode_workers=0)
    assert learner.read_episode(first.meta.episode_id).meta.episode_id == first.meta.episode_id
    learner.ensure_group("learner")
    assert len(learner.read_events("learner", "c0")) == 1
    client("learner").hset("mf:weights:versions", "7", "{}")
    with pytest.raises(redis.ResponseError, match=r"can't access|no permissions"):
        learner.append(synthetic_episode(seed=3))  # a learner never writes episodes
    with pytest.raises(redis.exceptions.NoPermissionError):
        client("learner").flushall()  # dangerous commands stay with admin

    dashboard = ReplayStore(client("dashboard"), cfg, schemas=SCHEMAS, decode_workers=0)
    assert dashboard.stats().stored.episodes == 1
    with pytest.raises(redis.exceptions.NoPermissionError):
        client("dashboard").hset("mf:stats", "x", "1")
