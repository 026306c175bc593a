#!/usr/bin/env python3
"""Engine benchmark: templates, clones and drops per backend and clone method,
beside what users pay today (migrations per worker, Django's clone loop).

    bash bench/setup-venv.sh && cargo build --release
    .venv/bin/python bench/engine.py                     # everything, 5 reps
    .venv/bin/python bench/engine.py --targets sqlite,pg-ephemeral --reps 3
    python3 bench/engine.py --report bench/results/engine-<stamp>.json   # re-render

Targets: sqlite (a directory on this machine's disk), sqlite-tmpfs (/dev/shm),
pg (the machine's PostgreSQL at 127.0.0.1:5432), pg-ephemeral (a private
server on tmpfs started by `dbfork db ephemeral`), mariadb (127.0.0.1:3306),
mariadb-ephemeral. Every variant of a target runs once per round, rounds
interleave, and medians are reported, so the machine's noise hits all alike.
Results: a Markdown table on stdout and raw JSON in bench/results/.
On the shared servers only databases named dbfork_* (its own, in a private
maintenance database benchtmp_maint_<pid>) are created, and all are dropped.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ROOT / "examples" / "shop"  # its migrations are the schema (bench/schema/README.md)
PYTHON = ROOT / ".venv" / "bin" / "python"
DBFORK = ROOT / "target" / "release" / "dbfork"
INPUTS = str(PROJECT / "*" / "migrations" / "*.py")
METHODS = {"sqlite": ["copy", "backup"], "postgres": ["file-copy", "wal-log"], "mysql": ["show-create", "create-like"]}
COUNTS = [1, 2, 4, 8]


def sh(args, env=None, check=True, capture=True):
    res = subprocess.run(args, env=env, capture_output=capture, text=True)
    if check and res.returncode != 0:
        sys.exit(f"failed: {' '.join(map(str, args))}\n{res.stderr}")
    return res


def timed(args, env=None):
    start = time.perf_counter()
    res = sh(args, env=env)
    return time.perf_counter() - start, res.stdout


def dbfork(*args):
    return [str(DBFORK), *map(str, args)]


class Target:
    def __init__(self, name, kind, url, admin_sql=None, cleanup=None):
        self.name, self.kind, self.url = name, kind, url
        self.admin_sql, self.cleanup = admin_sql, cleanup

    def setup(self, tag):
        migrate = f"cd {PROJECT} && {PYTHON} manage.py migrate -v 0"
        return f"{migrate} # {tag}"

    def build(self, tag):
        wall, out = timed(dbfork("db", "template", "--db", self.url, "--setup", self.setup(tag), "--input", INPUTS, "--json", "--quiet"))
        return wall, json.loads(out)

    def drop(self, *names):
        return timed(dbfork("db", "drop", "--db", self.url, *names))[0]

    def clone(self, fingerprint, n, method):
        wall, out = timed(dbfork("db", "clone", "--db", self.url, "--template", fingerprint, "-n", n,
                                 "--method", method, "--concurrency", n, "--owner", "none", "--json"))
        data = json.loads(out)
        return wall, data["seconds"], [c["name"] for c in data["clones"]]


def start_ephemeral(kind):
    proc = subprocess.Popen(dbfork("db", "ephemeral", kind), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    url = proc.stdout.readline().strip()
    if not url:
        sys.exit(f"could not start an ephemeral {kind} server")
    return proc, url


def make_targets(names, stack):
    targets = []
    for name in names:
        if name in ("sqlite", "sqlite-tmpfs"):
            base = "/dev/shm" if name == "sqlite-tmpfs" else str(ROOT / "target")
            d = tempfile.mkdtemp(prefix="dbfork-bench-", dir=base)
            stack.append(lambda d=d: shutil.rmtree(d, ignore_errors=True))
            targets.append(Target(name, "sqlite", f"sqlite://{d}/main.db"))
        elif name in ("pg", "mariadb"):
            maint = f"benchtmp_maint_{os.getpid()}"
            if name == "pg":
                admin = ["psql", "-X", "-q", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-c"]
                url, kind = f"postgres://postgres@127.0.0.1:5432/{maint}", "postgres"
            else:
                admin = ["mariadb", "-h", "127.0.0.1", "-P", "3306", "--protocol=tcp", "-u", "root", "-e"]
                url, kind = f"mysql://root@127.0.0.1:3306/{maint}", "mysql"
            sh(admin + [f"CREATE DATABASE {maint}"])
            stack.append(lambda admin=admin, maint=maint: sh(admin + [f"DROP DATABASE IF EXISTS {maint}"], check=False))
            targets.append(Target(name, kind, url))
        elif name in ("pg-ephemeral", "mariadb-ephemeral"):
            proc, url = start_ephemeral("postgres" if name == "pg-ephemeral" else "mariadb")
            stack.append(lambda proc=proc: (proc.send_signal(signal.SIGTERM), proc.wait()))
            targets.append(Target(name, "postgres" if name == "pg-ephemeral" else "mysql", url))
        else:
            sys.exit(f"unknown target {name}")
    return targets


def django_loop(target, clone_name, n):
    from urllib.parse import urlsplit, urlunsplit
    parts = urlsplit(target.url)
    if target.kind == "sqlite":
        url = f"sqlite://{os.path.dirname(parts.path)}/{clone_name}.sqlite3"
    else:
        url = urlunsplit(parts._replace(path="/" + clone_name))
    env = dict(os.environ, DATABASE_URL=url)
    wall, out = timed([str(PYTHON), str(ROOT / "bench" / "schema" / "django_clone_loop.py"), "-n", str(n)], env=env)
    return json.loads(out.strip().splitlines()[-1])["seconds"]


def bench_target(t, reps):
    res = {"build": [], "migrate_x2_parallel": [], "django_loop": {2: [], 4: []}}
    for m in METHODS[t.kind]:
        for n in COUNTS:
            res[f"clone {m} n={n}"] = []
            res[f"clone-wall {m} n={n}"] = []
            res[f"drop {m} n={n}"] = []
    keep = None
    for rep in range(reps):
        print(f"  {t.name}: round {rep + 1}/{reps}", file=sys.stderr, flush=True)
        # Template build = create an empty database + the project's migrations + seal: what
        # every worker pays today when it migrates its own database.
        wall, tpl = t.build(f"rep{rep}-{time.time_ns()}")
        res["build"].append(tpl["build_seconds"])
        if keep is not None:
            t.drop(keep["name"])
        keep = tpl
        # Two workers migrating at once, as pytest-xdist -n 2 does.
        start = time.perf_counter()
        procs = [subprocess.Popen(dbfork("db", "template", "--db", t.url, "--setup", t.setup(f"par{rep}-{i}-{time.time_ns()}"),
                                         "--input", INPUTS, "--json", "--quiet"), stdout=subprocess.PIPE, text=True) for i in range(2)]
        outs = [json.loads(p.communicate()[0]) for p in procs]
        res["migrate_x2_parallel"].append(time.perf_counter() - start)
        t.drop(*[o["name"] for o in outs])
        for m in METHODS[t.kind]:
            for n in COUNTS:
                wall, inner, names = t.clone(keep["fingerprint"], n, m)
                res[f"clone {m} n={n}"].append(inner)
                res[f"clone-wall {m} n={n}"].append(wall)
                res[f"drop {m} n={n}"].append(t.drop(*names))
        # Django's clone loop, from a migrated (non-template) database: a dbfork clone.
        _, _, names = t.clone(keep["fingerprint"], 1, METHODS[t.kind][0])
        for n in (2, 4):
            res["django_loop"][n].append(django_loop(t, names[0], n))
        t.drop(*names)
    t.drop(keep["name"])
    return res


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def report(all_results, reps):
    lines = [f"Medians of {reps} rounds; seconds. `clone n=N` is N clones made at once (dbfork's own timing, "
             "excluding process start and connect); `wall` adds the whole `dbfork db clone` command.", ""]
    for name, r in all_results.items():
        kind = r["kind"]
        build = med(r["build"])
        lines.append(f"### {name}")
        lines.append("")
        lines.append(f"- template build (empty database + `manage.py migrate` + seal): **{build:.2f} s**")
        lines.append(f"- what users pay today: migrations per worker {build:.2f} s each; two workers migrating at once "
                     f"{med(r['migrate_x2_parallel']):.2f} s; Django's clone loop (`clone_test_db` one after another) "
                     f"2 clones {med(r['django_loop']['2']):.2f} s, 4 clones {med(r['django_loop']['4']):.2f} s")
        lines.append("")
        lines.append("| method | 1 clone | 2 at once | 4 at once | 8 at once | 4 vs 1 | migrate / 1 clone | wall, 1 clone | drop 1 | drop 8 |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|")
        for m in METHODS[kind]:
            c = {n: med(r[f"clone {m} n={n}"]) for n in COUNTS}
            lines.append(f"| {m} | {c[1]:.3f} | {c[2]:.3f} | {c[4]:.3f} | {c[8]:.3f} | {c[4] / c[1]:.2f}x | {build / c[1]:.0f}x | "
                         f"{med(r[f'clone-wall {m} n=1']):.3f} | {med(r[f'drop {m} n=1']):.3f} | {med(r[f'drop {m} n=8']):.3f} |")
        lines.append("")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", default="sqlite,sqlite-tmpfs,pg,pg-ephemeral,mariadb,mariadb-ephemeral")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--report", metavar="JSON", help="only print the tables of a saved results file")
    args = ap.parse_args()
    if args.report:
        saved = json.loads(Path(args.report).read_text())
        reps = len(next(iter(saved.values()))["build"]) if saved else 0
        print(report(saved, reps))
        return
    if not DBFORK.exists() or not PYTHON.exists():
        sys.exit("build first: bash bench/setup-venv.sh && cargo build --release")
    stack = []
    results = {}
    try:
        targets = make_targets(args.targets.split(","), stack)
        for t in targets:
            print(f"benchmarking {t.name} ({t.url})", file=sys.stderr, flush=True)
            r = bench_target(t, args.reps)
            r["django_loop"] = {str(k): v for k, v in r["django_loop"].items()}
            r["kind"] = t.kind
            results[t.name] = r
    finally:
        for undo in reversed(stack):
            undo()
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out_dir / f"engine-{stamp}.json").write_text(json.dumps(results, indent=1))
    print(report(results, args.reps))


if __name__ == "__main__":
    main()
