#!/usr/bin/env python3
"""Warm `dbfork run` with and without `dbfork serve` (issue 23): the example
project (examples/shop, 726 pytest-django tests), 2 workers, its template
already on the server, side by side in one run:

    bash bench/setup-venv.sh && cargo build --release --bin dbfork
    .venv/bin/python bench/serve_run.py                        # MariaDB, 5 rounds
    .venv/bin/python bench/serve_run.py --backends mariadb,postgres,sqlite --reps 3
    .venv/bin/python bench/serve_run.py --mysql mysql://root@127.0.0.1:3306/mysql --jobs 4

Per backend, one server for the whole benchmark (`dbfork db ephemeral KIND`, on
tmpfs with durability off; or the server --mysql / --pg names, whose templates made
by the benchmark are dropped at the end; SQLite: a new directory), and `dbfork serve --db URL --listen unix:<work>/serve.sock`
on it. Unmeasured warm-up: one `dbfork run` without the service (builds the
template), one with it (the service adopts the template and keeps 2 clones made).

Variants, once per round each, the order alternating (-j 2 unless --jobs):
  own      dbfork run -j 2 --db URL -- python -m pytest -q -p no:cacheprovider
           (the run makes its 2 clones, and drops them at the end)
  leased   the same with --serve-url unix:<socket> (the run leases the clones the
           service keeps made, one per worker; at the end it returns them and the
           service makes fresh ones in the background)
Before every measured run the benchmark waits until the service has made its
clones (none in the making, one per worker ready), so no run shares the CPU with the
service's background work.

Measured per run: wall time; time to the first test (the first call phase of
any test, a small pytest plugin `-p benchserve_trace` as in bench/cold.py);
pytest's summary (726 passed expected). Reported: medians, and how much sooner
the leased run starts its first test (target on MariaDB: at least 1 s). Raw JSON
in bench/results/serve-run-<stamp>.json; everything else in /tmp/benchserve_<pid>,
removed at the end with the servers.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

_spec = importlib.util.spec_from_file_location("bench_cold", Path(__file__).resolve().parent / "cold.py")
bc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bc)
bd = bc.bd

ROOT, PYTHON, SHOP, PYTEST, JOBS = bd.ROOT, bd.PYTHON, bd.SHOP, bd.PYTEST, bd.JOBS
KEEP = JOBS  # set from --jobs
TARGET_SOONER = {"mariadb": 1.0}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def call(socket: Path, method: str, path: str) -> dict:
    """One request to the service over its Unix socket (curl)."""
    out = subprocess.run(["curl", "-s", "-X", method, "--unix-socket", str(socket), f"http://dbfork{path}"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def wait_made(socket: Path, timeout: float = 300) -> float:
    """Waits until the service's templates have KEEP ready and none in the making; seconds waited."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        templates = call(socket, "GET", "/api/dbfork/v1/templates")["templates"]
        if templates and all(t["clones"]["making"] == 0 and t["clones"]["dropping"] == 0
                             and t["clones"]["ready"] >= KEEP for t in templates):
            return time.perf_counter() - t0
        time.sleep(0.1)
    raise RuntimeError(f"the service did not make its clones within {timeout} s")


def measure(cmd: list[str], work: Path, tag: str, plugdir: Path) -> dict:
    rundir = work / tag
    tracedir = rundir / "trace"
    tracedir.mkdir(parents=True)
    env = bd.base_env(BENCH_COLD_TRACE_DIR=str(tracedir),
                      PYTHONPATH=os.pathsep.join(filter(None, [str(plugdir), os.environ.get("PYTHONPATH")])))
    rc, wall, t0, _t_exit, out, err = bc.execute(cmd, SHOP, env, rundir)
    trace = bc.read_trace(tracedir)
    calls = [t[1] for t in trace if t[1] is not None]
    counts = bd.pytest_counts(out) or bd.pytest_counts(out + err)
    ok = rc == 0 and (counts or {}).get("passed") == bd.EXPECTED_PYTEST
    r = {"wall": wall, "rc": rc, "first_test": min(calls) - t0 if calls else None,
         "summary": bc.summary_line(out), "ok": ok}
    if not ok:
        r["stderr_tail"] = err[-3000:]
        r["stdout_tail"] = out[-2000:]
    return r


def backend_url(kind: str, work: Path, given: dict) -> tuple[str, object]:
    if given.get(kind):
        return given[kind], None
    if kind == "sqlite":
        d = work / "sqlite"
        d.mkdir()
        return f"sqlite://{d / 'main.sqlite3'}", None
    server = bc.Ephemeral(kind, work)
    return server.url, server


def templates_on(url: str) -> set[str]:
    out = subprocess.run([str(bc.DBFORK), "db", "list", "--json", "--db", url], capture_output=True,
                         text=True, env=bd.base_env(), cwd="/tmp")
    try:
        return {e["name"] for e in json.loads(out.stdout) if e.get("kind") == "template"}
    except ValueError:
        return set()


def bench(kind: str, reps: int, work: Path, plugdir: Path, given: dict) -> dict:
    url, server = backend_url(kind, work, given)
    before = templates_on(url) if given.get(kind) else set()
    socket = work / f"serve-{kind}" / "serve.sock"
    serve_log = open(work / f"serve-{kind}.log", "wb")
    service = subprocess.Popen([str(bc.DBFORK), "serve", "--db", url, "--listen", f"unix:{socket}"],
                               stdout=subprocess.PIPE, stderr=serve_log, stdin=subprocess.DEVNULL,
                               env=bd.base_env(), preexec_fn=bc._die_with_parent)
    try:
        service.stdout.readline()
        base = [str(bc.DBFORK), "run", "-j", str(KEEP), "--db", url]
        leased = ["--serve-url", f"unix:{socket}", "--keep-ready", str(KEEP)]
        variants = {"own": base + ["--", *PYTEST, "-p", "benchserve_trace"],
                    "leased": base + leased + ["--", *PYTEST, "-p", "benchserve_trace"]}
        log(f"[{kind}] warm-up: the template, then the service's clones")
        for name in ("own", "leased"):
            r = measure(variants[name], work, f"{kind}-warmup-{name}", plugdir)
            if not r["ok"]:
                raise RuntimeError(f"warm-up {name} failed: {r.get('stderr_tail')}")
        runs = {"own": [], "leased": []}
        for round_ in range(reps):
            order = ["own", "leased"] if round_ % 2 == 0 else ["leased", "own"]
            for name in order:
                waited = wait_made(socket)
                r = measure(variants[name], work, f"{kind}-{round_}-{name}", plugdir)
                r["waited_for_service"] = waited
                runs[name].append(r)
                log(f"[{kind}] round {round_ + 1}/{reps} {name}: wall {r['wall']:.2f} s, "
                    f"first test {r['first_test']:.2f} s, {r['summary']}" + ("" if r["ok"] else " (NOT OK)"))
        return {"url": url.split("?")[0], "runs": runs}
    finally:
        bc.terminate(service, 120)
        serve_log.close()
        if server is not None:
            server.stop()
        if given.get(kind):
            for name in sorted(templates_on(url) - before):
                subprocess.run([str(bc.DBFORK), "db", "drop", name, "--db", url], env=bd.base_env(),
                               cwd="/tmp", capture_output=True)


def med(runs: list[dict], key: str) -> float | None:
    vals = [r[key] for r in runs if r["ok"] and r[key] is not None]
    return statistics.median(vals) if vals else None


def report(results: dict) -> str:
    lines = ["| backend (workers) | variant | runs ok | first test (median) | wall (median) |",
             "|---|---|---|---|---|"]
    verdicts = []
    for kind, res in results.items():
        for name in ("own", "leased"):
            runs = res["runs"][name]
            ft, wall = med(runs, "first_test"), med(runs, "wall")
            lines.append(f"| {kind} ({res.get('jobs')}) | {name} | {sum(r['ok'] for r in runs)}/{len(runs)} | "
                         f"{ft:.2f} s | {wall:.2f} s |" if ft is not None and wall is not None else
                         f"| {kind} ({res.get('jobs')}) | {name} | {sum(r['ok'] for r in runs)}/{len(runs)} | - | - |")
        own, leased = med(res["runs"]["own"], "first_test"), med(res["runs"]["leased"], "first_test")
        if own is not None and leased is not None:
            sooner = own - leased
            target = TARGET_SOONER.get(kind)
            met = "" if target is None else (f" (target >= {target:.1f} s: " + ("met" if sooner >= target else "NOT met") + ")")
            verdicts.append(f"- {kind}: the leased run starts its first test {sooner:.2f} s sooner "
                            f"({leased:.2f} vs {own:.2f} s){met}; wall {med(res['runs']['leased'], 'wall'):.2f} "
                            f"vs {med(res['runs']['own'], 'wall'):.2f} s")
    return "\n".join(lines + [""] + verdicts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", default="mariadb")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=JOBS)
    ap.add_argument("--mysql", help="a MariaDB/MySQL server to use instead of an ephemeral one")
    ap.add_argument("--pg", help="a PostgreSQL server to use instead of an ephemeral one")
    args = ap.parse_args()
    global KEEP
    KEEP = args.jobs
    given = {"mariadb": args.mysql, "postgres": args.pg}
    if not bc.DBFORK.exists() or not PYTHON.exists():
        log("build dbfork (cargo build --release --bin dbfork) and the venv (bash bench/setup-venv.sh) first")
        return 2
    work = Path(f"/tmp/benchserve_{os.getpid()}")
    work.mkdir()
    plugdir = work / "plugins"
    plugdir.mkdir()
    (plugdir / "benchserve_trace.py").write_text(bc.TRACE_PLUGIN)
    results = {}
    try:
        for kind in args.backends.split(","):
            results[kind] = bench(kind, args.reps, work, plugdir, given)
            results[kind]["jobs"] = KEEP
    finally:
        for server in list(bc.SERVERS):
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = ROOT / "bench" / "results" / f"serve-run-{stamp}.json"
    out.write_text(json.dumps(results, indent=1))
    print(report(results))
    print(f"\nraw: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
