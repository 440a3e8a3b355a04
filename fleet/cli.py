"""The ``fleet`` command: a thin layer over typed configs. The composition root, with fleet/orchestrator.py."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Annotated

import redis
import typer
from rich.console import Console
from rich.table import Table

from fleet.config import FleetConfig
from fleet.redis_server import redis_for
from fleet.replay import ReplayStore
from fleet.rollout import RolloutController
from fleet.status import StatusBoard

app = typer.Typer(help="molmofleet: a robot fleet on one MolmoAct2 policy that improves from its own data.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)
console = Console()

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="fleet YAML config")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="override, e.g. --set replay.capacity_mb=512")]


def load_config(config: Path | None, overrides: list[str] | None) -> FleetConfig:
    return FleetConfig.load(config, overrides)


@app.command()
def config(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Print the effective configuration (defaults + YAML + overrides)."""
    console.print(load_config(config, set_).dump_yaml())


@app.command()
def store(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Show replay-store statistics."""
    cfg = load_config(config, set_)
    with redis_for(cfg.redis, cfg.path("redis")) as (client, _):
        st = ReplayStore(client, cfg.replay, decode_workers=0).stats()
    console.print_json(st.model_dump_json())


@app.command()
def services(config: ConfigOpt = None, set_: SetOpt = None,
             seconds: Annotated[float, typer.Option(help="how long to keep them up (0: until Ctrl-C)")] = 0) -> None:
    """Start the embedded services (Redis with AOF) and report what is running."""
    cfg = load_config(config, set_)
    with redis_for(cfg.redis, cfg.path("redis")) as (client, server):
        st = ReplayStore(client, cfg.replay, decode_workers=0).stats()
        t = Table(title="molmofleet services")
        t.add_column("service")
        t.add_column("where")
        t.add_column("state")
        where = server.url if server else cfg.redis.url
        t.add_row("redis (replay store)", str(where), f"up, {st.stored.episodes} episodes")
        console.print(t)
        _wait(seconds)


def _exit_on_sigterm(*_: object) -> None:
    raise SystemExit(143)


def _wait(seconds: float) -> None:
    stop = {"flag": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))
    deadline = time.monotonic() + seconds if seconds > 0 else float("inf")
    try:
        while not stop["flag"] and time.monotonic() < deadline:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass


rollout_app = typer.Typer(help="Staged rollout: status, manual promote and rollback.", no_args_is_help=True)
app.add_typer(rollout_app, name="rollout")


def _rollout(cfg: FleetConfig, client: redis.Redis) -> RolloutController:
    return RolloutController(ReplayStore(client, cfg.replay, decode_workers=0), StatusBoard(client, cfg.replay.prefix),
                             cfg.rollout)


@rollout_app.command("status")
def rollout_status(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Champion, canary cohort and the latest gate decisions."""
    cfg = load_config(config, set_)
    with redis_for(cfg.redis, cfg.path("redis")) as (client, _):
        ctl = _rollout(cfg, client)
        st = ctl.state
        console.print(f"champion: v{st.champion}   canary: {('v' + str(st.canary)) if st.canary else '-'} "
                      f"on {', '.join(st.canary_robots) or '-'}")
        t = Table("version", "embodiment", "decision", "canary", "champion", "statistic", "test")
        for d in ctl.board.rollout_decisions(20):
            t.add_row(f"v{d.version}", d.embodiment, d.decision, f"{d.canary_successes}/{d.canary_episodes}",
                      f"{d.champion_successes}/{d.champion_episodes}", f"{d.statistic:.3f}", d.test)
        console.print(t)


@rollout_app.command("promote")
def rollout_promote(version: Annotated[int | None, typer.Argument(help="default: the canary")] = None,
                    config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Make a version the champion fleet-wide now."""
    cfg = load_config(config, set_)
    with redis_for(cfg.redis, cfg.path("redis")) as (client, _):
        st = _rollout(cfg, client).promote(version)
    console.print(f"champion is now v{st.champion}")


@rollout_app.command("rollback")
def rollout_rollback(to: Annotated[int | None, typer.Option(help="set the champion back to this version")] = None,
                     config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Drop the canary (or return the champion to an earlier version)."""
    cfg = load_config(config, set_)
    with redis_for(cfg.redis, cfg.path("redis")) as (client, _):
        st = _rollout(cfg, client).rollback(to)
    console.print(f"champion v{st.champion}, no canary")


@app.command()
def demo(
    minutes: Annotated[float, typer.Option(help="how long the fleet runs after the warm start")] = 8.0,
    json_path: Annotated[Path | None, typer.Option("--json", help="write the summary here")] = None,
    demos: Annotated[int, typer.Option(help="scripted demonstrations per robot")] = 10,
    warm_steps: Annotated[int, typer.Option(help="warm-start training steps on the demonstrations")] = 200,
    eval_episodes: Annotated[int, typer.Option(help="held-out episodes per embodiment and version")] = 24,
    inject: Annotated[bool, typer.Option(help="inject a corrupted and a degraded version midway")] = True,
    config: ConfigOpt = None, set_: SetOpt = None,
) -> None:
    """A small simulated mixed fleet (Franka, YAM, SO-101) that improves its own policy while you watch."""
    from fleet.demo import run_demo

    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # unwinds every with-block: Ray, actors, redis stop
    cfg = load_config(config, set_)
    summary = run_demo(cfg, minutes, console, demos_per_robot=demos, warm_steps=warm_steps,
                       eval_episodes=eval_episodes, inject=inject)
    text = json.dumps(summary, indent=2)
    if json_path:
        json_path.write_text(text)
    h, n = summary["heldout"], summary["heldout"]["episodes"]
    console.print(f"held-out success: v{h['first_version']} {h['successes']['first']}/{n} -> champion "
                  f"v{h['last_version']} {h['successes']['last']}/{n} (learner's last v{h['learner_version']} "
                  f"{h['successes']['learner']}/{n}); promoted {summary['promoted']}, rolled back "
                  f"{summary['rolled_back']}, held back in simulation {summary['held_back']}; "
                  f"episodes lost: {summary['episodes']['lost']}")
    if json_path:
        console.print(f"summary: {json_path}")


@app.command()
def up(config: ConfigOpt = None, set_: SetOpt = None,
       policy: Annotated[str | None, typer.Option(help="actors' starting policy (default: actors.policy)")] = None,
       minutes: Annotated[float | None, typer.Option(help="stop after this long (default: until Ctrl-C)")] = None,
       no_learner: Annotated[bool, typer.Option("--no-learner", help="actors only")] = False) -> None:
    """Start the fleet in the config on Ray (local, or `ray_address`) and supervise it until Ctrl-C."""
    import threading

    from fleet.orchestrator import Orchestrator

    cfg = load_config(config, set_)
    spec = policy or cfg.actors.policy
    if spec is None:
        console.print("[red]no policy: pass --policy or set actors.policy[/]")
        raise typer.Exit(2)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with Orchestrator(cfg, spec, weights_endpoint=f"tcp://127.0.0.1:{cfg.weights.pub_port}",
                      learner=not no_learner) as orch:
        console.print(f"fleet up: {len(cfg.actors.robots)} robots, learner {'off' if no_learner else 'on'}")
        try:
            orch.run(seconds=minutes * 60 if minutes else None, stop=stop)
        except KeyboardInterrupt:
            pass


def _register() -> None:
    """The part commands live beside the parts they compose (fleet/cli_*.py); registered here, explicitly."""
    from fleet.cli_actor import actor
    from fleet.cli_dashboard import dashboard
    from fleet.cli_keys import keys_generate
    from fleet.cli_learner import export, learner
    from fleet.cli_policy_server import policy_server
    from fleet.k8s import k8s_app

    for command in (actor, learner, export, dashboard):
        app.command()(command)
    app.command("policy-server")(policy_server)
    keys_app = typer.Typer(help="Fleet credentials.", no_args_is_help=True)
    keys_app.command("generate")(keys_generate)
    app.add_typer(keys_app, name="keys")
    app.add_typer(k8s_app, name="k8s")


_register()

if __name__ == "__main__":
    app()
