"""When the demo injects its corrupted and degraded versions: after their start, never over a pending canary's
verdict before their latest start, and the degraded one always early enough to be judged before the run ends."""

from __future__ import annotations

import pytest

from fleet.demo import injection_due

DURATION = 480.0
TIMEOUT = 150.0


@pytest.mark.parametrize("kind,start", [("corrupted", 120.0), ("degraded", 240.0)])
def test_nothing_is_injected_before_its_start(kind: str, start: float) -> None:
    assert not injection_due(kind, start - 1, DURATION, canary_pending=False, canary_timeout_s=TIMEOUT)
    assert injection_due(kind, start, DURATION, canary_pending=False, canary_timeout_s=TIMEOUT)


def test_a_pending_canary_is_waited_for_until_the_latest_start() -> None:
    # the corrupted one until half the run
    assert not injection_due("corrupted", 239.0, DURATION, canary_pending=True, canary_timeout_s=TIMEOUT)
    assert injection_due("corrupted", 240.0, DURATION, canary_pending=True, canary_timeout_s=TIMEOUT)
    # the degraded one until 1.25 canary timeouts before the end: 480 - 187.5
    assert not injection_due("degraded", 292.0, DURATION, canary_pending=True, canary_timeout_s=TIMEOUT)
    assert injection_due("degraded", 292.5, DURATION, canary_pending=True, canary_timeout_s=TIMEOUT)


def test_a_short_run_injects_the_degraded_version_at_its_start_over_a_pending_canary() -> None:
    # 3 minutes with a 150 s timeout: no time to wait, and none to spare
    assert injection_due("degraded", 90.0, 180.0, canary_pending=True, canary_timeout_s=TIMEOUT)
    assert not injection_due("degraded", 89.0, 180.0, canary_pending=True, canary_timeout_s=TIMEOUT)
