"""Hypothesis strategies and budgets for the bad-input tests: random bytes and msgpack structures, and mutations
of valid wire episodes (truncated, flipped, fields replaced by junk, NaN/inf, huge dims, unknown versions).

``MOLMOFLEET_FUZZ_EXAMPLES`` scales every test's example count (default: a CI-sized run of a few seconds each).
"""

from __future__ import annotations

import os
import uuid
from datetime import timedelta

import msgpack
import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from fleet.episode import encode_episode
from tests.factories import synthetic_episode

EXAMPLES = int(os.environ.get("MOLMOFLEET_FUZZ_EXAMPLES", "0"))


def budget(default: int) -> settings:
    """Settings for one fuzz test: ``default`` examples in CI, MOLMOFLEET_FUZZ_EXAMPLES when set."""
    return settings(
        max_examples=EXAMPLES or default,
        deadline=timedelta(seconds=20),  # "never a hang": one example taking longer fails the test
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.function_scoped_fixture,
        ],
        print_blob=True,
    )


# integers at the edges of our bounds and of msgpack's range
EDGE_INTS = st.sampled_from(
    [-1, 0, 1, 2, 3, 8, 4096, 4097, 100_000, 100_001, 2**31, 2**32, 2**63 - 1, -(2**63), 2**64 - 1]
)
LEAVES = (
    st.none()
    | st.booleans()
    | EDGE_INTS
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=12)
    | st.binary(max_size=40)
)
VALUES = st.recursive(
    LEAVES,
    lambda ch: st.lists(ch, max_size=4) | st.dictionaries(st.text(max_size=8), ch, max_size=4),
    max_leaves=16,
)


def pack(value: object) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def base_episode_tree(seed: int = 0, depth: bool = True) -> dict:
    """A valid wire episode as a tree: the top map with each chunk unpacked too (see ``repack``)."""
    ep = synthetic_episode("franka", steps=5, size=8, seed=seed, depth=depth, interventions=1)
    top = msgpack.unpackb(encode_episode(ep, chunk_steps=2))
    top["chunks"] = [msgpack.unpackb(c) for c in top["chunks"]]
    return top


def repack(tree: dict) -> bytes:
    tree = dict(tree)
    if isinstance(tree.get("chunks"), list):
        tree["chunks"] = [pack(c) if isinstance(c, dict) else c for c in tree["chunks"]]
    return pack(tree)


def paths(node: object, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value in a tree of dicts and lists."""
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += paths(v, (*prefix, i))
    return out


def _parent(tree: dict, path: tuple) -> object:
    node: object = tree
    for p in path[:-1]:
        node = node[p]  # type: ignore[index]
    return node


@st.composite
def mutated_episode(draw: st.DrawFn, fresh_id: bool = True) -> bytes:
    """A valid wire episode after one to three mutations."""
    tree = base_episode_tree(depth=draw(st.booleans()))
    if fresh_id:
        tree["meta"]["episode_id"] = uuid.UUID(int=draw(st.integers(0, 2**128 - 1))).hex
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["replace", "replace", "delete", "add", "poison", "version", "dims"]))
        targets = [p for p in paths(tree) if p]
        if kind == "replace" and targets:
            path = draw(st.sampled_from(targets))
            _parent(tree, path)[path[-1]] = draw(VALUES)  # type: ignore[index]
        elif kind == "delete" and targets:
            path = draw(st.sampled_from(targets))
            parent = _parent(tree, path)
            if isinstance(parent, dict) or (isinstance(parent, list) and parent):
                del parent[path[-1]]  # type: ignore[arg-type]
        elif kind == "add":
            containers = [p for p in paths(tree) if isinstance(_get(tree, p), dict)]
            node = _get(tree, draw(st.sampled_from(containers)))
            node[draw(st.text(max_size=8))] = draw(VALUES)
        elif kind == "poison" and isinstance(tree.get("low"), dict):
            name = draw(st.sampled_from(["state", "action", "timestamp"]))
            rec = tree["low"].get(name)
            dtype = "<f8" if name == "timestamp" else "<f4"
            if isinstance(rec, dict) and isinstance(rec.get("data"), bytes) and len(rec["data"]) % np.dtype(dtype).itemsize == 0:
                a = np.frombuffer(rec["data"], dtype).copy()
                if a.size:
                    a[draw(st.integers(0, a.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
                    rec["data"] = a.tobytes()
        elif kind == "version":
            tree["v"] = draw(st.sampled_from([0, 2, -1, 1.0, "1", None, 2**40, True]))
        elif kind == "dims" and isinstance(tree.get("low"), dict):
            rec = tree["low"].get(draw(st.sampled_from(["state", "action", "intervention", "timestamp"])))
            if isinstance(rec, dict):
                rec["shape"] = draw(st.lists(EDGE_INTS, max_size=70))
    blob = repack(tree)
    byte_op = draw(st.sampled_from(["none", "none", "truncate", "flip", "append"]))
    if byte_op == "truncate":
        blob = blob[: draw(st.integers(0, len(blob)))]
    elif byte_op == "flip" and blob:
        i = draw(st.integers(0, len(blob) - 1))
        blob = blob[:i] + bytes([blob[i] ^ draw(st.integers(1, 255))]) + blob[i + 1 :]
    elif byte_op == "append":
        blob += draw(st.binary(min_size=1, max_size=16))
    return blob


def _get(tree: object, path: tuple) -> object:
    for p in path:
        tree = tree[p]  # type: ignore[index]
    return tree
