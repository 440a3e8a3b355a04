"""ControlClock: absolute deadlines (no drift), overruns counted, missed deadlines skipped, jitter measured."""

from __future__ import annotations

import time

import pytest

from actors.runtime_clock import ControlClock


class FakeTime:
    """A clock where work takes exactly what the test says and sleep lands `oversleep` late."""

    def __init__(self, oversleep: float = 0.0):
        self.t = 1000.0
        self.oversleep = oversleep

    def now(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s + self.oversleep


def test_deadlines_are_absolute_so_late_wakeups_do_not_drift() -> None:
    ft = FakeTime(oversleep=0.002)  # every sleep is 2 ms late, like a busy kernel
    clock = ControlClock(10.0, now=ft.now, sleep=ft.sleep)
    t0 = clock.start()
    for _ in range(100):
        ft.t += 0.03  # 30 ms of work per 100 ms tick
        clock.wait()
    # sleep(period) would have drifted by 100 x 2 ms; absolute deadlines stay 2 ms late at worst
    assert clock.tick_start - t0 == pytest.approx(100 * 0.1 + 0.002, abs=1e-9)
    st = clock.stats()
    assert st.jitter_p50_ms == pytest.approx(2.0, abs=1e-6) and st.overruns == 0


def test_overruns_are_counted_and_whole_missed_periods_skipped() -> None:
    ft = FakeTime()
    clock = ControlClock(10.0, now=ft.now, sleep=ft.sleep)
    t0 = clock.start()
    ft.t += 0.15  # ran 50 ms past the next deadline: catch up at once, no skip
    clock.wait()
    assert clock.overruns == 1 and clock.skipped == 0 and clock.step == 1
    ft.t += 0.37  # now 0.52 s: deadline 0.2 missed by 0.32 s, three whole periods
    clock.wait()
    assert clock.overruns == 2 and clock.skipped == 3 and clock.step == 5
    clock.wait()  # back on schedule at deadline 6
    assert clock.tick_start == pytest.approx(t0 + 0.6)


def test_reanchor_after_a_deliberate_pause_counts_no_overruns_but_lowers_the_rate() -> None:
    ft = FakeTime()
    clock = ControlClock(10.0, now=ft.now, sleep=ft.sleep)
    clock.start()
    for _ in range(9):
        clock.wait()
    ft.t += 1.0  # the arm waited a second for a synchronous chunk
    clock.reanchor()
    for _ in range(10):
        clock.wait()
    clock.stop()
    st = clock.stats()
    assert st.overruns == 0 and st.ticks == 20
    assert st.rate_hz == pytest.approx(20 / 3.0)


def test_real_clock_holds_its_rate() -> None:
    clock = ControlClock(200.0)
    clock.start()
    t = time.perf_counter()
    for _ in range(60):
        clock.wait()
    elapsed = time.perf_counter() - t
    assert elapsed == pytest.approx(60 / 200.0, rel=0.05)
    assert clock.stats().jitter_p50_ms < 2.0
