"""``fleet learner``, ``fleet export`` and ``fleet rehearsal``: the learner's commands, composed from typed config.

Composition (this is part of the composition root, with fleet/cli.py): config -> ``redis_for`` -> ReplayStore
-> starting policy (``learner.bootstrap.open_policy``) -> weight sink (the fleet's signed WeightStore with
ZeroMQ announcements when a fleet secret is configured, else a plain directory) -> MLflow tracker and status
board -> ``learner.continual.Learner``. SIGTERM and Ctrl-C finish the current step and checkpoint.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from fleet.config import FleetConfig
from fleet.redis_server import redis_for
from fleet.replay import ReplayStore

console = Console()
log = logging.getLogger("molmofleet.learner")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="fleet YAML config")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="override, e.g. --set learner.batch_size=8")]


def embodiment_tables() -> tuple[dict[str, str], dict[str, int], dict]:
    """Episode embodiment -> norm tag, norm tag -> chunk horizon, and the store's schemas."""
    from actors.embodiments import EMBODIMENTS, schemas

    tags = {e.name: e.norm_tag for e in EMBODIMENTS.values()}
    horizons = {e.norm_tag: e.chunk_horizon for e in EMBODIMENTS.values()}
    return tags, horizons, schemas()


def delta_masks() -> dict[str, list[bool]]:
    """Norm tag -> per action dim, whether a fresh policy predicts it relative to the state (joints, not grippers)."""
    from actors.embodiments import EMBODIMENTS

    return {e.norm_tag: [n not in e.grippers for n in e.dof_names] for e in EMBODIMENTS.values()}


def sim_eval(cfg: FleetConfig) -> Callable[[Any, int], dict[str, float]] | None:
    """The learner's rollout hook: every version's held-out success in simulation, per embodiment the fleet runs
    (``sim/<embodiment>``, ``sim/fleet``, and ``sim/episodes`` behind them), on ``sim_eval_episodes`` seeds from
    ``sim_eval_seed``. None when off."""
    n = cfg.learner.sim_eval_episodes
    pairs = [(s.embodiment, s.task) for s in cfg.actors.robots]
    if n == 0 or not pairs:
        return None

    def run(policy: Any, step: int) -> dict[str, float]:
        from actors.evaluation import evaluate_fleet
        from actors.policy_client import InProcessPolicyClient
        from fleet.rollout import SIM_EPISODES

        seeds = range(cfg.learner.sim_eval_seed, cfg.learner.sim_eval_seed + n)
        rates = evaluate_fleet(InProcessPolicyClient(policy), pairs, seeds, cfg.actors.image_size)
        # the episode count makes the rollout's screen a test on counts, not a comparison of two noisy rates
        return {**{f"sim/{k}": v for k, v in rates.items()}, SIM_EPISODES: float(n * len(dict.fromkeys(pairs)))}

    return run


def run_learner(
    cfg: FleetConfig,
    stop: threading.Event,
    max_steps: int | None = None,
    minutes: float | None = None,
    wait_s: float = 3600.0,
) -> object:
    """Compose and run the continual learner until ``stop``/limits; returns its LearnerSummary.

    Used by `fleet learner` (main thread, signals set ``stop``) and the orchestrator's Ray actor (a thread).
    """
    from fleet.status import StatusBoard
    from learner.bootstrap import open_policy
    from learner.continual import Learner
    from learner.tracking import Tracker

    norm_tags, horizons, schemas = embodiment_tables()
    data_dir = Path(cfg.data_dir).expanduser()
    ckpt = cfg.path(cfg.learner.checkpoint_dir)
    with redis_for(cfg.redis, cfg.path("redis"), prefix=cfg.replay.prefix) as (client, _):
        store = ReplayStore(client, cfg.replay, schemas=schemas)
        deadline = time.monotonic() + wait_s
        while True:  # a fresh policy needs data for its statistics: wait for the fleet's first episodes
            try:
                policy = open_policy(store, cfg.learner, ckpt, horizons=horizons, norm_tags=norm_tags,
                                     delta_masks=delta_masks())
                break
            except LookupError:
                if stop.is_set() or time.monotonic() > deadline:
                    raise RuntimeError("no episodes in the store to start from") from None
                stop.wait(2.0)
        sink, announcer = _weight_sink(cfg, client, ckpt)
        tracker = Tracker(cfg.mlflow, data_dir)
        learner_ = Learner(
            store,
            policy,
            cfg.learner,
            sink,
            checkpoint_dir=ckpt,
            tracker=tracker,
            board=StatusBoard(client, cfg.replay.prefix),
            norm_tags=norm_tags,
            rollout_eval=sim_eval(cfg),
        )
        status = "FAILED"
        try:
            summary = learner_.run(
                max_steps=max_steps, max_seconds=minutes * 60 if minutes else None, stop=stop
            )
            status = "FINISHED" if not stop.is_set() else "KILLED"
            return summary
        finally:
            learner_.close(status)
            if announcer is not None:
                announcer.close()
            store.close()


def learner(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    max_steps: Annotated[
        int | None, typer.Option(help="stop after this many optimizer steps (all time)")
    ] = None,
    minutes: Annotated[float | None, typer.Option(help="stop after this long")] = None,
    wait_s: Annotated[float, typer.Option(help="how long to wait for the first episodes")] = 3600.0,
) -> None:
    """Run the continual learner: train on the fleet's episodes, publish versions, resume after any crash."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg = FleetConfig.load(config, set_)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        summary = run_learner(cfg, stop, max_steps=max_steps, minutes=minutes, wait_s=wait_s)
    except RuntimeError as e:
        console.print(f"[red]{e}[/]")
        raise typer.Exit(1) from None
    console.print_json(json.dumps(summary.__dict__))


def _weight_sink(cfg: FleetConfig, client: object, ckpt: Path) -> tuple[object, object | None]:
    from learner.publish import DirectoryWeightSink, WeightStoreSink

    secret = cfg.weights.secret()
    if not secret:
        path = ckpt / "versions"
        console.print(
            f"[yellow]no fleet secret ({cfg.weights.secret_env}): versions go to {path}, unsigned and "
            "unannounced; actors will not see them[/]"
        )
        return DirectoryWeightSink(path), None
    from fleet import curve
    from fleet.weights import WeightAnnouncer, WeightStore

    keys = curve.load_server_keys(cfg.weights.curve_dir) if cfg.weights.curve_dir else None
    # without CURVE, announce on loopback only: remote actors still converge by polling Redis
    host = "*" if keys is not None else "127.0.0.1"
    announcer = WeightAnnouncer(f"tcp://{host}:{cfg.weights.pub_port}", curve=keys)
    store = WeightStore(
        cfg.weights.store_url,
        secret,
        client,
        prefix=cfg.replay.prefix,
        chunk_bytes=int(cfg.weights.chunk_mb * 2**20),
    )
    return WeightStoreSink(store, announcer, mode=cfg.learner.finetune), announcer


def export(
    out: Annotated[
        Path, typer.Argument(help="new directory: one LeRobot v3 dataset per embodiment under it")
    ],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    hours: Annotated[float | None, typer.Option(help="only episodes that ended in the last N hours")] = None,
    source: Annotated[
        list[str] | None, typer.Option(help="episode sources to export (default: fleet)")
    ] = None,
    embodiment: Annotated[list[str] | None, typer.Option(help="only these embodiments")] = None,
    success_only: Annotated[bool, typer.Option(help="only successful episodes")] = False,
    video: Annotated[bool, typer.Option(help="camera features as H.264 video instead of PNG images")] = False,
) -> None:
    """Export stored fleet episodes as LeRobot v3 datasets (readable by lerobot's LeRobotDataset)."""
    from learner.lerobot_io import export_fleet

    cfg = FleetConfig.load(config, set_)
    with redis_for(cfg.redis, cfg.path("redis"), prefix=cfg.replay.prefix) as (client, _):
        store = ReplayStore(client, cfg.replay)
        reports = export_fleet(
            store,
            out,
            since=time.time() - hours * 3600 if hours else None,
            sources=tuple(source or ["fleet"]),
            success_only=success_only,
            video=video,
            embodiments=embodiment,
        )
        store.close()
    for r in reports:
        console.print(f"{r.embodiment}: {r.episodes} episodes, {r.frames} frames -> {r.root}")
    if not reports:
        console.print("[yellow]no episodes matched[/]")


def rehearsal(
    dataset: Annotated[
        Path, typer.Argument(help="local LeRobot v3 dataset directory (meta/info.json inside)")
    ],
    embodiment: Annotated[
        str | None, typer.Option(help="our embodiment name (default: the dataset's robot_type)")
    ] = None,
    camera: Annotated[
        list[str] | None, typer.Option(help="theirs=ours camera mapping, main camera first")
    ] = None,
    task: Annotated[str | None, typer.Option(help="task name to file the episodes under")] = None,
    image_size: Annotated[int | None, typer.Option(help="resize frames to this square side")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Import a LeRobot v3 dataset into the replay store as a rehearsal pool (source=rehearsal)."""
    from learner.lerobot_io import import_lerobot_dataset

    cfg = FleetConfig.load(config, set_)
    cameras = dict(c.split("=", 1) for c in camera) if camera else None
    _, _, schemas = embodiment_tables()
    with redis_for(cfg.redis, cfg.path("redis"), prefix=cfg.replay.prefix) as (client, _):
        store = ReplayStore(client, cfg.replay, schemas=schemas)
        report = import_lerobot_dataset(
            store,
            dataset,
            embodiment=embodiment,
            cameras=cameras,
            task=task,
            image_size=image_size,
            source="rehearsal",
        )
        store.close()
    console.print_json(json.dumps({**report.__dict__}))
