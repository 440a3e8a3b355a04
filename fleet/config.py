"""Typed configuration: one pydantic model per part, composed into ``FleetConfig``.

Loaded from YAML (``FleetConfig.load(path)``) and overridden from the CLI with dotted keys
(``--set learner.batch_size=16``). Secrets never live here: only the name of the environment variable or the
file that holds them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def read_secret(env: str, file: str | None) -> str | None:
    """A secret from the environment variable ``env`` or, failing that, from ``file``."""
    if os.environ.get(env):
        return os.environ[env]
    if file:
        return Path(file).expanduser().read_text().strip()
    return None


class RedisConfig(Section):
    url: str | None = None  # redis:// or rediss:// URL of an external Redis; None starts an embedded redis-server
    password_env: str = "MOLMOFLEET_REDIS_PASSWORD"  # env var holding the password (external or embedded)
    password_file: str | None = None  # or a file holding it
    data_dir: str = "~/.local/share/molmofleet/redis"  # embedded server: AOF + RDB live here
    appendfsync: Literal["always", "everysec", "no"] = "everysec"  # everysec: <=1 s of writes at risk on power loss
    maxmemory_mb: int = 0  # embedded server memory cap, 0 = none (the store's own capacity evicts first)
    socket_timeout_s: float = 5.0  # per-command timeout; a dead Redis surfaces as an error, not a hang

    def password(self) -> str | None:
        return read_secret(self.password_env, self.password_file)


class ReplayConfig(Section):
    prefix: str = "mf"  # key prefix, so several fleets can share one Redis
    capacity_mb: float = 2048  # payload bytes kept; the oldest non-reservoir episodes are evicted beyond it
    reservoir_size: int = 256  # episodes kept as a uniform sample of all history (rehearsal)
    chunk_steps: int = 32  # frames per stored chunk: a 10-step window touches one or two keys
    stats_bucket_s: int = 60  # time-bucket width for success-rate-over-time stats
    deadletter_max_bytes: int = 4 << 20  # raw payload kept with a dead-letter entry (truncated beyond)
    deadletter_maxlen: int = 10_000  # dead-letter stream length cap
    events_maxlen: int = 1_000_000  # new-episode event stream length cap (approximate trim)

    @model_validator(mode="after")
    def _check(self) -> ReplayConfig:
        if self.capacity_mb <= 0 or self.chunk_steps <= 0 or self.reservoir_size < 0:
            raise ValueError("replay: capacity_mb and chunk_steps must be > 0 and reservoir_size >= 0")
        return self


class SpoolConfig(Section):
    dir: str = "~/.local/share/molmofleet/spool"  # one subdirectory per robot
    max_mb: float = 4096  # refuse new episodes (clear error) beyond this backlog, rather than fill the disk
    retry_initial_s: float = 0.2  # first retry delay after the store is unreachable
    retry_max_s: float = 5.0  # backoff ceiling


class WeightsConfig(Section):
    store_url: str = "~/.local/share/molmofleet/weights"  # directory or fsspec URL (s3://...) for versions
    secret_env: str = "MOLMOFLEET_FLEET_SECRET"  # HMAC key that signs every version
    secret_file: str | None = None
    pub_port: int = 5556  # ZeroMQ PUB port for version announcements
    poll_s: float = 2.0  # actors poll Redis for the current version this often (covers missed announcements)
    chunk_mb: float = 4.0  # transfer chunk size

    def secret(self) -> str | None:
        return read_secret(self.secret_env, self.secret_file)


class RolloutConfig(Section):
    canary_fraction: float = Field(0.34, gt=0, le=1)  # share of each embodiment's robots in the canary cohort
    min_canary_episodes: int = 6  # canary episodes before a decision
    test: Literal["beta_binomial", "one_sided_z"] = "beta_binomial"
    promote_probability: float = 0.8  # P(canary >= champion - margin) needed to promote (beta_binomial)
    margin: float = 0.05  # tolerated drop in success rate
    alpha: float = 0.05  # significance for one_sided_z rollback


class LearnerConfig(Section):
    batch_size: int = 16
    lr_expert: float = 3e-4
    lr_llm: float = 3e-5
    lr_vision: float = 3e-5
    warmup_steps: int = 20
    total_steps: int = 100_000  # cosine horizon
    grad_clip: float = 1.0
    grad_accum: int = 1
    zero_stage: int = Field(0, ge=0, le=3)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    finetune: Literal["full", "lora", "expert"] = "expert"
    publish_every_steps: int = 200  # publish a version at least this often
    publish_every_episodes: int = 0  # or after this many new episodes (0: off)
    mixture: dict[str, float] = Field(default_factory=lambda: {"fresh": 0.5, "history": 0.3, "rehearsal": 0.2})
    fresh_window_s: float = 600  # episodes newer than this count as fresh
    success_weight: float = 2.0  # up-weight successful episodes
    intervention_weight: float = 3.0  # up-weight intervention steps
    failures: Literal["drop", "keep"] = "drop"
    checkpoint_dir: str = "~/.local/share/molmofleet/learner"
    seed: int = 0


class MlflowConfig(Section):
    tracking_uri: str | None = None  # None: sqlite under the data dir
    experiment: str = "molmofleet"
    model_name: str = "molmoact2-fleet"


class DashboardConfig(Section):
    host: str = "127.0.0.1"  # loopback by default; anything else needs allow_remote and a token
    port: int = 8765
    allow_remote: bool = False
    token_env: str = "MOLMOFLEET_DASHBOARD_TOKEN"
    refresh_s: float = 2.0


class ActorSpec(Section):
    robot_id: str
    embodiment: str
    task: str
    host_resource: str | None = None  # Ray custom resource of the robot's machine (hardware actors)


class ActorsConfig(Section):
    robots: list[ActorSpec] = Field(default_factory=list)
    image_size: int = 96  # rendered / resized camera side, pixels
    queue_threshold: float = 0.5  # request the next chunk when this fraction of the horizon remains
    merge: Literal["latest", "weighted"] = "weighted"
    heartbeat_s: float = 1.0
    policy: str | None = None  # checkpoint directory or tcp:// policy server; None: the fleet's champion


class FleetConfig(Section):
    data_dir: str = "~/.local/share/molmofleet"
    redis: RedisConfig = Field(default_factory=RedisConfig)
    replay: ReplayConfig = Field(default_factory=ReplayConfig)
    spool: SpoolConfig = Field(default_factory=SpoolConfig)
    weights: WeightsConfig = Field(default_factory=WeightsConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    dashboard: DashboardConfig = Field(default_factory=DashboardConfig)
    actors: ActorsConfig = Field(default_factory=ActorsConfig)
    ray_address: str | None = None  # None: local Ray; "ray://head:10001" for a cluster

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: list[str] | None = None) -> FleetConfig:
        raw: dict[str, Any] = {}
        if path is not None:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        for item in overrides or []:
            apply_override(raw, item)
        return cls.model_validate(raw)

    def dump_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def path(self, sub: str) -> Path:
        """A path under data_dir (or absolute / ~ paths as given)."""
        p = Path(sub).expanduser()
        return p if p.is_absolute() else Path(self.data_dir).expanduser() / p


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML) to a nested dict."""
    if "=" not in item:
        raise ValueError(f"override {item!r} must look like section.field=value")
    key, value = item.split("=", 1)
    node = raw
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {item!r}: {p} is not a section")
    node[parts[-1]] = yaml.safe_load(value)
