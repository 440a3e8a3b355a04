"""Coverage-guided fuzzing of the codec and manifest parser with atheris, for MOLMOFLEET_FUZZ_SECONDS (off in CI)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SECONDS = int(os.environ.get("MOLMOFLEET_FUZZ_SECONDS", "0"))
HARNESS = Path(__file__).with_name("atheris_codec.py")


@pytest.mark.skipif(not SECONDS, reason="set MOLMOFLEET_FUZZ_SECONDS to run the coverage-guided fuzzer")
def test_atheris_finds_no_crash(tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    corpus = tmp_path / "corpus"
    subprocess.run([sys.executable, str(HARNESS), "--seed-corpus", str(corpus)], check=True)
    res = subprocess.run(
        [
            sys.executable,
            str(HARNESS),
            f"-max_total_time={SECONDS}",
            "-rss_limit_mb=2048",
            f"-artifact_prefix={tmp_path}/",
            str(corpus),
        ],
        capture_output=True,
        text=True,
        timeout=SECONDS + 120,
    )
    crashes = sorted(p.name for p in tmp_path.glob("crash-*")) + sorted(
        p.name for p in tmp_path.glob("oom-*")
    )
    assert res.returncode == 0 and not crashes, f"{crashes}\n{res.stderr[-4000:]}"
