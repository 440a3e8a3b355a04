"""The continual learner: new episodes in, versions out, forever, and resumable from any crash.

Loop (``Learner.run``): take new-episode events from the store's stream (a Redis consumer group), keep the
mixture sampler's view of the store current, train one optimizer step at a time on mixture batches, and every
``publish_every_steps`` steps or ``publish_every_episodes`` new episodes run a cycle:

1. evaluate: held-out loss on fixed windows of episodes never trained on (fleet, and rehearsal to watch
   forgetting), plus the optional rollout hook (the demo passes one that runs the candidate in simulation);
2. export the trainable subset and hand it to the ``WeightSink``, which numbers the version;
3. register it in MLflow and announce it on the status board;
4. checkpoint (DeepSpeed: trainable weights, optimizer, schedule, step, RNGs; plus our client state: last
   version, consumer position, counters, MLflow run id) and only then acknowledge the consumed events.

Resume: ``<checkpoint_dir>/base`` holds the policy the learner started from (config, norm stats, tokenizers,
every weight; written once), ``<checkpoint_dir>/ds/<tag>`` the DeepSpeed checkpoints and ``ds/LATEST`` the
newest complete one, replaced atomically after its files are written, so a SIGKILL at any point leaves the
previous checkpoint in force. Restarted, the learner continues at that step with that optimizer state; events
delivered but not acknowledged since are re-read from the group's pending list (those the checkpoint already
counted are acknowledged, the rest counted again); version numbers come from the sink, which never reuses one.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

from fleet.config import LearnerConfig
from fleet.replay import ReplayStore
from fleet.status import LearnerStatus, StatusBoard, VersionEvent
from learner.engine import StepFigures, TrainingEngine, init_distributed
from learner.mixture import MixtureBatch, MixtureSampler
from learner.publish import WeightSink, write_atomic
from learner.tracking import Tracker
from policy.checkpoint import CONFIG_FILE, load_trainable, save_checkpoint
from policy.config import MolmoAct2Config
from policy.modeling_molmoact2 import MolmoAct2Policy

log = logging.getLogger("molmofleet.learner")

RolloutEval = Callable[[MolmoAct2Policy, int], Mapping[str, float]]
"""(policy holding the candidate weights, learner step) -> figures, e.g. {"rollout_success": 0.8}."""


def _event_key(event_id: str) -> tuple[int, int]:
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass
class LearnerSummary:
    steps: int  # optimizer steps done (all time, not just this run)
    versions: list[int] = field(default_factory=list)  # published by this run
    last_version: int | None = None
    episodes_seen: int = 0  # new-episode events consumed (all time)
    last_loss: float = float("nan")


class Learner:
    def __init__(
        self,
        store: ReplayStore,
        policy: MolmoAct2Policy,
        cfg: LearnerConfig,
        sink: WeightSink,
        *,
        checkpoint_dir: str | Path | None = None,
        tracker: Tracker | None = None,
        board: StatusBoard | None = None,
        rollout_eval: RolloutEval | None = None,
        norm_tags: dict[str, str] | None = None,
        run_name: str = "learner",
    ):
        self.store, self.cfg, self.sink = store, cfg, sink
        self.tracker, self.board, self.rollout_eval = tracker, board, rollout_eval
        self.dir = Path(checkpoint_dir or cfg.checkpoint_dir).expanduser()
        self.rank, self.world_size = init_distributed()
        self.lead = self.rank == 0  # only rank 0 consumes events, publishes and reports
        self._save_base(policy)
        # the candidate weights are loaded into a separate plain copy for the rollout hook (what actors run)
        self.eval_policy = copy.deepcopy(policy).eval() if rollout_eval is not None else None
        self.policy = policy
        self.engine = TrainingEngine(policy, cfg)
        self.sampler = MixtureSampler(
            store, cfg, policy.norm_stats, norm_tags, seed=cfg.seed * 1000 + self.rank
        )
        self.last_version: int | None = None
        self.events_through = "0-0"  # newest new-episode event accounted for
        self.episodes_seen = 0
        self._since_cycle = 0  # new episodes since the last cycle
        self._unacked: list[str] = []
        self._saved_step = -1
        self._stop = threading.Event()
        self._window: list[tuple[StepFigures, MixtureBatch, float]] = []  # since the last log line
        self._eval_sets: dict[str, tuple[int, list]] = {}  # kind -> (held-out episodes then, samples)
        run_id = self._resume()
        if self.lead:
            store.ensure_group(cfg.consumer_group, start="$")  # a new group counts episodes from now on
            self._take_pending()
            if tracker is not None:
                tracker.start(
                    run_name,
                    {
                        "learner": cfg.model_dump(mode="json"),
                        "policy": policy.config.architecture_fingerprint(),
                        "world_size": self.world_size,
                    },
                    run_id=run_id,
                )
        self.sampler.refresh()

    # ------------------------------------------------------------------------------------------ state

    @property
    def global_step(self) -> int:
        return self.engine.global_step

    def _save_base(self, policy: MolmoAct2Policy) -> None:
        base = self.dir / "base"
        if (base / CONFIG_FILE).exists():
            saved = MolmoAct2Config.model_validate_json((base / CONFIG_FILE).read_text())
            if saved.architecture_fingerprint() != policy.config.architecture_fingerprint():
                raise ValueError(
                    f"{self.dir} belongs to a learner of another policy architecture; "
                    "start this one with another learner.checkpoint_dir"
                )
            return
        if self.lead:
            tmp = self.dir / f".base.{os.getpid()}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            save_checkpoint(tmp, policy)
            os.replace(tmp, base)
        self._barrier()

    def _barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def _resume(self) -> str | None:
        latest = self.dir / "ds" / "LATEST"
        if not latest.exists():
            return None
        tag = latest.read_text().strip()
        state = self.engine.load(self.dir / "ds", tag).get("learner", {})
        self.last_version = state.get("last_version")
        self.events_through = state.get("events_through", "0-0")
        self.episodes_seen = int(state.get("episodes_seen", 0))
        self._since_cycle = int(state.get("since_cycle", 0))
        if "sampler" in state:
            self.sampler.load_state_dict(state["sampler"])
        self._saved_step = self.global_step
        log.info("resumed from %s: step %d, last version %s", tag, self.global_step, self.last_version)
        return state.get("run_id")

    def _client_state(self) -> dict[str, Any]:
        return {
            "learner": {
                "step": self.global_step,
                "last_version": self.last_version,
                "events_through": self.events_through,
                "episodes_seen": self.episodes_seen,
                "since_cycle": self._since_cycle,
                "run_id": self.tracker.run_id if self.tracker else None,
                "sampler": self.sampler.state_dict(),
                "time": time.time(),
            }
        }

    def checkpoint(self) -> Path:
        """Save a DeepSpeed checkpoint, point LATEST at it, prune old ones, then ack the consumed events."""
        root, tag = self.dir / "ds", f"step{self.global_step:09d}"
        if self._saved_step == self.global_step:
            return root / tag
        path = self.engine.save(root, tag, self._client_state())
        self._barrier()
        if self.lead:
            write_atomic(root / "LATEST", tag.encode())  # the commit point of this checkpoint
            # keep the newest keep_checkpoints up to this one; tags beyond it are leftovers of a run that died
            # after it had gone further than the checkpoint this run resumed from
            tags = sorted(p.name for p in root.glob("step*") if p.is_dir() and p.name != tag)
            stale = [t for t in tags if t > tag]
            older = [t for t in tags if t < tag]
            for old in stale + older[: max(0, len(older) - (self.cfg.keep_checkpoints - 1))]:
                shutil.rmtree(root / old, ignore_errors=True)
            if self.tracker is not None and self.tracker.cfg.log_checkpoints:
                self.tracker.log_artifacts(path, f"checkpoints/{tag}")
            self.store.ack(self.cfg.consumer_group, self._unacked)
            self._unacked.clear()
        self._saved_step = self.global_step
        return path

    # ------------------------------------------------------------------------------------------ events

    def _take_pending(self) -> None:
        """After a restart: events delivered before the crash but never acknowledged."""
        pending = self.store.read_events(
            self.cfg.consumer_group, self.cfg.consumer, count=100_000, pending=True
        )
        done = [eid for eid, _ in pending if _event_key(eid) <= _event_key(self.events_through)]
        self.store.ack(self.cfg.consumer_group, done)
        self._on_events([(eid, f) for eid, f in pending if _event_key(eid) > _event_key(self.events_through)])

    def poll_events(self, block_ms: int | None = None) -> int:
        """Consume new-episode events (rank 0); returns how many arrived."""
        if not self.lead:
            return 0
        events = self.store.read_events(
            self.cfg.consumer_group, self.cfg.consumer, count=1000, block_ms=block_ms
        )
        self._on_events(events)
        return len(events)

    def _on_events(self, events: list[tuple[str, dict[str, str]]]) -> None:
        if not events:
            return
        self.sampler.add([f["id"] for _, f in events if "id" in f])
        self.episodes_seen += len(events)
        self._since_cycle += len(events)
        self._unacked.extend(eid for eid, _ in events)
        self.events_through = max((eid for eid, _ in events), key=_event_key)

    # ------------------------------------------------------------------------------------------ training

    def _agree(self, flag: bool, op: str = "max") -> bool:
        """Rank 0's view (max) or everyone's (min) of a decision every rank must take together."""
        if self.world_size == 1:
            return flag
        import torch.distributed as dist

        t = torch.tensor([int(flag)])
        dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.MIN)
        return bool(t.item())

    def ready(self) -> bool:
        """Enough trainable episodes stored (on every rank)."""
        return self._agree(self.sampler.trainable_count() >= self.cfg.min_episodes, "min")

    def train_step(self) -> StepFigures:
        """Draw grad_accum mixture batches and take one optimizer step."""
        t0 = time.perf_counter()
        batches = [self.sampler.sample(self.cfg.batch_size) for _ in range(self.cfg.grad_accum)]
        collated = [self.policy.processor.collate(b.samples) for b in batches]
        data_s = time.perf_counter() - t0
        figures = self.engine.train_step(collated)
        for b in batches:
            self._window.append((figures, b, data_s / len(batches)))
        if self.global_step % self.cfg.log_every_steps == 0:
            self._report()
        return figures

    def _cycle_due(self) -> bool:
        due = self.global_step % self.cfg.publish_every_steps == 0
        if self.cfg.publish_every_episodes and self._since_cycle >= self.cfg.publish_every_episodes:
            due = True
        return self._agree(due)

    def run(
        self,
        max_steps: int | None = None,
        max_seconds: float | None = None,
        stop: threading.Event | None = None,
    ) -> LearnerSummary:
        """Train until ``max_steps`` (total), ``max_seconds``, ``stop`` or ``request_stop()``; checkpoint on exit."""
        summary = LearnerSummary(self.global_step, last_version=self.last_version)
        deadline = time.monotonic() + max_seconds if max_seconds else float("inf")
        stopping = stop or self._stop
        while True:
            halt = stopping.is_set() or self._stop.is_set() or time.monotonic() > deadline
            halt = halt or (max_steps is not None and self.global_step >= max_steps)
            if self._agree(halt):
                break
            self.poll_events(block_ms=None)
            if self.sampler.refresh_due():
                self.sampler.refresh()
            if not self.ready():
                self.poll_events(block_ms=500)  # nothing to train on yet: wait for episodes
                continue
            figures = self.train_step()
            summary.last_loss = figures.loss
            if self._cycle_due():
                version = self.cycle()
                if version is not None:
                    summary.versions.append(version)
        self.checkpoint()
        summary.steps, summary.last_version, summary.episodes_seen = (
            self.global_step,
            self.last_version,
            self.episodes_seen,
        )
        return summary

    def request_stop(self) -> None:
        """Finish the current step, checkpoint and return from ``run`` (SIGTERM handlers call this)."""
        self._stop.set()

    # ------------------------------------------------------------------------------------------ cycle

    def evaluate(self) -> dict[str, float]:
        """Held-out loss on fixed windows (fleet; rehearsal as the forgetting check)."""
        figures: dict[str, float] = {}
        for kind in ("fleet", "rehearsal"):
            # fixed windows, so figures compare across cycles; rebuilt only when the held-out episodes have
            # doubled since (early on a handful of episodes would otherwise stand for the fleet for good)
            episodes = self.sampler.held_out_count(kind)
            built_from, samples = self._eval_sets.get(kind, (0, []))
            if episodes >= max(1, 2 * built_from):
                samples = self.sampler.held_out_samples(self.cfg.eval_windows, kind, seed=self.cfg.seed)
                self._eval_sets[kind] = (episodes, samples)
            if not samples:
                continue
            bs = self.cfg.batch_size
            batches = [self.policy.processor.collate(samples[i : i + bs]) for i in range(0, len(samples), bs)]
            parts = self.engine.eval_loss(batches, seed=self.cfg.seed)
            prefix = "eval" if kind == "fleet" else "eval_rehearsal"
            figures.update({f"{prefix}_{k}": v for k, v in parts.items()})
            figures[f"{prefix}_windows"] = float(len(samples))
        return figures

    def cycle(self) -> int | None:
        """Evaluate, publish a version, checkpoint; returns the version number (rank 0; None elsewhere)."""
        figures = self.evaluate()
        payload = self.engine.export_trainable()
        version = None
        if self.lead:
            if self.rollout_eval is not None and self.eval_policy is not None:
                load_trainable(self.eval_policy, payload)
                figures.update(
                    {k: float(v) for k, v in self.rollout_eval(self.eval_policy, self.global_step).items()}
                )
            parent = self.last_version
            version = self.sink.publish(payload, parent=parent, step=self.global_step, figures=figures)
            self.last_version = version
            manifest = {
                "version": version,
                "parent": parent,
                "step": self.global_step,
                "figures": figures,
                "size": len(payload),
                "created": time.time(),
            }
            if self.tracker is not None:
                self.tracker.log_metrics(figures, self.global_step)
                self.tracker.log_version(version, payload, manifest)
            if self.board is not None:
                self.board.version_event(
                    VersionEvent(
                        version=version,
                        kind="published",
                        figures=figures,
                        detail=f"learner step {self.global_step}",
                    )
                )
            log.info("published version %d at step %d: %s", version, self.global_step, figures)
        self._since_cycle = 0
        self.checkpoint()
        return version

    # ------------------------------------------------------------------------------------------ reporting

    def _report(self) -> None:
        window, self._window = self._window, []
        if not self.lead or not window:
            return
        figures = window[-1][0]
        seen_steps: dict[int, StepFigures] = {f.step: f for f, _, _ in window}
        train_s = sum(f.seconds for f in seen_steps.values())
        data_s = sum(d for _, _, d in window)
        samples = sum(len(b.samples) for _, b, _ in window)
        realised = self.sampler.realised()
        sizes = self.sampler.pool_sizes()
        metrics: dict[str, float] = {
            "train/loss": float(np.mean([f.loss for f in seen_steps.values()])),
            **{
                f"train/{k}": float(np.mean([f.parts.get(k, 0.0) for f in seen_steps.values()]))
                for k in figures.parts
            },
            **{f"lr/{k}": v for k, v in figures.lr.items()},
            "train/grad_norm": figures.grad_norm,
            "throughput/samples_per_s": samples / max(train_s + data_s, 1e-9),
            "throughput/data_share": data_s / max(train_s + data_s, 1e-9),
            **{f"mix/{k}": v for k, v in realised.items()},
            **{f"data/pool_episodes/{k}": float(v) for k, v in sizes.items()},
            "data/staleness_s": float(np.mean([b.staleness_s for _, b, _ in window])),
            "data/version_lag": float(np.mean([b.version_lag for _, b, _ in window])),
            "data/episodes_seen": float(self.episodes_seen),
            "proc/rss_mb": psutil.Process().memory_info().rss / 2**20,
        }
        metrics = {k: v for k, v in metrics.items() if np.isfinite(v)}
        if self.tracker is not None:
            self.tracker.log_metrics(metrics, self.global_step)
        if self.board is not None:
            self.board.learner_update(
                LearnerStatus(
                    step=self.global_step,
                    loss=metrics["train/loss"],
                    parts={k: metrics[f"train/{k}"] for k in figures.parts},
                    samples_per_s=metrics["throughput/samples_per_s"],
                    lr=figures.lr.get("expert", next(iter(figures.lr.values()), 0.0)),
                    mixture={
                        k.removeprefix("pool/"): v for k, v in realised.items() if k.startswith("pool/")
                    },
                    episodes_seen=self.episodes_seen,
                    run_id=(self.tracker.run_id or "") if self.tracker else "",
                    tracking_uri=self.tracker.uri if self.tracker else "",
                )
            )

    def close(self, status: str = "FINISHED") -> None:
        if self.tracker is not None and self.lead:
            self.tracker.end(status)
