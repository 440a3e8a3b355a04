"""Training throughput of the tiny MolmoAct2 through the learner's DeepSpeed engine vs a plain PyTorch loop.

Same initial weights, same pre-collated batches, same optimizer (AdamW, the learner's parameter groups and
warmup + cosine schedule) and gradient clipping on both sides; the two loops alternate step by step so that
background load on a shared machine hits both alike (the losses match step for step: the same computation).
Prints samples/s of each (from the median step time) and, last, the ratio DeepSpeed / plain (goal >= 0.9).

    .venv/bin/python bench/learner.py [--mode expert|full|lora] [--zero 0] [--batch 8] [--steps 6] [--rounds 3]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions"))

import numpy as np
import torch

from fleet.config import LearnerConfig
from learner.engine import TrainingEngine, lr_factor, param_groups
from policy.config import MolmoAct2Config
from policy.modeling_molmoact2 import MolmoAct2Policy
from policy.normalization import NormStats
from policy.processor import PolicySample


def batches(policy: MolmoAct2Policy, n: int, size: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        samples = []
        for _ in range(size):
            t = np.linspace(0, 1, 15, dtype=np.float32)[:, None]
            chunk = np.sin(2 * np.pi * (t + rng.uniform(0, 1, 8))).astype(np.float32)  # smooth (15, 8)
            samples.append(
                PolicySample(
                    images={
                        c: rng.integers(0, 256, (96, 96, 3), dtype=np.uint8) for c in ("external", "wrist")
                    },
                    state=chunk[0].copy(),
                    instruction="put the red cube in the bowl",
                    embodiment="franka",
                    actions=chunk,
                )
            )
        out.append(policy.processor.collate(samples))
    return out


class PlainLoop:
    """What a hand-written PyTorch training step does: the same groups, schedule and clipping."""

    def __init__(self, policy: MolmoAct2Policy, cfg: LearnerConfig):
        self.policy, self.cfg = policy, cfg
        policy.set_finetune_mode(cfg.finetune)
        self.opt = torch.optim.AdamW(param_groups(policy, cfg), betas=cfg.adam_betas)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: lr_factor(s, cfg.warmup_steps, cfg.total_steps, cfg.min_lr_ratio)
        )
        self.params = [p for p in policy.parameters() if p.requires_grad]
        self.generator = torch.Generator().manual_seed(0)

    def train_step(self, batch: dict[str, torch.Tensor]) -> float:
        out = self.policy.loss(batch, self.generator)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        return float(out["loss"].detach())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", default="expert", choices=["expert", "full", "lora"])
    ap.add_argument("--zero", type=int, default=0, help="DeepSpeed ZeRO stage")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6, help="steps per block")
    ap.add_argument("--rounds", type=int, default=3, help="alternating blocks per loop")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cpu-adam", action="store_true", help="DeepSpeedCPUAdam (compiled on first use)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    stats = NormStats()
    stats.add("franka", rng.uniform(-1, 1, (500, 8)), rng.uniform(-1, 1, (500, 8)), action_horizon=15)
    config = MolmoAct2Config.tiny(finetune={"mode": args.mode, "lora_rank": 8, "lora_alpha": 16})
    base = MolmoAct2Policy.from_config(config, stats, seed=0)
    cfg = LearnerConfig(
        batch_size=args.batch,
        finetune=args.mode,
        zero_stage=args.zero,
        warmup_steps=2,
        optimizer="cpu_adam" if args.cpu_adam else "adamw",
    )
    data = batches(base, args.steps, args.batch)
    plain = PlainLoop(copy.deepcopy(base), cfg)
    ds = TrainingEngine(copy.deepcopy(base), cfg)
    n_params = sum(p.numel() for p in base.parameters())
    n_train = sum(p.numel() for p in plain.params)
    print(
        f"tiny MolmoAct2: {n_params / 1e6:.2f}M parameters, {n_train / 1e6:.2f}M trained ({args.mode}); "
        f"batch {args.batch}, {args.threads} threads, ZeRO {args.zero}, "
        f"{'DeepSpeedCPUAdam' if args.cpu_adam else 'torch AdamW'}"
    )

    for b in data[:2]:  # warm-up: first-call allocations and lazy initialisation on both sides
        plain.train_step(b)
        ds.train_step([b])
    # alternate step by step (order flipped every step): load from other processes hits both loops alike
    times: dict[str, list[float]] = {"plain": [], "deepspeed": []}
    losses: dict[str, list[float]] = {"plain": [], "deepspeed": []}
    for r in range(args.rounds):
        for i, b in enumerate(data):
            for name in ("plain", "deepspeed") if (r + i) % 2 == 0 else ("deepspeed", "plain"):
                t0 = time.perf_counter()
                losses[name].append(plain.train_step(b) if name == "plain" else ds.train_step([b]).loss)
                times[name].append(time.perf_counter() - t0)
    # samples/s from the median step time: on a shared machine a neighbour's burst inflates some steps of
    # either loop at random; the median ignores those, the mean (also printed) does not
    for k in ("plain", "deepspeed"):
        med, mean = float(np.median(times[k])), float(np.mean(times[k]))
        print(
            f"{k:>9}: {args.batch / med:7.2f} samples/s (median {1000 * med:7.1f} ms/step; mean-based "
            f"{args.batch / mean:6.2f} samples/s), loss {losses[k][0]:.3f} -> {losses[k][-1]:.3f}"
        )
    paired = np.asarray(times["plain"]) / np.asarray(times["deepspeed"])
    print(f"median of per-step ratios: {float(np.median(paired)):.3f}")
    ratio = float(np.median(times["plain"]) / np.median(times["deepspeed"]))
    print(f"ratio deepspeed/plain samples/s: {ratio:.3f}")


if __name__ == "__main__":
    main()
