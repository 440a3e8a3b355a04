"""Does `fleet demo` rise? Several whole runs, each a fresh fleet, and the rise tested across them.

One 8-minute run on two cores compares 72 held-out episodes per version: a real rise of a few episodes is
inside that noise, so a single run (the e2e test) cannot assert it without failing by chance now and then.
This bench runs ``--runs`` demos one after another (each `fleet demo --json` in its own process and data
directory, at the demo's defaults unless told otherwise), optionally adds the summaries of earlier runs
(``--add``: `fleet demo --json` files, the e2e keeps its own in pytest's temporary directory), and prints per
run v1, the last champion and the learner's newest version on the same held-out seeds, then across runs:

- how many runs rose (above v1), fell and tied, and the exact one-sided sign test (ties dropped) of "a run is
  as likely to fall as to rise": a small p says the loop makes the policy better, not this run's luck;
- pooled held-out successes of each over v1's (the ratio; above 1 is a rise).

    .venv/bin/python -m bench.rise --runs 4                 # ~15 minutes a run on two cores
    .venv/bin/python -m bench.rise --runs 0 --add a.json b.json
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

COMPARED = ("last", "learner")  # each against "first" (v1)


def sign_test(rises: int, falls: int) -> float:
    """One-sided exact sign test: P(at least ``rises`` of ``rises + falls`` fair coin flips come up rise)."""
    n = rises + falls
    return sum(math.comb(n, k) for k in range(rises, n + 1)) / 2**n if n else 1.0


def run_demo(out: Path, minutes: float, extra: list[str]) -> dict:
    """One `fleet demo` in a process of its own (Ray, Redis and the actors end with it) and its summary."""
    out.mkdir(parents=True, exist_ok=True)
    summary = out / "summary.json"
    cmd = [sys.executable, "-m", "fleet.cli", "demo", "--minutes", str(minutes), "--json", str(summary),
           "--set", f"data_dir={out}", *extra]
    with open(out / "demo.log", "w") as log:
        # the demo's own phases take ~7 minutes beside the fleet's; a run past twice that is hung
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True, timeout=2 * (minutes + 7) * 60)
    return json.loads(summary.read_text())


def successes(heldout: dict) -> tuple[dict[str, int], int]:
    """Held-out successes of first, last and learner, and the episodes each ran. Summaries written before
    they carried ``successes`` have per-embodiment rates on ``seeds`` seeds: the same counts, exactly."""
    if "successes" in heldout:
        return heldout["successes"], heldout["episodes"]
    from fleet.demo import heldout_successes

    n = heldout["seeds"]
    return {k: heldout_successes(heldout[k], n) for k in ("first", *COMPARED)}, n * (len(heldout["first"]) - 1)


def row(name: str, s: dict) -> dict:
    h = s["heldout"]
    wins, episodes = successes(h)
    return {"run": name, "episodes": episodes, "first": wins["first"], "last": wins["last"], "learner": wins["learner"],
            "versions": f"v{h['first_version']} / v{h['last_version']} / v{h['learner_version']}",
            "lost": s["episodes"]["lost"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=4, help="fresh demo runs to make")
    ap.add_argument("--minutes", type=float, default=8.0, help="fleet minutes per run (the demo's default)")
    ap.add_argument("--add", type=Path, nargs="*", default=[], help="summaries of earlier runs to include")
    ap.add_argument("--out", type=Path, help="keep the runs here (default: a temporary directory)")
    ap.add_argument("demo_args", nargs="*", help="more `fleet demo` options, after --")
    args = ap.parse_args()

    rows = [row(f"added {i + 1}", json.loads(p.read_text())) for i, p in enumerate(args.add)]
    for i, p in enumerate(args.add):
        print(f"added {i + 1}: {p}")
    with tempfile.TemporaryDirectory(prefix="bench-rise-") as tmp:
        base = args.out or Path(tmp)
        for i in range(args.runs):
            t0 = time.perf_counter()
            rows.append(row(f"run {i + 1}", run_demo(base / f"run{i + 1}", args.minutes, args.demo_args)))
            print(f"run {i + 1}/{args.runs}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    if not rows:
        ap.error("nothing to compare: --runs 0 and no --add")

    print(f"{'run':>12} {'held-out':>8} {'v1':>4} {'champion':>8} {'learner':>7} {'lost':>4}  v1 / champion / learner")
    for r in rows:
        print(f"{r['run'][-12:]:>12} {r['episodes']:>8} {r['first']:>4} {r['last']:>8} {r['learner']:>7} "
              f"{r['lost']:>4}  {r['versions']}")
    first = sum(r["first"] for r in rows)
    for k, name in zip(COMPARED, ("last champion", "learner's newest"), strict=True):
        rises = sum(r[k] > r["first"] for r in rows)
        falls = sum(r[k] < r["first"] for r in rows)
        pooled = sum(r[k] for r in rows)
        print(f"{name:>16}: rose in {rises}, fell in {falls}, level in {len(rows) - rises - falls} of {len(rows)} "
              f"runs; sign test p = {sign_test(rises, falls):.3f}; pooled {pooled} vs v1's {first} "
              f"successes, ratio {pooled / max(first, 1):.2f}")
    print(f"episodes lost: {sum(r['lost'] for r in rows)}")


if __name__ == "__main__":
    main()
