"""Coverage-guided fuzzing (atheris / libFuzzer) of the episode codec and the weight manifest parser.

Not part of the default test run: ``tests/fuzz/test_atheris.py`` runs it for ``MOLMOFLEET_FUZZ_SECONDS``, or by
hand (a corpus directory of valid episodes makes it find deep paths sooner; ``--seed-corpus DIR`` writes one):

    .venv/bin/python tests/fuzz/atheris_codec.py --seed-corpus /tmp/corpus
    .venv/bin/python tests/fuzz/atheris_codec.py -max_total_time=600 /tmp/corpus

Any exception other than EpisodeError / WeightVerificationError is a crash: libFuzzer stops and writes the input.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with atheris.instrument_imports(include=["fleet"]):
    from fleet.episode import (
        EpisodeError,
        decode_chunk_frames,
        decode_episode,
        decode_low,
        encode_episode,
        parse_encoded,
        validate_encoded,
    )
    from fleet.weights import WeightVerificationError, parse_manifest, sign, verify_manifest

SECRET = b"fleet-secret"


def one_input(data: bytes) -> None:
    if not data:
        return
    target, body = data[0] % 4, data[1:]
    if target == 3:
        try:
            verify_manifest(parse_manifest(body), SECRET)
        except WeightVerificationError:
            pass
        return
    try:
        if target == 0:
            validate_encoded(parse_encoded(body))
            decode_episode(body)
        elif target == 1:
            decode_low(body)
        else:
            decode_chunk_frames(body)
    except EpisodeError:
        pass


def write_seed_corpus(directory: Path) -> None:
    import msgpack

    from fleet.weights import Manifest
    from tests.factories import synthetic_episode

    directory.mkdir(parents=True, exist_ok=True)
    for i, (emb, depth, enc) in enumerate(
        [("franka", False, "zstd"), ("yam_bimanual", True, "zstd"), ("so101", False, "jpeg")]
    ):
        blob = encode_episode(synthetic_episode(emb, steps=6, size=8, depth=depth, seed=i), 3, enc)
        (directory / f"episode-{i}").write_bytes(b"\x00" + blob)
        top = msgpack.unpackb(blob)
        (directory / f"low-{i}").write_bytes(b"\x01" + msgpack.packb(top["low"], use_bin_type=True))
        (directory / f"chunk-{i}").write_bytes(b"\x02" + top["chunks"][0])
    m = sign(Manifest(version=3, sha256="ab" * 32, size=10, created=1.0), SECRET)
    (directory / "manifest").write_bytes(b"\x03" + m.model_dump_json().encode())


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--seed-corpus":
        write_seed_corpus(Path(sys.argv[2]))
    else:
        atheris.Setup(sys.argv, one_input)
        atheris.Fuzz()
