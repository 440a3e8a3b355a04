"""OpenFAST action tokenizer: DCT over time per dimension, scale and round, byte-level BPE.

A chunk (T, A) of normalised actions goes through an orthonormal DCT along time (scipy.fft), each
coefficient is multiplied by `scale` and rounded, the integers are written low frequency first
(row-major over (frequency, dimension)) as one byte each (offset 128), and a byte-level BPE learnt with the
`tokenizers` library (vocab <= 2048) compresses the byte string; the runs of zero high-frequency
coefficients of smooth motion collapse into few tokens. Token k maps to `<action_k>` in the LLM vocabulary.

Before `fit` the tokenizer is the plain byte alphabet (256 tokens, one per coefficient): valid, just longer.
Rounding error per coefficient is <= 0.5 / scale and the DCT is orthonormal, so for every action dimension
the L2 error over time, hence every element's error, is <= 0.5 * sqrt(T) / scale (`quantization_bound`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from scipy.fft import dct, idct
from tokenizers import Tokenizer, models, trainers

from policy.prompt_tokenizer import BYTE_SYMBOLS

_OFFSET = 128  # byte value of a zero coefficient
_SYMBOL_TO_BYTE = {sym: b for b, sym in enumerate(BYTE_SYMBOLS)}


def _byte_alphabet_tokenizer() -> Tokenizer:
    # No pre-tokenizer: a whole chunk is one "word", so merges may span any coefficients.
    return Tokenizer(models.BPE(vocab={sym: i for i, sym in enumerate(BYTE_SYMBOLS)}, merges=[]))


class OpenFAST:
    """Encode (T, A) action chunks in [-1, 1] to token ids < vocab_size and back."""

    def __init__(
        self, tokenizer: Tokenizer | None = None, *, scale: float = 10.0, vocab_size: int = 2048
    ) -> None:
        self.scale = float(scale)
        self.vocab_size = int(vocab_size)
        self.tokenizer = tokenizer if tokenizer is not None else _byte_alphabet_tokenizer()
        size = self.tokenizer.get_vocab_size()
        if size > self.vocab_size:
            raise ValueError(f"BPE vocabulary has {size} tokens, more than vocab_size={self.vocab_size}")
        # id -> the bytes (coefficients + offset) the token stands for
        self._id_bytes = [
            np.array([_SYMBOL_TO_BYTE[c] for c in self.tokenizer.id_to_token(i)], dtype=np.uint8)
            for i in range(size)
        ]

    # ---- coefficients ---------------------------------------------------------------------------------------
    def quantize(self, chunk: np.ndarray) -> np.ndarray:
        """(T, A) -> (T * A,) rounded scaled DCT coefficients, low frequency first."""
        chunk = np.asarray(chunk, dtype=np.float64)
        if chunk.ndim != 2:
            raise ValueError(f"OpenFAST expects one (horizon, action_dim) chunk, got shape {chunk.shape}")
        return np.rint(dct(chunk, axis=0, norm="ortho") * self.scale).astype(np.int64).reshape(-1)

    def _to_symbols(self, coeffs: np.ndarray) -> str:
        byte_values = np.clip(coeffs + _OFFSET, 0, 255)
        return "".join(BYTE_SYMBOLS[b] for b in byte_values.tolist())

    # ---- public API -----------------------------------------------------------------------------------------
    def encode(self, chunk: np.ndarray) -> list[int]:
        """(T, A) chunk -> token ids. Coefficients beyond +-127 are clipped (`fit` refuses such data)."""
        return self.tokenizer.encode(self._to_symbols(self.quantize(chunk))).ids

    def encode_batch(self, chunks: Sequence[np.ndarray]) -> list[list[int]]:
        strings = [self._to_symbols(self.quantize(c)) for c in chunks]
        return [e.ids for e in self.tokenizer.encode_batch(strings)]

    def decode(self, ids: Iterable[int], horizon: int, action_dim: int) -> np.ndarray:
        """Token ids -> (horizon, action_dim) float32. Unknown ids are skipped; a short or long stream is
        padded with zero coefficients or cut, so a generated sequence always decodes to a chunk."""
        parts = [self._id_bytes[i] for i in ids if 0 <= int(i) < len(self._id_bytes)]
        stream = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint8)
        n = horizon * action_dim
        coeffs = np.full(n, _OFFSET, dtype=np.int64)
        coeffs[: min(n, stream.size)] = stream[:n]
        coeffs = (coeffs - _OFFSET).reshape(horizon, action_dim) / self.scale
        return idct(coeffs, axis=0, norm="ortho").astype(np.float32)

    def quantization_bound(self, horizon: int) -> float:
        """Largest |decode(encode(x)) - x| for chunks whose coefficients fit in a byte."""
        return 0.5 * float(np.sqrt(horizon)) / self.scale

    def compression_ratio(self, chunks: Sequence[np.ndarray]) -> float:
        """Coefficients per token, averaged over the chunks."""
        n_coeffs = sum(int(np.asarray(c).size) for c in chunks)
        n_tokens = sum(len(t) for t in self.encode_batch(chunks))
        return n_coeffs / max(n_tokens, 1)

    @classmethod
    def fit(
        cls, trajectories: Sequence[np.ndarray], *, scale: float = 10.0, vocab_size: int = 2048
    ) -> OpenFAST:
        """Learn BPE merges from normalised (T, A) chunks (shapes may differ between chunks)."""
        if not trajectories:
            raise ValueError("OpenFAST.fit needs at least one chunk")
        probe = cls(scale=scale, vocab_size=vocab_size)
        coeffs = [probe.quantize(t) for t in trajectories]
        lo, hi = min(int(c.min()) for c in coeffs), max(int(c.max()) for c in coeffs)
        if lo < -_OFFSET or hi > 255 - _OFFSET:
            peak = max(-lo, hi)
            raise ValueError(
                f"scaled DCT coefficients reach {peak}, beyond one byte (127); normalise actions to [-1, 1] or "
                f"use scale <= {scale * 127 / peak:.2f}"
            )
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=2,
            show_progress=False,
            special_tokens=[],
            initial_alphabet=BYTE_SYMBOLS,
        )
        tokenizer = Tokenizer(models.BPE())
        tokenizer.train_from_iterator((probe._to_symbols(c) for c in coeffs), trainer=trainer)
        return cls(tokenizer, scale=scale, vocab_size=vocab_size)

    def to_json_dict(self) -> dict:
        return {
            "format": "openfast",
            "scale": self.scale,
            "vocab_size": self.vocab_size,
            "offset": _OFFSET,
            "tokenizer": json.loads(self.tokenizer.to_str()),
        }

    @classmethod
    def from_json_dict(cls, payload: dict) -> OpenFAST:
        if payload.get("format") != "openfast" or payload.get("offset", _OFFSET) != _OFFSET:
            raise ValueError("not an OpenFAST tokenizer file")
        tokenizer = Tokenizer.from_str(json.dumps(payload["tokenizer"]))
        return cls(tokenizer, scale=payload["scale"], vocab_size=payload["vocab_size"])

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json_dict()))

    @classmethod
    def load(cls, path: str | Path) -> OpenFAST:
        return cls.from_json_dict(json.loads(Path(path).read_text()))
