"""Run by test_engine.py under torchrun (2 processes, gloo): each rank trains the micro policy on its own data
with ZeRO-2 and reports its losses and a checksum of its weights; rank 0 writes them all to argv[1]."""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist

from fleet.config import LearnerConfig
from learner.engine import TrainingEngine
from tests.learner.conftest import micro_policy
from tests.learner.test_engine import _batch


def main(out: str) -> None:
    torch.set_num_threads(1)
    policy = micro_policy("expert")
    engine = TrainingEngine(policy, LearnerConfig(batch_size=2, zero_stage=2, warmup_steps=1, lr_expert=2e-3))
    batch = _batch(policy, n=2, seed=10 + engine.rank)
    losses = [engine.train_step([batch]).parts["flow_mse"] for _ in range(3)]
    # the loss is averaged over ranks by the engine; flow_mse too, so report this rank's own eval instead
    own = engine.eval_loss([batch])["flow_mse"]
    checksum = float(sum(p.detach().double().sum() for p in policy.parameters() if p.requires_grad))
    rows = [None] * engine.world_size
    dist.all_gather_object(
        rows,
        {
            "rank": engine.rank,
            "world_size": engine.world_size,
            "losses": losses,
            "own_loss": own,
            "checksum": checksum,
        },
    )
    if engine.rank == 0:
        with open(out, "w") as f:
            json.dump(rows, f)
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1])
