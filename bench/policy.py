"""Tiny MolmoAct2 on this CPU: inference latency per chunk, training samples/s, parameters per part.

    .venv/bin/python -m bench.policy            # ~1-2 minutes on an idle 2-core box
    .venv/bin/python -m bench.policy --quick    # fewer repetitions

Latency is `predict_actions` end to end (collate, SigLIP2, Qwen3 prefix, 10 Euler steps of the expert) for
one sample per embodiment, single-threaded (a fleet demo runs several policies on 2 cores), reported next
to the 100 ms per-chunk budget. Training is `loss` + backward + AdamW on a mixed batch of 8 with a fitted
OpenFAST tokenizer, per fine-tuning mode, side by side. The CI box is shared, so single-threaded figures
are given twice: wall clock, and this process's CPU time (what the wall clock would be on an idle core);
the load average is printed too. The last line is the expert's share of the parameters: what a hot swap
ships in expert-only mode.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from policy.checkpoint import trainable_bytes
from policy.config import MolmoAct2Config
from policy.modeling_molmoact2 import MolmoAct2Policy
from policy.normalization import NormStats
from policy.openfast import OpenFAST
from policy.processor import PolicySample

EMBODIMENTS = {"franka": (8, 2, 15), "yam_bimanual": (14, 3, 30), "so100": (6, 2, 30)}  # dims, cams, horizon
BUDGET_MS = 100.0


def make_sample(rng: np.random.Generator, tag: str) -> PolicySample:
    dim, cams, horizon = EMBODIMENTS[tag]
    t = np.linspace(0, 1, horizon)[:, None]
    actions = rng.uniform(-1, 1, (1, dim)) + 0.3 * np.sin(np.pi * t * rng.uniform(0.5, 2, (1, dim)))
    return PolicySample(
        images={f"cam{c}": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for c in range(cams)},
        state=rng.uniform(-1, 1, dim).astype(np.float32),
        instruction="put the red block in the bowl",
        embodiment=tag,
        actions=actions.astype(np.float32),
    )


def build(mode: str, stats: NormStats, openfast: OpenFAST) -> MolmoAct2Policy:
    cfg = MolmoAct2Config.tiny(finetune={"mode": mode, "lora_rank": 8})
    return MolmoAct2Policy.from_config(cfg, stats, seed=0, action_tokenizer=openfast)


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def latency_ms(
    policy: MolmoAct2Policy, sample: PolicySample | list[PolicySample], reps: int
) -> tuple[float, float]:
    """Median (wall, CPU) milliseconds per predict_actions call."""
    gen = torch.Generator().manual_seed(0)
    policy.predict_actions(sample, generator=gen)  # warm-up
    wall, cpu = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        policy.predict_actions(sample, generator=gen)
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return statistics.median(wall), statistics.median(cpu)


def train_samples_per_s(policy: MolmoAct2Policy, batch: dict, steps: int) -> tuple[float, float]:
    """(wall, CPU-time) samples per second."""
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-4)
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        out = policy.loss(batch, gen)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()

    step()  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    n = steps * batch["input_ids"].shape[0]
    return n / (time.perf_counter() - t0), n / (time.process_time() - c0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    reps, steps = (5, 2) if args.quick else (20, 6)
    rng = np.random.default_rng(0)
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}  (2 cores)")

    samples = {tag: make_sample(rng, tag) for tag in EMBODIMENTS}
    stats = NormStats()
    for tag, (dim, _, horizon) in EMBODIMENTS.items():
        stats.add(
            tag, rng.uniform(-1, 1, (256, dim)), rng.uniform(-1.5, 1.5, (256, dim)), action_horizon=horizon
        )
    demo = [make_sample(rng, tag) for _ in range(40) for tag in EMBODIMENTS]
    openfast = OpenFAST.fit([stats.normalize_action(s.embodiment, s.actions) for s in demo])
    policy = build("full", stats, openfast)

    torch.set_num_threads(1)
    print("\ninference, 1 thread, predict_actions end to end (median per chunk; wall | CPU time)")
    for tag, s in samples.items():
        wall, cpu = latency_ms(policy, s, reps)
        dim, cams, horizon = EMBODIMENTS[tag]
        print(
            f"  {tag:13s} {cams} cams, {horizon:2d} x {dim:2d}: {wall:6.1f} | {cpu:5.1f} ms  "
            f"= {cpu / BUDGET_MS:.2f} x the 100 ms budget (CPU)"
        )
    wall, cpu = latency_ms(policy, list(samples.values()), reps)
    print(f"  batch of 3 (one per embodiment): {wall:6.1f} | {cpu:5.1f} ms  = {cpu / 3:.1f} ms CPU per chunk")
    batch = policy.processor.collate([samples["yam_bimanual"]], with_targets=False)
    with torch.inference_mode():
        t0 = time.process_time()
        for _ in range(reps):
            state = policy.encode_prefix(batch)
        t1 = time.process_time()
        for _ in range(reps):
            policy.sample_actions_from_prefix(state, batch["action_dim_mask"], batch["action_horizon_mask"])
        t2 = time.process_time()
    print(
        f"  yam_bimanual split (CPU): prefix (vision + LLM) {(t1 - t0) / reps * 1e3:.1f} ms, "
        f"10 flow steps {(t2 - t1) / reps * 1e3:.1f} ms"
    )

    train = [
        samples[t]
        for t in ("franka", "yam_bimanual", "so100", "franka", "yam_bimanual", "so100", "franka", "so100")
    ]
    for threads in (1, 2):
        torch.set_num_threads(threads)
        rates = {}
        for mode in ("full", "lora", "expert"):
            p = build(mode, stats, openfast)
            rates[mode] = train_samples_per_s(p, p.processor.collate(train), steps)
        # With 2 threads CPU time adds both threads up, so only the wall clock means anything there.
        shown = {m: f"{w:.1f} | {c:.1f}" if threads == 1 else f"{w:.1f}" for m, (w, c) in rates.items()}
        unit = "samples/s (wall | CPU time)" if threads == 1 else "samples/s (wall)"
        print(
            f"\ntraining, {threads} thread(s), batch 8, K=4 noise samples, {unit}: "
            + ", ".join(f"{m} {r}" for m, r in shown.items())
            + f"; expert-only / full = {rates['expert'][0] / rates['full'][0]:.2f}x (wall)"
        )

    parts = {
        "vision (SigLIP2)": policy.vision,
        "connector": policy.connector,
        "llm (Qwen3 + head)": policy.llm,
        "expert": policy.expert,
    }
    total = count(policy)
    print("\nparameters")
    for name, module in parts.items():
        print(f"  {name:20s} {count(module):>10,d}  ({count(module) / total:5.1%})")
    print(f"  {'total':20s} {total:>10,d}")
    lora = build("lora", stats, openfast)
    lora_ship = sum(
        p.numel() for n, p in lora.named_parameters() if n in set(lora.trainable_parameter_names())
    )
    full_bytes = total * 4
    expert_bytes = len(trainable_bytes(policy, "expert"))
    print(f"  hot swap, lora mode (rank 8 + expert): {lora_ship:,d} parameters ({lora_ship / total:.1%})")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        f"expert share of parameters (hot swap, expert mode): {count(policy.expert) / total:.1%} "
        f"= {count(policy.expert):,d} of {total:,d}; {expert_bytes / 1e6:.1f} MB vs {full_bytes / 1e6:.1f} MB full "
        f"({full_bytes / expert_bytes:.1f}x smaller)"
    )


if __name__ == "__main__":
    main()
