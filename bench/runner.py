#!/usr/bin/env python3
"""Runner benchmark: `dbfork run` beside plain pytest and pytest-xdist, on the
same suites, in the same run.

    bash bench/setup-venv.sh && cargo build --release
    .venv/bin/python bench/runner.py                      # everything, 5 rounds
    .venv/bin/python bench/runner.py --only balance --reps 3
    python3 bench/runner.py --report bench/results/runner-<stamp>.json   # re-render

The suites are written by bench/suites/generate.py into a temporary folder
under target/ (see that file): `trivial` (2,000 trivial tests), `db` (500 tests
of a few queries each on the SQLite database of DATABASE_URL) and `skew`
(220 sleeping tests, 20 s in all, a few of them long).

Overhead (trivial and db suites, 2 processes): wall time of the whole command,
  serial   python -m pytest -q -p no:cacheprovider
  xdist    python -m pytest -q -p no:cacheprovider -n 2
  dbfork   dbfork run -j 2 --db sqlite:///<dir>/main.sqlite3 --setup "<python> setup.py"
                  --input setup.py -- python -m pytest -q -p no:cacheprovider
The serial run and each xdist worker get their own database file, built by the
suite's setup.py before the timing (xdist workers pick theirs by
PYTEST_XDIST_WORKER); dbfork builds its template on a warm-up run and clones it
on every timed one. Target: dbfork <= 0.8x xdist.

Balance (skew suite, N = 2 and 8): dbfork -j N (with the timings of earlier
runs in the suite's .dbfork/timings.json), xdist -n N --dist load and
--dist worksteal. Each test process appends the start and end of every test
to a file (BENCH_TRACE_DIR); makespan = last end - first start, and the
balance ratio is makespan / (sum of test durations / N), 1.0 being perfect.
Target: <= 1.05 for dbfork.

`--before PATH` adds the variant `dbfork-before`: the same dbfork command with
another binary (e.g. an older commit's release build), on a database folder of
its own, interleaved in the same rounds; the tables then set the two side by side.

Every variant runs once before the rounds (warm-up, not counted: bytecode
caches, the dbfork template and timings); then every variant runs once per
round, the rounds interleave (the order rotating), and medians are reported,
so the machine's noise hits all alike. Bytecode is written (PYTHONDONTWRITEBYTECODE
is dropped), as on a developer's machine.
Results: a Markdown table on stdout and raw JSON in bench/results/.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv" / "bin" / "python"
DBFORK = ROOT / "target" / "release" / "dbfork"
BEFORE = None  # --before: another binary, the variant dbfork-before
sys.path.insert(0, str(ROOT / "bench" / "suites"))
import generate  # noqa: E402  (bench/suites/generate.py)

PYTEST = [str(PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider"]
OVERHEAD_SUITES = ["trivial", "db"]
OVERHEAD_JOBS = 2
OVERHEAD_VARIANTS = ["serial", "xdist", "dbfork"]
BALANCE_NS = [2, 8]
BALANCE_VARIANTS = ["dbfork", "xdist-load", "xdist-worksteal"]
OVERHEAD_TARGET = 0.8
BALANCE_TARGET = 1.05
# Variables that would change what the runs do.
DROP_ENV = ("PYTHONDONTWRITEBYTECODE", "DATABASE_URL", "BENCH_TRACE_DIR", "PYTEST_ADDOPTS",
            "PYTEST_PLUGINS", "PYTEST_XDIST_AUTO_NUM_WORKERS", "PYTEST_XDIST_WORKER")


def base_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in DROP_ENV and not k.startswith("DBFORK_")}
    env.update(extra)
    return env


def sh(args, cwd=None, env=None, check=True):
    res = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if check and res.returncode != 0:
        out = (res.stdout[-3000:] + "\n" + res.stderr[-3000:]).strip()
        sys.exit(f"failed (exit {res.returncode}) in {cwd}: {' '.join(map(str, args))}\n{out}")
    return res


def timed(args, cwd, env):
    start = time.perf_counter()
    res = sh(args, cwd=cwd, env=env)
    return time.perf_counter() - start, res


def passed(res):
    found = re.findall(r"(\d+) passed", res.stdout + res.stderr)
    return int(found[-1]) if found else None


class Suite:
    def __init__(self, name, work):
        self.name = name
        self.dir = generate.write_suite(name, work / "suites")
        self.dbdir = work / "db" / name
        self.dbdir.mkdir(parents=True)
        (self.dbdir / "dbfork").mkdir()
        self.expected = generate.expected_tests(name)

    def url(self, stem):
        return f"sqlite://{self.dbdir / stem}.sqlite3"

    def fresh_db(self, stem):
        """Builds <dbdir>/<stem>.sqlite3 anew with the suite's setup.py."""
        path = self.dbdir / f"{stem}.sqlite3"
        for p in (path, path.with_name(path.name + "-journal")):
            p.unlink(missing_ok=True)
        sh([str(PYTHON), "setup.py"], cwd=self.dir, env=base_env(DATABASE_URL=self.url(stem)))

    def dbfork(self, jobs, *pytest_args, variant="dbfork"):
        binary = BEFORE if variant == "dbfork-before" else DBFORK
        (self.dbdir / variant).mkdir(exist_ok=True)
        return [str(binary), "run", "-j", str(jobs), "--db", f"sqlite://{self.dbdir / variant / 'main.sqlite3'}",
                "--setup", f"{PYTHON} setup.py", "--input", "setup.py", "--", *PYTEST, *pytest_args]


# -- overhead ---------------------------------------------------------------

def overhead_run(suite, variant):
    """One timed run; the databases are rebuilt first (tests may commit), outside the timing."""
    if variant == "serial":
        suite.fresh_db("serial")
        cmd, env = PYTEST, base_env(DATABASE_URL=suite.url("serial"))
    elif variant == "xdist":
        for w in range(OVERHEAD_JOBS):
            suite.fresh_db(f"xdist_gw{w}")
        cmd, env = PYTEST + ["-n", str(OVERHEAD_JOBS)], base_env(DATABASE_URL=suite.url("xdist"))
    else:
        cmd, env = suite.dbfork(OVERHEAD_JOBS, variant=variant), base_env()
    wall, res = timed(cmd, suite.dir, env)
    n = passed(res)
    if n is not None and n != suite.expected:
        sys.exit(f"{suite.name} {variant}: {n} passed, expected {suite.expected}\n{res.stdout[-2000:]}")
    return wall, n


def bench_overhead(suites, variants, reps):
    res = {s.name: {v: {"wall": [], "passed": []} for v in variants} for s in suites}
    for s in suites:
        for v in variants:
            print(f"  overhead warm-up: {s.name} {v}", file=sys.stderr, flush=True)
            overhead_run(s, v)
    for rep in range(reps):
        print(f"  overhead: round {rep + 1}/{reps}", file=sys.stderr, flush=True)
        for s in suites:
            for v in rotate(variants, rep):
                wall, n = overhead_run(s, v)
                res[s.name][v]["wall"].append(wall)
                res[s.name][v]["passed"].append(n)
    return res


# -- balance ----------------------------------------------------------------

def read_trace(trace_dir):
    """[(pid, nodeid, start, end)] from the per-process files."""
    rows = []
    for f in sorted(trace_dir.glob("*.tsv")):
        for line in f.read_text().splitlines():
            nodeid, start, end = line.rsplit("\t", 2)
            rows.append((int(f.stem), nodeid, float(start), float(end)))
    return rows


def balance_run(suite, variant, n, trace_root, tag):
    trace = trace_root / tag
    trace.mkdir(parents=True)
    env = base_env(BENCH_TRACE_DIR=str(trace))
    if variant.startswith("dbfork"):
        cmd = suite.dbfork(n, variant=variant)
    else:
        cmd = PYTEST + ["-n", str(n), "--dist", variant.split("-", 1)[1]]
        env["DATABASE_URL"] = suite.url("xdist")  # the skew tests do not open it
    wall, _ = timed(cmd, suite.dir, env)
    rows = read_trace(trace)
    ids = [r[1] for r in rows]
    if len(ids) != suite.expected or len(set(ids)) != suite.expected:
        sys.exit(f"balance {variant} N={n}: traced {len(ids)} test runs ({len(set(ids))} distinct), "
                 f"expected {suite.expected}: see {trace}")
    first = min(r[2] for r in rows)
    last = max(r[3] for r in rows)
    total = sum(r[3] - r[2] for r in rows)
    workers = {}
    for pid, _, start, end in rows:
        w = workers.setdefault(pid, [0, 0.0, end, start])
        w[0] += 1
        w[1] += end - start
        w[2] = min(w[2], start)
        w[3] = max(w[3], end)
    per_worker = sorted([[c, round(busy, 4), round(s - first, 4), round(e - first, 4)] for c, busy, s, e in workers.values()],
                        key=lambda w: -w[1])
    makespan = last - first
    return {"ratio": makespan / (total / n), "makespan": makespan, "sum": total, "wall": wall, "workers": per_worker}


def bench_balance(suite, variants, reps, work):
    trace_root = work / "trace"
    res = {str(n): {v: {"ratio": [], "makespan": [], "sum": [], "wall": [], "workers": []} for v in variants} for n in BALANCE_NS}
    for n in BALANCE_NS:
        for v in variants:
            # dbfork's warm-up builds the template and records the timings it schedules by.
            print(f"  balance warm-up: {v} N={n}", file=sys.stderr, flush=True)
            balance_run(suite, v, n, trace_root, f"warmup-{v}-{n}")
    for rep in range(reps):
        print(f"  balance: round {rep + 1}/{reps}", file=sys.stderr, flush=True)
        for n in BALANCE_NS:
            for v in rotate(variants, rep):
                r = balance_run(suite, v, n, trace_root, f"{rep}-{v}-{n}")
                for k, x in r.items():
                    res[str(n)][v][k].append(x)
    return res


# -- report -----------------------------------------------------------------

def rotate(xs, k):
    k %= len(xs)
    return xs[k:] + xs[:k]


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def f(x, spec=".2f", suffix=""):
    return "-" if x != x else f"{x:{spec}}{suffix}"


def verdict(value, target):
    if value != value:  # nan
        return "n/a"
    return "yes" if value <= target else "**no**"


def report(saved):
    meta = saved.get("meta", {})
    lines = [f"Medians of {meta.get('reps', '?')} rounds, after one warm-up run of each variant; seconds. "
             f"Commit {meta.get('commit', '?')}, {meta.get('cpus', '?')} CPUs, Python {meta.get('python', '?')}, "
             f"pytest {meta.get('pytest', '?')}, pytest-xdist {meta.get('xdist', '?')}.", ""]
    if "overhead" in saved:
        j = OVERHEAD_JOBS
        lines += [f"### Overhead: {j} processes, wall time of the whole command",
                  "",
                  f"| suite | tests | serial | xdist -n {j} | dbfork -j {j} | dbfork / xdist | dbfork / serial | xdist / serial | dbfork <= {OVERHEAD_TARGET}x xdist |",
                  "|---|---|---|---|---|---|---|---|---|"]
        before = any("dbfork-before" in r for r in saved["overhead"].values())
        if before:
            lines[-2] += " dbfork-before | dbfork / dbfork-before |"
            lines[-1] += "---|---|"
        for name, r in saved["overhead"].items():
            m = {v: med(r[v]["wall"]) if v in r else float("nan") for v in OVERHEAD_VARIANTS}
            tests = next((n for v in r.values() for n in v["passed"] if n is not None), "?")
            ratio = m["dbfork"] / m["xdist"]
            lines.append(f"| {name} | {tests} | {f(m['serial'])} | {f(m['xdist'])} | {f(m['dbfork'])} | "
                         f"{f(ratio, suffix='x')} | {f(m['dbfork'] / m['serial'], suffix='x')} | "
                         f"{f(m['xdist'] / m['serial'], suffix='x')} | {verdict(ratio, OVERHEAD_TARGET)} |")
            if before:
                b = med(r["dbfork-before"]["wall"]) if "dbfork-before" in r else float("nan")
                lines[-1] += f" {f(b)} | {f(m['dbfork'] / b, suffix='x')} |"
        lines.append("")
    if "balance" in saved:
        lines += ["### Balance: skew suite (220 sleeping tests, 20 s in all: 4 x 2.0 s, 16 x 0.5 s, 200 x 0.02 s)",
                  "",
                  "`ratio` = makespan / (sum of test durations / N): 1.00 is a perfect split. Makespan runs from the "
                  "first test's start to the last test's end (per-test times from a conftest hook in every process).",
                  "",
                  f"| N | runner | ratio | makespan | sum of tests | wall | ratio <= {BALANCE_TARGET} |",
                  "|---|---|---|---|---|---|---|"]
        for n, byvar in saved["balance"].items():
            for v, r in byvar.items():
                ratio = med(r["ratio"])
                name = {"dbfork": f"dbfork -j {n}", "dbfork-before": f"dbfork-before -j {n}", "xdist-load": f"xdist -n {n} --dist load",
                        "xdist-worksteal": f"xdist -n {n} --dist worksteal"}.get(v, v)
                lines.append(f"| {n} | {name} | {ratio:.3f} | {med(r['makespan']):.2f} | {med(r['sum']):.2f} | "
                             f"{med(r['wall']):.2f} | {verdict(ratio, BALANCE_TARGET) if v.startswith('dbfork') else ''} |")
        lines.append("")
    return "\n".join(lines)


def versions():
    out = sh([str(PYTHON), "-c", "import sys, pytest, xdist; print(sys.version.split()[0], pytest.__version__, xdist.__version__)"]).stdout.split()
    commit = sh(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], check=False).stdout.strip() or "?"
    dirty = sh(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"], check=False).stdout.strip()
    return {"python": out[0], "pytest": out[1], "xdist": out[2], "commit": commit + ("+dirty" if dirty else ""),
            "cpus": os.cpu_count(), "machine": platform.platform()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--only", choices=["overhead", "balance"], help="run one part only")
    ap.add_argument("--without-dbfork", action="store_true", help="only pytest and pytest-xdist (to check the suites)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (suites, databases, traces)")
    ap.add_argument("--report", metavar="JSON", help="only print the tables of a saved results file")
    ap.add_argument("--before", metavar="PATH", help="another dbfork binary, run as the variant dbfork-before")
    args = ap.parse_args()
    global BEFORE
    BEFORE = Path(args.before).resolve() if args.before else None
    if BEFORE is not None and not BEFORE.exists():
        sys.exit(f"--before {args.before}: no such file")
    extra = ["dbfork-before"] if BEFORE is not None else []
    if args.report:
        print(report(json.loads(Path(args.report).read_text())))
        return
    if not PYTHON.exists() or (not args.without_dbfork and not DBFORK.exists()):
        sys.exit("build first: bash bench/setup-venv.sh && cargo build --release")
    results = {"meta": dict(versions(), reps=args.reps, started=time.strftime("%Y-%m-%d %H:%M:%S"),
                            before=str(BEFORE) if BEFORE else None)}
    (ROOT / "target").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dbfork-runner-bench-", dir=ROOT / "target"))
    print(f"work folder {work}", file=sys.stderr, flush=True)
    try:
        if args.only in (None, "overhead"):
            variants = [v for v in OVERHEAD_VARIANTS if not (args.without_dbfork and v == "dbfork")] + extra
            suites = [Suite(name, work) for name in OVERHEAD_SUITES]
            results["overhead"] = bench_overhead(suites, variants, args.reps)
        if args.only in (None, "balance"):
            variants = [v for v in BALANCE_VARIANTS if not (args.without_dbfork and v == "dbfork")] + extra
            results["balance"] = bench_balance(Suite("skew", work), variants, args.reps, work)
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = out_dir / f"runner-{stamp}.json"
    path.write_text(json.dumps(results, indent=1))
    print(f"raw results: {path.relative_to(ROOT)}", file=sys.stderr)
    print(report(results))


if __name__ == "__main__":
    main()
