#!/usr/bin/env python3
"""Cold-run benchmark (issue 11): `dbfork run` on the example project
(examples/shop, 726 pytest-django tests), 2 workers, where the database server
has never seen the project, beside pytest-xdist on the same kind of fresh server:
with an empty template cache, with a filled one, with a cache holding the
template of the project's previous migration state, and the incremental build
on a server that holds that previous state.

    bash bench/setup-venv.sh && cargo build --release --bin dbfork
    .venv/bin/python bench/cold.py                                  # every backend, 3 rounds
    .venv/bin/python bench/cold.py --backends sqlite --reps 1
    python3 bench/cold.py --report bench/results/cold-<stamp>.json  # re-render saved results

Options: --backends sqlite,postgres,mariadb (default all three), --reps N (rounds,
default 3), --report FILE.json (only print the tables of a saved results file).
Hidden, for smoke tests: --variants a,b (a subset of the variants below, and
`cold-no-cache`: dbfork run with no --template-cache at all, today's cold run);
--dbfork PATH (another dbfork binary than target/release/dbfork).

Every measured run gets a database server of its own that has never seen the
project (its start and stop are not timed):
  SQLite           a new temporary directory: --db sqlite:///<dir>/main.sqlite3
  PostgreSQL       `target/release/dbfork db ephemeral postgres`, one per run: it
  MariaDB          prints the server's URL on its first line and serves until
                   SIGTERM, then removes everything (`... ephemeral mariadb` alike)

Variants (from examples/shop unless said otherwise, 2 workers):
  xdist              python -m pytest -q -p no:cacheprovider -n 2, DATABASE_URL a
                     database name on the fresh server (PostgreSQL/MariaDB:
                     .../benchcold on it, pytest-django makes test_benchcold_gw<k>;
                     SQLite: <dir>/db.sqlite3, pytest-django tests in memory): the
                     reference of every ratio and of every run's outcome
  cold-empty-cache   dbfork run -j 2 --db URL --template-cache <new empty dir>
                     -- python -m pytest -q -p no:cacheprovider
                     (today's cold run plus the export of the template it builds)
  cache-filled       the same with a --template-cache filled beforehand: it should
                     say `restored template ...` instead of `built template ...`
  cache-parent       the same command in a copy of examples/shop (made once per
                     benchmark in the work folder, without .dbfork/) with ONE
                     migration more: support/migrations/<next>_benchcold_extra.py,
                     after support's latest, creates a model (BenchColdNote, only in
                     the migration, so the suite stays at 726 tests) and inserts 12
                     rows with RunPython; its --template-cache holds the unmodified
                     project's template (the cache file name is the fingerprint):
                     it should say `built template ... from ...` (incremental)
  local-incremental  the copy again, with no --template-cache, on ONE server kept
                     for the whole benchmark (not fresh) that holds the unmodified
                     project's template; dbfork's `built template NAME in X s` is
                     set against a full build's (cold-empty-cache's). After each
                     round the copy's template is dropped from that server
                     (`dbfork db drop`), so every round starts from the same state.
The filled cache is made once per backend before the rounds, unmeasured: the
cold-empty-cache command, from examples/shop, on the server that local-incremental
then keeps (still fresh at that point), so the one build both fills the cache and
puts the parent template there. (Should dbfork reject --template-cache, the build is
redone without it, for local-incremental, and the cache variants are recorded as not
run.) Each cache run gets its own copy of that directory, so every run starts
from the same filled state. Before each of its runs the copy's .dbfork/ is emptied
and examples/shop/.dbfork/timings.json put there, so both projects hand out tests in
the same order; for cache-parent that is all (a fresh CI checkout: no build history),
for local-incremental examples/shop's build history (.dbfork/templates/, where the
parent's build is recorded) goes there too: a developer's checkout with one
migration more (LOCAL_HISTORY = False: no history for either).

Measured per run: wall time of the command (from its start to its exit);
time to the first test (a small pytest plugin, `-p benchcold_trace` from a
temporary folder on PYTHONPATH, appends to a file per test process, for every test,
when its setup and its call phase start and when its call and its teardown end;
the first test starts at the earliest call phase, i.e. after its fixtures and the
database setup, as bench/django.py counts it); the template figure dbfork prints
(`built template NAME in X s`, `built template NAME ... from ...` or `restored
template NAME ... in X s`, read loosely; none: None); "last result to exit": the
command's exit minus the latest end of a test's teardown in the trace; pytest's
summary line (`726 passed in ...`) and every test's outcome (dbfork's --json
report; xdist: the tests' outcomes_plugin in pytest's controller), compared with
xdist's of the same round: a run whose counts or outcome set differ is flagged.

Every variant of a backend runs once per round, the order rotating; --reps rounds;
medians, and the ratios against the targets of issue 11: cold-empty-cache / xdist
<= 0.85, cache-filled / xdist <= 0.35, cache-parent / xdist <= 0.4, restore at
least 15x faster than the build, local incremental build <= 0.10 of a full build,
last result to exit <= 0.5 s. A Markdown report on stdout, raw JSON in
bench/results/cold-<stamp>.json. Everything lives in /tmp/benchcold_<pid>, removed
at the end with every server this benchmark started (the report says what was left).
"""
from __future__ import annotations

import argparse
import ctypes
import importlib.util
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit, urlunsplit

# bench/django.py's helpers (loaded under another name: `django` is Django's).
_spec = importlib.util.spec_from_file_location("bench_django", Path(__file__).resolve().parent / "django.py")
bd = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bd)

ROOT, PYTHON, DBFORK, SHOP = bd.ROOT, bd.PYTHON, bd.DBFORK, bd.SHOP
PYTEST, JOBS, EXPECTED_PYTEST = bd.PYTEST, bd.JOBS, bd.EXPECTED_PYTEST
log, sh, med, fmt, rotate = bd.log, bd.sh, bd.med, bd.f, bd.rotate

CACHE_FLAG = "--template-cache"
BACKENDS = ["sqlite", "postgres", "mariadb"]
VARIANTS = ["xdist", "cold-empty-cache", "cache-filled", "cache-parent", "local-incremental"]
HIDDEN_VARIANTS = ["cold-no-cache"]
# What dbfork should say about the template in each variant.
EXPECTED_TEMPLATE = {"cold-empty-cache": "built", "cold-no-cache": "built", "cache-filled": "restored",
                     "cache-parent": "built-from", "local-incremental": "built-from"}
ON_COPY = {"cache-parent", "local-incremental"}  # run in the project copy with the extra migration
TARGETS = {"cold-empty-cache": 0.85, "cache-filled": 0.35, "cache-parent": 0.4}
RESTORE_TARGET = 15.0      # restored at least 15x faster than built
INCREMENTAL_TARGET = 0.10  # local incremental build <= 0.10 of a full build
EXIT_TARGET = 0.5          # last result to exit, seconds
RUN_TIMEOUT = 1800         # one command; then SIGTERM, and SIGKILL 60 s later
SERVER_START_TIMEOUT = 180
# local-incremental is a developer's checkout with one migration more: its .dbfork/ has the
# build history of examples/shop (where the parent was built). cache-parent is a fresh CI
# checkout: no history. (False: no history for either.)
LOCAL_HISTORY = True
EXTRA_APP = "support"
EXTRA_MODEL = "BenchColdNote"

# -p benchcold_trace: per test, "setup-start call-start call-end teardown-end" (time.time(), None where
# a phase did not run), appended to <pid>.trace in $BENCH_COLD_TRACE_DIR by the process that ran it.
TRACE_PLUGIN = '''\
import os, time
import pytest
_t = {}
@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    _t[item.nodeid] = [time.time(), None, None]
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    t = _t.setdefault(item.nodeid, [None, None, None])
    t[1] = time.time()
    yield
    t[2] = time.time()
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    yield
    end = time.time()
    t = _t.pop(item.nodeid, [None, None, None])
    d = os.environ.get("BENCH_COLD_TRACE_DIR")
    if d:
        with open(os.path.join(d, "%d.trace" % os.getpid()), "a") as f:
            f.write("%r %r %r %r\\n" % (t[0], t[1], t[2], end))
'''

EXTRA_MIGRATION = '''\
# Added by bench/cold.py (the cache-parent and local-incremental variants): one
# migration more than examples/shop has, a new model and a data migration.
from django.db import migrations, models

ROWS = [("welcome", "Welcome note", 1), ("returns", "Returns policy", 2), ("shipping", "Shipping times", 3),
        ("warranty", "Warranty", 4), ("payment", "Payment methods", 5), ("privacy", "Privacy", 6),
        ("contact", "Contact", 7), ("holidays", "Holiday hours", 8), ("gift", "Gift cards", 9),
        ("bulk", "Bulk orders", 10), ("outlet", "Outlet", 11), ("faq", "FAQ", 12)]


def seed(apps, schema_editor):
    Note = apps.get_model("%(app)s", "%(model)s")
    Note.objects.using(schema_editor.connection.alias).bulk_create(
        Note(code=code, title=title, weight=weight) for code, title, weight in ROWS
    )


def unseed(apps, schema_editor):
    apps.get_model("%(app)s", "%(model)s").objects.using(schema_editor.connection.alias).all().delete()


class Migration(migrations.Migration):

    dependencies = [
        ("%(app)s", "%(parent)s"),
    ]

    operations = [
        migrations.CreateModel(
            name="%(model)s",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("code", models.CharField(max_length=32, unique=True)),
                ("title", models.CharField(max_length=200)),
                ("weight", models.IntegerField(db_index=True, default=0)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
            ],
            options={"ordering": ["weight"]},
        ),
        migrations.RunPython(seed, unseed),
    ]
'''

# Every ephemeral server this process started: stopped at the end whatever happens.
SERVERS: list["Ephemeral"] = []


# -- servers ----------------------------------------------------------------

def _die_with_parent():
    """preexec_fn: SIGTERM to the child when this benchmark dies (even by SIGKILL)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Ephemeral:
    """`dbfork db ephemeral KIND`: URL from its first line of stdout; SIGTERM stops and removes it."""

    def __init__(self, kind, logdir):
        self.kind = kind
        self.log_path = logdir / f"ephemeral-{kind}-{len(SERVERS)}.log"
        self.stopped = False
        t0 = time.perf_counter()
        with open(self.log_path, "wb") as err:
            self.proc = subprocess.Popen([str(DBFORK), "db", "ephemeral", kind], stdout=subprocess.PIPE,
                                         stderr=err, stdin=subprocess.DEVNULL, env=bd.base_env(),
                                         preexec_fn=_die_with_parent)
        SERVERS.append(self)
        ready, _, _ = select.select([self.proc.stdout], [], [], SERVER_START_TIMEOUT)
        line = self.proc.stdout.readline().decode().strip() if ready else ""
        if not line:
            self.stop()
            raise RuntimeError(f"`dbfork db ephemeral {kind}` gave no URL (exit {self.proc.returncode}): "
                               + self.log_tail())
        self.url = line
        self.start_seconds = time.perf_counter() - t0
        q = dict(parse_qsl(urlsplit(line).query))
        sock = q.get("host") or q.get("socket")
        self.dir = Path(sock if "host" in q else os.path.dirname(sock)) if sock else None

    def log_tail(self):
        try:
            return " | ".join(self.log_path.read_text().strip().splitlines()[-5:])
        except OSError:
            return ""

    def database_url(self, name):
        """The same server, another database name (what the non-dbfork variant gets)."""
        return urlunsplit(urlsplit(self.url)._replace(path="/" + name))

    def stop(self):
        """SIGTERM and wait; returns what was left (empty: nothing)."""
        if self.stopped:
            return []
        self.stopped = True
        left = []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                left.append(f"ephemeral {self.kind} server pid {self.proc.pid} did not stop in 120 s: killed")
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        if getattr(self, "dir", None) and self.dir.exists():
            left.append(f"{self.dir} (ephemeral {self.kind} server's directory)")
        return left


def server_version(server):
    if server.kind == "postgres":
        res = sh(["psql", "-X", "-At", server.url, "-c", "SHOW server_version"], check=False)
        return ("PostgreSQL " + res.stdout.strip().split(" ")[0]) if res.returncode == 0 else None
    q = dict(parse_qsl(urlsplit(server.url).query))
    res = sh(["mariadb", f"--socket={q.get('socket', '')}", "-u", "root", "-N", "-B", "-e", "SELECT VERSION()"],
             check=False)
    return ("MariaDB " + res.stdout.strip().split("-")[0]) if res.returncode == 0 else None


class Place:
    """Where one run's databases live: a fresh SQLite directory or a fresh ephemeral server."""

    def __init__(self, backend, ctx, kept=False):
        self.backend = backend
        self.server = None
        self.dir = None
        if backend == "sqlite":
            ctx.seq += 1
            self.dir = ctx.work / "sqlite" / f"{'kept' if kept else 'run'}-{ctx.seq}"
            self.dir.mkdir(parents=True)
            self.url = f"sqlite://{self.dir}/main.sqlite3"
            self.plain = f"sqlite:///{self.dir}/db.sqlite3"
        else:
            self.server = Ephemeral(backend, ctx.work)
            self.url = self.server.url
            self.plain = self.server.database_url("benchcold")

    def close(self):
        left = self.server.stop() if self.server else []
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            if self.dir.exists():
                left.append(str(self.dir))
        return left


# -- the project copy -------------------------------------------------------

def make_copy(work):
    """examples/shop without .dbfork/ (nor caches), plus one migration in EXTRA_APP."""
    dest = work / "shop"
    shutil.copytree(SHOP, dest, ignore=shutil.ignore_patterns(".dbfork", "__pycache__", "*.sqlite3", "*.sqlite3-*",
                                                              ".pytest_cache"))
    migdir = dest / EXTRA_APP / "migrations"
    latest = sorted(p.stem for p in migdir.glob("[0-9][0-9][0-9][0-9]_*.py"))[-1]
    name = f"{int(latest[:4]) + 1:04d}_benchcold_extra"
    (migdir / f"{name}.py").write_text(EXTRA_MIGRATION % {"app": EXTRA_APP, "model": EXTRA_MODEL,
                                                          "parent": latest})
    # Compiled once here, as examples/shop's are by the runs before the rounds.
    sh([str(PYTHON), "-m", "compileall", "-q", str(dest)], check=False)
    return dest, f"{EXTRA_APP}/migrations/{name}.py (after {latest})"


# -- one run ----------------------------------------------------------------

TEMPLATE_LINE = re.compile(r"\b(built|restored|reusing) template (\S+)(.*)$")


def template_figure(text):
    """dbfork's last template line, read loosely: kind (built, built-from, restored, reused), seconds, line."""
    last = None
    for line in text.splitlines():
        m = TEMPLATE_LINE.search(line)
        if m:
            last = (m, line.strip())
    if last is None:
        return {"template_kind": None, "template_s": None, "template_line": None}
    m, line = last
    verb, name, rest = m.groups()
    main = rest.split("; changed since")[0]
    secs = re.search(r"\bin ([\d.]+)\s*s\b", main)
    parent = re.search(r"\bfrom (\S+)", main)
    if verb != "built":
        parent = None  # (`restored template X from the cache ...`)
    kind = {"reusing": "reused", "restored": "restored"}.get(verb) or ("built-from" if parent else "built")
    return {"template_kind": kind, "template_s": float(secs.group(1)) if secs else None,
            "template_name": name.rstrip(",;:."), "template_parent": parent.group(1).rstrip(",;:.") if parent else None,
            "template_line": line}


def summary_line(text):
    found = None
    for ln in text.splitlines():
        if bd.SUMMARY.match(ln.strip()):
            found = ln.strip().strip("= ")
    return found


def read_trace(tracedir):
    rows = []
    for p in tracedir.glob("*.trace"):
        for line in p.read_text().splitlines():
            vals = [None if x == "None" else float(x) for x in line.split()]
            if len(vals) == 4:
                rows.append(vals)
    return rows


def error_line(err):
    """The first line that says `error`, else the last line."""
    lines = [ln.strip() for ln in err.splitlines() if ln.strip()]
    return next((ln for ln in lines if "error" in ln.lower()), lines[-1] if lines else "")


def terminate(proc, timeout):
    """SIGTERM, then SIGKILL after `timeout` seconds; waits for it."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def execute(cmd, cwd, env, rundir):
    """Runs cmd with stdout/stderr into files; returns (rc, wall, t0, t_exit, stdout, stderr)."""
    out_path, err_path = rundir / "stdout", rundir / "stderr"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.time()
        p0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        try:
            try:
                rc = proc.wait(timeout=RUN_TIMEOUT)
            except subprocess.TimeoutExpired:
                log(f"    !! ran past {RUN_TIMEOUT} s: SIGTERM")
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                rc = proc.wait()
        finally:
            if proc.poll() is None:  # interrupted: the command goes first
                terminate(proc, 60)
        wall = time.perf_counter() - p0
        t_exit = time.time()
    return rc, wall, t0, t_exit, out_path.read_text(errors="replace"), err_path.read_text(errors="replace")


def dbfork_cmd(url, report_path, cache):
    return [str(DBFORK), "run", "--json", str(report_path), "-j", str(JOBS), "--db", url] + \
        ([CACHE_FLAG, str(cache)] if cache is not None else []) + ["--", *PYTEST, "-p", "benchcold_trace"]


def run_command(ctx, variant, url, plain_url, cache, cwd, rundir):
    """One measured command; the result record."""
    tracedir = rundir / "trace"
    tracedir.mkdir(parents=True)
    env = bd.base_env(BENCH_COLD_TRACE_DIR=str(tracedir),
                      PYTHONPATH=os.pathsep.join(filter(None, [str(ctx.plugdir), os.environ.get("PYTHONPATH")])))
    report_path = rundir / "report.json"
    if variant == "xdist":
        env["DATABASE_URL"] = plain_url
        env["OUTCOMES_FILE"] = str(report_path)
        env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], str(bd.OUTCOMES_PLUGIN_DIR)])
        cmd = PYTEST + ["-p", "benchcold_trace", "-p", "outcomes_plugin", "-n", str(JOBS)]
    else:
        cmd = dbfork_cmd(url, report_path, cache)
    rc, wall, t0, t_exit, out, err = execute(cmd, cwd, env, rundir)
    text = out + "\n" + err
    trace = read_trace(tracedir)
    calls = [t[1] for t in trace if t[1] is not None]
    ends = [t[3] for t in trace if t[3] is not None]
    call_ends = [t[2] for t in trace if t[2] is not None]
    setups = [t[0] for t in trace if t[0] is not None]
    r = {"wall": wall, "rc": rc, "cwd": "copy" if cwd != SHOP else "examples/shop",
         "first_test": min(calls) - t0 if calls else None,
         "first_setup": min(setups) - t0 if setups else None,
         "last_to_exit": t_exit - max(ends) if ends else None,
         "last_call_to_exit": t_exit - max(call_ends) if call_ends else None,
         "traced_tests": len(trace),
         "summary": summary_line(out) or summary_line(text),
         "counts": bd.pytest_counts(out) or bd.pytest_counts(text)}
    if variant != "xdist":
        tpl = template_figure(err)
        r.update(tpl if tpl["template_kind"] else template_figure(text))
        wrote = [ln.strip() for ln in err.splitlines() if "to the cache" in ln]
        r["cache_write"] = wrote[-1] if wrote else None
        r["dbfork_lines"] = [ln for ln in err.splitlines() if ln.startswith("dbfork:") and not ln.startswith("dbfork: [")]
        exp = EXPECTED_TEMPLATE.get(variant)
        if exp and r["template_kind"] != exp and r["counts"] is not None:
            r["template_unexpected"] = f"expected `{exp}`, dbfork said `{r['template_kind']}`"
    try:
        outcomes = json.loads(report_path.read_text())
        if variant != "xdist":
            outcomes = {t["id"]: t["outcome"] for t in outcomes.get("tests", [])}
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        outcomes = None
    r["outcomes"] = outcomes
    if variant != "xdist" and cache is not None and rc != 0 and CACHE_FLAG in err and r["counts"] is None:
        r["error"] = f"dbfork rejected {CACHE_FLAG} (exit {rc}): {error_line(err)}"
        r["rejected_cache_flag"] = True
    elif r["counts"] is None:
        r["error"] = f"no pytest summary (exit {rc}): {error_line(err)}"
    c = r["counts"] or {}
    r["ok"] = rc == 0 and c.get("passed") == EXPECTED_PYTEST and not c.get("failed") and not c.get("errors")
    if not r["ok"]:
        r["stdout_tail"] = out[-3000:]
        r["stderr_tail"] = err[-3000:]
    return r


def reset_copy_state(copy, history):
    """The copy's .dbfork/ before each run: examples/shop's timings.json alone (both projects hand
    out tests in the same order), and with `history` examples/shop's build history too
    (.dbfork/templates/: the manifests of its builds, the parent's included)."""
    shutil.rmtree(copy / ".dbfork", ignore_errors=True)
    (copy / ".dbfork").mkdir()
    timings = SHOP / ".dbfork" / "timings.json"
    if timings.exists():
        shutil.copy2(timings, copy / ".dbfork" / "timings.json")
    if history and (SHOP / ".dbfork" / "templates").is_dir():
        shutil.copytree(SHOP / ".dbfork" / "templates", copy / ".dbfork" / "templates")


def run_variant(ctx, backend, variant, tag):
    rundir = ctx.work / "runs" / f"{backend}-{variant}-{tag}"
    rundir.mkdir(parents=True)
    place = None
    try:
        cache = None
        if variant in ("cache-filled", "cache-parent"):
            fill = ctx.fill.get(backend) or {}
            if not fill.get("ok"):
                return {"skipped": f"no filled cache ({fill.get('why', 'not made')})"}
            cache = rundir / "cache"
            shutil.copytree(fill["dir"], cache)
        elif variant == "cold-empty-cache":
            cache = rundir / "cache"
            cache.mkdir()
        if variant == "local-incremental":
            local = ctx.local.get(backend) or {}
            if not local.get("ok"):
                return {"skipped": f"no parent template on a kept server ({local.get('why', 'not made')})"}
            url, plain = local["place"].url, local["place"].plain
        else:
            place = Place(backend, ctx)
            url, plain = place.url, place.plain
        cwd = ctx.copy if variant in ON_COPY else SHOP
        if variant in ON_COPY:
            reset_copy_state(ctx.copy, history=variant == "local-incremental" and LOCAL_HISTORY)
        r = run_command(ctx, variant, url, plain, cache, cwd, rundir)
        if cache is not None:
            r["cache_files"] = sorted(p.name for p in cache.iterdir()) if cache.exists() else None
        if place is not None and place.server is not None:
            r["server_start"] = place.server.start_seconds
            if not ctx.meta["servers"].get(backend):
                ctx.meta["servers"][backend] = server_version(place.server)
        if variant == "local-incremental":
            r["dropped_after"] = reset_local(ctx.local[backend])
        return r
    finally:
        if place is not None:
            ctx.leftovers += place.close()
        shutil.rmtree(rundir, ignore_errors=True)


def registry(url):
    res = sh([str(DBFORK), "db", "list", "--db", url, "--json"], check=False, env=bd.base_env())
    if res.returncode != 0:
        return None
    try:
        return json.loads(res.stdout or "[]")
    except ValueError:
        return None


def reset_local(local):
    """Drops from the kept server every database dbfork registered but the parent template."""
    url = local["place"].url
    entries = registry(url) or []
    keep = local.get("parent")
    names = [e["name"] for e in entries if e.get("name") and e["name"] != keep and e.get("exists", True)]
    if names:
        res = sh([str(DBFORK), "db", "drop", "--db", url, *names], check=False, env=bd.base_env())
        if res.returncode != 0:
            log(f"    !! could not drop {names}: {res.stderr.strip()[-500:]}")
    return names


# -- before the rounds ------------------------------------------------------

def prepare(ctx, backend, variants, results):
    """The filled cache and the kept server with the parent template (one build for both)."""
    need_fill = any(v in variants for v in ("cache-filled", "cache-parent"))
    need_local = "local-incremental" in variants
    if not (need_fill or need_local):
        return
    setup = results["setup"].setdefault(backend, {})
    place = Place(backend, ctx, kept=True)
    if place.server is not None:
        ctx.meta["servers"][backend] = server_version(place.server)
    fill_dir = ctx.work / "fill" / backend
    fill_dir.mkdir(parents=True)
    rundir = ctx.work / "runs" / f"{backend}-fill"
    rundir.mkdir(parents=True)
    log(f"  before the rounds: {backend}: cold-empty-cache into the cache to fill (unmeasured)")
    r = run_command(ctx, "cold-empty-cache", place.url, place.plain, fill_dir, SHOP, rundir)
    shutil.rmtree(rundir, ignore_errors=True)
    r.pop("outcomes", None)
    r["cache_files"] = sorted(p.name for p in fill_dir.iterdir())
    setup["fill"] = r
    log(f"    {describe(r)}; cache: {r['cache_files']}")
    if r.get("error"):
        ctx.fill[backend] = {"ok": False, "why": r["error"]}
    elif not r["cache_files"]:
        ctx.fill[backend] = {"ok": False, "why": f"the cache is empty after the fill run (exit {r['rc']})"}
    else:
        ctx.fill[backend] = {"ok": True, "dir": fill_dir}
    if not need_local:
        ctx.leftovers += place.close()
        return
    parent = r
    if r.get("rejected_cache_flag") or r["template_kind"] != "built":
        log(f"  before the rounds: {backend}: the parent template, built without {CACHE_FLAG} (unmeasured)")
        rundir.mkdir(parents=True)
        parent = run_command(ctx, "cold-no-cache", place.url, place.plain, None, SHOP, rundir)
        shutil.rmtree(rundir, ignore_errors=True)
        parent.pop("outcomes", None)
        setup["parent"] = parent
        log(f"    {describe(parent)}")
    ok = parent["template_kind"] in ("built", "reused") and parent.get("template_name")
    ctx.local[backend] = {"ok": bool(ok), "place": place, "parent": parent.get("template_name"),
                          "parent_build": parent.get("template_s"),
                          "why": None if ok else parent.get("error") or f"template line: {parent.get('template_line')}"}
    setup["parent_template"] = parent.get("template_name")
    setup["parent_build_s"] = parent.get("template_s")
    setup["kept_registry"] = [e.get("name") for e in (registry(place.url) or [])]


# -- rounds -----------------------------------------------------------------

def describe(r):
    if r.get("skipped"):
        return f"not run: {r['skipped']}"
    tpl = f"{r.get('template_kind')} {fmt(r.get('template_s'))} s" if r.get("template_kind") else "-"
    s = (f"wall {r['wall']:.1f} s, first test {fmt(r.get('first_test'))} s, template {tpl}, "
         f"last result -> exit {fmt(r.get('last_to_exit'), '.2f')} s, {r.get('summary') or 'no summary'}")
    if r.get("error"):
        s += f" -- {r['error']}"
    if r.get("template_unexpected"):
        s += f" -- template: {r['template_unexpected']}"
    return s


def comparable(counts):
    return {k: v for k, v in (counts or {}).items() if k not in ("warnings",)}


def check_round(done):
    """Flags every run whose counts or outcome set differ from xdist's of the same round."""
    ref = done.get("xdist")
    for v, r in done.items():
        if v == "xdist" or r.get("skipped") or r.get("error"):
            continue  # (a run that did not run the suite says so already)
        flags = []
        if ref and not ref.get("skipped") and ref.get("counts") is not None:
            if comparable(r.get("counts")) != comparable(ref.get("counts")):
                flags.append(f"summary `{r.get('summary')}` vs xdist's `{ref.get('summary')}`")
            same = bd.same_outcomes(r.get("outcomes"), ref.get("outcomes"))
            r["same_outcomes"] = same
            if same != "equal":
                flags.append(f"outcomes vs xdist: {same}")
        else:
            c = r.get("counts") or {}
            if c.get("passed") != EXPECTED_PYTEST or c.get("failed") or c.get("errors"):
                flags.append(f"summary `{r.get('summary')}` (no xdist run to compare; expected "
                             f"{EXPECTED_PYTEST} passed)")
        if flags:
            r["flag"] = "; ".join(flags)
            log(f"    !! {v}: {r['flag']}")
    for r in done.values():
        outcomes = r.pop("outcomes", None)
        r["outcome_count"] = len(outcomes) if outcomes is not None else None


def bench(ctx, backends, variants, reps, results):
    for b in backends:
        try:
            prepare(ctx, b, variants, results)
        except Exception as e:  # noqa: BLE001 - recorded; the variants that need it say so
            log(f"  !! {b}: preparation failed: {e}")
            results["setup"].setdefault(b, {})["error"] = str(e)
            ctx.fill.setdefault(b, {"ok": False, "why": f"preparation failed: {e}"})
            ctx.local.setdefault(b, {"ok": False, "why": f"preparation failed: {e}"})
        save(results)
    for rep in range(reps):
        for b in backends:
            log(f"  round {rep + 1}/{reps}: {b}")
            done = {}
            for v in rotate(variants, rep):
                try:
                    r = run_variant(ctx, b, v, str(rep))
                except Exception as e:  # noqa: BLE001 - e.g. a server that does not start: recorded
                    r = {"skipped": f"could not run: {e}"}
                log(f"    {v}: {describe(r)}")
                done[v] = r
                results["runs"].setdefault(b, {}).setdefault(v, []).append(r)
                save(results)
            check_round(done)
            save(results)


# -- report -----------------------------------------------------------------

LABELS = {
    "xdist": "`python -m pytest -q -p no:cacheprovider -n 2`, fresh server",
    "cold-empty-cache": f"`dbfork run -j 2 --db URL {CACHE_FLAG} EMPTY -- python -m pytest ...`, fresh server",
    "cache-filled": f"the same, {CACHE_FLAG} filled",
    "cache-parent": f"the same in the copy (one migration more), {CACHE_FLAG} holding examples/shop's template",
    "local-incremental": "the copy, no cache, on a kept server holding examples/shop's template",
    "cold-no-cache": "`dbfork run -j 2 --db URL -- python -m pytest ...`, fresh server, no cache (today's cold run)",
}


def valid(runs):
    """Runs in which the suite ran (the timings mean something)."""
    return [r for r in runs if not r.get("skipped") and not r.get("error")]


def template_cell(runs):
    kinds = []
    for r in runs:
        k = r.get("template_kind") or "none"
        if k not in kinds:
            kinds.append(k)
    if not kinds:
        return "-"
    s = med([r.get("template_s") for r in runs])
    return "/".join(kinds) + (f" {fmt(s)}" if s == s else "")


def outcome_cell(variant, runs):
    seen = []
    for r in runs:
        if r.get("skipped"):
            s = f"not run ({r['skipped']})"
        elif r.get("error"):
            s = r["error"]
        else:
            s = r.get("summary") or "no summary"
            if r.get("rc"):
                s += f" (exit {r['rc']})"
        if s not in seen:
            seen.append(s)
    return "; ".join(seen).replace("|", "\\|")


def check_cell(variant, runs):
    if variant == "xdist":
        return "(the reference)"
    notes = []
    flagged = [r for r in runs if r.get("flag") and not r.get("error")]
    ran = [r for r in runs if not r.get("skipped") and not r.get("error")]
    if flagged:
        notes.append(f"**differs** in {len(flagged)}/{len(runs)}: " + "; ".join(sorted({r['flag'] for r in flagged})))
    elif any(r.get("same_outcomes") == "equal" for r in ran):
        notes.append(f"same ({len(ran)}/{len(runs)} rounds)")
    elif ran:
        notes.append(f"not flagged ({len(ran)}/{len(runs)} rounds; no xdist run to compare outcomes)")
    unexpected = sorted({r["template_unexpected"] for r in runs if r.get("template_unexpected")})
    if unexpected:
        notes.append("template: " + "; ".join(unexpected))
    return ("; ".join(notes) or "-").replace("|", "\\|")


def ratio_cell(x, target, at_least=False):
    if x != x:
        return "-"
    met = x >= target if at_least else x <= target
    return f"{x:.2f}x **{'met' if met else 'not met'}**"


def report(saved):
    meta = saved.get("meta", {})
    nan = float("nan")
    lines = [f"Medians of {meta.get('reps', '?')} rounds; seconds; {JOBS} workers; every run on a fresh server "
             f"(but local-incremental). Commit {meta.get('commit', '?')}, {meta.get('cpus', '?')} CPUs, "
             f"Python {meta.get('python', '?')}, Django {meta.get('django', '?')}, pytest {meta.get('pytest', '?')}, "
             f"pytest-django {meta.get('pytest_django', '?')}, pytest-xdist {meta.get('xdist', '?')}, "
             f"{meta.get('dbfork', 'dbfork ?')}."
             + (f" The copy's extra migration: {meta['extra_migration']}." if meta.get("extra_migration") else ""), ""]
    summary = []
    for backend, byvar in saved.get("runs", {}).items():
        version = (meta.get("servers") or {}).get(backend)
        lines += [f"#### {backend}" + (f" ({version})" if version else ""), "",
                  "| variant | command | wall | first test starts | template (dbfork's figure) | "
                  "last result -> exit | outcome | vs xdist |",
                  "|---|---|---|---|---|---|---|---|"]
        m, tpl, last = {}, {}, {}
        for v in VARIANTS + HIDDEN_VARIANTS:
            runs = byvar.get(v)
            if not runs:
                continue
            ok = valid(runs)
            m[v] = med([r["wall"] for r in ok])
            tpl[v] = med([r.get("template_s") for r in ok])
            last[v] = med([r.get("last_to_exit") for r in ok])
            lines.append(f"| {v} | {LABELS[v]} | {fmt(m[v])} | {fmt(med([r.get('first_test') for r in ok]))} | "
                         f"{template_cell(ok) if v != 'xdist' else '-'} | {fmt(last[v], '.2f')} | "
                         f"{outcome_cell(v, runs)} | {check_cell(v, runs)} |")
        lines.append("")
        setup = (saved.get("setup") or {}).get(backend) or {}
        fill = setup.get("fill")
        if fill:
            note = (f"Before the rounds (unmeasured): the fill run took {fmt(fill.get('wall'))} s, template "
                    f"{fill.get('template_kind')} {fmt(fill.get('template_s'))} s, cache files "
                    f"{fill.get('cache_files')}" + (f" ({fill['error']})" if fill.get("error") else ""))
            parent = setup.get("parent")
            if parent:
                note += (f"; the parent template, built again without {CACHE_FLAG}: "
                         f"{parent.get('template_kind')} {fmt(parent.get('template_s'))} s"
                         + (f" ({parent['error']})" if parent.get("error") else ""))
            if "parent_template" in setup:
                note += (f"; the kept server's parent template: {setup.get('parent_template')} "
                         f"(built in {fmt(setup.get('parent_build_s'))} s)")
            lines += [note.replace("|", "\\|") + ".", ""]
        if setup.get("error"):
            lines += [f"Preparation failed: {setup['error']}", ""]
        x = m.get("xdist", nan)
        full = tpl.get("cold-empty-cache", nan)
        full_from = "cold-empty-cache"
        if full != full and tpl.get("cold-no-cache", nan) == tpl.get("cold-no-cache", nan):
            full, full_from = tpl["cold-no-cache"], "cold-no-cache"
        if full != full and setup.get("parent_build_s") is not None:
            full, full_from = setup["parent_build_s"], "the kept server's parent build"
        restore = full / tpl.get("cache-filled", nan) if tpl.get("cache-filled") else nan
        incr = tpl.get("local-incremental", nan) / full if full else nan
        dbfork_last = [(last[v], v) for v in last if v != "xdist" and last[v] == last[v]]
        worst = max(dbfork_last) if dbfork_last else (nan, "-")
        exit_cell = "-" if worst[0] != worst[0] else \
            f"{worst[0]:.2f} s ({worst[1]}) **{'met' if worst[0] <= EXIT_TARGET else 'not met'}**"
        summary.append(f"| {backend} | {fmt(x)} | "
                       + " | ".join(ratio_cell(m.get(v, nan) / x, TARGETS[v]) for v in TARGETS)
                       + f" | {ratio_cell(restore, RESTORE_TARGET, at_least=True)} "
                       f"({fmt(full)} / {fmt(tpl.get('cache-filled', nan), '.2f')}) | "
                       f"{ratio_cell(incr, INCREMENTAL_TARGET)} ({fmt(tpl.get('local-incremental', nan))} / "
                       f"{fmt(full)}{'' if full_from == 'cold-empty-cache' else ', full build of ' + full_from}) | "
                       f"{exit_cell} |")
    if summary:
        lines += ["#### Against the targets (medians)", "",
                  f"| backend | xdist wall | cold-empty-cache / xdist (<= {TARGETS['cold-empty-cache']}x) | "
                  f"cache-filled / xdist (<= {TARGETS['cache-filled']}x) | "
                  f"cache-parent / xdist (<= {TARGETS['cache-parent']}x) | "
                  f"restore vs build, built s / restored s (>= {RESTORE_TARGET:.0f}x) | "
                  f"local incremental / full build (<= {INCREMENTAL_TARGET}x) | "
                  f"last result -> exit, slowest dbfork variant (<= {EXIT_TARGET} s) |",
                  "|---|---|---|---|---|---|---|---|", *summary, ""]
    if meta.get("skipped"):
        lines += ["Skipped: " + "; ".join(f"{k} ({v})" for k, v in meta["skipped"].items()), ""]
    left = meta.get("leftovers")
    if left is not None:
        lines += ["Left behind: " + (", ".join(left) if left else
                                     "nothing (every server, directory and database made was removed)"), ""]
    return "\n".join(lines)


# -- main -------------------------------------------------------------------

RESULTS_PATH = None


def save(results):
    if RESULTS_PATH is not None:
        RESULTS_PATH.write_text(json.dumps(results, indent=1, default=str))


class Ctx:
    def __init__(self, work):
        self.work = work
        self.plugdir = work / "plugins"
        self.copy = None
        self.fill = {}
        self.local = {}
        self.leftovers = []
        self.seq = 0
        self.meta = {"servers": {}}


def available(name):
    if name == "mariadb":
        res = sh([str(PYTHON), "-c", "import MySQLdb"], check=False)
        if res.returncode != 0:
            return "mysqlclient (MySQLdb) does not import in the venv"
        if shutil.which("mariadb") is None:
            return "mariadb client not found"
    if name == "postgres" and shutil.which("psql") is None:
        return "psql not found"
    return None


def main():
    global RESULTS_PATH, DBFORK
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated: " + ", ".join(BACKENDS))
    ap.add_argument("--reps", type=int, default=3, help="rounds (default 3)")
    ap.add_argument("--report", metavar="FILE.json", help="only print the tables of a saved results file")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=argparse.SUPPRESS)
    ap.add_argument("--dbfork", help=argparse.SUPPRESS)  # another binary than target/release/dbfork
    args = ap.parse_args()
    if args.report:
        print(report(json.loads(Path(args.report).read_text())))
        return
    if args.dbfork:
        DBFORK = bd.DBFORK = Path(args.dbfork).resolve()
    if not PYTHON.exists() or not DBFORK.exists():
        sys.exit("build first: bash bench/setup-venv.sh && cargo build --release --bin dbfork")
    asked = [v for v in args.variants.split(",") if v]
    for v in asked:
        if v not in VARIANTS + HIDDEN_VARIANTS:
            sys.exit(f"unknown variant {v}")
    variants = [v for v in VARIANTS + HIDDEN_VARIANTS if v in asked]
    names = [n for n in args.backends.split(",") if n]
    for n in names:
        if n not in BACKENDS:
            sys.exit(f"unknown backend {n}")
    meta = {"reps": args.reps, "variants": variants, "skipped": {}, "servers": {}}
    for n in list(names):
        why = available(n)
        if why:
            log(f"skipping {n}: {why}")
            meta["skipped"][n] = why
            names.remove(n)
    meta.update(bd.versions())
    meta["dbfork_bin"] = str(DBFORK)
    if "sqlite" in names:
        meta["servers"]["sqlite"] = "SQLite " + sh([str(PYTHON), "-c", "import sqlite3; print(sqlite3.sqlite_version)"],
                                                   check=False).stdout.strip()
    meta["started"] = time.strftime("%Y-%m-%d %H:%M:%S")
    meta["load_before"] = os.getloadavg()
    work = Path(f"/tmp/benchcold_{os.getpid()}")
    ctx = Ctx(work)
    ctx.meta = meta
    ctx.plugdir.mkdir(parents=True)
    (ctx.plugdir / "benchcold_trace.py").write_text(TRACE_PLUGIN)
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    RESULTS_PATH = out_dir / f"cold-{time.strftime('%Y%m%d-%H%M%S')}.json"
    results = {"meta": meta, "setup": {}, "runs": {}}
    log(f"work folder {work}; raw results: {RESULTS_PATH.relative_to(ROOT)}")

    def on_signal(signum, _frame):
        meta.setdefault("signals", []).append(f"{signal.Signals(signum).name} at {time.strftime('%H:%M:%S')}")
        log(f"got {signal.Signals(signum).name}: stopping")
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        if any(v in ON_COPY for v in variants):
            ctx.copy, meta["extra_migration"] = make_copy(work)
        bench(ctx, names, variants, args.reps, results)
    finally:
        save(results)
        log("cleaning up")
        for local in ctx.local.values():
            if local.get("place"):
                ctx.leftovers += local["place"].close()
        for server in SERVERS:
            ctx.leftovers += server.stop()
        shutil.rmtree(work, ignore_errors=True)
        if work.exists():
            ctx.leftovers.append(str(work))
        meta["leftovers"] = ctx.leftovers
        meta["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        meta["load_after"] = os.getloadavg()
        save(results)
        log(f"raw results: {RESULTS_PATH.relative_to(ROOT)}")
        if ctx.leftovers:
            log("left behind: " + ", ".join(ctx.leftovers))
    print(report(results))


if __name__ == "__main__":
    main()
