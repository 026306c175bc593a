#!/usr/bin/env python3
"""Shard benchmark: how evenly `dbfork run --shard K/N` splits a suite over N
machines, by the recorded durations against by count (no timings).

    cargo build --release && .venv/bin/python bench/shards.py          # 3 rounds
    .venv/bin/python bench/shards.py --reps 5 --ns 2,4

The suite is bench/runner.py's `skew` (220 sleeping tests, 20 s in all, a few
long ones; bench/suites/generate.py). Two warm-up runs of the whole suite
record its timings (.dbfork/timings.json); then, per round and per N, the N
shards run one after another, each `dbfork run -j 1 --shard K/N --dist D`
(one worker: one CI machine; D is `test`, or `module` with --dist module), every shard on the same timings (restored before each, as CI
shards restore one cache) or, for `count`, on none. Per shard the test
seconds come from the tests' own start and end times (BENCH_TRACE_DIR).

Figures: `split` = the busiest shard's test seconds / (all test seconds / N),
1.00 being a perfect split; `slowest` = the wall time of the slowest shard,
which is when a CI run of N parallel jobs would be done. Each round also
checks that the shards together ran every test exactly once. Medians of the
rounds; raw JSON in bench/results/.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import runner  # noqa: E402  (bench/runner.py: the suites, the trace, the environment)

VARIANTS = ["durations", "count"]
DIST = "test"  # --dist: the units the split keeps whole


def shard_run(suite, n, k, trace_root, tag, timings, saved):
    """One shard; returns (test seconds, wall, test ids)."""
    if timings == "durations":
        timings_file(suite).write_bytes(saved)
    else:
        timings_file(suite).unlink(missing_ok=True)
    trace = trace_root / tag
    trace.mkdir(parents=True)
    cmd = suite.dbfork(1)
    cmd[cmd.index("--"):cmd.index("--")] = ["--shard", f"{k}/{n}", "--dist", DIST]
    wall, res = runner.timed(cmd, suite.dir, runner.base_env(BENCH_TRACE_DIR=str(trace)))
    rows = runner.read_trace(trace)
    return sum(r[3] - r[2] for r in rows), wall, [r[1] for r in rows], res


def timings_file(suite):
    return suite.dir / ".dbfork" / "timings.json"


def bench(suite, ns, reps, work):
    trace_root = work / "trace"
    for i in range(2):
        print(f"  warm-up {i + 1}/2: the whole suite", file=sys.stderr, flush=True)
        runner.timed(suite.dbfork(2), suite.dir, runner.base_env())
    saved = timings_file(suite).read_bytes()
    res = {str(n): {v: {"split": [], "slowest": [], "shards": []} for v in VARIANTS} for n in ns}
    for rep in range(reps):
        print(f"  round {rep + 1}/{reps}", file=sys.stderr, flush=True)
        for n in ns:
            for v in runner.rotate(VARIANTS, rep):
                seconds, walls, ids = [], [], []
                for k in range(1, n + 1):
                    s, wall, ran, _ = shard_run(suite, n, k, trace_root, f"{rep}-{n}-{v}-{k}", v, saved)
                    seconds.append(s)
                    walls.append(wall)
                    ids.extend(ran)
                if len(ids) != suite.expected or len(set(ids)) != suite.expected:
                    sys.exit(f"N={n} {v}: the shards ran {len(ids)} tests ({len(set(ids))} distinct), "
                             f"expected each of {suite.expected} once")
                total = sum(seconds)
                res[str(n)][v]["split"].append(max(seconds) / (total / n))
                res[str(n)][v]["slowest"].append(max(walls))
                res[str(n)][v]["shards"].append([round(s, 3) for s in seconds])
    timings_file(suite).write_bytes(saved)
    return res


def render(saved):
    med = runner.med
    lines = [
        f"Medians of {saved['reps']} rounds; seconds; units `--dist {saved.get('dist', 'test')}`. "
        f"Commit {saved['commit']}, {saved['cpus']} CPUs.",
        "",
        "| N | split by | split (busiest / fair) | slowest shard, wall | test seconds per shard (last round) |",
        "|---|---|---|---|---|",
    ]
    for n, variants in saved["results"].items():
        for v, r in variants.items():
            lines.append(f"| {n} | {v} | {med(r['split']):.3f} | {med(r['slowest']):.2f} | "
                         f"{', '.join(f'{s:.2f}' for s in r['shards'][-1])} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--ns", default="2,4", help="shard counts, comma-separated")
    ap.add_argument("--dist", default="test", choices=["test", "module"],
                    help="the units the split keeps whole (module: a file's tests on one shard)")
    args = ap.parse_args()
    global DIST
    DIST = args.dist
    if not runner.DBFORK.exists():
        sys.exit(f"build the release binary first: cargo build --release ({runner.DBFORK} is missing)")
    ns = [int(n) for n in args.ns.split(",")]
    (runner.ROOT / "target").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dbfork-shards-bench-", dir=runner.ROOT / "target"))
    print(f"work folder {work}", file=sys.stderr)
    suite = runner.Suite("skew", work)
    results = bench(suite, ns, args.reps, work)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=runner.ROOT,
                            capture_output=True, text=True).stdout.strip()
    saved = {"reps": args.reps, "dist": DIST, "commit": commit, "cpus": len(os.sched_getaffinity(0)),
             "python": platform.python_version(), "results": results}
    out = runner.ROOT / "bench" / "results" / f"shards-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(saved, indent=1))
    print(f"raw results: {out.relative_to(runner.ROOT)}", file=sys.stderr)
    print(render(saved))


if __name__ == "__main__":
    main()
