"""Redis ACL users per role against a real redis-server: each role does its job and is refused (NOPERM) the rest."""

from __future__ import annotations

import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from fleet import acl
from fleet.config import RedisConfig, ReplayConfig
from fleet.episode import encode_episode
from fleet.redis_server import EmbeddedRedis, find_redis_server, free_port, redis_for
from fleet.replay import ReplayStore
from fleet.status import Heartbeat, LearnerStatus, RolloutState, StatusBoard, VersionEvent
from fleet.weights import WeightStore
from tests.factories import SCHEMAS, synthetic_episode

PASSWORDS = {
    "actor": "actor-pw-0123456789",
    "learner": "learner-pw-0123456789",
    "dashboard": "dashboard-pw-0123456789",
    "admin": "admin-pw-0123456789",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path_factory.mktemp("acl"), users=PASSWORDS) as srv:
        yield srv


@pytest.fixture(scope="module")
def seeded(server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The actor appends (with eviction and reservoir replacement running under its ACL user), the learner
    publishes a version, the admin sets the rollout state: what the refusal tests then try to read or write."""
    one = len(encode_episode(synthetic_episode(steps=20, size=16, seed=0), 8))
    cfg = ReplayConfig(chunk_steps=8, capacity_mb=6 * one / 2**20, reservoir_size=2)
    actor = ReplayStore(server.client("actor"), cfg, SCHEMAS, decode_workers=0)
    random.seed(0)
    results = [actor.append(synthetic_episode(steps=20, size=16, seed=s)) for s in range(20)]
    weights = WeightStore(str(tmp_path_factory.mktemp("w")), "fleet-secret", server.client("learner"))
    manifest = weights.publish(b"weights-v1", step=5)
    StatusBoard(server.client("admin")).set_rollout_state(RolloutState(champion=manifest.version))
    return {"cfg": cfg, "results": results, "weights_dir": weights.root, "version": manifest.version}


def _once(port: int, **kw: object) -> redis.Redis:
    """A client that does not retry: redis-py retries failed authentication like a dropped connection."""
    return redis.Redis(host="127.0.0.1", port=port, retry=Retry(NoBackoff(), 0), socket_timeout=2, **kw)


def _noperm(client: redis.Redis, *cmd: object) -> None:
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.execute_command(*cmd)


def test_actor_appends_with_eviction_and_reservoir_under_its_acl(server: EmbeddedRedis, seeded: dict) -> None:
    statuses = [r.status for r in seeded["results"]]
    assert statuses == ["stored"] * 20
    assert sum(r.evicted for r in seeded["results"]) > 0  # eviction ran inside the actor's script calls
    st = ReplayStore(server.client(), seeded["cfg"], SCHEMAS, 0).stats()
    assert st.ingested.episodes == 20 and st.stored.episodes + st.evicted_episodes == 20
    assert st.reservoir.episodes == 2
    actor = ReplayStore(server.client("actor"), seeded["cfg"], SCHEMAS, 0)
    again = synthetic_episode(steps=20, size=16, seed=19)
    assert actor.append(again).status == "duplicate"  # a replayed message is acknowledged, not stored twice
    assert actor.append(b"\x00junk").status == "rejected"  # dead-lettering works for the actor too


def test_actor_heartbeats_and_reads_weights_and_rollout(server: EmbeddedRedis, seeded: dict) -> None:
    c = server.client("actor")
    board = StatusBoard(c)
    board.beat(Heartbeat(robot_id="franka-01", embodiment="franka", task="reach", policy_version=1))
    assert board.rollout_state().champion == seeded["version"]
    w = WeightStore(seeded["weights_dir"], "fleet-secret", c)
    assert w.latest() == seeded["version"]
    assert w.fetch(seeded["version"])[1] == b"weights-v1"


def test_actor_is_refused_episode_reads_and_weight_rollout_writes(
    server: EmbeddedRedis, seeded: dict
) -> None:
    c = server.client("actor")
    eid = next(r.episode_id for r in reversed(seeded["results"]))
    for cmd in [
        ("GET", f"mf:ep:{eid}:low"),
        ("GET", f"mf:ep:{eid}:c:0"),
        ("HGETALL", f"mf:ep:{eid}"),
        ("HGET", f"mf:ep:{eid}", "meta"),
        ("XRANGE", "mf:events", "-", "+"),
        ("XRANGE", "mf:deadletter", "-", "+"),
        ("ZRANGE", "mf:idx:all", 0, -1),
        ("HSET", "mf:weights:manifests", "99", "{}"),
        ("ZADD", "mf:weights:versions", 99, "99"),
        ("INCR", "mf:weights:seq"),
        ("SET", "mf:rollout:state", "{}"),
        ("SET", "mf:learner:status", "{}"),
        ("DEL", "mf:events"),
        ("DEL", "mf:stats"),
        ("DEL", "mf:idx:all"),
        ("SET", "mf:hb", "x"),
        ("KEYS", "*"),
        ("FLUSHALL",),
        ("CONFIG", "GET", "*"),
        ("ACL", "LIST"),
        ("EVAL", "return redis.call('GET', KEYS[1])", 1, f"mf:ep:{eid}:low"),
    ]:
        with pytest.raises(redis.exceptions.NoPermissionError):
            c.execute_command(*cmd)
    # a script runs with its caller's rights: reading an episode from Lua is refused as well
    script = c.register_script("return redis.call('GET', ARGV[1])")
    with pytest.raises(redis.exceptions.ResponseError, match="can't access"):
        script(args=[f"mf:ep:{eid}:low"])


def test_learner_samples_reads_events_and_publishes(server: EmbeddedRedis, seeded: dict) -> None:
    c = server.client("learner")
    store = ReplayStore(c, seeded["cfg"], SCHEMAS, 0)
    windows = store.sample(8, window=4, image_steps=1, rng=random.Random(0))
    assert len(windows) == 8 and all(w.images for w in windows)
    assert store.read_episode(store.episode_ids()[0]).num_steps == 20
    store.ensure_group("learner")
    events = store.read_events("learner", "l0", count=5)
    assert len(events) == 5 and store.ack("learner", [i for i, _ in events]) == 5
    assert store.stats().stored.episodes > 0
    w = WeightStore(seeded["weights_dir"], "fleet-secret", c)
    assert w.publish(b"weights-v2", parent=seeded["version"]).version == seeded["version"] + 1
    board = StatusBoard(c)
    board.learner_update(LearnerStatus(step=10, loss=0.5))
    board.version_event(VersionEvent(version=2, kind="published"))
    assert board.learner().step == 10


def test_learner_is_refused_episode_writes(server: EmbeddedRedis, seeded: dict) -> None:
    c = server.client("learner")
    eid = seeded["results"][-1].episode_id
    for cmd in [
        ("SET", f"mf:ep:{eid}:low", "x"),
        ("DEL", f"mf:ep:{eid}"),
        ("HSET", f"mf:ep:{eid}", "n", 1),
        ("SADD", "mf:seen", "forged"),
        ("XADD", "mf:events", "*", "id", "forged"),
        ("ZADD", "mf:idx:all", 1, "forged"),
        ("HINCRBY", "mf:stats", "all:episodes", 1),
        ("SET", "mf:rollout:state", "{}"),
        ("HSET", "mf:hb", "r", "{}"),
        ("XGROUP", "DESTROY", "mf:events", "learner"),
        ("FLUSHDB",),
    ]:
        _noperm(c, *cmd)
    actor_store = ReplayStore(c, seeded["cfg"], SCHEMAS, 0)
    with pytest.raises(redis.exceptions.NoPermissionError):
        actor_store.append(synthetic_episode(seed=999))


def test_dashboard_reads_stats_and_board_only(server: EmbeddedRedis, seeded: dict) -> None:
    c = server.client("dashboard")
    store = ReplayStore(c, seeded["cfg"], SCHEMAS, 0)
    st = store.stats()
    assert st.stored.episodes > 0 and st.deadletters >= 0
    assert store.outcome_totals() and store.episode_ids()
    board = StatusBoard(c)
    board.heartbeats()
    board.version_events()
    assert board.rollout_state().champion == seeded["version"]
    eid = store.episode_ids()[0]
    for cmd in [
        ("GET", f"mf:ep:{eid}:low"),
        ("HGET", f"mf:ep:{eid}", "meta"),
        ("XRANGE", "mf:deadletter", "-", "+"),
        ("HSET", "mf:hb", "r", "{}"),
        ("SET", "mf:rollout:state", "{}"),
        ("XADD", "mf:events", "*", "a", "b"),
        ("HINCRBY", "mf:stats", "x", 1),
        ("DEL", "mf:stats"),
        ("HSET", "mf:weights:manifests", "1", "{}"),
        ("INCR", "mf:weights:seq"),
        ("XREADGROUP", "GROUP", "g", "c", "STREAMS", "mf:events", ">"),
    ]:
        _noperm(c, *cmd)


def test_without_credentials_or_with_wrong_ones_is_refused(server: EmbeddedRedis) -> None:
    anon = _once(server.port)
    with pytest.raises(redis.exceptions.AuthenticationError):
        anon.get("mf:stats")
    with pytest.raises(redis.exceptions.AuthenticationError):
        _once(server.port, username="actor", password="wrong").ping()
    with pytest.raises(redis.exceptions.AuthenticationError):  # the actor's password does not open the admin
        _once(server.port, username="admin", password=PASSWORDS["actor"]).ping()
    assert server.client("admin").ping() and server.client().ping()


def test_rules_cover_another_prefix(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path, users={"actor": "a" * 16, "learner": "l" * 16}, prefix="fleet2") as srv:
        store = ReplayStore(srv.client("actor"), ReplayConfig(prefix="fleet2", chunk_steps=8), SCHEMAS, 0)
        assert store.append(synthetic_episode()).status == "stored"
        _noperm(srv.client("actor"), "HSET", "fleet2:weights:manifests", "1", "{}")
        with pytest.raises(redis.exceptions.NoPermissionError):  # the default prefix is not theirs
            ReplayStore(srv.client("actor"), ReplayConfig(chunk_steps=8), SCHEMAS, 0).append(
                synthetic_episode()
            )


def test_apply_acl_on_a_running_server(redis_server: EmbeddedRedis) -> None:
    admin = redis_server.client()
    acl.apply_acl(admin, {"dashboard": "dash-pw-0123456789"})
    dash = redis.Redis(
        host="127.0.0.1", port=redis_server.port, username="dashboard", password="dash-pw-0123456789"
    )
    assert dash.hgetall("mf:stats") == {}
    _noperm(dash, "SET", "mf:rollout:state", "{}")
    acl.apply_acl(admin, {"dashboard": "rotated-pw-0123456789"})  # re-applying replaces the password
    with pytest.raises(redis.exceptions.AuthenticationError):
        _once(redis_server.port, username="dashboard", password="dash-pw-0123456789").ping()


def test_acl_file_loads_into_redis_server(tmp_path: Path) -> None:
    """The infra format: redis-server --aclfile accepts it and the default user is off."""
    path = tmp_path / "users.acl"
    path.write_text(acl.acl_file(PASSWORDS))
    assert all(p not in path.read_text() for p in PASSWORDS.values())  # hashes only
    port = free_port()
    proc = subprocess.Popen(
        [
            find_redis_server(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--aclfile",
            str(path),
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        admin = redis.Redis(port=port, username="admin", password=PASSWORDS["admin"], socket_timeout=2)
        deadline = time.monotonic() + 10
        while True:
            try:
                admin.ping()
                break
            except redis.ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, "redis-server did not come up"
                time.sleep(0.05)
        users = {line.split()[1].decode() for line in admin.execute_command("ACL", "LIST")}
        assert users == {"default", *PASSWORDS}
        with pytest.raises(redis.exceptions.AuthenticationError):
            _once(port).get("x")
        store = ReplayStore(
            redis.Redis(port=port, username="actor", password=PASSWORDS["actor"]),
            ReplayConfig(chunk_steps=8),
            SCHEMAS,
            0,
        )
        assert store.append(synthetic_episode()).status == "stored"
    finally:
        proc.terminate()
        proc.wait(10)


def test_redis_for_connects_each_component_as_its_role(tmp_path: Path) -> None:
    users_dir = tmp_path / "keys"
    users_dir.mkdir()
    for role, pw in PASSWORDS.items():
        (users_dir / acl.ROLE_PASSWORD_FILE.format(role=role)).write_text(pw + "\n")
    admin_cfg = RedisConfig(users_dir=str(users_dir), password_env="MOLMOFLEET_TEST_UNSET")
    with redis_for(admin_cfg, tmp_path / "redis") as (admin, server):
        assert server is not None and admin.execute_command("ACL", "WHOAMI") == b"default"
        assert {line.split()[1] for line in admin.execute_command("ACL", "LIST")} == {
            b"default",
            *(r.encode() for r in PASSWORDS),
        }
        actor_cfg = admin_cfg.model_copy(update={"user": "actor"})
        with redis_for(actor_cfg, tmp_path / "redis") as (actor, reused):
            assert reused is None  # the running embedded server is shared, now as the actor
            store = ReplayStore(actor, ReplayConfig(chunk_steps=8), SCHEMAS, 0)
            assert store.append(synthetic_episode()).status == "stored"
            _noperm(actor, "HSET", "mf:weights:manifests", "1", "{}")
            _noperm(actor, "ACL", "WHOAMI")


def test_wrong_role_password_never_starts_a_second_server(tmp_path: Path) -> None:
    users_dir = tmp_path / "keys"
    users_dir.mkdir()
    for role, pw in PASSWORDS.items():
        (users_dir / acl.ROLE_PASSWORD_FILE.format(role=role)).write_text(pw + "\n")
    cfg = RedisConfig(users_dir=str(users_dir), password_env="MOLMOFLEET_TEST_UNSET")
    with redis_for(cfg, tmp_path / "redis") as (_, server):
        assert server is not None
        wrong = cfg.model_copy(update={"user": "actor", "password_env": "MOLMOFLEET_TEST_WRONG"})
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MOLMOFLEET_TEST_WRONG", "not-the-actor-password")
            with pytest.raises(redis.AuthenticationError), redis_for(wrong, tmp_path / "redis"):
                pass
