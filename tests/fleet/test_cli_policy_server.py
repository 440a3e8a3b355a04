"""`fleet policy-server`: the real command in a subprocess serves a saved checkpoint and stops cleanly on SIGTERM;
`RolloutVersions` keeps a server on the rollout's champion, canary and previous champion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from actors.policy_client import RemotePolicyClient
from fleet.cli_policy_server import RolloutVersions
from fleet.status import RolloutState
from policy.checkpoint import save_checkpoint, trainable_bytes
from policy.config import MolmoAct2Config
from policy.modeling_molmoact2 import MolmoAct2Policy
from policy.normalization import NormStats
from policy.processor import PolicySample
from policy.serving import PolicyServer, PolicyServerConfig
from tests.faults.sim_policy_server import PolicyServerProcess


def tiny(seed: int = 0) -> MolmoAct2Policy:
    rng = np.random.default_rng(1)
    stats = NormStats()
    stats.add("franka", rng.uniform(-2, 2, (100, 8)), rng.uniform(-2, 2, (100, 8)), action_horizon=15)
    return MolmoAct2Policy.from_config(MolmoAct2Config.tiny(finetune={"mode": "expert"}), stats, seed=seed)


def test_the_command_serves_a_checkpoint_and_stops_on_sigterm(tmp_path: Path) -> None:
    ckpt = save_checkpoint(tmp_path / "ckpt", tiny())
    (tmp_path / "fleet.yaml").write_text(f"data_dir: {tmp_path / 'data'}\n")
    server = PolicyServerProcess(
        ckpt,
        tmp_path / "logs",
        version=4,
        args=["--config", str(tmp_path / "fleet.yaml"), "--set", "server.max_queue=64"],
    )
    client = RemotePolicyClient(server.start().address, "arm-0", timeout_s=2.0, retries=0)
    try:
        server.wait_serving(timeout_s=120)
        img = np.full((64, 64, 3), 128, np.uint8)
        chunk = client.infer(PolicySample({"main": img}, np.zeros(8, np.float32), "reach", "franka"))
        assert chunk.shape == (15, 8) and client.version == 4
        assert server.stop(timeout_s=60) == 0, server.log_text()
        assert '"served": 1' in server.log_text()
    finally:
        client.close()
        server.stop()


class Board:
    def __init__(self) -> None:
        self.state = RolloutState()

    def rollout_state(self) -> RolloutState:
        return self.state


class Store:
    """The weight store's `fetch`: verified payloads by version (a bad one raises like a failed signature)."""

    def __init__(self, payloads: dict[int, bytes]) -> None:
        self.payloads, self.fetches = payloads, []

    def fetch(self, version: int) -> tuple[object, bytes]:
        self.fetches.append(version)
        if version not in self.payloads:
            from fleet.weights import WeightVerificationError

            raise WeightVerificationError(f"version {version}: signature mismatch")
        return None, self.payloads[version]


def test_rollout_versions_follow_champion_canary_and_rollback() -> None:
    base = tiny()
    blob = {}
    for v in (1, 2, 3):
        other = tiny(seed=v)
        with torch.no_grad():
            other.expert.final_layer.linear.bias.fill_(float(v))
        blob[v] = trainable_bytes(other)
    server = PolicyServer(base, PolicyServerConfig(port=0), version=0)  # versions only: no sockets needed
    board, store = Board(), Store(blob)
    sync = RolloutVersions(server, store, board)

    board.state = RolloutState(champion=1)
    sync.sync()
    assert server.versions.loaded() == [0, 1] and server.versions.champion == 1
    board.state = RolloutState(champion=1, canary=2, canary_robots=["arm-a", "arm-b"])
    sync.sync()
    assert server.versions.loaded() == [0, 1, 2] and server.versions.assignments() == {"arm-a": 2, "arm-b": 2}
    board.state = RolloutState(champion=2)  # promoted: the old champion stays for a rollback
    sync.sync()
    assert server.versions.champion == 2 and server.versions.assignments() == {}
    assert server.versions.loaded() == [0, 1, 2]
    board.state = RolloutState(champion=3)
    sync.sync()
    assert server.versions.loaded() == [0, 2, 3]  # 1 is neither current, previous nor the checkpoint's own
    fetched = len(store.fetches)
    board.state = RolloutState(champion=2)  # a rollback: already held, no fetch
    sync.sync()
    assert server.versions.champion == 2 and len(store.fetches) == fetched
    board.state = RolloutState(champion=2, canary=7, canary_robots=["arm-a"])  # fails verification
    sync.sync()
    sync.sync()
    assert store.fetches.count(7) == 1 and 7 not in server.versions.loaded()
    assert server.versions.assignments() == {}
    with pytest.raises(KeyError):
        server.set_champion(7)
