#!/usr/bin/env python3
"""`dbfork bisect` against detect-test-pollution (issue 24): a generated pytest
suite of 1,000 database tests with one planted order-dependent pair, side by
side in one run:

    bash bench/setup-venv.sh && cargo build --release --bin dbfork
    .venv/bin/python bench/bisection.py                 # 1,000 tests, 5 rounds, -j 2
    .venv/bin/python bench/bisection.py --tests 2000 --reps 3 --jobs 2

The suite (in /tmp/benchbisect_<pid>, removed at the end): 50 modules of 20
tests; each test inserts a row on its own connection and rolls it back, as
database tests do. The polluter (module 12 of 50) commits a row and leaves it;
the reader (module 41) fails when that row is there. Each pytest process gets a
new database, as pytest-django makes its test database per session: the
conftest creates a fresh SQLite file with the schema when the process is not a
dbfork worker (a dbfork worker gets its clone of the template instead). So both
tools see the pollution only within one process, and neither is helped by a
database left from before.

Variants, once per round each, the order alternating (the last two: what
classifying a failure costs a run):
  dbfork   dbfork bisect -j N --db sqlite:///<work>/main.sqlite3 --setup ... READER
           -- python -m pytest -q -p no:cacheprovider tests
           (suspects: every other test; probes in fresh workers on fresh clones, N at once)
  dtp      detect-test-pollution --failing-test READER --tests tests
           (PyPI; serial: one pytest process per step)
  run      dbfork run -j 1 --order file --classify off (the reader fails)
  run+classify  the same, classifying the failure (the default)
Unmeasured warm-up: one `dbfork run` (builds the template). Each variant must
name the polluter (else the round is reported as wrong). Reported: medians of
wall time, the ratio, and dbfork's probe count; raw JSON in
bench/results/bisect-<stamp>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv" / "bin" / "python"
DBFORK = ROOT / "target" / "release" / "dbfork"
DTP = ROOT / ".venv" / "bin" / "detect-test-pollution"

MODULES = 50
POLLUTER_MODULE = 12
READER_MODULE = 41

CONFTEST = '''
import os
import sqlite3
import tempfile

import pytest

SCHEMA = "create table marks (id integer primary key, who text)"


@pytest.fixture(scope="session")
def database():
    """The worker's clone under dbfork; else a new database for this
    process, as pytest-django makes one per session."""
    url = os.environ.get("DATABASE_URL", "")
    if os.environ.get("DBFORK_WORKER") and url.startswith("sqlite://"):
        return url[len("sqlite://"):]
    path = os.path.join(tempfile.mkdtemp(prefix="benchbisect-db-"), "test.sqlite3")
    conn = sqlite3.connect(path)
    conn.execute(SCHEMA)
    conn.commit()
    conn.close()
    return path


@pytest.fixture
def db(database):
    conn = sqlite3.connect(database, timeout=10)
    yield conn
    conn.close()
'''

SETUP = '''
import os
import sqlite3

url = os.environ["DATABASE_URL"]
conn = sqlite3.connect(url[len("sqlite://"):])
conn.execute("create table marks (id integer primary key, who text)")
conn.commit()
'''

FILLER = '''
def test_{n}(db):
    db.execute("insert into marks(who) values (?)", ("test_{n}",))
    db.rollback()
'''

POLLUTER = '''
def test_polluter(db):
    db.execute("insert into marks(who) values ('polluter')")
    db.commit()
'''

READER = '''
def test_reader(db):
    left = db.execute("select count(*) from marks where who = 'polluter'").fetchone()
    assert left == (0,), "a row test_polluter left behind"
'''


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def make_suite(work: Path, tests: int) -> tuple[str, str]:
    """Writes the suite; returns the reader's and the polluter's ids."""
    suite = work / "suite"
    (suite / "tests").mkdir(parents=True)
    (suite / "conftest.py").write_text(CONFTEST)
    (suite / "setup_db.py").write_text(SETUP)
    (suite / "pytest.ini").write_text("[pytest]\ntestpaths = tests\n")
    per = tests // MODULES
    n = 0
    for m in range(MODULES):
        body = []
        fillers = per - (1 if m in (POLLUTER_MODULE, READER_MODULE) else 0)
        for _ in range(fillers):
            body.append(FILLER.format(n=n))
            n += 1
        if m == POLLUTER_MODULE:
            body.insert(len(body) // 2, POLLUTER)
        if m == READER_MODULE:
            body.append(READER)
        (suite / "tests" / f"test_mod_{m:02}.py").write_text("".join(body))
    reader = f"tests/test_mod_{READER_MODULE:02}.py::test_reader"
    polluter = f"tests/test_mod_{POLLUTER_MODULE:02}.py::test_polluter"
    return reader, polluter


def timed(cmd, cwd: Path, env: dict) -> tuple[float, str, int]:
    start = time.monotonic()
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    return time.monotonic() - start, out.stdout + out.stderr, out.returncode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tests", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    for tool, hint in [
        (DBFORK, "cargo build --release --bin dbfork"),
        (PYTHON, "bash bench/setup-venv.sh"),
        (DTP, "bash bench/setup-venv.sh (detect-test-pollution)"),
    ]:
        if not tool.exists():
            log(f"{tool} is missing: {hint}")
            return 2
    work = Path(f"/tmp/benchbisect_{os.getpid()}")
    work.mkdir()
    try:
        reader, polluter = make_suite(work, args.tests)
        suite = work / "suite"
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", TMPDIR=str(work))
        env.pop("CI", None)
        env["PATH"] = f"{PYTHON.parent}:{env['PATH']}"
        db = f"sqlite://{work}/main.sqlite3"
        pytest = [str(PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"]
        common = ["--db", db, "--setup", f"{PYTHON} setup_db.py", "--input", "setup_db.py"]
        warm = [str(DBFORK), "run", *common, "-j", str(args.jobs), "--classify", "off", "--keep-runs", "0", "--", *pytest]
        seconds, said, code = timed(warm, suite, env)
        # The reader fails when its worker ran the polluter first (1), or passes (0).
        if code not in (0, 1):
            log(f"the warm-up run failed ({code}):\n{said[-3000:]}")
            return 1
        log(f"warm-up: the template made, {args.tests} tests run in {seconds:.1f}s")
        one = [str(DBFORK), "run", *common, "-j", "1", "--order", "file", "--keep-runs", "0"]
        variants = {
            "dbfork": [str(DBFORK), "bisect", *common, "-j", str(args.jobs), reader, "--", *pytest],
            "dtp": [str(DTP), "--failing-test", reader, "--tests", "tests"],
            # What classifying the reader's failure costs a run: one worker,
            # collection order (the reader fails after the polluter).
            "run": [*one, "--classify", "off", "--", *pytest],
            "run+classify": [*one, "--", *pytest],
        }
        rows = {name: [] for name in variants}
        for rep in range(args.reps):
            names = list(variants) if rep % 2 == 0 else list(reversed(variants))
            for name in names:
                seconds, said, code = timed(variants[name], suite, env)
                right = polluter in said if name in ("dbfork", "dtp") else "1 failed" in said
                if name == "run+classify":
                    right = right and "order-dependent" in said
                probes = None
                if name == "dbfork":
                    first = next((l for l in said.splitlines() if "fails after other tests (" in l), "")
                    probes = int(first.split("(")[1].split()[0]) if first else None
                rows[name].append({"seconds": seconds, "found": right, "code": code, "probes": probes})
                log(f"round {rep + 1} {name}: {seconds:.2f}s, {'found the polluter' if right else 'WRONG: ' + said[-2000:]}")
        result = {
            "tests": args.tests,
            "jobs": args.jobs,
            "runs": rows,
            "medians": {n: statistics.median(r["seconds"] for r in rs) for n, rs in rows.items()},
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = result["medians"]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = ROOT / "bench" / "results" / f"bisect-{stamp}.json"
    out.write_text(json.dumps(result, indent=1))
    probes = [r["probes"] for r in rows["dbfork"] if r["probes"]]
    print(f"{args.tests} tests, one polluter (module {POLLUTER_MODULE} of {MODULES}) and its reader (module {READER_MODULE}), medians of {args.reps} rounds:")
    print(f"  dbfork bisect -j {args.jobs}:     {med['dbfork']:.2f}s ({statistics.median(probes) if probes else '?'} probes, fresh worker and clone each)")
    print(f"  detect-test-pollution: {med['dtp']:.2f}s")
    print(f"  ratio dbfork/dtp: {med['dbfork'] / med['dtp']:.2f}")
    print(f"  dbfork run -j 1 with the failure: {med['run']:.2f}s; classified (alone, then a replay of the {READER_MODULE * (args.tests // MODULES)} tests before it): {med['run+classify']:.2f}s (+{med['run+classify'] - med['run']:.2f}s)")
    wrong = [n for n, rs in rows.items() if not all(r["found"] for r in rs)]
    if wrong:
        print(f"  WRONG answers from: {', '.join(wrong)}")
    print(f"\nraw: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
