"""`fleet actor`: run one robot actor (composition root for an arm: config -> Redis -> replay store -> spool ->
env -> policy client -> supervisor -> RobotActor), until its episodes are done or Ctrl-C / SIGTERM.

`run_actor` is the programmatic form the orchestrator uses; `actor` is the typer command the lead registers
in fleet/cli.py. Shutdown is clean on a signal: the loop stops at the next tick (the unfinished episode is
dropped, it has no outcome), the spool gets a few seconds to deliver, then the env and its renderer close.
Whatever the spool could not deliver stays on disk and goes out with the next actor over that directory.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import redis
import typer

from fleet.config import FleetConfig
from fleet.redis_server import redis_for
from fleet.replay import ReplayStore
from fleet.spool import Spool, SpoolFull
from fleet.status import StatusBoard

if TYPE_CHECKING:  # imported when running: `fleet --help` should not pay for torch and MuJoCo
    from actors.runtime import ActorStats, EpisodeResult, RobotActor

log = logging.getLogger(__name__)

SPOOL_DRAIN_S = 5.0  # on shutdown, give the store this long to take what is spooled


@dataclass
class ActorSummary:
    robot_id: str
    results: list[EpisodeResult]
    stats: ActorStats
    spool_backlog: int  # episodes left on disk for the next run to deliver


def _signals_stop(stop: Callable[[], None]) -> contextlib.AbstractContextManager:
    """SIGINT/SIGTERM call ``stop`` while inside (main thread only; elsewhere the caller stops the actor)."""

    @contextlib.contextmanager
    def installed() -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in previous:
            signal.signal(s, lambda *_: stop())
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    return installed()


def run_actor(
    cfg: FleetConfig,
    robot_id: str,
    embodiment: str,
    task: str,
    policy: str | None = None,
    episodes: int | None = None,
    *,
    client: redis.Redis | None = None,
    seed: int | None = None,
    source: Literal["fleet", "eval", "demo"] | None = None,
    supervise: bool = True,
    on_episode: Callable[[EpisodeResult], None] | None = None,
    started: Callable[[RobotActor], None] | None = None,
) -> ActorSummary:
    """Run one actor to completion (``episodes``; None: until stopped by a signal or ``started``'s handle).

    client: an existing Redis client (the orchestrator shares one); None connects to ``cfg.redis`` (starting
    an embedded redis-server when no URL is configured). started(actor) is called once the actor exists, so a
    caller on another thread can keep it to `stop` it or `swap_policy` on it.
    """
    from actors.embodiments import get_embodiment, schemas
    from actors.interventions import ScriptedSupervisor
    from actors.policy_client import InProcessPolicyClient, ScriptedPolicyClient, policy_client_for
    from actors.recorder import EpisodeRecorder
    from actors.runtime import RobotActor
    from actors.sim.env import FleetSimEnv

    a = cfg.actors
    spec = policy or a.policy
    if spec is None:
        raise ValueError(
            "no policy: pass --policy (scripted, tiny[:seed], tcp://host:port or a checkpoint "
            "directory) or set actors.policy"
        )
    emb = get_embodiment(embodiment)
    # process-wide, so set here in the composition root: an actor process runs one arm
    sys.setswitchinterval(a.gil_switch_ms / 1000)
    with contextlib.ExitStack() as stack:
        if client is None:
            client, _ = stack.enter_context(redis_for(cfg.redis, cfg.path("redis")))
        store = ReplayStore(client, cfg.replay, schemas=schemas(), decode_workers=0)
        stack.callback(store.close)
        spool = Spool(
            cfg.path(cfg.spool.dir) / robot_id,
            store.append,
            max_bytes=cfg.spool.max_mb * (1 << 20),
            retry_initial_s=cfg.spool.retry_initial_s,
            retry_max_s=cfg.spool.retry_max_s,
            chunk_steps=cfg.replay.chunk_steps,
        ).start()  # re-sends what a previous run left on disk
        stack.callback(spool.stop, SPOOL_DRAIN_S)
        env = FleetSimEnv(emb.name, task, image_size=a.image_size, render=True)
        stack.callback(env.close)
        policy_client = policy_client_for(
            spec,
            env=env,
            horizon=emb.chunk_horizon,
            robot_id=robot_id,
            seed=a.seed,
            timeout_s=a.policy_timeout_s,
            retries=a.policy_retries,
            curve_dir=cfg.weights.curve_dir,  # the fleet's keys: a CURVE policy server admits this robot
        )
        if isinstance(policy_client, InProcessPolicyClient):
            import torch

            # one intra-op thread by default: the control loop and the renderer keep the other core
            torch.set_num_threads(a.torch_threads)
        scripted = isinstance(policy_client, ScriptedPolicyClient)
        supervisor = (
            ScriptedSupervisor.for_env(env, a.interventions, seed=a.seed)
            if supervise and not scripted and a.interventions.max_per_episode > 0
            else None
        )
        recorder = EpisodeRecorder(
            spool,
            emb.schema,
            robot_id=robot_id,
            task=task,
            fps=emb.control_hz,
            source=source or ("demo" if scripted else "fleet"),
            record_depth=a.record_depth,
        )
        board = StatusBoard(client, prefix=cfg.replay.prefix)
        actor = RobotActor(
            robot_id,
            emb,
            task,
            env,
            policy_client,
            a,
            recorder=recorder,
            supervisor=supervisor,
            board=board,
            spool=spool,
        )
        stack.callback(actor.close)
        if started is not None:
            started(actor)
        with _signals_stop(actor.stop):
            results = actor.run(episodes, seed=seed, on_episode=on_episode)
        stats = actor.stats()
        actor.close()
        spool.stop(SPOOL_DRAIN_S)
        # the loop's last heartbeat went out before the spool drained: report what was delivered in the end
        with contextlib.suppress(redis.RedisError, OSError):
            board.beat(actor.heartbeat())
        return ActorSummary(robot_id, results, stats, len(spool.pending()))


def actor(
    robot: Annotated[str, typer.Option(help="robot id, e.g. franka-01")],
    embodiment: Annotated[str, typer.Option(help="franka | yam_bimanual | so100 | so101")],
    task: Annotated[str, typer.Option(help="reach | pick_place | lift")],
    policy: Annotated[
        str | None, typer.Option(help="scripted | tiny[:seed] | tcp://host:port | checkpoint dir")
    ] = None,
    episodes: Annotated[int, typer.Option(help="episodes to run (0: until Ctrl-C / SIGTERM)")] = 0,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="fleet YAML config")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override, e.g. --set actors.time_scale=2")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="first episode seed (default: actors.seed)")] = None,
) -> None:
    """Run one robot actor: control loop, asynchronous inference, recording into the replay store."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = FleetConfig.load(config, set_)

    def report(r: EpisodeResult) -> None:
        print(
            f"episode {r.episode_id} success={int(r.success)} steps={r.steps} interventions={r.interventions} "
            f"starved={r.starved} version={r.policy_version} wall_s={r.wall_s:.2f}",
            flush=True,
        )

    try:
        summary = run_actor(
            cfg, robot, embodiment, task, policy, episodes or None, seed=seed, on_episode=report
        )
    except SpoolFull as e:  # the fleet's state, not a bug: what and why in one line, no traceback
        print(f"SpoolFull: {e}", file=sys.stderr, flush=True)
        raise typer.Exit(1) from None
    c = summary.stats.clock
    print(
        f"done: {len(summary.results)} episodes, {c.rate_hz:.2f} Hz (target {c.target_hz:.2f}), "
        f"jitter p99 {c.jitter_p99_ms:.2f} ms, {summary.spool_backlog} episodes left in the spool",
        flush=True,
    )


if __name__ == "__main__":
    typer.run(actor)
