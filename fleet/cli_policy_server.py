"""``fleet policy-server``: one batched MolmoAct2 server for many robots (policy/serving.py), from typed config.

Composition: checkpoint (default: the learner's base policy, ``<data_dir>/<learner.checkpoint_dir>/base``) ->
``load_checkpoint`` -> ``PolicyServer`` (dynamic batching, per-robot MolmoThink caches, several versions side by
side) on ``--port``, with ``/metrics`` and ``/healthz`` on ``--metrics-port``. With ``weights.curve_dir`` set
(or ``--curve-dir``) the socket is a CURVE server and only clients whose ``curve-client*.public`` is in that
directory get in (fleet/curve.py). With ``--follow`` (needs the fleet secret) the server holds what the rollout
runs: the champion, the canary (its cohort pinned server-side too, for clients that do not route themselves)
and the previous champion (a rollback is then a switch, not a fetch), fetched and verified from the weight
store, promoted and retired as the rollout moves. SIGTERM / Ctrl-C: queued requests are served, then it exits.

Actors use it with ``--policy tcp://host:port``; their weight followers re-route to the version the rollout
gives them, which this server already holds.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console

from fleet.config import FleetConfig, apply_override

console = Console()
log = logging.getLogger("molmofleet.policy_server")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="fleet YAML config")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="override, e.g. --set server.max_queue=512 or --set weights.curve_dir=~/keys"),
]


class RolloutVersions:
    """Keeps a PolicyServer holding the versions the rollout state names. One `sync` per announcement/poll."""

    def __init__(self, server: object, store: object, board: object) -> None:
        self.server, self.store, self.board = server, store, board
        self.base_version = server.versions.champion  # the checkpoint's own version: never retired
        self.previous: int | None = None  # the champion before the current one
        self.rejected: set[int] = set()  # failed verification: never fetched again

    def sync(self) -> None:
        from fleet.weights import WeightVerificationError

        srv, st = self.server, self.board.rollout_state()
        wanted = [v for v in (st.champion, st.canary) if v is not None]
        for v in wanted:
            if v not in srv.versions.loaded() and v not in self.rejected:
                try:
                    _, payload = self.store.fetch(v)  # sha256 and signature checked
                    srv.load_version(v, payload)
                except (WeightVerificationError, ValueError) as e:
                    self.rejected.add(v)
                    log.error("version %d rejected: %s", v, e)
        loaded = set(srv.versions.loaded())
        if st.champion in loaded and st.champion != srv.versions.champion:
            self.previous = srv.versions.champion
            srv.set_champion(st.champion)
        cohort = set(st.canary_robots) if st.canary in loaded else set()
        for robot in cohort:
            srv.assign(robot, st.canary)
        for robot in set(srv.versions.assignments()) - cohort:
            srv.assign(robot, None)
        keep = {*wanted, self.previous, self.base_version, srv.versions.champion}
        for v in loaded - keep:
            srv.retire_version(v)


def _follow(cfg: FleetConfig, server: object, stop: threading.Event, client: object) -> None:
    from fleet.status import StatusBoard
    from fleet.weights import WeightStore, WeightSubscriber

    secret = cfg.weights.secret()
    if not secret:
        raise RuntimeError(f"--follow needs the fleet secret ({cfg.weights.secret_env}) to verify versions")
    store = WeightStore(cfg.weights.store_url, secret, client, prefix=cfg.replay.prefix)
    sub = WeightSubscriber(None, poll_s=cfg.weights.poll_s)  # Redis polling: the rollout state lives there
    sync = RolloutVersions(server, store, StatusBoard(client, cfg.replay.prefix))
    while not stop.is_set():
        try:
            sync.sync()
        except Exception as e:  # Redis or the store away: keep serving what is loaded, retry
            log.warning("version sync failed: %s: %s", type(e).__name__, e)
        stop.wait(sub.poll_s)


def policy_server(
    config: ConfigOpt = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="policy checkpoint directory (default: the learner's base policy under data_dir)"),
    ] = None,
    port: Annotated[int, typer.Option(help="ZeroMQ ROUTER port the robots connect to")] = 5560,
    host: Annotated[
        str, typer.Option(help="interface to bind (0.0.0.0: all; use CURVE off loopback)")
    ] = "127.0.0.1",
    metrics_port: Annotated[int | None, typer.Option(help="HTTP port for /metrics and /healthz")] = None,
    version: Annotated[int, typer.Option(help="weights version of the checkpoint (0: the seed policy)")] = 0,
    released: Annotated[
        bool, typer.Option(help="the checkpoint is in the released Hugging Face layout")
    ] = False,
    max_batch: Annotated[int, typer.Option(help="requests per model call (1: no batching)")] = 8,
    max_wait_ms: Annotated[float, typer.Option(help="how long a batch waits for more requests")] = 5.0,
    depth_mode: Annotated[
        Literal["adaptive", "full", "none"], typer.Option(help="MolmoThink mode when a request names none")
    ] = "adaptive",
    threshold: Annotated[
        float, typer.Option(help="patch cosine similarity below which a cell changed")
    ] = 0.996,
    device: Annotated[str, typer.Option(help="torch device: cpu, cuda, cuda:1")] = "cpu",
    torch_threads: Annotated[
        int | None, typer.Option(help="torch intra-op threads (default: torch's)")
    ] = None,
    curve_dir: Annotated[
        Path | None, typer.Option(help="CURVE key directory (default: weights.curve_dir)")
    ] = None,
    follow: Annotated[bool, typer.Option(help="hold the rollout's champion and canary versions")] = False,
    set_: SetOpt = None,
) -> None:
    """Serve MolmoAct2 to many robots over ZeroMQ: batched, several versions side by side, adaptive depth."""
    import torch
    import zmq

    from fleet import curve
    from fleet.redis_server import redis_for
    from policy.checkpoint import load_checkpoint, load_released_checkpoint
    from policy.serving import PolicyServer, PolicyServerConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    server_sets = [s.removeprefix("server.") for s in set_ or [] if s.startswith("server.")]
    cfg = FleetConfig.load(config, [s for s in set_ or [] if not s.startswith("server.")])
    raw: dict = {
        "host": host,
        "port": port,
        "metrics_port": metrics_port,
        "max_batch": max_batch,
        "max_wait_ms": max_wait_ms,
        "think": {"mode": depth_mode, "threshold": threshold},
    }
    for item in server_sets:
        apply_override(raw, item)
    server_cfg = PolicyServerConfig.model_validate(raw)
    if torch_threads is not None:
        torch.set_num_threads(torch_threads)  # process-wide: the composition root's call
    ckpt = checkpoint or cfg.path(cfg.learner.checkpoint_dir) / "base"
    if not ckpt.is_dir():
        console.print(f"[red]no checkpoint at {ckpt}: pass --checkpoint or run the learner first[/]")
        raise typer.Exit(1)
    policy = (load_released_checkpoint(ckpt) if released else load_checkpoint(ckpt)).to(device).eval()

    keys_dir = curve_dir or cfg.weights.curve_dir
    context, allow = zmq.Context(), None
    secret_key = None
    if keys_dir:
        keys = curve.load_server_keys(keys_dir)
        secret_key = keys.keypair.secret
        if keys.allowed_clients is not None:
            allow = curve.ClientAllowList(context, keys.allowed_clients).start()
    elif host not in ("127.0.0.1", "localhost", "::1"):
        console.print(
            "[yellow]serving off loopback without CURVE: anyone who can reach the port gets chunks[/]"
        )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server = PolicyServer(
        policy, server_cfg, version=version, curve_secret_key=secret_key, zap_domain=curve.ZAP_DOMAIN,
        context=context,
    ).start()  # fmt: skip
    console.print(
        f"policy server on {server.address} (version {version}, {depth_mode} depth"
        + (f", metrics on :{server.metrics_port}" if server.metrics_port else "")
        + (", CURVE" if secret_key else "")
        + ")"
    )
    try:
        if follow:
            with redis_for(cfg.redis, cfg.path("redis"), prefix=cfg.replay.prefix) as (client, _):
                _follow(cfg, server, stop, client)
        else:
            while not stop.wait(0.5):  # short waits: the signal handler runs between them
                pass
    except RuntimeError as e:
        console.print(f"[red]{e}[/]")
        raise typer.Exit(1) from None
    finally:
        server.stop()
        if allow is not None:
            allow.stop()
        context.term()
    console.print_json(data=server.health())
