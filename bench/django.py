#!/usr/bin/env python3
"""Django benchmark: `dbfork run` on the example project (examples/shop: 181
models, 66 migration files + contrib, 726 tests), beside pytest-xdist with
pytest-django and Django's own `manage.py test --parallel`, 2 workers, on
SQLite, PostgreSQL and MariaDB, in the same run.

    bash bench/setup-venv.sh && cargo build --release
    .venv/bin/python bench/django.py                          # every backend, 3 rounds
    .venv/bin/python bench/django.py --backends sqlite --reps 1
    python3 bench/django.py --report bench/results/django-<stamp>.json   # re-render

Variants (all run from examples/shop, 2 workers):
  dbfork-cold    dbfork run -j 2 --db URL -- python -m pytest -q -p no:cacheprovider
                 with no template on URL: SQLite, a fresh directory every round;
                 PostgreSQL/MariaDB, the templates in the registry of the run's
                 maintenance database are dropped (`dbfork db drop`) just before
  dbfork-warm    the same command on a --db whose template is already built
  dbfork-fresh   dbfork-warm with --fresh-transactional (transactional tests on
                 fresh clones made ahead, instead of Django's flush after each)
  dbfork-manage  dbfork run -j 2 --db URL -- python manage.py test --noinput, warm
                 (--testrunner benchdj_dbfork.Runner: dbfork_django's mixin on
                 DiscoverRunner, which also writes when tests start)
  dbfork-manage-fresh  the same with --fresh-transactional
  xdist          python -m pytest -q -p no:cacheprovider -n 2      (pytest-django)
  xdist-reuse    the same with --reuse-db (its test databases exist from the
                 previous round; it runs once, unmeasured, before the rounds)
  django         python manage.py test --parallel 2 --noinput
  django-keepdb  the same with --keepdb (warm-up run before the rounds too)
  migrate        python manage.py migrate --noinput into a new empty database (the
                 old way's template build, a process of its own), beside
  python-start   a Django process's start: the interpreter, the project's settings and
                 django.setup() (what a `migrate` process pays before it migrates):
                 the template dbfork builds in its controller (dbfork-cold's
                 `built template ... in X s`) should take no longer than
                 migrate + python-start
DATABASE_URL of the non-dbfork variants: SQLite sqlite:////tmp/benchdj_<pid>/db.sqlite3
(Django and pytest-django then test on in-memory databases: --reuse-db and
--keepdb change nothing there, and `--parallel` clones the in-memory database);
PostgreSQL postgres://postgres@127.0.0.1:5432/benchtmp_djx_<pid> on the machine's
server, and .../benchtmp_djx_<pid>_keep for xdist-reuse and django-keepdb, so the
plain variants (which drop their test databases) do not drop the kept ones;
MariaDB the same with mysql://root@127.0.0.1:3306/.

Measured per run: wall time of the command; time until the first test starts
(a tiny pytest plugin, `-p benchdj_first` from a temporary folder on PYTHONPATH,
writes time.time() when the first test's call phase begins in each process,
i.e. after its fixtures and the database setup; for manage.py test a test runner
subclass, `--testrunner benchdj_runner.Runner`, writes it when the first batch of
tests starts in a worker; the earliest process counts); database setup: dbfork's
"built template ... in X s" line (0 when it says "reusing template"), the time of
pytest-django's django_db_setup fixture in each xdist worker (the slower worker),
Django's `--timing` "Total database setup"; outcome counts; and the outcome of every
test (dbfork: its --json report; pytest-xdist: the tests' outcomes_plugin in the
controller, which receives every worker's reports; Django's runner: `-v 2` lines),
compared with pytest-xdist's (pytest variants) or Django's runner's (manage.py
variants) of the same round: the report says whether the sets are equal.

Every variant of a backend runs once per round, the order rotating, rounds
interleaved, medians reported. Only databases named benchtmp_dj_<pid>,
benchtmp_djx_<pid>*, test_benchtmp_djx_<pid>* and dbfork's own (in the registry of
benchtmp_dj_<pid>) are created, and all are dropped at the end (test databases with
DROP DATABASE ... WITH (FORCE) on PostgreSQL). Raw JSON in bench/results/.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv" / "bin" / "python"
DBFORK = ROOT / "target" / "release" / "dbfork"
SHOP = ROOT / "examples" / "shop"
# The tests' plugin that writes every test's outcome ($OUTCOMES_FILE) in pytest's
# main process (pytest-xdist's controller receives every worker's reports).
OUTCOMES_PLUGIN_DIR = ROOT / "crates" / "dbfork" / "tests" / "support"
PYTEST = [str(PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider"]
JOBS = 2
EXPECTED_PYTEST = 726
EXPECTED_MANAGE = 638  # manage.py test finds the unittest classes, not pytest's function tests
VARIANTS = ["dbfork-cold", "dbfork-warm", "dbfork-fresh", "dbfork-manage", "dbfork-manage-fresh",
            "xdist", "xdist-reuse", "django", "django-keepdb", "migrate", "python-start"]
# Whose outcome set each variant's is compared with (same round, same backend).
REFERENCE = {"dbfork-cold": "xdist", "dbfork-warm": "xdist", "dbfork-fresh": "xdist", "xdist-reuse": "xdist",
             "dbfork-manage": "django", "dbfork-manage-fresh": "django", "django-keepdb": "django"}
# The ones whose state the rounds reuse (pytest's and manage.py test's templates differ:
# pytest's configuration files are inputs of pytest's).
WARMUP = ["dbfork-warm", "dbfork-manage", "xdist-reuse", "django-keepdb"]
# dbfork's variants on the warm template (every dbfork variant but the cold one uses it)
FRESH = ["--fresh-transactional"]
BACKENDS = ["sqlite", "postgres", "mariadb"]
COLD_TARGET = 0.6  # dbfork cold <= 0.6x plain xdist
WARM_TARGET = 0.9  # dbfork warm <= 0.9x xdist --reuse-db and <= 0.9x Django --keepdb
PG_ADMIN = ["psql", "-X", "-q", "-At", "-h", "127.0.0.1", "-p", "5432", "-U", "postgres", "-d", "postgres", "-c"]
MY_ADMIN = ["mariadb", "-h", "127.0.0.1", "-P", "3306", "--protocol=tcp", "-u", "root", "-N", "-B", "-e"]
DROP_ENV = ("PYTHONDONTWRITEBYTECODE", "DATABASE_URL", "DJANGO_SETTINGS_MODULE", "PYTEST_ADDOPTS", "PYTEST_PLUGINS",
            "PYTEST_XDIST_AUTO_NUM_WORKERS", "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "BENCH_FIRST_TEST_DIR")

# -p benchdj_first: the first test's start (call phase) per process, and django_db_setup's time.
FIRST_PLUGIN = '''\
import os, time
import pytest
_seen = set()
def _write(ext, text):
    d = os.environ.get("BENCH_FIRST_TEST_DIR")
    if d:
        with open(os.path.join(d, "%d.%s" % (os.getpid(), ext)), "a") as f:
            f.write(text + "\\n")
@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if "setup" not in _seen:
        _seen.add("setup")
        _write("setup", repr(time.time()))
@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item):
    if "call" not in _seen:
        _seen.add("call")
        _write("call", repr(time.time()))
@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef, request):
    if fixturedef.argname != "django_db_setup":
        yield
        return
    start = time.time()
    yield
    _write("dbsetup", "%r %r" % (start, time.time()))
'''

# --testrunner benchdj_runner.Runner: when a manage.py test worker starts its first batch of tests.
DJANGO_RUNNER = '''\
import os, time
from django.test.runner import DiscoverRunner, ParallelTestSuite, _run_subsuite
_seen = False
def _timed_run_subsuite(args):
    global _seen
    if not _seen:
        _seen = True
        d = os.environ.get("BENCH_FIRST_TEST_DIR")
        if d:
            with open(os.path.join(d, "%d.call" % os.getpid()), "w") as f:
                f.write(repr(time.time()) + "\\n")
    return _run_subsuite(args)
class TimedParallelTestSuite(ParallelTestSuite):
    run_subsuite = _timed_run_subsuite
class Runner(DiscoverRunner):
    parallel_test_suite = TimedParallelTestSuite
'''

# --testrunner benchdj_dbfork.Runner: dbfork's runner for manage.py test (a project's own
# TEST_RUNNER subclass, as the docs show), writing when the worker starts running tests.
DBFORK_RUNNER = '''\
import os, time
import dbfork_django
from django.test.runner import DiscoverRunner
class Runner(dbfork_django.DbforkRunnerMixin, DiscoverRunner):
    def run_suite(self, suite, **kwargs):
        d = os.environ.get("BENCH_FIRST_TEST_DIR")
        if d:
            with open(os.path.join(d, "%d.call" % os.getpid()), "w") as f:
                f.write(repr(time.time()) + "\\n")
        return super().run_suite(suite, **kwargs)
'''


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def base_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in DROP_ENV and not k.startswith("DBFORK_")}
    env.update(extra)
    return env


def sh(args, cwd=None, env=None, check=True, timeout=None):
    res = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        out = (res.stdout[-3000:] + "\n" + res.stderr[-3000:]).strip()
        raise RuntimeError(f"failed (exit {res.returncode}): {' '.join(map(str, args))}\n{out}")
    return res


# -- backends ---------------------------------------------------------------

class Backend:
    """Where each variant's databases live, and how to clean them up."""

    name = kind = ""
    keeps_test_dbs = True

    def __init__(self, work):
        self.work = work
        self.pid = os.getpid()

    def dbfork_url(self, variant, tag):
        raise NotImplementedError

    def after(self, variant, tag):
        pass

    def plain_url(self, keep):
        raise NotImplementedError

    def cleanup(self):
        """Drops everything this run created; returns what could not be dropped."""
        return []

    def fresh_url(self, tag):
        """A new empty database for a plain `migrate` (dropped by `after`)."""
        raise NotImplementedError

    # dbfork's registry on a server
    def registry(self, url):
        res = sh([str(DBFORK), "db", "list", "--db", url, "--json"], check=False)
        if res.returncode != 0:
            return None
        return json.loads(res.stdout or "[]")

    def drop_registered(self, url):
        entries = self.registry(url)
        if entries is None:
            return [f"(registry of {url} unreadable)"]
        names = [e["name"] for e in entries]
        if names:
            sh([str(DBFORK), "db", "drop", "--db", url, *names], check=False)
        left = self.registry(url)
        return [e["name"] for e in (left or []) if e.get("exists", True)]


class SQLite(Backend):
    name = kind = "sqlite"
    keeps_test_dbs = False  # Django's SQLite test databases are in memory: --reuse-db/--keepdb keep nothing

    def __init__(self, work):
        super().__init__(work)
        self.dir = Path(f"/tmp/benchdj_{self.pid}")
        self.dir.mkdir(parents=True, exist_ok=True)

    def dbfork_url(self, variant, tag):
        d = self.dir / (f"dbfork-cold-{tag}" if variant == "dbfork-cold" else "dbfork-warm")
        if variant == "dbfork-cold":
            shutil.rmtree(d, ignore_errors=True)
        d.mkdir(exist_ok=True)
        return f"sqlite://{d}/main.sqlite3"

    def after(self, variant, tag):
        if variant == "dbfork-cold":
            shutil.rmtree(self.dir / f"dbfork-cold-{tag}", ignore_errors=True)
        if variant == "migrate":
            (self.dir / f"migrate-{tag}.sqlite3").unlink(missing_ok=True)

    def fresh_url(self, tag):
        (self.dir / f"migrate-{tag}.sqlite3").unlink(missing_ok=True)
        return f"sqlite:///{self.dir}/migrate-{tag}.sqlite3"

    def plain_url(self, keep):
        return f"sqlite:///{self.dir}/db.sqlite3"

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)
        return [str(self.dir)] if self.dir.exists() else []


class Server(Backend):
    """PostgreSQL or MariaDB on the machine. dbfork works from one maintenance database,
    benchtmp_dj_<pid>; a cold run is preceded by dropping the templates of its registry."""

    scheme = ""
    admin = []

    def __init__(self, work):
        super().__init__(work)
        self.maint = f"benchtmp_dj_{self.pid}"
        # manage.py test's template is not pytest's (pytest's configuration files
        # are inputs of pytest's): its own registry, which a cold run leaves alone.
        self.maint_manage = f"benchtmp_dj_{self.pid}_manage"
        for name in (self.maint, self.maint_manage):
            self.sql(f"CREATE DATABASE {name}")
        self.created = True

    def sql(self, stmt, check=True):
        return sh(self.admin + [stmt], check=check)

    def url(self, db):
        raise NotImplementedError

    def dbfork_url(self, variant, tag):
        if variant.startswith("dbfork-manage"):
            return self.url(self.maint_manage)
        url = self.url(self.maint)
        if variant == "dbfork-cold":
            left = self.drop_registered(url)
            if left:
                raise RuntimeError(f"could not drop the template before a cold run: {left}")
        return url

    def plain_url(self, keep):
        return self.url(f"benchtmp_djx_{self.pid}" + ("_keep" if keep else ""))

    def fresh_url(self, tag):
        name = f"benchtmp_djx_{self.pid}_migrate"
        self.drop_db(name)
        self.sql(f"CREATE DATABASE {name}")
        return self.url(name)

    def after(self, variant, tag):
        if variant == "migrate":
            self.drop_db(f"benchtmp_djx_{self.pid}_migrate")

    def ours(self):
        pat = re.compile(rf"^(test_)?benchtmp_djx?_{self.pid}(_.*)?$")
        return [n for n in self.databases() if pat.match(n)]

    def cleanup(self):
        left = self.drop_registered(self.url(self.maint)) + self.drop_registered(self.url(self.maint_manage))
        for name in self.ours():
            self.drop_db(name)
        return left + self.ours()


class Postgres(Server):
    name = kind = "postgres"
    admin = PG_ADMIN

    def url(self, db):
        return f"postgres://postgres@127.0.0.1:5432/{db}"

    def databases(self):
        return self.sql("SELECT datname FROM pg_database").stdout.split()

    def drop_db(self, name):
        self.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', check=False)


class MariaDB(Server):
    name = "mariadb"
    kind = "mysql"
    admin = MY_ADMIN

    def url(self, db):
        return f"mysql://root@127.0.0.1:3306/{db}"

    def databases(self):
        return self.sql("SHOW DATABASES").stdout.split()

    def drop_db(self, name):
        self.sql(f"DROP DATABASE IF EXISTS `{name}`", check=False)


def available(name):
    """None if the backend can run here, else why not."""
    if name == "postgres":
        if shutil.which("psql") is None:
            return "psql not found"
        if sh(PG_ADMIN + ["SELECT 1"], check=False).returncode != 0:
            return "no PostgreSQL server at 127.0.0.1:5432 (user postgres, trust auth)"
    if name == "mariadb":
        res = sh([str(PYTHON), "-c", "import MySQLdb"], check=False)
        if res.returncode != 0:
            return "mysqlclient (MySQLdb) does not import in the venv: " + res.stderr.strip().splitlines()[-1]
        if shutil.which("mariadb") is None:
            return "mariadb client not found"
        if sh(MY_ADMIN + ["SELECT 1"], check=False).returncode != 0:
            return "no MariaDB server at 127.0.0.1:3306 (user root)"
    return None


def make_backend(name, work):
    return {"sqlite": SQLite, "postgres": Postgres, "mariadb": MariaDB}[name](work)


# -- one run ----------------------------------------------------------------

SUMMARY = re.compile(r"^=*\s*((?:\d+ \w+(?:, )?)+) in [\d.]+s")


def pytest_counts(text):
    line = None
    for ln in text.splitlines():
        if SUMMARY.match(ln.strip()):
            line = ln.strip()
    if line is None:
        return None
    out = {}
    for n, what in re.findall(r"(\d+) (\w+)", SUMMARY.match(line).group(1)):
        what = {"error": "errors", "warning": "warnings"}.get(what, what)
        out[what] = int(n)
    return out


def django_counts(text):
    ran = re.findall(r"^Ran (\d+) tests? in", text, re.M)
    if not ran:
        return None
    out = {"ran": int(ran[-1])}
    m = re.findall(r"^(OK|FAILED)(?: \((.*)\))?$", text, re.M)
    if m:
        status, detail = m[-1]
        for k, v in re.findall(r"(\w+)=(\d+)", detail or ""):
            out[k] = int(v)
        out["passed"] = out["ran"] - sum(out.get(k, 0) for k in ("failures", "errors", "skipped", "expected failures",
                                                                   "unexpected successes"))
        out["status"] = status
    return out


def read_stamps(rundir, ext):
    vals = []
    for f in rundir.glob(f"*.{ext}"):
        for line in f.read_text().splitlines():
            vals.append([float(x) for x in line.split()])
    return vals


def run_variant(backend, variant, tag, plugdir):
    rundir = backend.work / "runs" / f"{backend.name}-{variant}-{tag}"
    rundir.mkdir(parents=True)
    env = base_env(BENCH_FIRST_TEST_DIR=str(rundir),
                   PYTHONPATH=os.pathsep.join(filter(None, [str(plugdir), os.environ.get("PYTHONPATH")])))
    if variant.startswith("dbfork-manage"):
        url = backend.dbfork_url(variant, tag)
        cmd = [str(DBFORK), "run", "-j", str(JOBS), "--db", url] + (FRESH if variant.endswith("fresh") else []) + \
            ["--", str(PYTHON), "manage.py", "test", "--noinput", "--testrunner", "benchdj_dbfork.Runner"]
    elif variant.startswith("dbfork"):
        url = backend.dbfork_url(variant, tag)
        cmd = [str(DBFORK), "run", "-j", str(JOBS), "--db", url] + (FRESH if variant.endswith("fresh") else []) + \
            ["--", *PYTEST, "-p", "benchdj_first"]
    elif variant.startswith("xdist"):
        env["DATABASE_URL"] = backend.plain_url(keep=variant == "xdist-reuse")
        env["OUTCOMES_FILE"] = str(rundir / "outcomes.json")
        env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], str(OUTCOMES_PLUGIN_DIR)])
        cmd = PYTEST + ["-p", "benchdj_first", "-p", "outcomes_plugin", "-n", str(JOBS)] + \
            (["--reuse-db"] if variant == "xdist-reuse" else [])
    else:
        env["DATABASE_URL"] = backend.plain_url(keep=variant == "django-keepdb")
        cmd = [str(PYTHON), "manage.py", "test", "--parallel", str(JOBS), "--noinput", "--timing",
               "--testrunner", "benchdj_runner.Runner"] + (["--keepdb"] if variant == "django-keepdb" else [])
    if variant.startswith("dbfork"):
        report_path = rundir / "report.json"
        cmd[2:2] = ["--json", str(report_path)]
    if variant in ("django", "django-keepdb"):
        cmd.append("-v2")
    if variant == "migrate":
        env["DATABASE_URL"] = backend.fresh_url(tag)
        cmd = [str(PYTHON), "manage.py", "migrate", "--noinput"]
    if variant == "python-start":
        cmd = [str(PYTHON), "-c", "import os, django; os.environ.setdefault('DJANGO_SETTINGS_MODULE', "
               "'shop.settings'); django.setup()"]
    t0 = time.time()
    p0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=SHOP, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - p0
    backend.after(variant, tag)
    if variant in ("migrate", "python-start"):
        r = {"wall": wall, "rc": res.returncode, "ok": res.returncode == 0, "counts": None}
        if not r["ok"]:
            r["stderr_tail"] = res.stderr[-4000:]
            log(f"    !! {backend.name} {variant}: exit {res.returncode}")
        shutil.rmtree(rundir, ignore_errors=True)
        return r
    text = res.stdout + "\n" + res.stderr
    calls = [v[0] for v in read_stamps(rundir, "call")]
    setups = [v[0] for v in read_stamps(rundir, "setup")]
    r = {"wall": wall, "rc": res.returncode,
         "first_test": min(calls) - t0 if calls else None,
         "first_setup": min(setups) - t0 if setups else None,
         "db_setup": None, "db_setup_by": None}
    if variant.startswith("dbfork"):
        r["counts"] = pytest_counts(res.stdout) or pytest_counts(text)
        built = re.findall(r"built template (\S+) in ([\d.]+)s", res.stderr)
        reused = re.findall(r"reusing template (\S+)", res.stderr)
        if built:
            r["db_setup"], r["db_setup_by"], r["template"] = float(built[-1][1]), "built", built[-1][0]
        elif reused:
            r["db_setup"], r["db_setup_by"], r["template"] = 0.0, "reused", reused[-1]
        r["dbfork_lines"] = [ln for ln in res.stderr.splitlines()
                             if ln.startswith("dbfork:") and not ln.startswith("dbfork: [")]
    elif variant.startswith("xdist"):
        r["counts"] = pytest_counts(res.stdout) or pytest_counts(text)
        fixture = sorted(e - s for s, e in read_stamps(rundir, "dbsetup"))
        r["db_setup_workers"] = fixture
        if fixture:
            r["db_setup"], r["db_setup_by"] = max(fixture), "django_db_setup fixture, slower worker"
    else:
        r["counts"] = django_counts(text)
        m = re.findall(r"Total database setup took ([\d.]+)s", res.stderr)
        if m:
            r["db_setup"], r["db_setup_by"] = float(m[-1]), "--timing: Total database setup"
        r["django_timing"] = [ln.rstrip() for ln in res.stderr.splitlines()
                              if re.match(r"^\s*(Total|Creating|Cloning|Destroying) .* took", ln)]
        found = re.findall(r"^Found (\d+) test", res.stdout, re.M)
        r["found"] = int(found[-1]) if found else None
    r["outcomes"] = outcomes_of(variant, rundir, text)
    if variant.startswith("dbfork-manage"):
        counts = r["counts"] or {}
        r["ok"] = res.returncode == 0 and counts.get("passed") == EXPECTED_MANAGE and not counts.get("failed") \
            and not counts.get("errors")
    elif variant.startswith(("dbfork", "xdist")):
        counts = r["counts"] or {}
        r["ok"] = res.returncode == 0 and counts.get("passed") == EXPECTED_PYTEST and not counts.get("failed") \
            and not counts.get("errors")
    else:
        counts = r["counts"] or {}
        r["ok"] = res.returncode == 0 and counts.get("status") == "OK"
    if not r["ok"]:
        r["stdout_tail"] = res.stdout[-4000:]
        r["stderr_tail"] = res.stderr[-4000:]
        log(f"    !! {backend.name} {variant}: exit {res.returncode}, counts {r['counts']}")
    shutil.rmtree(rundir, ignore_errors=True)
    return r


def outcomes_of(variant, rundir, text):
    """Test id -> outcome, as dbfork's JSON report names them; None if unknown."""
    if variant.startswith("dbfork"):
        try:
            report = json.loads((rundir / "report.json").read_text())
        except (OSError, ValueError):
            return None
        return {t["id"]: t["outcome"] for t in report.get("tests", [])}
    if variant.startswith("xdist"):
        try:
            return json.loads((rundir / "outcomes.json").read_text())
        except (OSError, ValueError):
            return None
    return unittest_outcomes(text) or None


def unittest_outcomes(text):
    """`test_x (module.Class.test_x) ... ok` lines of `-v 2` (a docstring puts
    the status on the next line), counted as dbfork counts them."""
    statuses = {"ok": "passed", "FAIL": "failed", "ERROR": "failed", "unexpected success": "failed",
                "expected failure": "x_failed"}
    found, previous = {}, ""
    for line in text.splitlines():
        before, previous = previous, line
        if " ... " not in line:
            continue
        test, status = line.split(" ... ", 1)
        m = re.search(r" \(([\w.]+)\)$", test) or re.search(r" \(([\w.]+)\)$", before)
        status = status.strip()
        outcome = "skipped" if status.startswith("skipped") else statuses.get(status)
        if m and outcome:
            found[m.group(1)] = outcome
    return found


def same_outcomes(mine, theirs):
    """Whether two outcome sets are equal, and if not, in words."""
    if mine is None or theirs is None:
        return "unknown"
    if mine == theirs:
        return "equal"
    differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    first = differ[0]
    return f"{len(differ)} differ (first {first}: {mine.get(first)} vs {theirs.get(first)})"


# -- rounds -----------------------------------------------------------------

def rotate(xs, k):
    k %= len(xs)
    return xs[k:] + xs[:k]


def describe(r):
    c = r.get("counts") or {}
    first = f"{r['first_test']:.1f}" if r.get("first_test") is not None else "-"
    setup = f"{r['db_setup']:.1f}" if r.get("db_setup") is not None else "-"
    return f"wall {r['wall']:.1f} s, first test {first} s, db setup {setup} s, {c}"


def bench(backends, variants, reps, plugdir, results):
    for b in backends:
        for v in [v for v in WARMUP if v in variants and (v.startswith("dbfork") or b.keeps_test_dbs)]:
            log(f"  warm-up: {b.name} {v}")
            r = run_variant(b, v, "warmup", plugdir)
            log(f"    {describe(r)}")
            results["warmup"].setdefault(b.name, {})[v] = r
    for rep in range(reps):
        for b in backends:
            log(f"  round {rep + 1}/{reps}: {b.name}")
            done = {}
            for v in rotate(variants, rep):
                r = run_variant(b, v, str(rep), plugdir)
                log(f"    {v}: {describe(r)}")
                done[v] = r
                results["runs"].setdefault(b.name, {}).setdefault(v, []).append(r)
                save(results)
            # Each outcome set against its reference's of the same round.
            for v, r in done.items():
                ref = REFERENCE.get(v)
                if ref in done:
                    r["same_outcomes"] = same_outcomes(r.get("outcomes"), done[ref].get("outcomes"))
                    log(f"    {v} outcomes vs {ref}: {r['same_outcomes']}")
            for r in done.values():
                outcomes = r.pop("outcomes", None)
                r["outcome_count"] = len(outcomes) if outcomes is not None else None
            save(results)


# -- report -----------------------------------------------------------------

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def f(x, spec=".1f", suffix=""):
    return "-" if x is None or x != x else f"{x:{spec}}{suffix}"


def verdict(value, target):
    if value != value:
        return "n/a"
    return "**met**" if value <= target else "**not met**"


def outcome(runs, variant):
    seen = []
    for r in runs:
        c = r.get("counts") or {}
        if variant.startswith("django"):
            s = f"{c.get('passed', '?')} passed of {c.get('ran', '?')} run" if c else "aborted, no summary"
            extra = ", ".join(f"{c[k]} {k}" for k in ("failures", "errors", "skipped") if c.get(k))
        else:
            s = f"{c.get('passed', 0)} passed" if c else "no summary"
            extra = ", ".join(f"{c[k]} {k}" for k in ("failed", "errors", "skipped", "warnings") if c.get(k))
        s += f", {extra}" if extra else ""
        if r.get("rc"):
            s += f" (exit {r['rc']})"
        if s not in seen:
            seen.append(s)
    return "; ".join(seen)


LABELS = {
    "dbfork-cold": ("dbfork, cold template", "`dbfork run -j 2 --db URL -- python -m pytest -q -p no:cacheprovider`, no template"),
    "dbfork-warm": ("dbfork, warm template", "the same, template built"),
    "xdist": ("pytest-xdist", "`python -m pytest -q -p no:cacheprovider -n 2`"),
    "xdist-reuse": ("pytest-xdist --reuse-db", "the same `--reuse-db`, test databases kept"),
    "django": ("Django runner", "`python manage.py test --parallel 2 --noinput`"),
    "django-keepdb": ("Django runner --keepdb", "the same `--keepdb`"),
    "dbfork-fresh": ("dbfork, warm, fresh clones", "dbfork warm with `--fresh-transactional`"),
    "dbfork-manage": ("dbfork + manage.py test, warm", "`dbfork run -j 2 --db URL -- python manage.py test`"),
    "dbfork-manage-fresh": ("dbfork + manage.py test, warm, fresh clones", "the same with `--fresh-transactional`"),
    "migrate": ("plain migrate", "`python manage.py migrate --noinput`, a new database"),
    "python-start": ("a Django process's start", "`python -c \"...; django.setup()\"`"),
}


def compared(variant, runs):
    """Whether every round's outcome set equalled its reference's."""
    ref = REFERENCE.get(variant)
    if ref is None:
        return "(the reference)" if variant in REFERENCE.values() else "-"
    seen = [r.get("same_outcomes") for r in runs if r.get("same_outcomes")]
    if not seen:
        return "-"
    if all(x == "equal" for x in seen):
        return f"equal to {ref}'s ({len(seen)}/{len(seen)} rounds)"
    return f"vs {ref}: " + "; ".join(sorted(set(seen)))


def setup_note(variant, runs):
    by = next((r.get("db_setup_by") for r in runs if r.get("db_setup_by")), None)
    if variant.startswith("dbfork"):
        return "`built template ... in X s`" if by == "built" else "`reusing template` (0)" if by == "reused" else "?"
    if variant.startswith("xdist"):
        return "`django_db_setup` fixture, slower worker"
    return "`--timing`: Total database setup"


def report(saved):
    meta = saved.get("meta", {})
    lines = [f"Medians of {meta.get('reps', '?')} rounds; seconds; {JOBS} workers everywhere. "
             f"Commit {meta.get('commit', '?')}, {meta.get('cpus', '?')} CPUs, Python {meta.get('python', '?')}, "
             f"Django {meta.get('django', '?')}, pytest {meta.get('pytest', '?')}, pytest-django "
             f"{meta.get('pytest_django', '?')}, pytest-xdist {meta.get('xdist', '?')}.", ""]
    for note in meta.get("notes", []):
        lines += [f"- {note}"]
    if meta.get("notes"):
        lines.append("")
    summary = []
    extra = []
    builds = []
    for backend, byvar in saved.get("runs", {}).items():
        version = meta.get("servers", {}).get(backend)
        lines += [f"#### {backend}" + (f" ({version})" if version else ""), "",
                  "| variant | command | wall | first test starts | database setup | setup measured by | outcome "
                  "| same outcome for every test |",
                  "|---|---|---|---|---|---|---|---|"]
        m = {}
        for v in VARIANTS:
            runs = byvar.get(v)
            if not runs:
                continue
            m[v] = med([r["wall"] for r in runs])
            label, cmd = LABELS[v]
            if v in ("migrate", "python-start"):
                continue
            lines.append(f"| {label} | {cmd} | {f(m[v])} | {f(med([r.get('first_test') for r in runs]))} | "
                         f"{f(med([r.get('db_setup') for r in runs]))} | {setup_note(v, runs)} | {outcome(runs, v)} "
                         f"| {compared(v, runs)} |")
        lines.append("")
        if "migrate" in m and "dbfork-cold" in byvar:
            built = med([r.get("db_setup") for r in byvar["dbfork-cold"]])
            start = m.get("python-start", float("nan"))
            within = built <= m["migrate"] + start
            builds.append(f"| {backend} | {f(built)} | {f(m['migrate'])} | {f(start, '.2f')} | "
                          f"{f(built - m['migrate'], '+.1f')} | {'**met**' if within else '**not met**'} |")
        nan = float("nan")
        cold = m.get("dbfork-cold", nan) / m.get("xdist", nan)
        warm_x = m.get("dbfork-warm", nan) / m.get("xdist-reuse", nan)
        # Against Django's runner, dbfork runs the same command (manage.py test, 638 tests);
        # older results without that variant compare the pytest run (726 tests).
        same = "dbfork-manage" if "dbfork-manage" in m else "dbfork-warm"
        keepdb = m.get("django-keepdb", nan)
        keep, plain = byvar.get("django-keepdb", []), byvar.get("django", [])
        estimated = bool(keep) and any(r.get("counts") is None for r in keep)
        if estimated:
            # The kept database lost the data migrations' rows to the previous run's flush: the
            # seed-data tests fail and the parallel runner aborts. Estimate a full --keepdb run as
            # its own time to the first test + the plain run's time from the first test to the end.
            keepdb = med([r.get("first_test") for r in keep]) + med([r["wall"] - r["first_test"] for r in plain
                                                                      if r.get("first_test") is not None])
            lines += [f"Django --keepdb aborted (the kept database lost the seeded rows; see the outcome). "
                      f"Estimated full --keepdb run: its time to the first test + the plain run's time from the "
                      f"first test to the end = {f(keepdb)} s.", ""]
        warm_d = m.get(same, nan) / keepdb
        warm_d_cell = f"{f(warm_d, '.2f', 'x')} {verdict(warm_d, WARM_TARGET)}" + (
            f" (vs the estimate {f(keepdb)} s)" if estimated else "")
        extra.append(f"| {backend} | {f(m.get('dbfork-manage', nan) / m.get('django', nan), '.2f', 'x')} | "
                     f"{f(m.get('dbfork-fresh', nan) / m.get('dbfork-warm', nan), '.2f', 'x')} | "
                     f"{f(m.get('dbfork-manage-fresh', nan) / m.get('dbfork-manage', nan), '.2f', 'x')} |")
        summary.append(f"| {backend} | {f(cold, '.2f', 'x')} {verdict(cold, COLD_TARGET)} | "
                       f"{f(warm_x, '.2f', 'x')} {verdict(warm_x, WARM_TARGET)} | "
                       f"{warm_d_cell} | "
                       f"{f(m.get('dbfork-cold', nan) / m.get('django', nan), '.2f', 'x')} | "
                       f"{f(m.get('dbfork-warm', nan) / m.get('xdist', nan), '.2f', 'x')} |")
    if summary:
        lines += ["#### Ratios of wall times (medians) against the targets", "",
                  f"| backend | dbfork cold / xdist (target <= {COLD_TARGET}x) | dbfork warm / xdist --reuse-db "
                  f"(<= {WARM_TARGET}x) | dbfork warm (manage.py test) / Django --keepdb (<= {WARM_TARGET}x) | "
                  "dbfork cold / Django | "
                  "dbfork warm / xdist |",
                  "|---|---|---|---|---|---|", *summary, ""]
    if extra:
        lines += ["#### manage.py test under dbfork, and fresh clones for transactional tests", "",
                  "| backend | dbfork manage.py test (warm) / Django | "
                  "pytest: fresh clones / flush | manage.py test: fresh clones / flush |",
                  "|---|---|---|---|", *extra, ""]
    if builds:
        lines += ["#### The template built by the tests' own setup, beside a plain migrate", "",
                  "dbfork's controller builds the template in a test process that has already started and "
                  "configured itself; the old way ran `manage.py migrate` as a process of its own. Target: "
                  "no slower than the interpreter's start (built <= migrate + python-start).", "",
                  "| backend | built in the controller (dbfork cold) | `manage.py migrate`, own process | "
                  "a Django process's start | difference | within a process's start |",
                  "|---|---|---|---|---|---|", *builds, ""]
    if meta.get("skipped"):
        lines += [f"Skipped: " + "; ".join(f"{k} ({v})" for k, v in meta["skipped"].items()), ""]
    left = meta.get("leftovers")
    if left is not None:
        lines += ["Left behind: " + (", ".join(left) if left else "nothing (every database created was dropped)"), ""]
    return "\n".join(lines)


# -- main -------------------------------------------------------------------

RESULTS_PATH = None


def save(results):
    RESULTS_PATH.write_text(json.dumps(results, indent=1))


def versions():
    out = sh([str(PYTHON), "-c", "import sys, django, pytest, pytest_django, xdist; print(sys.version.split()[0], "
              "django.__version__, pytest.__version__, pytest_django.__version__, xdist.__version__)"]).stdout.split()
    commit = sh(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], check=False).stdout.strip() or "?"
    dirty = sh(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"], check=False).stdout.strip()
    return {"python": out[0], "django": out[1], "pytest": out[2], "pytest_django": out[3], "xdist": out[4],
            "commit": commit + ("+dirty" if dirty else ""), "cpus": os.cpu_count(), "machine": platform.platform(),
            "dbfork": sh([str(DBFORK), "--version"], check=False).stdout.strip()}


def server_versions(names):
    out = {}
    if "postgres" in names:
        out["postgres"] = sh(PG_ADMIN + ["SHOW server_version"], check=False).stdout.strip().split(" ")[0]
        out["postgres"] = "PostgreSQL " + out["postgres"]
    if "mariadb" in names:
        out["mariadb"] = "MariaDB " + sh(MY_ADMIN + ["SELECT VERSION()"], check=False).stdout.strip().split("-")[0]
    return out


def wait_for(path, max_seconds, poll=30):
    start = time.time()
    while not os.path.exists(path):
        if time.time() - start >= max_seconds:
            return False, time.time() - start
        log(f"waiting for {path} ({(time.time() - start) / 60:.1f} min)")
        time.sleep(poll)
    return True, time.time() - start


def main():
    global RESULTS_PATH
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated: " + ", ".join(BACKENDS))
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated: " + ", ".join(VARIANTS))
    ap.add_argument("--wait-for", metavar="FILE", help="start only once FILE exists (polled every 30 s)")
    ap.add_argument("--wait-max", type=float, default=3000, help="give up waiting after this many seconds, and run")
    ap.add_argument("--report", metavar="JSON", help="only print the tables of a saved results file")
    args = ap.parse_args()
    if args.report:
        print(report(json.loads(Path(args.report).read_text())))
        return
    if not PYTHON.exists() or not DBFORK.exists():
        sys.exit("build first: bash bench/setup-venv.sh && cargo build --release")
    variants = [v for v in VARIANTS if v in args.variants.split(",")]
    names = [n for n in args.backends.split(",") if n]
    for n in names:
        if n not in BACKENDS:
            sys.exit(f"unknown backend {n}")
    meta = {"reps": args.reps, "notes": [], "skipped": {}}
    if args.wait_for:
        seen, waited = wait_for(args.wait_for, args.wait_max)
        meta["waited_for"] = {"file": args.wait_for, "appeared": seen, "seconds": round(waited)}
        if not seen:
            log(f"{args.wait_for} did not appear in {args.wait_max:.0f} s: running anyway")
    for n in list(names):
        why = available(n)
        if why:
            log(f"skipping {n}: {why}")
            meta["skipped"][n] = why
            names.remove(n)
    meta.update(versions())
    meta["servers"] = server_versions(names)
    meta["started"] = time.strftime("%Y-%m-%d %H:%M:%S")
    meta["load_before"] = os.getloadavg()
    work = Path(f"/tmp/benchdj_{os.getpid()}")
    plugdir = work / "plugins"
    plugdir.mkdir(parents=True, exist_ok=True)
    (plugdir / "benchdj_first.py").write_text(FIRST_PLUGIN)
    (plugdir / "benchdj_runner.py").write_text(DJANGO_RUNNER)
    (plugdir / "benchdj_dbfork.py").write_text(DBFORK_RUNNER)
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    RESULTS_PATH = out_dir / f"django-{time.strftime('%Y%m%d-%H%M%S')}.json"
    results = {"meta": meta, "warmup": {}, "runs": {}}
    log(f"work folder {work}; raw results: {RESULTS_PATH.relative_to(ROOT)}")
    def on_signal(signum, _frame):
        meta.setdefault("signals", []).append(f"{signal.Signals(signum).name} at {time.strftime('%H:%M:%S')}")
        log(f"got {signal.Signals(signum).name}: stopping")
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    backends = []
    leftovers = []
    try:
        for n in names:
            backends.append(make_backend(n, work))
        bench(backends, variants, args.reps, plugdir, results)
    finally:
        save(results)
        log("cleaning up")
        for b in backends:
            try:
                leftovers += b.cleanup()
            except Exception as e:  # noqa: BLE001 - report and go on with the others
                leftovers.append(f"{b.name}: cleanup failed: {e}")
        shutil.rmtree(work, ignore_errors=True)
        if work.exists():
            leftovers.append(str(work))
        meta["leftovers"] = leftovers
        meta["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        meta["load_after"] = os.getloadavg()
        save(results)
        log(f"raw results: {RESULTS_PATH.relative_to(ROOT)}")
        if leftovers:
            log("could not drop: " + ", ".join(leftovers))
    print(report(results))


if __name__ == "__main__":
    main()
