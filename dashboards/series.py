"""Time-series arithmetic for the dashboard: window parsing, bucket widths, rolling success rates with
Wilson score bands. Pure functions over counts, so the API and the tests share one definition.
"""

from __future__ import annotations

import math
import re

# Display bucket widths, seconds: the smallest one that keeps a window under max_points is used, so a month
# of data draws as a few hundred points whatever the store's raw 60 s buckets hold.
NICE_WIDTHS = (60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
Z95 = 1.959963984540054  # two-sided 95 % normal quantile


def parse_window(text: str | float | int, max_s: float) -> float:
    """``"6h"``, ``"30m"``, ``"7d"``, ``"90s"`` or plain seconds -> seconds, clamped to [60, max_s]."""
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
        if not m:
            raise ValueError(f"window {text!r}: use a number with a unit, e.g. 30m, 6h, 7d")
        seconds = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    return min(max(seconds, 60.0), max_s)


def bucket_width(window_s: float, max_points: int, base_s: int) -> int:
    """The display bucket width: a multiple of the store's ``base_s`` giving at most ``max_points`` points."""
    need = window_s / max_points
    for w in NICE_WIDTHS:
        if w >= need and w % base_s == 0:
            return w
    return int(math.ceil(need / base_s) * base_s)


def wilson(successes: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial rate: well-behaved at 0, 1 and small n (unlike the normal one)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # at p = 0 or 1 a bound is exactly 0 or 1: say so rather than trust rounding
    lo = 0.0 if successes <= 0 else max(0.0, centre - half)
    hi = 1.0 if successes >= n else min(1.0, centre + half)
    return lo, hi


def rate_with_band(successes: float, n: float) -> dict[str, float | int | None]:
    """Point rate and 95 % Wilson band, or nulls where nothing was seen."""
    if n <= 0:
        return {"n": 0, "ok": 0, "rate": None, "lo": None, "hi": None}
    lo, hi = wilson(successes, n)
    return {"n": int(n), "ok": int(successes), "rate": successes / n, "lo": lo, "hi": hi}


def rolling(counts: list[tuple[int, int]], k: int) -> list[tuple[int, int]]:
    """Sum of (episodes, successes) over the last ``k`` buckets at every position (a trailing window)."""
    out: list[tuple[int, int]] = []
    n_sum = ok_sum = 0
    for i, (n, ok) in enumerate(counts):
        n_sum += n
        ok_sum += ok
        if i >= k:
            n_sum -= counts[i - k][0]
            ok_sum -= counts[i - k][1]
        out.append((n_sum, ok_sum))
    return out


def rolling_series(counts: list[tuple[int, int]], k: int) -> dict[str, list[float | int | None]]:
    """Rolling rate, band and episode count per bucket, as parallel lists (what the chart library draws)."""
    cols: dict[str, list[float | int | None]] = {"n": [], "rate": [], "lo": [], "hi": []}
    for n, ok in rolling(counts, k):
        rb = rate_with_band(ok, n)
        for key in cols:
            cols[key].append(rb[key])
    return cols
