#!/usr/bin/env python3
"""The serial limit: how close a warm `dbfork run -j N` comes to the best N
workers can do with the serial run's own costs, what starting workers costs,
and how long dbfork's template build takes beside the serial run's database
setup.

A serial pytest run has three parts: its start (interpreter, imports,
collection, and the test database's setup inside the first test's setup),
its tests, and its end. With N workers and the template already built, the
best a parallel run can do is the start once (the workers start side by side),
the tests divided among the workers (never more than the machine's cores run
at once), and the end:

    limit(N) = first + tests / min(N, cores) + end

where `first` is the serial run's time from its start to the first test's
start, `tests` from there to the last test's end less the database setup (a
warm dbfork run clones instead of migrating), and `end` the rest. The serial figures come
from a small pytest plugin loaded into the serial runs only (the time of the
first test's start and the last test's end, and how long pytest-django's
`django_db_setup` took). Every figure is a median over --reps rounds; in each
round every command runs once, in turn (serial, dbfork -j 1, 2, 4 and 8 with
the workers forked from the controller, then the same with --fork=false), so
the machine's noise falls on all alike.

Also measured, from the same runs:
  start CPU   user + system CPU of the whole process tree of a warm run at
              -j 8 against -j 1 (the same tests run either way: the
              difference is starting 7 more workers: forked, or each
              importing and collecting on its own with --fork=false)
  build       a cold dbfork run's "built template ... in X s" against the
              serial run's `django_db_setup` (migrating the test database)

    cargo build --release --bin dbfork
    python3 bench/limit.py                          # examples/shop on SQLite and PostgreSQL, 5 rounds
    python3 bench/limit.py --backends sqlite --reps 3
    python3 bench/limit.py --report bench/results/limit-<stamp>.json

PostgreSQL: a throwaway server started with `dbfork db ephemeral postgres`
(or --pg URL: the serial runs make and drop test_benchlimit_<pid> there,
dbfork its clones and one template, dropped at the end). Results: a Markdown
table on stdout and the raw figures in bench/results/limit-<stamp>.json.
Standard library only.
"""

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "shop"
JOBS = (1, 2, 4, 8)
# Each -j N is run twice: with the workers forked from the controller (the
# default, "jN") and started afresh (--fork=false, "sN").
RUNS = [(f"j{n}", n, True) for n in JOBS] + [(f"s{n}", n, False) for n in JOBS]

PLUGIN = '''
import json, os, time

_marks = {"first": None, "last": None, "db_setup": 0.0}


def pytest_runtest_logstart(nodeid, location):
    if _marks["first"] is None:
        _marks["first"] = time.time()


def pytest_runtest_logfinish(nodeid, location):
    _marks["last"] = time.time()


import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef, request):
    started = time.time()
    yield
    if fixturedef.argname == "django_db_setup":
        _marks["db_setup"] += time.time() - started


def pytest_unconfigure(config):
    with open(os.environ["BENCH_LIMIT_MARKS"], "w") as f:
        json.dump(_marks, f)
'''


def timed(command, env, cwd):
    """Runs `command`; its wall seconds, the CPU seconds of its whole process
    tree (user + system of every descendant waited for), and its output."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    out = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.time() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return started, wall, cpu, out


def check(out, what, allowed=(0, 1)):
    if out.returncode not in allowed:
        sys.exit(f"{what} failed (exit {out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")


def start_postgres(dbfork, work):
    url_file = work / "pg.url"
    log = open(work / "pg.log", "w")
    server = subprocess.Popen([dbfork, "db", "ephemeral", "postgres"], stdout=open(url_file, "w"), stderr=log)
    for _ in range(600):
        if url_file.exists() and url_file.read_text().strip():
            return server, url_file.read_text().splitlines()[0].strip()
        if server.poll() is not None:
            sys.exit("could not start an ephemeral PostgreSQL server:\n" + (work / "pg.log").read_text())
        time.sleep(0.1)
    sys.exit("the ephemeral PostgreSQL server did not start within 60 s")


def with_database(url, name):
    """`url` with its database name replaced by `name`."""
    head, sep, query = url.partition("?")
    base = head.rsplit("/", 1)[0]
    return f"{base}/{name}{sep}{query}"


def measure_backend(args, backend, work):
    python = str(REPO / ".venv" / "bin" / "python")
    pytest = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    plugin_dir = work / "plugin"
    plugin_dir.mkdir(exist_ok=True)
    (plugin_dir / "bench_limit_marks.py").write_text(PLUGIN)
    env = dict(os.environ)
    env.pop("CI", None)
    server = None
    if backend == "sqlite":
        db = f"sqlite://{work}/dbfork/main.sqlite3"
        serial_env = dict(env, DATABASE_URL=f"sqlite:///{work}/serial.sqlite3")
    else:
        if args.pg:
            url = args.pg
        else:
            server, url = start_postgres(args.dbfork, work)
        db = url
        serial_env = dict(env, DATABASE_URL=with_database(url, f"benchlimit_{os.getpid()}"))
    marks = work / "marks.json"
    serial_env.update(
        BENCH_LIMIT_MARKS=str(marks),
        PYTHONPATH=os.pathsep.join(filter(None, [str(plugin_dir), env.get("PYTHONPATH", "")])),
    )
    serial_cmd = pytest + ["-p", "bench_limit_marks"]
    dbfork_env = env
    rounds = []
    template = None
    try:
        # Cold: the template is built (its time is the build figure).
        _, cold_wall, _, out = timed(
            [args.dbfork, "run", "-j", "2", "--db", db, "--"] + pytest, dbfork_env, EXAMPLE
        )
        check(out, "the cold dbfork run")
        built = re.search(r"built template (\S+) in ([0-9.]+)s", out.stderr)
        reused = re.search(r"reusing template (\S+)", out.stderr)
        if not (built or reused):
            sys.exit("the cold run did not say which template it used:\n" + out.stderr[-3000:])
        # (On a --pg server that has this setup's template already, no build.)
        template = (built or reused).group(1)
        build = float(built.group(2)) if built else None
        for r in range(args.reps):
            row = {}
            started, wall, cpu, out = timed(serial_cmd, serial_env, EXAMPLE)
            check(out, "the serial run")
            m = json.loads(marks.read_text())
            row["serial"] = {
                "wall": wall,
                "cpu": cpu,
                "first": m["first"] - started,
                "db_setup": m["db_setup"],
                "tests": m["last"] - m["first"] - m["db_setup"],
                "end": started + wall - m["last"],
            }
            for key, jobs, fork in RUNS:
                _, wall, cpu, out = timed(
                    [args.dbfork, "run", "-j", str(jobs), "-v", f"--fork={str(fork).lower()}",
                     "--db", db, "--"] + pytest,
                    dbfork_env,
                    EXAMPLE,
                )
                check(out, f"dbfork run -j {jobs} --fork={fork}")
                if "reusing template" not in out.stderr:
                    sys.exit(f"dbfork run -j {jobs} did not reuse the template:\n{out.stderr[-3000:]}")
                if fork != ("workers are forked from the controller" in out.stderr):
                    sys.exit(f"dbfork run -j {jobs} --fork={fork} did not start its workers so:\n"
                             + out.stderr[-3000:])
                row[key] = {"wall": wall, "cpu": cpu}
            rounds.append(row)
            print(f"[{backend}] round {r + 1}/{args.reps}: serial {row['serial']['wall']:.2f} s, "
                  + ", ".join(f"{k} {row[k]['wall']:.2f} s" for k, _, _ in RUNS), file=sys.stderr)
    finally:
        if template:
            subprocess.run([args.dbfork, "db", "drop", "--db", db, template], env=dbfork_env,
                           capture_output=True)
        if server:
            server.terminate()
            server.wait(timeout=60)
    return {"build": build, "cold_wall": cold_wall, "rounds": rounds}


def median(rounds, *path):
    values = []
    for row in rounds:
        v = row
        for p in path:
            v = v[p]
        values.append(v)
    return statistics.median(values)


def table(results):
    cores = results["cores"]
    lines = [
        f"Medians of {results['reps']} rounds; seconds. examples/shop, {results['tests']}; "
        f"{cores} CPUs; commit {results['commit']}. Workers forked from the controller "
        "(the default), and started afresh (`--fork=false`).",
        "",
        "| backend | serial | first + tests + end | -j | limit | forked | ratio | afresh | ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for backend, res in results["backends"].items():
        rounds = res["rounds"]
        first, tests, end = (median(rounds, "serial", k) for k in ("first", "tests", "end"))
        for jobs in (2, 4):
            limit = first + tests / min(jobs, cores) + end
            cells = [backend, f"{median(rounds, 'serial', 'wall'):.2f}",
                     f"{first:.2f} + {tests:.2f} + {end:.2f}", str(jobs), f"{limit:.2f}"]
            for key in (f"j{jobs}", f"s{jobs}"):
                if key in rounds[0]:
                    wall = median(rounds, key, "wall")
                    cells += [f"{wall:.2f}", f"{wall / limit:.2f}x"]
                else:
                    cells += ["-", "-"]
            lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "| backend | workers | CPU -j 1 | CPU -j 8 | ratio | per extra worker | template build (dbfork, cold) | serial `django_db_setup` |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for backend, res in results["backends"].items():
        rounds = res["rounds"]
        for prefix, how in (("j", "forked"), ("s", "afresh")):
            if f"{prefix}1" not in rounds[0]:
                continue
            one, eight = median(rounds, f"{prefix}1", "cpu"), median(rounds, f"{prefix}8", "cpu")
            lines.append(
                f"| {backend} | {how} | {one:.2f} | {eight:.2f} | {eight / one:.2f}x | {(eight - one) / 7:.2f} | "
                f"{'-' if res['build'] is None else format(res['build'], '.2f')} | "
                f"{median(rounds, 'serial', 'db_setup'):.2f} |"
            )
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--dbfork", default=str(REPO / "target" / "release" / "dbfork"))
    ap.add_argument("--pg", default="", help="a PostgreSQL server URL instead of a throwaway one")
    ap.add_argument("--out", default="")
    ap.add_argument("--report", default="", help="print the table of a saved results file")
    args = ap.parse_args()
    if args.report:
        print(table(json.loads(Path(args.report).read_text())))
        return
    if not Path(args.dbfork).exists():
        sys.exit(f"no dbfork binary at {args.dbfork}: cargo build --release --bin dbfork (or --dbfork PATH)")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    results = {"cores": os.cpu_count() or 1, "reps": args.reps, "commit": commit, "backends": {}}
    work = Path(tempfile.mkdtemp(prefix="dbfork-bench-limit-"))
    try:
        for backend in args.backends.split(","):
            sub = work / backend
            sub.mkdir()
            results["backends"][backend] = measure_backend(args, backend, sub)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    listed = subprocess.run([str(REPO / ".venv" / "bin" / "python"), "-m", "pytest", "-q",
                             "--collect-only", "-p", "no:cacheprovider"], cwd=EXAMPLE,
                            capture_output=True, text=True).stdout
    count = re.search(r"(\d+) tests? collected", listed)
    results["tests"] = f"{count.group(1)} pytest tests" if count else "pytest"
    out = Path(args.out or REPO / "bench" / "results" / f"limit-{time.strftime('%Y%m%d-%H%M%S')}.json")
    out.write_text(json.dumps(results, indent=2))
    print(table(results))
    print(f"\nraw results: {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")


if __name__ == "__main__":
    main()
