"""The DeepSpeed engine on CPU: param groups and schedule, training, exact resume, exports that the policy's own
loader accepts (gathered under ZeRO-3), CPUAdam when compiled, and two processes on gloo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fleet.config import LearnerConfig
from learner.engine import TrainingEngine, cpu_adam_cached, deepspeed_config, lr_factor, param_groups
from policy.checkpoint import load_trainable
from policy.processor import PolicySample
from tests.learner.conftest import micro_policy

REPO = Path(__file__).resolve().parents[2]
DIST_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _batch(policy, n: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n):
        start = int(rng.integers(0, 40))
        ramp = np.arange(start, start + 15, dtype=np.float32)[:, None] + np.arange(8) / 100
        samples.append(
            PolicySample(
                images={
                    "external": np.full((16, 16, 3), start, np.uint8),
                    "wrist": np.full((16, 16, 3), 7, np.uint8),
                },
                state=ramp[0].copy(),
                instruction="reach the red cube",
                embodiment="franka",
                actions=ramp,
            )
        )
    return policy.processor.collate(samples)


def test_param_groups_lrs_and_schedule() -> None:
    cfg = LearnerConfig(lr_expert=1e-3, lr_llm=1e-5, lr_vision=2e-5, lr_lora=1e-4, weight_decay=0.1)
    full = {g["name"]: g for g in param_groups(micro_policy("full"), cfg)}
    assert {n.split("/")[0] for n in full} == {"llm", "vision", "expert"}
    assert full["llm/decay"]["lr"] == 1e-5 and full["vision/decay"]["lr"] == 2e-5
    assert full["expert/no_decay"]["weight_decay"] == 0.0 and full["expert/decay"]["weight_decay"] == 0.1
    assert sum(p.ndim >= 2 for p in full["llm/no_decay"]["params"]) == 1  # the token embedding; else norms
    expert = {g["name"] for g in param_groups(micro_policy("expert"), cfg)}
    assert expert == {"expert/decay", "expert/no_decay"}
    lora = {g["name"]: g for g in param_groups(micro_policy("lora"), cfg)}
    assert lora["lora/decay"]["lr"] == 1e-4 and "llm/decay" not in lora
    # warmup to the peak, then cosine down to the floor, never below it
    f = [lr_factor(s, 10, 110, 0.1) for s in range(0, 200)]
    assert (
        f[0] == pytest.approx(0.1)
        and f[9] == 1.0
        and f[60] == pytest.approx(0.55)
        and min(f) == pytest.approx(0.1)
    )
    with pytest.raises(ValueError, match="fp16 needs a CUDA"):
        deepspeed_config(LearnerConfig(precision="fp16"), 1, "cpu")


def test_trains_exports_and_resumes_exactly(tmp_path: Path) -> None:
    policy = micro_policy("full")
    cfg = LearnerConfig(
        batch_size=4,
        zero_stage=2,
        finetune="full",
        warmup_steps=1,
        lr_expert=2e-3,
        lr_llm=1e-3,
        lr_vision=1e-3,
        grad_accum=2,
    )
    engine = TrainingEngine(policy, cfg)
    batches = [_batch(policy, seed=0), _batch(policy, seed=1)]
    first = engine.train_step(batches)
    for _ in range(5):
        last = engine.train_step(batches)
    assert engine.global_step == 6 and last.samples == 8
    assert last.loss < first.loss and np.isfinite(last.grad_norm)
    assert set(last.lr) == {"llm", "vision", "expert"}

    blob = engine.export_trainable()
    fresh = micro_policy("full", seed=5)
    assert load_trainable(fresh, blob)["mode"] == "full"
    for (name, a), b in zip(policy.named_parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a.detach(), b.detach()), name

    engine.save(tmp_path / "ds", "t6", {"learner": {"note": "x"}})
    after = engine.train_step(batches).loss
    state = engine.load(tmp_path / "ds", "t6")
    assert state["learner"] == {"note": "x"} and engine.global_step == 6
    assert engine.train_step(batches).loss == after  # optimizer, schedule and flow-noise RNG restored


def test_zero3_lora_export_is_gathered() -> None:
    policy = micro_policy("lora")
    engine = TrainingEngine(
        policy, LearnerConfig(batch_size=4, zero_stage=3, finetune="lora", warmup_steps=1)
    )
    engine.train_step([_batch(policy)])
    fresh = micro_policy("lora", seed=3)
    info = load_trainable(fresh, engine.export_trainable())  # checks names, full shapes and dtypes
    assert info["mode"] == "lora" and info["tensors"] == len(fresh.trainable_parameter_names("lora"))
    lora_b = [p for n, p in fresh.named_parameters() if ".lora_B." in n]
    assert any(p.abs().sum() > 0 for p in lora_b)  # B starts at zero: the export carries the trained values


@pytest.mark.skipif(
    not cpu_adam_cached(),
    reason="DeepSpeedCPUAdam not compiled yet (~60 s once); the CLI or "
    "bench/learner.py --cpu-adam builds it into TORCH_EXTENSIONS_DIR",
)
def test_cpu_adam_trains() -> None:
    policy = micro_policy("expert")
    engine = TrainingEngine(
        policy, LearnerConfig(batch_size=4, optimizer="cpu_adam", warmup_steps=1, lr_expert=2e-3)
    )
    assert type(engine.optimizer).__name__ == "DeepSpeedCPUAdam"
    batch = _batch(policy)
    losses = [engine.train_step([batch]).loss for _ in range(4)]
    assert losses[-1] < losses[0]


def test_two_processes_on_gloo_stay_in_sync(tmp_path: Path) -> None:
    out = tmp_path / "ranks.json"
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}  # torchrun sets its own
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(Path(__file__).with_name("two_ranks.py")),
            str(out),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = json.loads(out.read_text())
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["checksum"] == ranks[1]["checksum"]  # ZeRO-2 all-reduced gradients: identical weights
    assert ranks[0]["own_loss"] != ranks[1]["own_loss"]  # each rank trained on its own data
    assert ranks[0]["losses"] == ranks[1]["losses"]  # the reported loss is the mean over ranks
    assert ranks[0]["losses"][-1] < ranks[0]["losses"][0]
