"""Text vocabulary of the policy: a byte-level tokenizer plus the special tokens MolmoAct2 adds.

Two sources: `PromptTokenizer.byte_level(...)` builds a self-contained vocabulary with the `tokenizers`
library (256 byte tokens, no merges, then the special tokens) so the tiny preset needs no download; a
released checkpoint brings its own `tokenizer.json` (`PromptTokenizer.from_file`). Either way the special
tokens are looked up by their text, so the rest of the code never hard-codes an id.

Special tokens: chat markers, image markers, `<action_output>`/`<action_start>`/`<action_end>`,
`<state_k>` bins (k < 256), `<action_k>` OpenFAST tokens (k < 2048), and `<depth_start>`, `<depth_end>`,
`<depth_output>` plus `<depth_k>` codes (k < 128) reserved for MolmoThink (issue 9).
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|pad|>",
    "<|im_start|>",
    "<|im_end|>",
    "<im_start>",
    "<im_end>",
    "<im_patch>",
    "<action_output>",
    "<action_start>",
    "<action_end>",
    "<state_start>",
    "<state_end>",
    "<setup_start>",
    "<setup_end>",
    "<control_start>",
    "<control_end>",
    "<depth_output>",
    "<depth_start>",
    "<depth_end>",
)


def _byte_symbols() -> list[str]:
    """One printable character per byte value (the GPT-2 byte-level convention `tokenizers` uses)."""
    kept = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    shifted = iter(range(0x100, 0x200))
    return [chr(b) if b in kept else chr(next(shifted)) for b in range(256)]


BYTE_SYMBOLS: list[str] = _byte_symbols()  # byte value -> its vocabulary character


def byte_level_vocab_size(num_state_tokens: int, num_action_tokens: int, num_depth_codes: int) -> int:
    """Entries in the built-in byte-level vocabulary."""
    return 256 + len(SPECIAL_TOKENS) + num_state_tokens + num_action_tokens + num_depth_codes


class PromptTokenizer:
    """Text to ids, and the ids of every special token the prompt and the targets use."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        num_state_tokens: int,
        num_action_tokens: int,
        num_depth_codes: int,
        overrides: dict[str, int] | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        # User text must never turn into control tokens ("<action_3>" typed in an instruction stays text).
        self.tokenizer.encode_special_tokens = True
        self.num_state_tokens = num_state_tokens
        self.num_action_tokens = num_action_tokens
        self.num_depth_codes = num_depth_codes
        overrides = dict(overrides or {})
        missing: list[str] = []

        def lookup(text: str) -> int:
            tid = overrides.get(text, tokenizer.token_to_id(text))
            if tid is None:
                missing.append(text)
                return -1
            return int(tid)

        self.special = {name: lookup(name) for name in SPECIAL_TOKENS}
        self.state_base = self._range_base("state", num_state_tokens, lookup, overrides)
        self.action_base = self._range_base("action", num_action_tokens, lookup, overrides)
        self.depth_base = self._range_base("depth", num_depth_codes, lookup, overrides)
        if missing:
            raise ValueError(
                "tokenizer lacks MolmoAct2 special tokens (add them, or give their ids in config.token_ids): "
                + ", ".join(missing[:20])
                + (" ..." if len(missing) > 20 else "")
            )

    def _range_base(self, kind: str, count: int, lookup, overrides: dict[str, int]) -> int:
        """Id of `<kind_0>`; the `count` tokens `<kind_k>` must be contiguous so bins map to ids by offset."""
        base = lookup(f"<{kind}_0>")
        if base < 0 or f"<{kind}_0>" in overrides:
            return base
        for k in (1, count // 2, count - 1):
            if k > 0 and self.tokenizer.token_to_id(f"<{kind}_{k}>") != base + k:
                raise ValueError(f"tokenizer's <{kind}_k> tokens are not contiguous from id {base}")
        return base

    @classmethod
    def byte_level(
        cls, num_state_tokens: int, num_action_tokens: int, num_depth_codes: int
    ) -> PromptTokenizer:
        """The self-contained vocabulary: 256 byte tokens, then SPECIAL_TOKENS, state, action, depth tokens."""
        model = models.BPE(vocab={sym: i for i, sym in enumerate(BYTE_SYMBOLS)}, merges=[])
        tok = Tokenizer(model)
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        names = [
            *SPECIAL_TOKENS,
            *(f"<state_{k}>" for k in range(num_state_tokens)),
            *(f"<action_{k}>" for k in range(num_action_tokens)),
            *(f"<depth_{k}>" for k in range(num_depth_codes)),
        ]
        tok.add_special_tokens([AddedToken(n, special=True, normalized=False) for n in names])
        return cls(
            tok,
            num_state_tokens=num_state_tokens,
            num_action_tokens=num_action_tokens,
            num_depth_codes=num_depth_codes,
        )

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        *,
        num_state_tokens: int,
        num_action_tokens: int,
        num_depth_codes: int,
        overrides: dict[str, int] | None = None,
    ) -> PromptTokenizer:
        """A checkpoint's `tokenizer.json`."""
        return cls(
            Tokenizer.from_file(str(path)),
            num_state_tokens=num_state_tokens,
            num_action_tokens=num_action_tokens,
            num_depth_codes=num_depth_codes,
            overrides=overrides,
        )

    def save(self, path: str | Path) -> None:
        """Write `tokenizer.json`."""
        self.tokenizer.save(str(path))

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode_text(self, text: str) -> list[int]:
        """Plain text to ids; special-token text inside it is encoded as ordinary bytes."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids if text else []

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def id(self, token: str) -> int:
        """Id of one of SPECIAL_TOKENS."""
        return self.special[token]

    def state_token(self, k: int) -> int:
        return self.state_base + k

    def action_token(self, k: int) -> int:
        return self.action_base + k

    def depth_token(self, k: int) -> int:
        return self.depth_base + k
