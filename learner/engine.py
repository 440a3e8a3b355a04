"""The DeepSpeed training engine around MolmoAct2Policy: optimizer, schedule, precision, ZeRO, checkpoints.

What it owns:
- the process group: ``init_distributed`` works for one process (it fills in MASTER_ADDR/PORT, RANK,
  WORLD_SIZE itself) and under torchrun or the ``deepspeed`` launcher; gloo on CPU (``DS_ACCELERATOR=cpu``,
  set here when no CUDA device exists), nccl on GPUs;
- parameter groups with their own peak learning rates (llm, vision + connector, expert, LoRA adapters),
  split again into decay / no-decay (norms, biases and embeddings are not decayed);
- linear warmup then cosine to ``min_lr_ratio`` of the peak (a continual learner never anneals to zero);
- the optimizer: torch AdamW handed to DeepSpeed as a client optimizer by default (nothing to compile), or
  DeepSpeedCPUAdam (a compiled op, built once into TORCH_EXTENSIONS_DIR, ~60 s on first use);
- precision: fp32, or bf16 as torch autocast with fp32 master weights (DeepSpeed's ``torch_autocast``; the
  weights, hence exported versions, stay fp32); fp16 needs CUDA's loss scaling and is refused on CPU;
- DeepSpeed checkpoints of the trainable state (module, optimizer, schedule, step) for exact resume, and the
  export of the trainable subset as the safetensors blob ``policy.checkpoint.load_trainable`` reads (gathered
  first under ZeRO-3).

Compiled ops: on CPU, DeepSpeed's process-group setup builds its shared-memory collective op on first use
(~70 s once), as CPUAdam does; both are cached under TORCH_EXTENSIONS_DIR (default ~/.cache/torch_extensions,
the same directory tests/conftest.py uses, so no process pays twice).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_save
from torch import nn

from fleet.config import LearnerConfig
from fleet.redis_server import free_port
from policy.checkpoint import TRAINABLE_FORMAT, architecture_hash
from policy.modeling_molmoact2 import MolmoAct2Policy

DEFAULT_EXTENSIONS_DIR = Path.home() / ".cache" / "torch_extensions"


def configure_accelerator() -> str:
    """Choose DeepSpeed's accelerator before deepspeed is imported; returns "cpu" or "cuda"."""
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(DEFAULT_EXTENSIONS_DIR))
    if "DS_ACCELERATOR" not in os.environ:
        os.environ["DS_ACCELERATOR"] = "cuda" if torch.cuda.is_available() else "cpu"
    return os.environ["DS_ACCELERATOR"]


def init_distributed() -> tuple[int, int]:
    """Join (or, alone, create) the process group; returns (rank, world_size). Idempotent."""
    accelerator = configure_accelerator()
    import deepspeed
    import torch.distributed as dist

    if not dist.is_initialized():
        if "RANK" not in os.environ:  # a single process not started by a launcher: a group of one
            os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(free_port()))
        deepspeed.init_distributed(dist_backend="gloo" if accelerator == "cpu" else "nccl")
    else:
        # joined earlier in this process (a warm start before the fleet learner, or a caller that restored its
        # environment since): DeepSpeed reads these again at initialize and DeepSpeed cannot re-create the group
        os.environ.setdefault("RANK", str(dist.get_rank()))
        os.environ.setdefault("LOCAL_RANK", str(dist.get_rank()))  # one node: the launchers agree
        os.environ.setdefault("WORLD_SIZE", str(dist.get_world_size()))
    return dist.get_rank(), dist.get_world_size()


def cpu_adam_cached() -> bool:
    """Whether DeepSpeedCPUAdam is already compiled (so using it costs no build)."""
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR", DEFAULT_EXTENSIONS_DIR)).expanduser()
    return any((root / "cpu_adam").glob("*.so"))


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of each group's peak lr at optimizer step ``step``: linear warmup, then cosine to min_ratio."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(policy: MolmoAct2Policy, cfg: LearnerConfig) -> list[dict[str, Any]]:
    """Optimizer groups: (llm | lora | vision | expert) x (decay | no decay), empty ones left out."""
    peak = {"llm": cfg.lr_llm, "lora": cfg.lr_lora, "vision": cfg.lr_vision, "expert": cfg.lr_expert}
    names = {id(p): n for n, p in policy.named_parameters()}
    embeddings = {id(m.weight) for m in policy.modules() if isinstance(m, nn.Embedding)}
    buckets: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for part, params in policy.param_groups().items():
        for p in params:
            name = names[id(p)]
            key = "lora" if ".lora_" in name else part
            decay = p.ndim >= 2 and id(p) not in embeddings
            buckets.setdefault((key, decay), []).append(p)
    return [
        {
            "params": ps,
            "lr": peak[key],
            "weight_decay": cfg.weight_decay if decay else 0.0,
            "name": f"{key}/{'decay' if decay else 'no_decay'}",
        }
        for (key, decay), ps in sorted(buckets.items())
    ]


def deepspeed_config(cfg: LearnerConfig, world_size: int, accelerator: str) -> dict[str, Any]:
    if cfg.precision == "fp16" and accelerator == "cpu":
        raise ValueError(
            "learner.precision=fp16 needs a CUDA device (DeepSpeed's fp16 loss scaling); "
            "use bf16 or fp32 on CPU"
        )
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": cfg.batch_size * cfg.grad_accum * world_size,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage},
        "zero_allow_untested_optimizer": True,  # torch AdamW as client optimizer under ZeRO: supported, untagged
        "steps_per_print": 1 << 30,  # we report progress ourselves
        "wall_clock_breakdown": False,
    }
    if cfg.precision == "bf16":
        ds["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    elif cfg.precision == "fp16":
        ds["fp16"] = {"enabled": True}
    return ds


class PolicyLoss(nn.Module):
    """What DeepSpeed wraps: forward(batch) is the policy's training loss (a dict with "loss")."""

    def __init__(self, policy: MolmoAct2Policy):
        super().__init__()
        self.policy = policy

    def forward(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        return self.policy.loss(batch, generator)


@dataclass
class StepFigures:
    step: int  # optimizer steps done after this one
    loss: float
    parts: dict[str, float]  # flow_mse, token_ce, z_loss (mean over micro-batches)
    lr: dict[str, float]  # lr this step applied, per part (llm, lora, vision, expert)
    grad_norm: float  # global norm before clipping (nan when DeepSpeed does not report it)
    samples: int  # samples in this optimizer step (all micro-batches, this process)
    seconds: float  # wall time of forward + backward + optimizer step
    extra: dict[str, float] = field(default_factory=dict)


class TrainingEngine:
    """DeepSpeed engine + optimizer + schedule for one policy. One per process."""

    def __init__(self, policy: MolmoAct2Policy, cfg: LearnerConfig, seed: int | None = None):
        self.cfg = cfg
        self.accelerator = configure_accelerator()
        self.rank, self.world_size = init_distributed()
        import deepspeed

        self.policy = policy
        self.mode = cfg.finetune
        if self.mode == "lora" and not policy.lora_attached:
            policy.attach_lora(torch.Generator().manual_seed(cfg.seed if seed is None else seed))
        policy.set_finetune_mode(self.mode)
        policy.config.finetune.mode = self.mode  # saved checkpoints and trainable exports then agree on it
        self._export_dtypes = {n: p.dtype for n, p in policy.named_parameters()}
        groups = param_groups(policy, cfg)
        if not groups:
            raise ValueError(f"finetune={self.mode!r} leaves no trainable parameter in this policy")
        if cfg.optimizer == "cpu_adam":
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            optimizer: torch.optim.Optimizer = DeepSpeedCPUAdam(groups, betas=cfg.adam_betas, adamw_mode=True)
        else:
            optimizer = torch.optim.AdamW(groups, betas=cfg.adam_betas)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, cfg.warmup_steps, cfg.total_steps, cfg.min_lr_ratio)
        )
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=PolicyLoss(policy),
            optimizer=optimizer,
            lr_scheduler=schedule,
            config=deepspeed_config(cfg, self.world_size, self.accelerator),
        )
        self.group_names = [g["name"] for g in groups]
        self.trainable = [p for g in groups for p in g["params"]]
        self.device = torch.device(self.engine.device)
        if self.world_size == 1 and cfg.zero_stage == 0:
            # alone and without ZeRO there is nobody to average gradients with: skip DeepSpeed's flatten ->
            # all-reduce -> unflatten of every gradient (ZeRO stages keep it: it partitions their gradients)
            self.engine.enable_backward_allreduce = False
        # flow noise and times: one generator per rank, saved with every checkpoint for exact resume
        self.generator = torch.Generator().manual_seed(
            (cfg.seed if seed is None else seed) * 1000 + self.rank
        )

    # ------------------------------------------------------------------------------------------ training

    @property
    def global_step(self) -> int:
        return int(self.engine.global_steps)

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def train_step(self, micro_batches: Sequence[dict[str, torch.Tensor]]) -> StepFigures:
        """One optimizer step over ``grad_accum`` collated micro-batches."""
        if len(micro_batches) != self.cfg.grad_accum:
            raise ValueError(
                f"train_step needs grad_accum={self.cfg.grad_accum} micro-batches, got {len(micro_batches)}"
            )
        t0 = time.perf_counter()
        self.engine.train()
        sums: dict[str, float] = {}
        grad_norm = float("nan")
        lr: dict[str, float] = {}
        for i, batch in enumerate(micro_batches):
            out = self.engine(self._to_device(batch), self.generator)
            self.engine.backward(out["loss"])
            if i == len(micro_batches) - 1:
                lr = self.current_lr()  # the rate this step applies (the schedule advances in engine.step)
                if self.cfg.zero_stage == 0:
                    grad_norm = self._local_grad_norm()  # DeepSpeed reports no norm without ZeRO
            self.engine.step()
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
        if self.cfg.zero_stage > 0:
            reported = self.engine.get_global_grad_norm()
            grad_norm = float(reported) if reported is not None else float("nan")
        n = len(micro_batches)
        means = self._mean_over_ranks({k: v / n for k, v in sums.items()})
        return StepFigures(
            step=self.global_step,
            loss=means.pop("loss"),
            parts=means,
            lr=lr,
            grad_norm=grad_norm,
            samples=sum(int(b["input_ids"].shape[0]) for b in micro_batches),
            seconds=time.perf_counter() - t0,
        )

    def _local_grad_norm(self) -> float:
        grads = [p.grad.detach() for p in self.trainable if p.grad is not None]
        if not grads:
            return 0.0
        return float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)).float()))

    def _mean_over_ranks(self, values: dict[str, float]) -> dict[str, float]:
        if self.world_size == 1:
            return values
        import torch.distributed as dist

        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
        dist.all_reduce(t)
        return {k: float(v) / self.world_size for k, v in zip(keys, t, strict=True)}

    def current_lr(self) -> dict[str, float]:
        lrs = self.engine.get_lr()
        out: dict[str, float] = {}
        for name, lr in zip(self.group_names, lrs, strict=False):
            out[name.split("/")[0]] = float(lr)
        return out

    @torch.no_grad()
    def eval_loss(self, batches: Sequence[dict[str, torch.Tensor]], seed: int = 0) -> dict[str, float]:
        """Mean loss parts over ``batches`` with fixed flow noise (same seed: comparable across steps)."""
        generator = torch.Generator().manual_seed(seed)
        self.engine.eval()
        sums: dict[str, float] = {}
        count = 0
        try:
            for batch in batches:
                out = self.engine(self._to_device(batch), generator)
                n = int(batch["input_ids"].shape[0])
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + float(v) * n
                count += n
        finally:
            self.engine.train()
        return {k: v / max(count, 1) for k, v in sums.items()}

    # ------------------------------------------------------------------------------------------ weights

    @contextlib.contextmanager
    def _gathered(self, params: list[nn.Parameter]) -> Iterator[None]:
        if self.cfg.zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                yield
        else:
            yield

    def export_trainable(self) -> bytes:
        """The trainable subset as safetensors bytes in ``policy.checkpoint``'s trainable format."""
        named = dict(self.policy.named_parameters())
        names = self.policy.trainable_parameter_names(self.mode)
        with self._gathered([named[n] for n in names]):
            state = {
                n: named[n].detach().to("cpu", self._export_dtypes[n]).contiguous().clone() for n in names
            }
        meta = {"format": TRAINABLE_FORMAT, "mode": self.mode, "architecture": architecture_hash(self.policy)}
        return safetensors_save(state, metadata=meta)

    # ------------------------------------------------------------------------------------------ checkpoints

    def save(self, directory: Path, tag: str, client_state: dict[str, Any]) -> Path:
        """A DeepSpeed checkpoint (trainable module state, optimizer, schedule, step) plus ``client_state``.

        Collective: every rank calls it. Frozen parameters are left out: they never change and come from the
        base policy the learner saved when it started.
        """
        state = {**client_state, "generator": self.generator.get_state()}
        self.engine.save_checkpoint(
            str(directory), tag=tag, client_state=state, save_latest=False, exclude_frozen_parameters=True
        )
        return directory / tag

    def load(self, directory: Path, tag: str) -> dict[str, Any]:
        """Restore what ``save`` wrote; returns the client state."""
        path, client = self.engine.load_checkpoint(
            str(directory),
            tag=tag,
            load_module_strict=False,
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
        )
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint {tag!r} in {directory}")
        client = dict(client or {})
        if "generator" in client:
            self.generator.set_state(client.pop("generator"))
        return client
