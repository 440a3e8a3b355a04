"""Redis over TLS: the embedded server serves TLS only when certificate files are configured; rediss:// clients
verify it against the CA, plain-TCP clients get nothing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from fleet.config import RedisConfig, ReplayConfig
from fleet.redis_server import EmbeddedRedis, redis_for
from fleet.replay import ReplayStore
from tests.factories import SCHEMAS, synthetic_episode

pytestmark = pytest.mark.skipif(
    shutil.which("openssl") is None, reason="needs the openssl command for test certs"
)


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed EC certificate for 127.0.0.1 (its own CA), made in a few milliseconds."""
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(d / "key.pem"),
            "-out",
            str(d / "cert.pem"),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return str(d / "cert.pem"), str(d / "key.pem")


def test_embedded_tls_with_acl_users(tmp_path: Path, cert: tuple[str, str]) -> None:
    users = {"actor": "actor-pw-0123456789"}
    with EmbeddedRedis(tmp_path, users=users, tls_cert_file=cert[0], tls_key_file=cert[1]) as srv:
        assert srv.url.startswith("rediss://")
        store = ReplayStore(srv.client("actor"), ReplayConfig(chunk_steps=8), SCHEMAS, 0)
        assert store.append(synthetic_episode()).status == "stored"
        plain = redis.Redis(
            host="127.0.0.1",
            port=srv.port,
            password=srv.password,
            socket_timeout=1,
            retry=Retry(NoBackoff(), 0),
        )
        with pytest.raises(redis.ConnectionError):  # no plaintext port, and TLS refuses a plaintext handshake
            plain.ping()
        unverified = redis.Redis(
            host="127.0.0.1",
            port=srv.port,
            password=srv.password,
            ssl=True,
            socket_timeout=1,
            retry=Retry(NoBackoff(), 0),
        )  # system CAs only: our self-signed cert fails
        with pytest.raises(redis.ConnectionError):
            unverified.ping()


def test_redis_for_rediss_url(tmp_path: Path, cert: tuple[str, str]) -> None:
    with EmbeddedRedis(
        tmp_path, password="admin-pw-0123456789", tls_cert_file=cert[0], tls_key_file=cert[1]
    ) as srv:
        cfg = RedisConfig(url=srv.url, tls_ca_file=cert[0], password_env="MOLMOFLEET_TEST_TLS_PW")
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MOLMOFLEET_TEST_TLS_PW", "admin-pw-0123456789")
            with redis_for(cfg) as (client, server):
                assert server is None and client.ping()
                assert client.connection_pool.connection_kwargs.get("ssl_ca_certs") == cert[0]


def test_redis_for_embedded_tls_server(tmp_path: Path, cert: tuple[str, str]) -> None:
    cfg = RedisConfig(tls_cert_file=cert[0], tls_key_file=cert[1], password_env="MOLMOFLEET_TEST_UNSET")
    with redis_for(cfg, tmp_path / "redis") as (client, server):
        assert server is not None and server.url.startswith("rediss://") and client.ping()
        with redis_for(cfg, tmp_path / "redis") as (shared, none):  # a second component reuses it, over TLS
            assert (
                none is None
                and shared.ping()
                and shared.connection_pool.connection_kwargs.get("ssl_ca_certs")
            )
