"""Where an actor's action chunks come from: one `PolicyClient` interface, three implementations.

- `InProcessPolicyClient`: a MolmoAct2Policy in this process (the tiny model on CPU, or a checkpoint).
- `RemotePolicyClient`: a policy server over ZeroMQ (DEALER) speaking `policy/protocol.py`, with a per-request
  timeout and a fresh socket after every timeout (a wedged connection never outlives one request), optionally
  as a CURVE client (fleet/curve.py keys: the same ``weights.curve_dir`` the policy server and the weight
  announcer use).
- `ScriptedPolicyClient`: the sim's scripted expert as a chunking policy, for demonstrations and as the seed
  policy before any training. Each chunk is the expert rolled forward ``horizon`` ticks on a copy of the
  physics state taken when the observation was, so it is an open-loop plan from that observation exactly
  like a learned policy's, and it can run on the inference thread while the control thread steps the world.

The actor calls `sample_from` on its control thread (cheap: it packs the observation) and `infer` on its
inference thread; `load_weights`/`route` are applied by that same thread between two chunks.
"""

from __future__ import annotations

import copy
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zmq

from fleet.curve import CurveClientKeys, configure_client, robot_client_keys
from policy.processor import PolicySample
from policy.protocol import InferRequest, ProtocolError, decode_response, encode_request

if TYPE_CHECKING:
    import gymnasium as gym

    from policy.modeling_molmoact2 import MolmoAct2Policy

log = logging.getLogger(__name__)


class PolicyTimeout(TimeoutError):
    """No answer from the policy server within the timeout (after the configured retries)."""


class PolicyClient(ABC):
    """Observation in, action chunk out. ``version`` is the weights version that produced the last chunk."""

    version: int = 0

    def sample_from(self, obs: Mapping[str, Any], instruction: str, embodiment_tag: str) -> PolicySample:
        """Pack an env observation into a sample (called on the control thread, so it must be cheap)."""
        return PolicySample(
            images=dict(obs["images"]),
            state=np.asarray(obs["state"], dtype=np.float32),
            instruction=instruction,
            embodiment=embodiment_tag,
        )

    @abstractmethod
    def infer(self, sample: PolicySample) -> np.ndarray:
        """(horizon, action_dim) float32 absolute joint targets in real units, for the sample's step onwards."""

    def infer_batch(self, samples: list[PolicySample]) -> list[np.ndarray]:
        """Several samples at once (evaluation); clients that can batch override this."""
        return [self.infer(s) for s in samples]

    def load_weights(self, weights: Mapping[str, Any] | bytes | bytearray | memoryview, version: int) -> None:
        """Load new (trainable) tensors, a name -> tensor mapping or a `policy.checkpoint.trainable_bytes`
        blob (or a view of one in a receive buffer), and run as ``version`` from the next chunk on."""
        raise NotImplementedError(
            f"{type(self).__name__} cannot load weights; swap in another client instead"
        )

    def route(self, version: int | None) -> None:
        """Ask for weights ``version`` from the next chunk on (remote servers hold several versions)."""
        raise NotImplementedError(f"{type(self).__name__} serves one version; swap in another client instead")

    def close(self) -> None:  # noqa: B027 - most clients hold nothing to release
        """Release sockets / memory. Idempotent."""


# --------------------------------------------------------------------------------------------- in process


class InProcessPolicyClient(PolicyClient):
    """A MolmoAct2Policy in this process. Torch releases the GIL inside its ops, so the control thread keeps
    ticking while a chunk is computed; set torch's thread count in the composition root, not here."""

    def __init__(self, policy: MolmoAct2Policy, version: int = 0, seed: int = 0):
        import torch  # lazy: a scripted or remote actor never pays for torch's start-up

        self.policy = policy.eval()
        self.version = version
        self._generator = torch.Generator().manual_seed(seed)  # flow-matching noise, reproducible per client

    def infer(self, sample: PolicySample) -> np.ndarray:
        chunk = self.policy.predict_actions(sample, generator=self._generator)
        return np.asarray(chunk, dtype=np.float32)

    def infer_batch(self, samples: list[PolicySample]) -> list[np.ndarray]:
        chunks = self.policy.predict_actions(list(samples), generator=self._generator)
        return [np.asarray(c, dtype=np.float32) for c in chunks]

    def load_weights(self, weights: Mapping[str, Any] | bytes | bytearray | memoryview, version: int) -> None:
        import torch

        if isinstance(weights, bytes | bytearray | memoryview):  # a version's blob: checked against our shape
            from policy.checkpoint import load_trainable_bytes

            load_trainable_bytes(self.policy, weights)  # copied straight from the caller's buffer
            self.version = version
            return
        own = self.policy.state_dict()
        unknown = sorted(set(weights) - set(own))
        if unknown:
            raise KeyError(
                f"weights for version {version} name {len(unknown)} tensors this model does not have, "
                f"e.g. {unknown[:3]}: the version was trained for another architecture"
            )
        tensors = {
            k: torch.as_tensor(np.asarray(v)) if not isinstance(v, torch.Tensor) else v
            for k, v in weights.items()
        }
        for k, v in tensors.items():
            if tuple(v.shape) != tuple(own[k].shape):
                raise ValueError(
                    f"{k}: shape {tuple(v.shape)} in version {version}, model has {tuple(own[k].shape)}"
                )
        self.policy.load_state_dict(tensors, strict=False)
        self.version = version

    @classmethod
    def tiny(cls, seed: int = 0, version: int = 0) -> InProcessPolicyClient:
        """A randomly initialised tiny MolmoAct2 knowing every embodiment (normalised by its joint limits)."""
        from actors.embodiments import EMBODIMENTS
        from policy.config import MolmoAct2Config
        from policy.modeling_molmoact2 import MolmoAct2Policy
        from policy.normalization import NormStats

        stats = NormStats()
        for emb in EMBODIMENTS.values():
            limits = np.stack([emb.action_low, emb.action_high])  # (2, A): q01/q99 span the joint range
            stats.add(emb.norm_tag, limits, limits, action_horizon=emb.chunk_horizon)
        return cls(
            MolmoAct2Policy.from_config(MolmoAct2Config.tiny(), stats, seed=seed), version=version, seed=seed
        )

    @classmethod
    def from_checkpoint(cls, directory: str | Path, version: int = 0, seed: int = 0) -> InProcessPolicyClient:
        from policy.checkpoint import load_checkpoint

        return cls(load_checkpoint(directory), version=version, seed=seed)


# --------------------------------------------------------------------------------------------- remote


class RemotePolicyClient(PolicyClient):
    """A policy server at ``address`` (tcp://host:port). Not thread-safe: one inference thread uses it.

    ``curve``: connect as a CURVE client (the server must be a CURVE server with our public key on its
    allow-list). A CURVE server ignores a client without the right keys: its requests time out.
    """

    def __init__(
        self,
        address: str,
        robot_id: str,
        *,
        version: int | None = None,
        timeout_s: float = 2.0,
        retries: int = 1,
        context: zmq.Context | None = None,
        curve: CurveClientKeys | None = None,
    ):
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.address = address
        self.robot_id = robot_id
        self.timeout_s = timeout_s
        self.retries = retries
        self.wanted_version = version  # routing: None asks for the server's champion
        self.version = version or 0
        self.timeouts = 0
        self.reconnects = 0
        self.last_server_ms = 0.0
        self.curve = curve
        self._ctx = context or zmq.Context.instance()
        self._sock: zmq.Socket | None = None
        self._connect()

    def _connect(self) -> None:
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)  # a dead server must not keep unsent requests (and close()) hanging
        # A DEALER with no connection blocks in send, and a refused CURVE handshake (key not on the server's
        # allow-list) drops the connection for good: without a send timeout the inference thread would hang.
        sock.setsockopt(zmq.SNDTIMEO, max(1, round(self.timeout_s * 1000)))
        if self.curve is not None:  # every fresh socket, before connect: a reconnect stays encrypted
            k = self.curve
            configure_client(sock, k.keypair.public, k.keypair.secret, k.server_public)
        sock.connect(self.address)
        self._sock = sock

    def _reconnect(self) -> None:
        # A new socket gets a new identity: answers to requests we gave up on can no longer reach us.
        if self._sock is not None:
            self._sock.close(linger=0)
        self.reconnects += 1
        self._connect()

    def route(self, version: int | None) -> None:
        self.wanted_version = version

    def _call(self, req: InferRequest) -> Any:
        if self._sock is None:
            raise RuntimeError("RemotePolicyClient is closed")
        for attempt in range(self.retries + 1):
            req.sent = time.time()
            deadline = time.monotonic() + self.timeout_s
            try:
                self._sock.send(encode_request(req), copy=False)
                what = "no answer"
            except zmq.Again:
                # not queued within the timeout: no connection (a refused CURVE key looks the same)
                deadline, what = 0.0, "no connection to send on"
            while (left := deadline - time.monotonic()) > 0:
                if not self._sock.poll(left * 1000, zmq.POLLIN):
                    break
                try:
                    resp = decode_response(self._sock.recv())
                except ProtocolError as e:
                    log.warning("policy server %s sent a malformed response: %s", self.address, e)
                    continue
                if resp.id == req.id:
                    resp.raise_for_error()
                    self.version = resp.version
                    self.last_server_ms = resp.server_ms
                    return resp
                # an answer to an earlier request: late, already given up on
            self.timeouts += 1
            log.warning(
                "policy server %s: %s (timeout %.2f s, attempt %d/%d); reconnecting",
                self.address,
                what,
                self.timeout_s,
                attempt + 1,
                self.retries + 1,
            )
            self._reconnect()
        raise PolicyTimeout(
            f"policy server {self.address} did not answer {req.kind} within {self.timeout_s} s "
            f"({self.retries + 1} attempts)"
        )

    def infer(self, sample: PolicySample) -> np.ndarray:
        resp = self._call(
            InferRequest(kind="infer", robot=self.robot_id, sample=sample, version=self.wanted_version)
        )
        if resp.chunk is None:
            raise ProtocolError("policy server answered an infer request without a chunk")
        return np.array(resp.chunk, dtype=np.float32)  # a writable copy, detached from the message buffer

    def ping(self) -> int:
        """The version the server runs for us (raises PolicyTimeout when it is unreachable)."""
        return self._call(InferRequest(kind="ping", robot=self.robot_id, version=self.wanted_version)).version

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None


# --------------------------------------------------------------------------------------------- scripted


@dataclass
class ScriptedSample(PolicySample):
    """A sample plus the physics state at the observation, from which the expert plans its chunk."""

    physics: np.ndarray | None = None  # mj_getState vector (integration state + warm start) of the live sim


class ScriptedPolicyClient(PolicyClient):
    """The scripted expert planning ``horizon`` ticks ahead on a private copy of the simulation."""

    def __init__(self, env: gym.Env, horizon: int, version: int = 0):
        import mujoco

        from actors.sim.experts import EXPERTS

        self._mujoco = mujoco
        sim = env.unwrapped
        self._live = sim.scene
        self.horizon = horizon
        self.version = version
        # the planning scene shares the (read-only) model and the task's layout; only its data is private
        self._plan = copy.copy(sim.scene)
        self._plan.data = mujoco.MjData(sim.scene.model)
        self._expert = EXPERTS[sim.task.name](self._plan, sim.task)
        # integration state plus the solver warm start: the plan matches the live future to float rounding
        self._spec = mujoco.mjtState.mjSTATE_INTEGRATION | mujoco.mjtState.mjSTATE_WARMSTART

    def sample_from(self, obs: Mapping[str, Any], instruction: str, embodiment_tag: str) -> ScriptedSample:
        m, d = self._live.model, self._live.data
        state = np.empty(self._mujoco.mj_stateSize(m, self._spec))
        self._mujoco.mj_getState(m, d, state, self._spec)
        return ScriptedSample(
            images=dict(obs.get("images", {})),
            state=np.asarray(obs["state"], np.float32),
            instruction=instruction,
            embodiment=embodiment_tag,
            physics=state,
        )

    def infer(self, sample: PolicySample) -> np.ndarray:
        physics = getattr(sample, "physics", None)
        if physics is None:
            raise ValueError(
                "ScriptedPolicyClient needs samples from its own sample_from (with physics state)"
            )
        m, d = self._plan.model, self._plan.data
        self._mujoco.mj_setState(m, d, physics, self._spec)
        self._mujoco.mj_forward(m, d)
        chunk = np.empty((self.horizon, self._plan.embodiment.action_dim), np.float32)  # (H, A)
        for i in range(self.horizon):
            chunk[i] = self._expert.act()
            self._plan.apply_action(chunk[i])
            self._plan.step()
        return chunk


# --------------------------------------------------------------------------------------------- by name


def _scripted(spec: str, env: gym.Env, horizon: int, **_: Any) -> PolicyClient:
    return ScriptedPolicyClient(env, horizon)


def _tiny(spec: str, seed: int = 0, **_: Any) -> PolicyClient:
    return InProcessPolicyClient.tiny(seed=int(spec.partition(":")[2] or seed))


def _remote(
    spec: str,
    robot_id: str,
    timeout_s: float = 2.0,
    retries: int = 1,
    curve_dir: str | Path | None = None,
    **_: Any,
) -> PolicyClient:
    curve = robot_client_keys(curve_dir, robot_id) if curve_dir else None
    return RemotePolicyClient(spec, robot_id, timeout_s=timeout_s, retries=retries, curve=curve)


def _checkpoint(spec: str, seed: int = 0, **_: Any) -> PolicyClient:
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"policy {spec!r} is neither a checkpoint directory nor one of {sorted(POLICY_SOURCES)}"
        )
    return InProcessPolicyClient.from_checkpoint(path, seed=seed)


# policy spec prefix -> builder; anything else is a checkpoint directory
POLICY_SOURCES: dict[str, Callable[..., PolicyClient]] = {
    "scripted": _scripted,  # the scripted expert (demonstrations, seed policy)
    "tiny": _tiny,  # "tiny" or "tiny:SEED": a randomly initialised tiny MolmoAct2 on CPU
    "tcp://": _remote,  # a policy server
    "ipc://": _remote,
}


def policy_client_for(
    spec: str,
    *,
    env: gym.Env,
    horizon: int,
    robot_id: str,
    seed: int = 0,
    timeout_s: float = 2.0,
    retries: int = 1,
    curve_dir: str | Path | None = None,
) -> PolicyClient:
    """The client a ``--policy`` string names: scripted, tiny[:seed], tcp://host:port, or a checkpoint dir.

    curve_dir: CURVE key directory (``weights.curve_dir``); a policy server is then reached as a CURVE client
    (`fleet.curve.robot_client_keys`). Local policies ignore it, so a scripted actor needs no key files."""
    builder = next(
        (
            b
            for prefix, b in POLICY_SOURCES.items()
            if spec == prefix or spec.startswith(prefix if prefix.endswith("//") else f"{prefix}:")
        ),
        _checkpoint,
    )
    return builder(
        spec,
        env=env,
        horizon=horizon,
        robot_id=robot_id,
        seed=seed,
        timeout_s=timeout_s,
        retries=retries,
        curve_dir=curve_dir,
    )
