"""OpenFAST: round trip within the quantisation bound (property tests), compression, files, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policy.openfast import OpenFAST


def smooth(seed: int, horizon: int, dim: int, components: int = 4) -> np.ndarray:
    """A random smooth chunk in [-1, 1]: a few low-frequency cosines per dimension."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, horizon)[:, None]
    x = sum(rng.uniform(-1, 1, (1, dim)) / (k + 1) * np.cos(np.pi * k * t) for k in range(components))
    return np.clip(x / 2.0, -1.0, 1.0)


@pytest.fixture(scope="module")
def fitted() -> OpenFAST:
    chunks = [smooth(s, h, d) for s in range(150) for h, d in ((30, 14), (15, 8), (30, 6))]
    return OpenFAST.fit(chunks)


chunk_shapes = st.tuples(st.integers(0, 10_000), st.integers(2, 30), st.integers(1, 14), st.integers(1, 6))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunk_shapes)
def test_round_trip_within_quantisation_bound(fitted: OpenFAST, shape: tuple[int, int, int, int]) -> None:
    seed, horizon, dim, components = shape
    x = smooth(seed, horizon, dim, components)
    for tok in (OpenFAST(), fitted):
        ids = tok.encode(x)
        assert all(0 <= i < tok.vocab_size for i in ids)
        back = tok.decode(ids, horizon, dim)
        assert back.shape == x.shape
        assert np.abs(back - x).max() <= tok.quantization_bound(horizon) + 1e-9


def test_fit_compresses_smooth_chunks(fitted: OpenFAST) -> None:
    held_out = [smooth(10_000 + s, 30, 14) for s in range(20)] + [
        smooth(20_000 + s, 15, 8) for s in range(20)
    ]
    plain, learnt = OpenFAST().compression_ratio(held_out), fitted.compression_ratio(held_out)
    print(f"OpenFAST compression (coefficients per token): bytes only {plain:.1f}x, fitted BPE {learnt:.1f}x")
    assert plain == pytest.approx(1.0)
    assert learnt > 4.0
    assert fitted.tokenizer.get_vocab_size() <= 2048


def test_save_load_gives_same_tokens(fitted: OpenFAST, tmp_path) -> None:
    fitted.save(tmp_path / "openfast.json")
    again = OpenFAST.load(tmp_path / "openfast.json")
    x = smooth(5, 30, 14)
    assert again.encode(x) == fitted.encode(x)
    assert np.array_equal(again.decode(fitted.encode(x), 30, 14), fitted.decode(fitted.encode(x), 30, 14))


def test_decode_of_any_token_stream_gives_a_chunk(fitted: OpenFAST) -> None:
    assert fitted.decode([], 30, 7).shape == (30, 7)
    assert fitted.decode([5] * 1000 + [99_999, -3], 10, 3).shape == (10, 3)


def test_fit_refuses_unnormalised_actions() -> None:
    with pytest.raises(ValueError, match="beyond one byte"):
        OpenFAST.fit([np.full((30, 4), 5.0)])
