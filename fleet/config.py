"""Typed configuration: one pydantic model per part, composed into ``FleetConfig``.

Loaded from YAML (``FleetConfig.load(path)``) and overridden from the CLI with dotted keys
(``--set learner.batch_size=16``). Secrets never live here: only the name of the environment variable or the
file that holds them.
"""

from __future__ import annotations

import ipaddress
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
    user: str | None = None  # ACL user this component connects as: actor | learner | dashboard | admin (fleet/acl.py)
    users_dir: str | None = None  # dir of redis-<role>.password files (`fleet keys generate`): the embedded server
    #                               creates one ACL user per role from it; also where `user` finds its password
    tls_cert_file: str | None = None  # PEM certificate: the embedded server serves TLS only; client cert for rediss://
    tls_key_file: str | None = None  # its PEM private key
    tls_ca_file: str | None = None  # CA bundle that signed the server's certificate (clients verify against it)

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
    curve_dir: str | None = None  # dir of curve-server.* / curve-client*.* key files (`fleet keys generate`):
    #                               set, the announcement and actor-to-policy-server channels use ZeroMQ CURVE

    def secret(self) -> str | None:
        return read_secret(self.secret_env, self.secret_file)


class RolloutConfig(Section):
    canary_fraction: float = Field(0.34, gt=0, le=1)  # share of each embodiment's robots in the canary cohort
    min_canary_episodes: int = 6  # canary episodes before a decision
    test: Literal["beta_binomial", "one_sided_z"] = "beta_binomial"
    promote_probability: float = 0.8  # P(canary >= champion - margin) needed to promote (beta_binomial)
    margin: float = 0.05  # tolerated drop in success rate
    alpha: float = 0.05  # significance for one_sided_z rollback
    canary_timeout_s: float = 180.0  # a canary still undecided after this long is rolled back (not shown to be
    # as good: the champion keeps the fleet) and the next version may take the cohort
    judge: list[Literal["autonomous", "success"]] = Field(default_factory=lambda: ["autonomous", "success"],
                                                           min_length=1)
    # outcomes the gate compares, each must be not worse: autonomous = success with no supervisor step, success =
    # any successful episode (rescues included); see fleet/rollout.py
    sim_screen: bool = True  # a version whose simulated held-out success (the learner's sim/fleet figure) is
    # below the champion's is held back, never canaried; versions without the figure go to the canary as before


class LearnerConfig(Section):
    batch_size: int = 16  # samples per micro-batch (per process)
    lr_expert: float = 3e-4  # action expert peak learning rate
    lr_llm: float = 3e-5  # LLM decoder + LM head (full mode)
    lr_vision: float = 3e-5  # vision encoder + connector (full mode)
    lr_lora: float = 1e-4  # LoRA adapters (lora mode): adapters start at zero and need a larger step than weights
    weight_decay: float = 0.01  # AdamW decoupled decay on matrices (norms, biases and embeddings get none)
    adam_betas: tuple[float, float] = (0.9, 0.95)  # AdamW betas
    optimizer: Literal["adamw", "cpu_adam"] = "adamw"  # adamw: torch AdamW as DeepSpeed client optimizer (no
    # build); cpu_adam: DeepSpeedCPUAdam (compiled on first use, ~60 s, cached in TORCH_EXTENSIONS_DIR)
    warmup_steps: int = 20  # linear warmup from 0, optimizer steps
    total_steps: int = 100_000  # cosine horizon, optimizer steps
    min_lr_ratio: float = 0.1  # cosine floor as a fraction of each group's peak lr (continual: never reach 0)
    grad_clip: float = 1.0  # global gradient-norm clip (0: off)
    grad_accum: int = 1  # micro-batches per optimizer step
    zero_stage: int = Field(0, ge=0, le=3)  # DeepSpeed ZeRO stage
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # bf16: autocast with fp32 master weights; fp16 needs CUDA
    finetune: Literal["full", "lora", "expert"] = "expert"  # what trains, and therefore what a version ships
    publish_every_steps: int = 200  # evaluate + checkpoint + publish at least this often (optimizer steps)
    publish_every_episodes: int = 0  # or after this many new episodes (0: off)
    mixture: dict[str, float] = Field(default_factory=lambda: {"fresh": 0.5, "history": 0.3, "rehearsal": 0.2})
    # pool weights: fresh (fleet episodes newer than fresh_window_s), history (older fleet episodes, incl. the
    # store's reservoir), rehearsal (imported pretraining-style data, source="rehearsal"); empty pools drop out
    embodiment_weights: dict[str, float] = Field(default_factory=dict)  # share of each embodiment within a pool
    # (unlisted: 1.0); empty: embodiments in proportion to their (weighted) episodes
    fleet_sources: list[str] = Field(default_factory=lambda: ["fleet", "demo"])  # episode sources that feed the
    # fresh and history pools; "eval" episodes are never trained on
    rehearsal_sources: list[str] = Field(default_factory=lambda: ["rehearsal"])  # sources that feed the rehearsal
    # pool (imported datasets; the demo adds its scripted demonstrations: the prior every batch keeps a share of)
    fresh_window_s: float = 600  # episodes newer than this count as fresh
    success_weight: float = 2.0  # up-weight successful episodes
    intervention_weight: float = 3.0  # up-weight windows that start on a supervisor (intervention) step; 0: the
    # supervisor's takeovers are judged (rescued successes, failures) but never trained on
    takeover_support_tol: float | None = Field(None, ge=0)  # a takeover window whose action targets leave the
    # policy's action range (the q01..q99 its normalisation was fit on) by more than this, in action units (rad,
    # gripper 0..1), is not trained on: clipped to the range, it would teach the range's edge. None: every one
    failures: Literal["drop", "keep"] = "drop"  # drop: failed episodes give only their intervention windows;
    # keep: every window, with the outcome written into the instruction (see learner/mixture.py)
    rescued: Literal["interventions", "all"] = "interventions"  # a success with supervisor steps gives only its
    # intervention windows (its policy steps led to the takeover: HG-DAgger / Sirius); all: every window
    holdout_fraction: float = Field(0.05, ge=0, lt=1)  # episodes (by id hash) kept out of training for eval loss
    eval_windows: int = 32  # held-out windows in the eval-loss set
    min_episodes: int = 1  # training waits until this many trainable episodes are stored
    refresh_s: float = 5.0  # re-list the store's episodes at least this often (drops evicted ones)
    log_every_steps: int = 10  # metrics to MLflow and the status board
    keep_checkpoints: int = 2  # DeepSpeed checkpoints kept on disk (the newest ones)
    consumer_group: str = "learner"  # Redis consumer group on the new-episode stream
    consumer: str = "learner-0"  # this learner's consumer name in the group
    checkpoint_dir: str = "learner"  # DeepSpeed checkpoints + base policy; relative: under data_dir
    init_checkpoint: str | None = None  # policy checkpoint (our format) to start from; None: a fresh tiny policy
    delta_actions: bool = True  # a fresh policy predicts joints relative to the chunk's first state (grippers
    # absolute): several times the precision of absolute joint targets for the same model (policy/normalization.py)
    seed: int = 0  # policy init, sampling and flow-noise RNGs
    sim_eval_episodes: int = Field(0, ge=0)  # per version and robot (embodiment, task): held-out episodes in
    # simulation, no supervisor, figures sim/<embodiment> and sim/fleet in the manifest (the rollout's screen);
    # 0: off. Seeds sim_eval_seed.. are never used by actors or the demo's final evaluation
    sim_eval_seed: int = 800_000

    @model_validator(mode="after")
    def _check(self) -> LearnerConfig:
        problems = []
        if self.batch_size < 1 or self.grad_accum < 1:
            problems.append("batch_size and grad_accum must be >= 1")
        if self.publish_every_steps < 1:
            problems.append("publish_every_steps must be >= 1 (publish_every_episodes can add more cycles)")
        if not self.mixture or any(w < 0 for w in self.mixture.values()) or sum(self.mixture.values()) <= 0:
            problems.append(f"mixture {self.mixture} needs at least one positive weight and none negative")
        unknown = set(self.mixture) - {"fresh", "history", "rehearsal"}
        if unknown:
            problems.append(f"mixture pools {sorted(unknown)} unknown: use fresh, history, rehearsal")
        if set(self.fleet_sources) & set(self.rehearsal_sources):
            problems.append("fleet_sources and rehearsal_sources must not share a source")
        if any(w < 0 for w in self.embodiment_weights.values()):
            problems.append("embodiment_weights must be >= 0")
        if self.success_weight <= 0 or self.intervention_weight < 0:
            problems.append("success_weight must be > 0 and intervention_weight >= 0")
        if not 0 <= self.min_lr_ratio <= 1:
            problems.append("min_lr_ratio must be in [0, 1]")
        if problems:
            raise ValueError("learner: " + "; ".join(problems))
        return self


class MlflowConfig(Section):
    tracking_uri: str | None = None  # None: sqlite:///<data_dir>/mlflow.db (artifacts under <data_dir>/mlflow)
    experiment: str = "molmofleet"
    model_name: str = "molmoact2-fleet"  # registered model holding one model version per published version
    system_metrics: bool = True  # MLflow's CPU/memory/disk sampler thread (psutil), every system_metrics_s
    system_metrics_s: float = 10.0  # system metrics sampling interval, seconds
    log_checkpoints: bool = True  # upload each DeepSpeed checkpoint as run artifacts (the versions always are)


class DashboardConfig(Section):
    host: str = "127.0.0.1"  # loopback by default; anything else needs allow_remote and a token
    port: int = 8765
    allow_remote: bool = False
    token_env: str = "MOLMOFLEET_DASHBOARD_TOKEN"  # env var holding the access token (required when remote)
    token_file: str | None = None  # or a file holding it
    refresh_s: float = Field(2.0, gt=0)  # page polling period, seconds
    max_window_s: float = Field(90 * 86400, gt=0)  # longest time window a chart may ask for (bounded queries)
    max_points: int = Field(240, ge=10, le=5000)  # time points per chart series; wider windows use wider buckets
    max_raw_buckets: int = Field(20_000, gt=0)  # store stat buckets read per request; the rest on later polls
    cache_intervals: int = Field(50_000, gt=0)  # rolled-up intervals kept in memory (LRU)
    metrics_max_versions: int = Field(16, gt=0)  # newest policy versions exported per version in /metrics

    @model_validator(mode="after")
    def _check(self) -> DashboardConfig:
        try:
            loopback = self.host == "localhost" or ipaddress.ip_address(self.host).is_loopback
        except ValueError:  # a hostname other than localhost may resolve anywhere
            loopback = False
        if not loopback and not self.allow_remote:
            raise ValueError(f"dashboard: host {self.host!r} is not loopback; set dashboard.allow_remote=true "
                             f"(and a token in ${self.token_env}) to serve beyond this machine")
        return self

    def token(self) -> str | None:
        return read_secret(self.token_env, self.token_file)


class ActorSpec(Section):
    robot_id: str
    embodiment: str
    task: str
    host_resource: str | None = None  # Ray custom resource of the robot's machine (hardware actors)


class InterventionConfig(Section):
    """When the simulated supervisor (the scripted expert) takes over from the policy (Fleet-DAgger style)."""

    stall_s: float = Field(3.0, ge=0)  # take over when the task distance stalled this long, s; 0: off
    min_progress_m: float = Field(0.01, gt=0)  # improvement of the task distance that counts as progress, m
    random_per_s: float = Field(0.0, ge=0)  # takeover hazard per second of policy control (Poisson); 0: off
    takeover_s: float = Field(2.0, gt=0)  # the supervisor keeps control this long, control-time s
    grace_s: float = Field(1.0, ge=0)  # no takeover this soon after the start or a hand-back, s
    max_per_episode: int = Field(3, ge=0)  # takeovers per episode at most; 0 disables interventions


class ActorsConfig(Section):
    robots: list[ActorSpec] = Field(default_factory=list)
    image_size: int = 96  # rendered / resized camera side, pixels
    queue_threshold: float = Field(0.5, gt=0, le=1)  # ask for the next chunk when this fraction of it is left
    # how overlapping chunks merge; weighted cross-fades them (why: actors/runtime_chunks.py)
    merge: Literal["latest", "weighted"] = "weighted"
    heartbeat_s: float = Field(1.0, gt=0)  # heartbeat period, s
    policy: str | None = None  # checkpoint directory or tcp:// policy server; None: the fleet's champion
    async_inference: bool = True  # False: the arm stops while each chunk is computed (the bench's baseline)
    time_scale: float = Field(1.0, gt=0)  # sim only: run the control clock this many times real time
    max_episode_s: float | None = Field(None, gt=0)  # cut episodes at this control time, s; None: task limit
    first_chunk_timeout_s: float = Field(30.0, gt=0)  # wait this long for the first chunk of an episode, s
    policy_timeout_s: float = Field(2.0, gt=0)  # remote policy: per-request timeout before reconnecting, s
    policy_retries: int = Field(1, ge=0)  # remote policy: resends after a timeout before giving up on a chunk
    torch_threads: int = Field(1, ge=1)  # intra-op threads for in-process inference: leave a core to the loop
    gil_switch_ms: float = Field(1.0, gt=0)  # Python's GIL hand-off interval in an actor process (default 5):
    # bounds how long the inference thread's Python code can keep a waking control thread waiting
    record_depth: bool = True  # record the main camera's depth (MolmoThink targets) when the env renders it
    seed: int = 0  # first episode seed; episode i uses seed + i
    interventions: InterventionConfig = Field(default_factory=InterventionConfig)

    def robots_by_embodiment(self) -> dict[str, list[str]]:
        """Embodiment -> its robot ids: what the rollout draws canary cohorts from."""
        out: dict[str, list[str]] = {}
        for spec in self.robots:
            out.setdefault(spec.embodiment, []).append(spec.robot_id)
        return out


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
