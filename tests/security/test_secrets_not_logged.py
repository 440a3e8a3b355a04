"""Audit: with every secret configured, no secret value shows up in logs, output, errors, the printed config, the
Redis config and log files, or the redis-server command line (what `ps` shows), through a session that also
fails in the usual ways (junk episodes, forged weights and announcements, wrong passwords, a bad TLS setup)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import redis
import zmq
from redis.backoff import NoBackoff
from redis.retry import Retry
from typer.testing import CliRunner

from fleet import curve
from fleet.cli_keys import FLEET_SECRET, keys_app, planned_files
from fleet.config import FleetConfig
from fleet.redis_server import EmbeddedRedis, redis_for
from fleet.replay import ReplayStore
from fleet.weights import (
    TOPIC,
    Manifest,
    WeightAnnouncer,
    WeightStore,
    WeightSubscriber,
    WeightVerificationError,
    sign,
)
from tests.factories import SCHEMAS, synthetic_episode


def test_no_secret_in_logs_output_errors_or_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    keys = tmp_path / "keys"
    printed = CliRunner().invoke(keys_app, ["generate", "--out", str(keys)]).output
    values = [p.read_text().strip() for p in planned_files(keys) if p.name.endswith((".secret", ".password"))]
    values += [(keys / "dashboard.token").read_text().strip()]
    cfg = FleetConfig.load(
        overrides=[
            f"data_dir={tmp_path / 'data'}",
            f"weights.secret_file={keys / FLEET_SECRET}",
            f"redis.users_dir={keys}",
            f"weights.curve_dir={keys}",
            f"dashboard.token_file={keys / 'dashboard.token'}",
        ]
    )
    texts = [printed, cfg.dump_yaml(), repr(cfg), str(cfg.model_dump())]
    errors: list[str] = []

    with redis_for(cfg.redis, cfg.path("redis")) as (admin, server):
        assert server is not None
        texts.append(Path(f"/proc/{server.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        actor_cfg = cfg.redis.model_copy(update={"user": "actor"})
        with redis_for(actor_cfg, cfg.path("redis")) as (actor, _):
            store = ReplayStore(actor, cfg.replay, SCHEMAS, decode_workers=0)
            assert store.append(synthetic_episode()).status == "stored"
            errors.append(store.append(b"\x93junk").reason)
            errors.append(store.append(synthetic_episode(embodiment="so101", robot="x")).reason or "")
        weights = WeightStore(str(tmp_path / "w"), cfg.weights.secret(), admin)
        m = weights.publish(b"payload")
        admin.hset("mf:weights:manifests", str(m.version), sign(m, b"attacker").model_dump_json())
        with pytest.raises(WeightVerificationError) as e:
            weights.fetch(m.version)
        errors.append(str(e.value))
        for user, password in [("actor", "wrong"), ("admin", values[0]), (None, "wrong")]:
            with pytest.raises(redis.AuthenticationError) as e:
                redis.Redis(
                    port=server.port, username=user, password=password, retry=Retry(NoBackoff(), 0)
                ).ping()
            errors.append(str(e.value))

        ctx = zmq.Context()
        pub = WeightAnnouncer("tcp://127.0.0.1:0", context=ctx, curve=curve.load_server_keys(keys))
        sub = WeightSubscriber(
            pub.endpoint, context=ctx, curve=curve.load_client_keys(keys), secret=cfg.weights.secret()
        )
        stranger = WeightSubscriber(
            pub.endpoint,
            context=ctx,
            curve=curve.CurveClientKeys(
                curve.generate_keypair(), curve.load_server_keys(keys).keypair.public
            ),
        )
        try:
            forged = sign(Manifest(version=9, sha256="ab" * 32, size=1, created=0.0), b"attacker")
            deadline = time.monotonic() + 10
            while sub.dropped == 0 and time.monotonic() < deadline:
                pub.sock.send_multipart([TOPIC, forged.model_dump_json().encode()])
                sub.wait(0.05)
                stranger.wait(0.01)
            assert sub.dropped >= 1  # the forged announcement was seen and logged as dropped
        finally:
            for s in (sub, stranger, pub):
                s.close()
            ctx.term()
        texts += [p.read_text(errors="replace") for p in server.data_dir.glob("*.conf")]
    texts.append((cfg.path("redis") / "redis.log").read_text(errors="replace"))

    bad = EmbeddedRedis(
        tmp_path / "bad",
        password=values[0],
        users={"actor": values[1]},
        tls_cert_file=str(tmp_path / "missing.pem"),
        tls_key_file=str(tmp_path / "missing.key"),
    )
    with pytest.raises((RuntimeError, TimeoutError)) as e:  # TimeoutError when a loaded machine is slow
        bad.start(timeout_s=15)
    errors.append(str(e.value))

    out, err = capfd.readouterr()
    texts += [caplog.text, out, err, *errors]
    assert "ignored announcement" in caplog.text  # the capture does see the fleet's log lines
    everything = "\n".join(texts)
    leaked = [f"{v[:4]}... (secret #{i})" for i, v in enumerate(values) if v in everything]
    assert not leaked, f"secret values found in logs/output/files: {leaked}"
