"""Window parsing, bucket widths, Wilson bands and rolling sums: the arithmetic behind every chart."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dashboards.series import bucket_width, parse_window, rolling, rolling_series, wilson


def test_parse_window() -> None:
    assert parse_window("6h", 1e9) == 6 * 3600
    assert parse_window("30m", 1e9) == 1800 and parse_window("7d", 1e9) == 7 * 86400
    assert parse_window("90", 1e9) == 90 and parse_window(5, 1e9) == 60  # at least a minute
    assert parse_window("365d", 90 * 86400) == 90 * 86400  # clamped: queries stay bounded
    with pytest.raises(ValueError, match="window"):
        parse_window("yesterday", 1e9)


def test_bucket_width_keeps_points_bounded() -> None:
    for window in (3600, 6 * 3600, 86400, 7 * 86400, 30 * 86400, 90 * 86400, 400 * 86400):
        w = bucket_width(window, 240, 60)
        assert w % 60 == 0 and window / w <= 240
    assert bucket_width(3600, 240, 60) == 60  # never below the store's own buckets
    assert bucket_width(3600, 240, 90) % 90 == 0


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 4), (10, 10), (47, 120), (1, 1)])
def test_wilson_matches_its_definition(k: int, n: int) -> None:
    """The Wilson bounds are the p where |k/n - p| = z * sqrt(p (1 - p) / n): solve that quadratic independently."""
    z = 1.959963984540054
    p_hat = k / n
    # (1 + z^2/n) p^2 - (2 p_hat + z^2/n) p + p_hat^2 = 0
    roots = sorted(np.roots([1 + z * z / n, -(2 * p_hat + z * z / n), p_hat * p_hat]).real)
    lo, hi = wilson(k, n)
    assert lo == pytest.approx(max(0.0, roots[0]), abs=1e-9) and hi == pytest.approx(
        min(1.0, roots[1]), abs=1e-9
    )
    assert lo <= p_hat <= hi
    assert wilson(0, 0) == (0.0, 1.0)


def test_rolling_sums_and_series() -> None:
    counts = [(1, 1), (0, 0), (2, 1), (3, 0), (0, 0)]
    assert rolling(counts, 2) == [(1, 1), (1, 1), (2, 1), (5, 1), (3, 0)]
    cols = rolling_series(counts, 2)
    assert cols["n"] == [1, 1, 2, 5, 3]
    assert cols["rate"][2] == 0.5 and cols["rate"][4] == 0.0
    empty = rolling_series([(0, 0), (0, 0)], 3)
    assert empty["rate"] == [None, None] and empty["lo"] == [None, None]
    assert all(lo <= r <= hi for r, lo, hi in zip(cols["rate"], cols["lo"], cols["hi"], strict=True))
    assert not any(math.isnan(x) for x in cols["rate"])
