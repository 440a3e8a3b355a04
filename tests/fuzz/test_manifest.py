"""Weight manifests under bad input: parse_manifest gives a Manifest or WeightVerificationError, and
verify_manifest accepts a manifest only if it says exactly what the fleet signed."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from fleet.weights import Manifest, WeightVerificationError, parse_manifest, sign, verify_manifest
from tests.fuzz.strategies import budget

SECRET = b"fleet-secret"
SIGNED = sign(
    Manifest(
        version=12,
        parent=11,
        sha256="0f" * 32,
        size=1 << 20,
        created=1.7e9,
        step=400,
        figures={"success": 0.8, "loss": 0.1},
    ),
    SECRET,
)

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda ch: st.lists(ch, max_size=4) | st.dictionaries(st.text(max_size=10), ch, max_size=4),
    max_leaves=12,
)
FIELDS = list(json.loads(SIGNED.model_dump_json()))


def parse_and_verify(raw: object) -> Manifest | None:
    """The manifest if it parses and verifies; None after a WeightVerificationError. Anything else fails."""
    try:
        m = parse_manifest(raw)  # type: ignore[arg-type]
    except WeightVerificationError as e:
        assert str(e)
        return None
    try:
        verify_manifest(m, SECRET)
    except WeightVerificationError:
        return None
    return m


@budget(300)
@given(st.binary(max_size=512) | st.text(max_size=256))
def test_random_input(raw: bytes | str) -> None:
    assert parse_and_verify(raw) is None


@budget(300)
@given(JSON.map(json.dumps))
def test_random_json(raw: str) -> None:
    assert parse_and_verify(raw) is None


@budget(300)
@given(st.lists(st.tuples(st.sampled_from([*FIELDS, "extra", ""]), JSON), min_size=1, max_size=3))
def test_tampered_signed_manifest_never_verifies_unless_unchanged(changes: list[tuple[str, object]]) -> None:
    d = json.loads(SIGNED.model_dump_json())
    for key, value in changes:
        d[key] = value
    m = parse_and_verify(json.dumps(d))
    if m is not None:  # accepted only if every signed field still says what was signed
        assert m.signing_bytes() == SIGNED.signing_bytes()


@budget(200)
@given(st.text(max_size=70) | st.text("0123456789abcdefABCDEF", min_size=62, max_size=66))
def test_any_signature_string_is_refused_cleanly(signature: str) -> None:
    d = json.loads(SIGNED.model_dump_json())
    d["signature"] = signature
    assert parse_and_verify(json.dumps(d)) is None


@budget(200)
@given(st.integers(0, len(SIGNED.model_dump_json()) - 1), st.integers(1, 255))
def test_flipped_bytes_never_verify_a_changed_manifest(at: int, xor: int) -> None:
    raw = bytearray(SIGNED.model_dump_json().encode())
    raw[at] ^= xor
    m = parse_and_verify(bytes(raw))
    assert m is None or m.signing_bytes() == SIGNED.signing_bytes()


def test_genuine_manifest_verifies_and_forgeries_do_not() -> None:
    assert parse_and_verify(SIGNED.model_dump_json()) == SIGNED
    forged = sign(SIGNED.model_copy(update={"sha256": "ee" * 32}), b"another-secret")
    assert parse_and_verify(forged.model_dump_json()) is None
    unsigned = SIGNED.model_copy(update={"signature": ""})
    assert parse_and_verify(unsigned.model_dump_json()) is None
    # a replayed older version: it verifies (it is genuine), so version order is checked where it is used:
    # WeightStore.manifest (recorded number) and WeightSubscriber (newest seen), see tests/security
    old = sign(SIGNED.model_copy(update={"version": 3}), SECRET)
    assert parse_and_verify(old.model_dump_json()) == old
