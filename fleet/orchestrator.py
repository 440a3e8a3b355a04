"""Fleet orchestration on Ray: the replay store, the learner and one process per robot as Ray actors.

The same code runs on a laptop (local Ray, started here) and on a cluster (``ray_address: ray://head:10001``,
e.g. KubeRay). Each robot is a Ray actor with ``max_restarts=-1``: a crashed robot process is restarted by Ray,
its spool re-sends whatever it had not delivered and its counts go on (`EpisodeTally`). A hardware robot's
actor carries a custom resource (``host_resource``) that only its robot's machine offers, so it lands there. The
learner asks for a GPU when the cluster has one. The rollout gate runs in the driver: it puts every new version
on a canary cohort and promotes or rolls it back.

This module and fleet/cli*.py are the composition root: the only fleet modules that import actors/ and learner/.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import redis
from pydantic import BaseModel, ValidationError

from fleet.config import ActorSpec, FleetConfig
from fleet.redis_server import EmbeddedRedis, redis_for
from fleet.replay import ReplayStore
from fleet.rollout import RolloutController
from fleet.status import StatusBoard
from fleet.weights import WeightStore

log = logging.getLogger(__name__)


class EpisodeTally(BaseModel):
    """What a robot's actor has recorded in this fleet run, kept beside its spool so that it survives the process:
    Ray restarts a crashed actor with fresh memory, and counts that began again at 0 would make the episodes it
    sent before the crash look like episodes the store invented."""

    episodes: int = 0
    successes: int = 0
    restarts: int = 0

    @classmethod
    def load(cls, path: Path) -> EpisodeTally:
        try:
            return cls.model_validate_json(path.read_bytes())
        except (FileNotFoundError, ValidationError):
            return cls()

    def save(self, path: Path) -> None:
        from learner.publish import write_atomic

        write_atomic(path, self.model_dump_json().encode())  # a crash mid-write keeps the previous tally


@ray.remote(max_restarts=-1, max_task_retries=0)
class ActorHost:
    """One robot's process: the control loop (fleet.cli_actor.run_actor) plus its weight follower."""

    def __init__(self, cfg_json: str, spec: dict[str, Any], policy: str, weights_endpoint: str | None,
                 seed: int = 0):
        logging.basicConfig(level=logging.WARNING)
        self.cfg = FleetConfig.model_validate_json(cfg_json)
        self.spec = ActorSpec.model_validate(spec)
        self.policy = policy
        self.endpoint = weights_endpoint
        self.actor = None
        self.follower = None
        self.tally_path = self.cfg.path(self.cfg.spool.dir) / self.spec.robot_id / "tally.json"
        self.tally_path.parent.mkdir(parents=True, exist_ok=True)
        if ray.get_runtime_context().was_current_actor_reconstructed:  # a restart after a crash: count on
            self.tally = EpisodeTally.load(self.tally_path)
            self.tally.restarts += 1
        else:
            self.tally = EpisodeTally()
        self.tally.save(self.tally_path)
        self.seed = seed + self.tally.episodes  # a restart goes on to new scenes, not the first ones again
        self.error = ""
        self.thread = threading.Thread(target=self._run, name=self.spec.robot_id, daemon=True)
        self.thread.start()

    def _started(self, actor: Any) -> None:
        from actors.weight_follower import WeightFollower
        from fleet.curve import robot_client_keys
        from fleet.weights import WeightSubscriber

        self.actor = actor
        secret = self.cfg.weights.secret()
        if secret:
            client = redis.Redis.from_url(self.cfg.redis.url, password=self.cfg.redis.password(),
                                          socket_timeout=self.cfg.redis.socket_timeout_s)
            store = WeightStore(self.cfg.weights.store_url, secret, client, prefix=self.cfg.replay.prefix)
            curve_dir = self.cfg.weights.curve_dir  # the learner's announcer serves CURVE when it is set
            keys = robot_client_keys(curve_dir, self.spec.robot_id) if curve_dir else None
            sub = WeightSubscriber(self.endpoint, poll_s=self.cfg.weights.poll_s, curve=keys, secret=secret)
            self.follower = WeightFollower(actor, store, StatusBoard(client, self.cfg.replay.prefix), sub).start()

    def _on_episode(self, result: Any) -> None:  # called once the episode is in the spool
        self.tally.episodes += 1
        self.tally.successes += int(result.success)
        self.tally.save(self.tally_path)

    def _run(self) -> None:
        from fleet.cli_actor import run_actor

        try:
            run_actor(self.cfg, self.spec.robot_id, self.spec.embodiment, self.spec.task, self.policy,
                      episodes=None, seed=self.seed, started=self._started, on_episode=self._on_episode)
        except Exception as e:  # reported through status(); the orchestrator decides what to do
            self.error = f"{type(e).__name__}: {e}"
            log.exception("actor %s failed", self.spec.robot_id)

    def status(self) -> dict[str, Any]:
        a = self.actor
        return {"robot_id": self.spec.robot_id, "alive": self.thread.is_alive(), "pid": os.getpid(),
                "episodes": self.tally.episodes, "successes": self.tally.successes, "restarts": self.tally.restarts,
                "version": a.policy_version if a is not None else None,
                "swaps": self.follower.swaps if self.follower else 0,
                "rejected": sorted(self.follower.rejected) if self.follower else [], "error": self.error}

    def stop(self) -> dict[str, Any]:
        if self.actor is not None:
            self.actor.stop()
        self.thread.join(timeout=30)
        if self.follower is not None:
            self.follower.stop()
        return self.status()


@ray.remote(max_restarts=-1, max_task_retries=0)
class LearnerHost:
    """The continual learner (fleet.cli_learner.run_learner) in its own process."""

    def __init__(self, cfg_json: str):
        logging.basicConfig(level=logging.WARNING)
        # Ray workers inherit the driver's environment: a process group the driver made (a warm start) must
        # not make this one rendezvous on the driver's port
        for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            os.environ.pop(k, None)
        import torch

        # one intra-op thread: on a shared CPU host more threads contend with the actors and train slower
        torch.set_num_threads(max(1, int(os.environ.get("MOLMOFLEET_LEARNER_THREADS", "1"))))
        self.cfg = FleetConfig.model_validate_json(cfg_json)
        self.stop_event = threading.Event()
        self.summary: Any = None
        self.error = ""
        self.thread = threading.Thread(target=self._run, name="learner", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from fleet.cli_learner import run_learner

        try:
            self.summary = run_learner(self.cfg, self.stop_event)
        except Exception as e:
            self.error = f"{type(e).__name__}: {e}"
            log.exception("learner failed")

    def status(self) -> dict[str, Any]:
        return {"alive": self.thread.is_alive(), "error": self.error,
                "summary": self.summary.__dict__ if self.summary is not None else None}

    def stop(self) -> dict[str, Any]:
        self.stop_event.set()
        self.thread.join(timeout=120)
        return self.status()


@dataclass
class FleetHandles:
    actors: dict[str, Any] = field(default_factory=dict)  # robot id -> ActorHost handle
    learner: Any = None


class Orchestrator:
    """Start, supervise and stop a fleet. Use as a context manager; ``tick()`` drives the rollout gate."""

    def __init__(self, cfg: FleetConfig, policy: str, weights_endpoint: str | None = None, learner: bool = True,
                 actor_cpus: float = 0.25, learner_cpus: float = 0.5):
        self.cfg = cfg.model_copy(deep=True)
        self.policy = policy
        self.endpoint = weights_endpoint
        self.with_learner = learner
        self.actor_cpus = actor_cpus
        self.learner_cpus = learner_cpus
        self.handles = FleetHandles()
        self.redis: EmbeddedRedis | None = None
        self._redis_ctx: Any = None
        self._saved_env: dict[str, str | None] = {}  # what up() exported for the workers, as it was before
        self.client: Any = None
        self.started_ray = False
        self.last_canaried = 0

    # ------------------------------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Orchestrator:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self) -> None:
        self._redis_ctx = redis_for(self.cfg.redis, self.cfg.path("redis"), prefix=self.cfg.replay.prefix)
        self.client, self.redis = self._redis_ctx.__enter__()
        if self.redis is not None:  # everyone else connects to the server this driver started
            self.cfg.redis.url = self.redis.url
            self._saved_env[self.cfg.redis.password_env] = os.environ.get(self.cfg.redis.password_env)
            os.environ[self.cfg.redis.password_env] = self.redis.password
        env = {k: os.environ[k] for k in (self.cfg.redis.password_env, self.cfg.weights.secret_env, "MUJOCO_GL",
                                          "DS_ACCELERATOR", "TORCH_EXTENSIONS_DIR", "HF_HUB_OFFLINE")
               if k in os.environ}
        if not ray.is_initialized():
            ray.init(address=self.cfg.ray_address, include_dashboard=False, logging_level=logging.WARNING,
                     log_to_driver=False, runtime_env={"env_vars": env},
                     **({} if self.cfg.ray_address else {"num_cpus": max(2, os.cpu_count() or 2)}))
            self.started_ray = True
        cfg_json = self.cfg.model_dump_json()
        for i, spec in enumerate(self.cfg.actors.robots):
            self.start_actor(spec, seed=1000 * i)
        if self.with_learner:
            gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
            self.handles.learner = LearnerHost.options(num_cpus=self.learner_cpus, num_gpus=gpus,
                                                       name="learner").remote(cfg_json)

    def start_actor(self, spec: ActorSpec, seed: int = 0) -> Any:
        opts: dict[str, Any] = {"num_cpus": self.actor_cpus, "name": f"robot-{spec.robot_id}"}
        if spec.host_resource:
            opts["resources"] = {spec.host_resource: 0.01}
        h = ActorHost.options(**opts).remote(self.cfg.model_dump_json(), spec.model_dump(), self.policy,
                                             self.endpoint, seed)
        self.handles.actors[spec.robot_id] = h
        return h

    def down(self) -> dict[str, Any]:
        final: dict[str, Any] = {}
        stops = {rid: h.stop.remote() for rid, h in self.handles.actors.items()}
        if self.handles.learner is not None:
            stops["learner"] = self.handles.learner.stop.remote()
        for name, ref in stops.items():
            try:
                final[name] = ray.get(ref, timeout=150)
            except Exception as e:  # a dead actor: nothing left to stop
                final[name] = {"error": f"{type(e).__name__}: {e}"}
        self.handles = FleetHandles()
        if self.started_ray and ray.is_initialized():
            ray.shutdown()
            self.started_ray = False
        if self._redis_ctx is not None:
            self._redis_ctx.__exit__(None, None, None)
            self._redis_ctx = None
        # the password of a server that is gone must not outlive it in the caller's environment (the next
        # fleet in this process, or another user of the variable, would authenticate with it)
        for k, v in self._saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self._saved_env.clear()
        return final

    # ------------------------------------------------------------------------------------------ supervision

    def statuses(self, timeout_s: float = 10.0) -> dict[str, dict[str, Any]]:
        out = {}
        for rid, h in self.handles.actors.items():
            try:
                out[rid] = ray.get(h.status.remote(), timeout=timeout_s)
            except Exception as e:  # restarting (Ray brings it back) or gone
                out[rid] = {"robot_id": rid, "alive": False, "error": f"{type(e).__name__}"}
        return out

    def rollout(self) -> RolloutController:
        from learner.tracking import FleetRegistry

        registry = FleetRegistry(self.cfg.mlflow, Path(self.cfg.data_dir).expanduser())
        return RolloutController(ReplayStore(self.client, self.cfg.replay, decode_workers=0),
                                 StatusBoard(self.client, self.cfg.replay.prefix), self.cfg.rollout,
                                 on_alias=lambda version, alias: registry.set_alias(version, alias))

    def tick(self, controller: RolloutController, weights: WeightStore | None) -> None:
        """One pass of the rollout gate: decide on the current canary (a verdict, or rolled back when undecided
        after canary_timeout_s), then put the newest version on the free cohort if it passes the screen."""
        controller.evaluate()
        if weights is not None:
            latest = weights.latest() or 0
            st = controller.state
            if st.canary is None and latest > max(self.last_canaried, st.champion):
                self.last_canaried = latest
                champion = weights.manifest(st.champion).figures if st.champion else {}
                if controller.screen(latest, weights.manifest(latest).figures, champion):
                    controller.start_canary(latest, self.cfg.actors.robots_by_embodiment())

    def run(self, seconds: float | None = None, stop: threading.Event | None = None, every_s: float = 1.0) -> None:
        """`fleet up`: supervise and drive the rollout until ``seconds`` pass or ``stop`` is set."""
        secret = self.cfg.weights.secret()
        weights = (WeightStore(self.cfg.weights.store_url, secret, self.client, prefix=self.cfg.replay.prefix)
                   if secret else None)
        controller = self.rollout()
        deadline = time.monotonic() + seconds if seconds else float("inf")
        stop = stop or threading.Event()
        while not stop.is_set() and time.monotonic() < deadline:
            self.tick(controller, weights)
            stop.wait(every_s)
