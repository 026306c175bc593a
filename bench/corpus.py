#!/usr/bin/env python3
"""The corpus: dbfork on REAL open-source Django test suites.

Each suite below is a pinned PyPI release whose sdist ships its tests. For each
suite and backend (SQLite, PostgreSQL) this script runs the project's own test
command serially (the reference) and under `dbfork run -j 2 -- <the same
command>` zero-config (no --setup, no --input), cold (a fresh copy of the
project, no template: a new `.dbfork/`, and on PostgreSQL the templates of this
script's earlier runs of the suite dropped) and warm (the same copy again, the
template already built), and records:

  worked      dbfork ran the suite and exited with the serial run's exit code
  error       the first error line of dbfork's output when it did not
  outcomes    the per-test outcome sets, serial against dbfork: missing tests,
              extra tests, tests whose outcome differs (serial: pytest's
              --junitxml, or for Django's runner an outcome recorder loaded
              through bench/corpus/hook/sitecustomize.py; dbfork: --json)
  times       wall seconds serial / dbfork cold / dbfork warm, and the ratios
              (median over --reps)

    cargo build --release --bin dbfork         # the binary embeds python/ at build time
    python3 bench/corpus.py                     # every suite, sqlite and postgres
    python3 bench/corpus.py --suites filter,axes --backends sqlite --reps 3
    python3 bench/corpus.py --check --suites axes,treebeard,modelutils   # for scripts/test
    python3 bench/corpus.py --list              # the table of suites
    python3 bench/corpus.py --report bench/results/corpus-<stamp>.json   # re-print a table

Options: --suites a,b (default all), --backends sqlite,postgres (default both;
a suite without PostgreSQL support skips it), --reps N (default 1), --dbfork
PATH (default target/release/dbfork), --cache DIR (default .venv/corpus/ in the
repository; env CORPUS_CACHE), --pg URL (default
postgres://postgres@127.0.0.1:5432/postgres; env CORPUS_PG), --jobs N (dbfork's
-j, default 2), --timeout SECONDS (per run, default 1200), --out FILE (default
bench/results/corpus-<stamp>.json), --install-only (download and make the
venvs, run nothing).

--check runs, for each given suite and backend, the serial reference once and
one dbfork run (cold: a fresh copy), prints one line each and exits 1 when
dbfork failed or its outcome set differs from the serial one (no results file
unless --out is given).

Setup, all of it cached under --cache and reused while it matches:
  sdist/<suite>/  `pip download --no-deps --no-binary :all: NAME==VERSION`
  src/<suite>/    the unpacked sdist (read-only: every run works on a copy)
  venv/<suite>/   python3 -m venv + the pinned requirements + the project
                  itself (`pip install <src>`); remade when the pins change
  runs/<suite>/   the copies the runs work in, logs/ their output, reports/
                  the JUnit and JSON reports

A suite whose settings hard-code HOST "localhost" (django-import-export) runs on
PostgreSQL only when --pg is a server on localhost TCP; with another --pg (a
socket directory, as scripts/test's throwaway server) that row is skipped and
says why, so the suite never tests on, or leaves databases on, a server it was
not given.

PostgreSQL: the variables that make each project's test settings choose
PostgreSQL are in the suite's `postgres` entry; where the settings read the
database NAME from a variable it is set to corpus_<pid>_<suite>, so Django's
runner makes test_corpus_<pid>_<suite>. Where the NAME is hard-coded
(treebeard, simple-history, import-export) the test database names are listed
in `pg_test_dbs`; a run refuses to start when one of them exists already and was
not made by this script. Every database a serial run leaves behind that was not
there before (and is one of those names) is dropped after the run, and the
names are kept in <cache>/pg-ledger.json until dropped, so an interrupted run's
leftovers are dropped by the next one. dbfork's templates of this script's runs
(matched by the run_id of each dbfork --json report) are dropped with
`dbfork db drop` at the end of each suite. Nothing else is ever dropped.

Standard library only; the suites' own packages live in their venvs.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HOOK = REPO / "bench" / "corpus" / "hook"
PID = os.getpid()

# The pins every suite shares (the newest versions dbfork supports,
# python/requirements-test.txt).
DJANGO = "Django==5.2.19"
PYTEST = "pytest==9.2.0"
PYTEST_DJANGO = "pytest-django==4.14.0"
PSYCOPG = "psycopg[binary]==3.3.9"
# {pghost}, {pgport} and {pguser} in env values are --pg's server (a socket
# directory for a host, as `dbfork db ephemeral` gives: HOST for Django).


@dataclass
class Suite:
    """One pinned project of the corpus."""

    name: str  # short key (--suites)
    dist: str  # PyPI name
    version: str
    runner: str  # "pytest" or "django" (how the serial outcomes are read)
    cmd: list  # the test command; "python" is the venv's python
    why: str  # why it is in the corpus: the shape it gives dbfork
    requires: list = field(default_factory=list)  # pinned, besides DJANGO
    env: dict = field(default_factory=dict)  # for every backend
    sqlite: dict = None  # extra env selecting SQLite; None: not supported
    postgres: dict = None  # extra env selecting PostgreSQL; None: not supported
    pg_cmd: list = None  # a different command on PostgreSQL (an option, not a variable)
    pg_test_dbs: list = field(default_factory=list)  # hard-coded test database names
    # The settings hard-code HOST "localhost": only a --pg server on localhost
    # TCP is the one the suite reaches (else it would test on whatever
    # listens on localhost, and leave its databases there).
    pg_localhost_only: bool = False
    tests: str = ""  # rough count, for the table
    estimate: str = ""  # rough serial wall time here


def pg_name(suite):
    return f"corpus_{PID}_{suite}"


def pg_server(url):
    """host, port and user of a postgres:// URL (``?host=/socket/dir`` and
    ``&port=`` as `dbfork db ephemeral` writes them)."""
    from urllib.parse import parse_qs, unquote, urlsplit

    parts = urlsplit(url)
    query = parse_qs(parts.query)
    return {
        "pghost": (query.get("host") or [parts.hostname or "127.0.0.1"])[0],
        "pgport": str((query.get("port") or [parts.port or 5432])[0]),
        "pguser": unquote(parts.username or "postgres"),
    }


def on_localhost_tcp(url):
    """Whether a postgres:// URL is a server on localhost over TCP (not a
    socket directory, not another host)."""
    host = pg_server(url)["pghost"]
    return host in ("localhost", "127.0.0.1", "::1")


def pg_placeholders(url, db):
    """The values of the placeholders of the suites' PostgreSQL variables."""
    from urllib.parse import quote

    server = pg_server(url)
    host = server["pghost"]
    # dj-database-url takes a socket directory percent-encoded as the host.
    netloc_host = quote(host, safe="") if host.startswith("/") else host
    server["pgurl"] = "postgres://%s@%s:%s/%s" % (server["pguser"], netloc_host, server["pgport"], db)
    server["db"] = db
    return server


# {db} in env values is replaced by corpus_<pid>_<suite>.
SUITES = [
    Suite(
        name="filter",
        dist="django-filter",
        version="26.2",
        runner="django",
        # tox.ini: coverage run ./runtests.py --testrunner xmlrunner...XMLTestRunner
        cmd=["python", "runtests.py"],
        why="Django's runner through a runtests.py that calls execute_from_command_line; "
        "test-only models in tests/models.py with no migrations; :memory: SQLite",
        requires=["djangorestframework==3.16.1", "Markdown==3.10", "django-crispy-forms==2.5",
                  "pytz==2025.2", "coverage==7.13.0", "unittest-xml-reporting==3.2.0"],
        sqlite={},
        tests="520", estimate="1.3 s",
    ),
    Suite(
        name="constance",
        dist="django-constance",
        version="4.4.0",
        runner="django",
        # tox.ini [unittest]: django-admin test -v2, PYTHONPATH={toxinidir}
        cmd=["django-admin", "test", "-v2"],
        why="django-admin test with DJANGO_SETTINGS_MODULE from the environment; two "
        ":memory: aliases (default, secondary); async tests; constance's own migrations",
        requires=["redis==7.1.0"],
        env={"DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONPATH": ".",
             "PYTHONDONTWRITEBYTECODE": "1"},
        sqlite={},
        tests="154", estimate="18 s",
    ),
    Suite(
        name="constance-pytest",
        dist="django-constance",
        version="4.4.0",
        runner="pytest",
        # tox.ini [pytest]: pytest --ignore=.tox --disable-pytest-warnings {toxinidir}
        cmd=["python", "-m", "pytest", "-q", "-p", "no:cacheprovider",
             "--disable-pytest-warnings", "."],
        why="the same project under pytest-django: settings from DJANGO_SETTINGS_MODULE in "
        "the environment (no ini key), the project's own pytest11 plugin "
        "(constance.test.pytest), a django-admin-style example/ directory collected too",
        requires=["redis==7.1.0", PYTEST, PYTEST_DJANGO],
        env={"DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONPATH": ".",
             "PYTHONDONTWRITEBYTECODE": "1"},
        sqlite={},
        tests="162", estimate="17 s",
    ),
    Suite(
        name="axes",
        dist="django-axes",
        version="8.3.1",
        runner="pytest",
        # pyproject [tool.tox]: pytest (addopts: --cov axes ...)
        cmd=["python", "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        why="pytest-django with DJANGO_SETTINGS_MODULE in [tool.pytest.ini_options], "
        "pytest-cov in addopts, axes' real migrations on :memory: SQLite",
        requires=[PYTEST, PYTEST_DJANGO, "pytest-cov==7.0.0", "pytest-subtests==0.15.0",
                  "django-ipware==7.0.1"],
        sqlite={},
        tests="351", estimate="34 s",
    ),
    Suite(
        name="celerybeat",
        dist="django-celery-beat",
        version="2.9.0",
        runner="pytest",
        # setup.cfg [tool:pytest]: testpaths = t/unit/, DJANGO_SETTINGS_MODULE = t.proj.settings
        cmd=["python", "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        why="pytest-django, a file SQLite NAME (BASE_DIR/db.sqlite3) with OPTIONS.timeout, "
        "real migrations (django_celery_beat's and t/proj's), celery's pytest fixtures, "
        "transactional tests",
        # pytest 8: pytest 9 refuses the marks this release puts on fixtures
        # ("Marks cannot be applied to fixtures"); its requirements say pytest<9
        requires=["pytest==8.4.2", "pytest-django==4.11.1", "pytest-timeout==2.4.0", "ephem==4.2"],
        sqlite={},
        tests="128", estimate="88 s",
    ),
    Suite(
        name="treebeard",
        dist="django-treebeard",
        version="7.0.3",
        runner="pytest",
        # no tox.ini in the sdist; the project's CI runs `pytest` at the top
        cmd=["python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        why="conftest.py sets DJANGO_SETTINGS_MODULE at import and calls django.setup() in "
        "pytest_configure; a session fixture connects a pre_migrate handler that creates the "
        "ltree extension on PostgreSQL; tests/migrations; no pytest ini at all",
        requires=[PYTEST, PYTEST_DJANGO],
        # conftest.py sets DJANGO_SETTINGS_MODULE only after pytest-django's early
        # django.setup() would have used it, and imports models at import time:
        # without the variable the serial run fails (AppRegistryNotReady)
        env={"DJANGO_SETTINGS_MODULE": "tests.settings"},
        sqlite={},
        postgres={"DATABASE_ENGINE": "psql", "DATABASE_USER_POSTGRES": "{pguser}",
                  "DATABASE_HOST": "{pghost}", "DATABASE_PORT_POSTGRES": "{pgport}"},
        pg_test_dbs=["test_treebeard"],  # NAME "treebeard" is hard-coded
        tests="2436 / 3051 on PG", estimate="45 s / 94 s on PG",
    ),
    Suite(
        name="modelutils",
        dist="django-model-utils",
        version="5.0.0",
        runner="pytest",
        # tox.ini: python -m pytest
        cmd=["python", "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        why="pytest-django, PostgreSQL by default (SQLITE=1 selects SQLite with no NAME); "
        "POSTGRES_* variables; test-only models in tests/models.py without migrations",
        requires=[PYTEST, PYTEST_DJANGO, "time-machine==2.19.0"],
        sqlite={"SQLITE": "1"},
        postgres={"POSTGRES_DB": "{db}", "POSTGRES_HOST": "{pghost}",
                  "POSTGRES_USER": "{pguser}", "POSTGRES_PORT": "{pgport}"},
        tests="350", estimate="2 s",
    ),
    Suite(
        name="drf",
        dist="djangorestframework",
        version="3.18.3",
        runner="pytest",
        # the project's CI: runtests.py (not in the sdist) -> pytest; pyproject [tool.pytest]
        cmd=["python", "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        why="settings.configure() in conftest's pytest_configure (no settings module); "
        "DATABASE_URL via dj-database-url; two aliases naming the same database; "
        "--no-migrations in addopts; pytest 9's native [tool.pytest] table; big suite",
        requires=[PYTEST, PYTEST_DJANGO, "dj-database-url==3.1.0", "importlib-metadata==8.7.0"],
        sqlite={},
        postgres={"DATABASE_URL": "{pgurl}"},
        tests="1664", estimate="10 s / 14 s on PG",
    ),
    Suite(
        name="extensions",
        dist="django-extensions",
        version="4.1",
        runner="pytest",
        # tox.ini: make test -> pytest django_extensions tests
        cmd=["python", "-m", "pytest", "-q", "-p", "no:cacheprovider",
             "django_extensions", "tests"],
        why="--doctest-modules and --nomigrations in addopts, DJANGO_EXTENSIONS_DATABASE_* "
        "variables, management commands run from tests, many test apps",
        requires=[PYTEST, PYTEST_DJANGO, "pytest-cov==7.0.0", "factory-boy==3.3.3",
                  "shortuuid==1.0.13", "Werkzeug==3.1.3", "Pygments==2.19.2", "aiosmtpd==1.4.6"],
        sqlite={},
        postgres={"DJANGO_EXTENSIONS_DATABASE_ENGINE": "django.db.backends.postgresql",
                  "DJANGO_EXTENSIONS_DATABASE_NAME": "{db}",
                  "DJANGO_EXTENSIONS_DATABASE_USER": "{pguser}",
                  "DJANGO_EXTENSIONS_DATABASE_HOST": "{pghost}",
                  "DJANGO_EXTENSIONS_DATABASE_PORT": "{pgport}"},
        tests="529", estimate="17 s",
    ),
    Suite(
        name="simplehistory",
        dist="django-simple-history",
        version="3.13.0",
        runner="django",
        # tox.ini: runtests.py / runtests.py --database=postgres
        cmd=["python", "runtests.py"],
        pg_cmd=["python", "runtests.py", "--database=postgres"],
        why="a runtests.py that settings.configure()s and calls DiscoverRunner().run_tests() "
        "TWICE in one process; two aliases (default, other); MIGRATION_MODULES disables "
        "every migration; a custom AUTH_USER_MODEL",
        requires=[],
        sqlite={},
        postgres={},
        pg_test_dbs=["test_test", "test_other"],  # NAME "test" / "other" hard-coded
        tests="363", estimate="23 s / 34 s on PG",
    ),
    Suite(
        name="importexport",
        dist="django-import-export",
        version="4.4.3",
        runner="django",
        # tox.ini: python -W error::DeprecationWarning ... ./tests/manage.py test core
        cmd=["python", "-W", "error::DeprecationWarning", "-W",
             "error::PendingDeprecationWarning", "tests/manage.py", "test", "core"],
        why="manage.py in a subdirectory with PYTHONPATH=tests, DeprecationWarning as error, "
        "settings that pick the database from IMPORT_EXPORT_TEST_TYPE and an empty SQLite "
        "NAME when 'test' is in argv, the core app's real migrations and fixtures",
        requires=["tablib[xlsx,xls,ods,yaml,html]==3.9.0", "chardet==5.2.0", "pytz==2025.2",
                  "memory-profiler==0.61.0", "django-extensions==4.1"],
        env={"PYTHONPATH": "tests"},
        sqlite={},
        postgres={"IMPORT_EXPORT_TEST_TYPE": "postgres", "IMPORT_EXPORT_POSTGRESQL_USER": "{pguser}",
                  "IMPORT_EXPORT_POSTGRESQL_PASSWORD": "", "IMPORT_EXPORT_POSTGRESQL_HOST": "{pghost}",
                  "IMPORT_EXPORT_POSTGRESQL_PORT": "{pgport}"},
        pg_test_dbs=["test_import_export"],  # NAME "import_export" hard-coded
        pg_localhost_only=True,  # HOST "localhost" hard-coded
        tests="723 / 728 on PG", estimate="5 s / 11 s on PG",
    ),
]
BY_NAME = {s.name: s for s in SUITES}


# ---------------------------------------------------------------- utilities

def extract_tar(t, dest):
    """Unpacks sdist `t` into `dest`, refusing what could land outside it.

    tarfile's `filter="data"` does exactly that, but only from Python 3.11.4
    (Debian 12's python3 is 3.11.2): there, the same checks by hand.
    """
    if hasattr(tarfile, "data_filter"):
        t.extractall(dest, filter="data")
        return
    root = Path(dest).resolve()
    for member in t.getmembers():
        target = (root / member.name).resolve()
        if root not in target.parents and target != root:
            raise SystemExit(f"refusing {member.name!r}: it would land outside {root}")
        if member.issym() or member.islnk():
            link = (target.parent / member.linkname).resolve()
            if root not in link.parents:
                raise SystemExit(f"refusing link {member.name!r} -> {member.linkname!r}")
        if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
            raise SystemExit(f"refusing {member.name!r}: not a file, directory or link")
    t.extractall(dest)

def log(msg):
    print(msg, file=sys.stderr, flush=True)


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def first_error_line(text):
    """The line of dbfork's output that says what went wrong."""
    lines = [l.rstrip() for l in text.splitlines() if l.strip()]
    pats = [r"^error\b", r"\berror:", r"Error\b", r"\bFAILED\b", r"\bfailed\b"]
    for pat in pats:
        for l in lines:
            if re.search(pat, l):
                return l.strip()[:300]
    return (lines[-1].strip() if lines else "")[:300]


# ---------------------------------------------------------------- setup

class Env:
    def __init__(self, args):
        self.cache = Path(args.cache).resolve()
        self.dbfork = str(Path(args.dbfork).resolve())
        self.pg = args.pg
        self.jobs = args.jobs
        self.timeout = args.timeout
        self.ledger_path = self.cache / "pg-ledger.json"

    # --- sources

    def source(self, s):
        """Download (once) and unpack (once) the suite's sdist; its directory."""
        key = f"{s.dist}-{s.version}"
        dest = self.cache / "src" / key
        if (dest / ".corpus-unpacked").exists():
            return dest
        sdir = self.cache / "sdist" / key
        sdir.mkdir(parents=True, exist_ok=True)
        if not any(sdir.iterdir()):
            log(f"[{s.name}] pip download {s.dist}=={s.version}")
            sh([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                f"{s.dist}=={s.version}", "-d", str(sdir)])
        archive = next(sdir.iterdir())
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as z:
                z.extractall(tmp)
        else:
            with tarfile.open(archive) as t:
                extract_tar(t, tmp)
        (top,) = list(tmp.iterdir())
        shutil.rmtree(dest, ignore_errors=True)
        top.rename(dest)
        tmp.rmdir()
        (dest / ".corpus-unpacked").write_text(archive.name + "\n")
        return dest

    # --- venvs

    def requirements(self, s, backends):
        reqs = [DJANGO] + list(s.requires)
        if s.postgres is not None:
            reqs.append(PSYCOPG)  # always: the stamp stays the same whatever --backends
        return reqs

    def venv(self, s, backends):
        """The suite's venv, made (or remade when its pins changed) on demand."""
        src = self.source(s)
        reqs = self.requirements(s, backends)
        # One venv per project (constance and constance-pytest share theirs
        # only if their pins are the same: the key holds the suite name).
        v = self.cache / "venv" / s.name
        stamp = json.dumps({"src": str(src), "reqs": reqs, "python": sys.version}, sort_keys=True)
        if (v / ".corpus-stamp").exists() and (v / ".corpus-stamp").read_text() == stamp:
            return v
        log(f"[{s.name}] making venv {v}")
        shutil.rmtree(v, ignore_errors=True)
        sh([sys.executable, "-m", "venv", str(v)])
        py = str(v / "bin" / "python")
        sh([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", *reqs, str(src)])
        (v / ".corpus-stamp").write_text(stamp)
        return v

    # --- PostgreSQL bookkeeping (psql: the server's own client)

    def psql(self, sql):
        out = subprocess.run(["psql", self.pg, "-XAtqc", sql], capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"psql failed: {out.stderr.strip()}")
        return out.stdout

    def databases(self):
        return set(self.psql("SELECT datname FROM pg_database").split())

    def ledger(self):
        try:
            return set(json.loads(self.ledger_path.read_text()))
        except (OSError, ValueError):
            return set()

    def save_ledger(self, names):
        self.ledger_path.parent.mkdir(parents=True, exist_ok=True)
        self.ledger_path.write_text(json.dumps(sorted(names)))

    def drop_databases(self, names):
        for n in sorted(names):
            log(f"  dropping database {n} (made by this script's run)")
            self.psql(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)')

    def drop_ledger(self):
        """Drop what an interrupted earlier run of this script left behind."""
        left = self.ledger() & self.databases()
        if left:
            self.drop_databases(left)
        self.save_ledger(set())

    def dbfork_templates(self, run_ids, names=()):
        out = subprocess.run([self.dbfork, "db", "list", "--db", self.pg, "--json"],
                             capture_output=True, text=True)
        if out.returncode != 0:
            log(f"  dbfork db list failed: {out.stderr.strip()}")
            return []
        try:
            entries = json.loads(out.stdout)
        except ValueError:
            return []
        return [e["name"] for e in entries
                if "template" in str(e.get("kind", "")).lower()
                and (e.get("name") in names or (e.get("run_id") and e.get("run_id") in run_ids))]

    def drop_templates(self, run_ids, templates=()):
        """Drop the templates this script's dbfork runs made: the names their
        output printed (a template's registry entry has no run_id), or a run_id
        of their --json reports."""
        names = self.dbfork_templates(run_ids, set(templates))
        if names:
            log(f"  dbfork db drop {' '.join(names)}")
            subprocess.run([self.dbfork, "db", "drop", "--db", self.pg, *names],
                           capture_output=True, text=True)


# ---------------------------------------------------------------- outcomes

def junit_outcomes(path):
    """{classname::name: outcome} of a JUnit XML file (pytest's or dbfork's)."""
    rank = {"passed": 0, "skipped": 1, "failed": 3, "error": 4}
    out = {}
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    for case in root.iter("testcase"):
        key = f"{case.get('classname', '')}::{case.get('name', '')}"
        tags = {child.tag for child in case}
        if "error" in tags:
            o = "error"
        elif "failure" in tags:
            o = "failed"
        elif "skipped" in tags:
            o = "skipped"
        else:
            o = "passed"
        if key not in out or rank[o] > rank[out[key]]:
            out[key] = o
    return out


def normalize_django_id(test_id):
    """A unittest id from the serial recorder or dbfork's report, made comparable."""
    return test_id.strip()


def dbfork_json_outcomes(path, runner):
    """{test id: outcome} of dbfork's --json report (Django's runner: unittest ids)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    out = {}
    for t in data.get("tests", []):
        o = t.get("outcome", "")
        o = {"timed_out": "failed", "crashed": "failed", "x_failed": "xfailed",
             "x_passed": "xpassed"}.get(o, o)
        tid = t.get("id", "")
        if runner == "django":
            tid = normalize_django_id(django_id_of(t))
        out[tid] = o
    for cid in data.get("collect_errors", {}) or {}:
        out[f"<collect error> {cid}"] = "error"
    return out


def django_id_of(record):
    """dbfork's record of a Django test -> unittest's `module.Class.method`."""
    tid = record.get("id", "")
    if "::" in tid:  # file::Class::method
        parts = tid.split("::")
        mod = parts[0]
        if mod.endswith(".py"):
            mod = mod[:-3].replace("/", ".")
        return ".".join([mod] + parts[1:])
    return tid


def compare(serial, dbf):
    """The differences between two outcome maps (None: a side has no report)."""
    if serial is None or dbf is None:
        return {"comparable": False}
    missing = sorted(set(serial) - set(dbf))
    extra = sorted(set(dbf) - set(serial))
    changed = sorted(k for k in set(serial) & set(dbf) if serial[k] != dbf[k])
    return {
        "comparable": True,
        "serial_tests": len(serial),
        "dbfork_tests": len(dbf),
        "missing": missing[:50], "n_missing": len(missing),
        "extra": extra[:50], "n_extra": len(extra),
        "changed": [[k, serial[k], dbf[k]] for k in changed[:50]], "n_changed": len(changed),
        "same": not (missing or extra or changed),
    }


def first_difference(diff):
    """One line naming the first outcome difference of a run that worked."""
    if diff["changed"]:
        k, a, b = diff["changed"][0]
        return f"outcome differs: {k} {a} serially, {b} under dbfork"
    if diff["missing"]:
        return f"not in dbfork's report: {diff['missing'][0]}"
    return f"only in dbfork's report: {diff['extra'][0]}"


def counts(outcomes):
    c = {}
    for o in (outcomes or {}).values():
        c[o] = c.get(o, 0) + 1
    return c


# ---------------------------------------------------------------- runs

class Runner:
    def __init__(self, env, s, backend):
        self.env, self.s, self.backend = env, s, backend
        self.venv = env.venv(s, [backend])
        self.src = env.source(s)
        self.work = env.cache / "runs" / s.name / backend
        self.logs = env.cache / "logs" / s.name
        self.reports = env.cache / "reports" / s.name
        for d in (self.work, self.logs, self.reports):
            d.mkdir(parents=True, exist_ok=True)
        self.run_ids = set()
        self.templates = set()  # names dbfork printed (built/reusing template NAME)

    def command(self):
        cmd = list(self.s.pg_cmd if (self.backend == "postgres" and self.s.pg_cmd) else self.s.cmd)
        if cmd[0] in ("python", "django-admin"):
            cmd[0] = str(self.venv / "bin" / cmd[0])
        return cmd

    def environ(self, serial_outcomes=None):
        e = dict(os.environ)
        for k in ("DATABASE_URL", "DJANGO_SETTINGS_MODULE", "PYTHONPATH", "VIRTUAL_ENV",
                  "PYTEST_ADDOPTS", "DBFORK_DB"):
            e.pop(k, None)
        e["PATH"] = f"{self.venv / 'bin'}:{e.get('PATH', '')}"
        e["VIRTUAL_ENV"] = str(self.venv)
        e["CI"] = "1"  # dbfork: plain lines, no live bar
        extra = dict(self.s.env)
        extra.update((self.s.sqlite if self.backend == "sqlite" else self.s.postgres) or {})
        values = pg_placeholders(self.env.pg, pg_name(self.s.name))
        for k, v in extra.items():
            for name, value in values.items():
                v = v.replace("{%s}" % name, value)
            e[k] = v
        if serial_outcomes:
            e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HOOK), e.get("PYTHONPATH")]))
            e["CORPUS_OUTCOMES"] = str(serial_outcomes)
        return e

    def fresh_copy(self, label):
        d = self.work / label
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(self.src, d, symlinks=True,
                        ignore=shutil.ignore_patterns(".dbfork", "__pycache__", ".corpus-unpacked"))
        return d

    def execute(self, label, cmd, cwd, env):
        logf = self.logs / f"{self.backend}-{label}.log"
        t0 = time.monotonic()
        with open(logf, "w") as f:
            f.write(f"$ cd {cwd} && {' '.join(cmd)}\n")
            f.flush()
            try:
                p = subprocess.run(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT,
                                   timeout=self.env.timeout, start_new_session=True)
                rc = p.returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        wall = time.monotonic() - t0
        return rc, wall, logf.read_text(errors="replace")

    # -- PostgreSQL test databases of a serial run

    def pg_guard(self):
        if self.backend != "postgres":
            return set()
        names = set(self.s.pg_test_dbs) | {f"test_{pg_name(self.s.name)}"}
        mine = self.env.ledger()
        clash = (names & self.env.databases()) - mine
        if clash:
            raise RuntimeError(f"database(s) {sorted(clash)} exist already and were not made "
                               "by this script: refusing to run (the run would use or drop them)")
        self.env.drop_databases(names & mine & self.env.databases())
        self.env.save_ledger(mine | names)
        return names

    def pg_cleanup(self, names):
        if self.backend != "postgres":
            return
        self.env.drop_databases(names & self.env.databases())
        self.env.save_ledger(self.env.ledger() - names)

    def serial(self, rep):
        cwd = self.fresh_copy("serial")
        label = f"serial-{rep}"
        cmd = self.command()
        junit = self.reports / f"{self.backend}-{label}.xml"
        outcomes_file = self.reports / f"{self.backend}-{label}.outcomes.json"
        for p in (junit, outcomes_file):
            p.unlink(missing_ok=True)
        if self.s.runner == "pytest":
            cmd = cmd + [f"--junitxml={junit}"]
            env = self.environ()
        else:
            env = self.environ(serial_outcomes=outcomes_file)
        names = self.pg_guard()
        try:
            rc, wall, out = self.execute(label, cmd, cwd, env)
        finally:
            self.pg_cleanup(names)
        if self.s.runner == "pytest":
            outcomes = junit_outcomes(junit)
        else:
            try:
                outcomes = {normalize_django_id(k): v
                            for k, v in json.loads(outcomes_file.read_text()).items()}
            except (OSError, ValueError):
                outcomes = None
        return {"rc": rc, "wall": round(wall, 2), "outcomes": outcomes,
                "tail": out.strip().splitlines()[-3:] if out.strip() else [],
                "log": str(self.logs / f"{self.backend}-{label}.log")}

    def dbfork(self, mode, rep, cwd=None):
        """mode 'cold': a fresh copy, this suite's earlier templates dropped; 'warm': cwd again."""
        if mode == "cold":
            if self.backend == "postgres":
                self.env.drop_templates(self.run_ids, self.templates)
            cwd = self.fresh_copy("dbfork")
        label = f"dbfork-{mode}-{rep}"
        rj = self.reports / f"{self.backend}-{label}.json"
        rx = self.reports / f"{self.backend}-{label}.xml"
        for p in (rj, rx):
            p.unlink(missing_ok=True)
        cmd = [self.env.dbfork, "run", "-j", str(self.env.jobs), "--json", str(rj),
               "--junit", str(rx), "--", *self.command()]
        rc, wall, out = self.execute(label, cmd, cwd, self.environ())
        try:
            self.run_ids.add(json.loads(rj.read_text()).get("run_id"))
        except (OSError, ValueError):
            pass
        if self.s.runner == "pytest":
            outcomes = junit_outcomes(rx)
        else:
            outcomes = dbfork_json_outcomes(rj, "django")
        self.templates.update(re.findall(r"template (dbfork_tpl_\w+)", out))
        built = re.findall(r"(built template[^\n]*|reus\w+ template[^\n]*|restored template[^\n]*)", out)
        return {"rc": rc, "wall": round(wall, 2), "outcomes": outcomes, "cwd": cwd,
                "template": built[:2], "error": first_error_line(out),
                "tail": out.strip().splitlines()[-3:] if out.strip() else [],
                "log": str(self.logs / f"{self.backend}-{label}.log")}

    def finish(self):
        if self.backend == "postgres":
            self.env.drop_templates(self.run_ids, self.templates)


def summarize(s, backend, serials, colds, warms):
    """One result row from the runs of a (suite, backend)."""
    ref = serials[0]
    row = {"suite": s.name, "dist": s.dist, "version": s.version, "backend": backend,
           "runner": s.runner, "command": " ".join(s.pg_cmd if backend == "postgres" and s.pg_cmd
                                                    else s.cmd),
           "serial_rc": ref["rc"], "serial_counts": counts(ref["outcomes"]),
           "serial_wall": [r["wall"] for r in serials], "serial_log": ref["log"],
           "serial_tail": ref["tail"]}
    runs = {}
    worked_all = True
    for mode, rs in (("cold", colds), ("warm", warms)):
        if not rs:
            continue
        r = rs[0]
        diff = compare(ref["outcomes"], r["outcomes"])
        worked = r["rc"] == ref["rc"] and r["rc"] not in ("timeout",)
        runs[mode] = {"rc": r["rc"], "wall": [x["wall"] for x in rs], "worked": worked,
                      "same_outcomes": diff.get("same", False), "diff": diff,
                      "counts": counts(r["outcomes"]), "template": r["template"],
                      "error": None if worked and diff.get("same") else (
                          r["error"] if not worked or not diff.get("comparable")
                          else first_difference(diff)),
                      "tail": r["tail"], "log": r["log"]}
        worked_all = worked_all and worked and diff.get("same", False)
    row["dbfork"] = runs
    row["ok"] = worked_all
    sw = statistics.median(row["serial_wall"])
    for mode in runs:
        row[f"{mode}_wall"] = statistics.median(runs[mode]["wall"])
        row[f"{mode}_ratio"] = round(row[f"{mode}_wall"] / sw, 2) if sw else None
    row["serial_wall_median"] = sw
    return row


def run_suite(env, s, backend, reps, check=False):
    r = Runner(env, s, backend)
    serials, colds, warms = [], [], []
    try:
        for rep in range(reps):
            log(f"[{s.name}/{backend}] serial #{rep + 1}")
            serials.append(r.serial(rep))
            log(f"    rc={serials[-1]['rc']} {serials[-1]['wall']:.1f}s "
                f"{counts(serials[-1]['outcomes'])}")
            log(f"[{s.name}/{backend}] dbfork cold #{rep + 1}")
            c = r.dbfork("cold", rep)
            colds.append(c)
            log(f"    rc={c['rc']} {c['wall']:.1f}s {counts(c['outcomes'])} {c['template'][:1]}")
            if check:
                continue
            log(f"[{s.name}/{backend}] dbfork warm #{rep + 1}")
            w = r.dbfork("warm", rep, cwd=c["cwd"])
            warms.append(w)
            log(f"    rc={w['rc']} {w['wall']:.1f}s {counts(w['outcomes'])} {w['template'][:1]}")
    finally:
        r.finish()
    return summarize(s, backend, serials, colds, warms)


# ---------------------------------------------------------------- output

def fmt_counts(c):
    order = ["passed", "failed", "error", "skipped", "xfailed", "xpassed", "not_run"]
    return " ".join(f"{c[k]}{k[0] if k != 'not_run' else 'n'}" for k in order if c.get(k)) or "-"


def table(rows):
    out = ["| suite | backend | tests (serial) | serial s | dbfork cold s (x) | dbfork warm s (x) "
           "| worked | outcomes same | first error |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped_reason" in r:
            out.append(f"| {r['suite']} {r.get('version', '')} | {r['backend']} | - | - | - | - | "
                       f"- | - | not run: {r['skipped_reason']} |")
            continue
        d = r["dbfork"]

        def cell(mode):
            if mode not in d:
                return "-"
            return f"{r[mode + '_wall']:.1f} ({r[mode + '_ratio']})"

        worked = "/".join("y" if d[m]["worked"] else f"n (rc {d[m]['rc']} vs {r['serial_rc']})"
                          for m in ("cold", "warm") if m in d)
        same = []
        for m in ("cold", "warm"):
            if m not in d:
                continue
            df = d[m]["diff"]
            if not df.get("comparable"):
                same.append("no report")
            elif df["same"]:
                same.append("y")
            else:
                same.append(f"n (-{df['n_missing']} +{df['n_extra']} ~{df['n_changed']})")
        err = next((d[m]["error"] for m in ("cold", "warm") if m in d and d[m]["error"]), "")
        err = err.replace("|", "\\|")[:140]
        out.append(f"| {r['suite']} {r['version']} | {r['backend']} | "
                   f"{fmt_counts(r['serial_counts'])} (rc {r['serial_rc']}) | "
                   f"{r['serial_wall_median']:.1f} | {cell('cold')} | {cell('warm')} | {worked} | "
                   f"{' / '.join(same)} | {err} |")
    return "\n".join(out)


def list_suites():
    print("| suite | release | runner | command | PostgreSQL selected by | tests | serial |")
    print("|---|---|---|---|---|---|---|")
    for s in SUITES:
        pg = "-" if s.postgres is None else (
            " ".join(f"{k}={v}" for k, v in s.postgres.items()) +
            (f" + `{' '.join(s.pg_cmd[1:])}`" if s.pg_cmd else "")) or "`--database=postgres`"
        print(f"| {s.name} | {s.dist} {s.version} | {s.runner} | `{' '.join(s.cmd)}` | {pg} | "
              f"{s.tests} | {s.estimate} |")


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suites", default="")
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--dbfork", default=str(REPO / "target" / "release" / "dbfork"))
    ap.add_argument("--cache", default=os.environ.get("CORPUS_CACHE", str(REPO / ".venv" / "corpus")))
    ap.add_argument("--pg", default=os.environ.get("CORPUS_PG",
                                                   "postgres://postgres@127.0.0.1:5432/postgres"))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=1200)
    ap.add_argument("--out", default="")
    ap.add_argument("--report", default="", help="print the table of a saved results file")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--install-only", action="store_true")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args()

    if args.list:
        list_suites()
        return 0
    if args.report:
        print(table(json.loads(Path(args.report).read_text())["rows"]))
        return 0

    names = [n for n in args.suites.split(",") if n] or [s.name for s in SUITES]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        ap.error(f"unknown suite(s) {unknown}; known: {', '.join(BY_NAME)}")
    backends = [b for b in args.backends.split(",") if b]
    if set(backends) - {"sqlite", "postgres"}:
        ap.error("--backends: sqlite and/or postgres")
    env = Env(args)
    env.cache.mkdir(parents=True, exist_ok=True)

    if args.install_only:
        for n in names:
            env.venv(BY_NAME[n], backends)
        return 0
    if not Path(env.dbfork).exists():
        ap.error(f"no dbfork binary at {env.dbfork}: cargo build --release --bin dbfork")
    if "postgres" in backends:
        env.drop_ledger()

    started = time.monotonic()
    rows = []
    for n in names:
        s = BY_NAME[n]
        for b in backends:
            if getattr(s, b) is None:
                continue
            if b == "postgres" and s.pg_localhost_only and not on_localhost_tcp(env.pg):
                why = "its settings hard-code HOST localhost; --pg is not a server on localhost TCP"
                log(f"[{n}/{b}] skipped: {why}")
                rows.append({"suite": n, "version": s.version, "backend": b,
                             "skipped_reason": why, "ok": True})
                continue
            try:
                rows.append(run_suite(env, s, b, 1 if args.check else args.reps, check=args.check))
            except (RuntimeError, subprocess.CalledProcessError) as e:
                log(f"[{n}/{b}] not run: {e}")
                rows.append({"suite": n, "version": s.version, "backend": b,
                             "skipped_reason": str(e)[:200], "ok": False})
    total = time.monotonic() - started

    result = {"stamp": time.strftime("%Y%m%d-%H%M%S"), "dbfork": env.dbfork, "jobs": args.jobs,
              "reps": args.reps, "check": args.check, "total_seconds": round(total, 1),
              "python": sys.version.split()[0], "rows": rows,
              "suites": {s.name: {"dist": s.dist, "version": s.version, "cmd": s.cmd,
                                  "pg_cmd": s.pg_cmd, "requires": [DJANGO] + s.requires,
                                  "postgres_env": s.postgres, "why": s.why}
                         for s in SUITES if s.name in names}}
    out = args.out or ("" if args.check else
                       str(REPO / "bench" / "results" / f"corpus-{result['stamp']}.json"))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=1, default=str) + "\n")
        log(f"results: {out}")
    print(table(rows))
    print(f"\n{len(rows)} runs in {total:.0f} s")
    if args.check:
        bad = [r for r in rows if not r.get("ok")]
        for r in bad:
            log(f"CHECK FAILED: {r['suite']}/{r['backend']}")
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
