"""dbfork's pytest adapter: turns a pytest process into a dbfork worker.

``dbfork run -j N -- python -m pytest ...`` starts N pytest processes, each on
its own clone of the template database. This plugin, loaded into each of them,
lets dbfork decide which tests the process runs: it reports what pytest
collected, then runs the tests dbfork hands it, in the order given, and sends
back each test's result, while dbfork balances the work between the workers
(handing out batches, stealing tests a worker has not started) and writes the
run's summary and reports.

Loading
    dbfork puts a directory holding this module and a
    ``dbfork_pytest-<version>.dist-info`` (entry point
    ``[pytest11] dbfork = dbfork_pytest``) first on ``PYTHONPATH``, so pytest
    autoloads it under the plugin name ``dbfork``; ``pip install`` of the
    ``dbfork-pytest`` distribution registers the same entry point. Disable it
    with ``-p no:dbfork``; load it explicitly (with autoloading off) with
    ``-p dbfork``.

    The plugin does nothing at all unless ``DBFORK_SOCKET`` is set: no hook
    acts, no socket is opened, and pytest behaves exactly as without it. When
    it is set, the plugin removes it from ``os.environ`` as it starts, so a
    pytest that a test runs (in a subprocess, or in-process with ``pytester``)
    does not become a second worker.

Protocol
    The worker protocol (line-delimited JSON over the Unix socket named by
    ``DBFORK_SOCKET``, every message with ``"v": 1`` and a ``"type"``) is
    defined in one place, ``crates/dbfork-protocol/src/lib.rs`` in the dbfork
    repository; ``dbfork_worker`` holds the worker's side of it. In short: the worker sends ``hello``
    when pytest starts, ``collected`` after collection, then ``started`` and
    ``result`` for every test it runs and ``want`` when it is running low;
    dbfork sends ``run`` (more tests), ``steal`` (give back tests, answered by
    ``released``) and ``stop``. On ``stop`` the worker runs what it holds,
    sends ``bye`` and pytest finishes as usual. If dbfork's end of the socket
    closes, the worker exits at once with status 70.

    pytest tears module and class fixtures down according to the *next* test
    (``nextitem``), so a test runs only once the test after it is known: the
    head of the local queue becomes the committed ``nextitem`` of the running
    test and can no longer be stolen; the last test held runs once more work
    or ``stop`` arrives.

Only the standard library is used; Python 3.9+, pytest 7 and later.
"""

import argparse
import contextlib
import os
import sys
import types

import pytest

import dbfork_django
import dbfork_worker

__version__ = dbfork_worker.__version__

ADAPTER = "pytest"

_PLUGIN_NAME = "dbfork-worker"

# "1" in the controller's environment when dbfork forks the workers from it.
ENV_FORK = "DBFORK_FORKING"


class _EnvironReads(type(os.environ)):
    """``os.environ`` in a controller that workers are forked from, while the
    session configures itself and collects: it notes the names the project
    and its tools read (dbfork's own reads aside), so that a session whose
    configuration read a variable that differs per worker
    (``PYTEST_XDIST_WORKER`` in the settings, say) is not forked: each worker
    is then started afresh and reads its own value, as in a serial run."""

    read = set()
    watching = True

    def __getitem__(self, key):
        if _EnvironReads.watching and _read_by_the_project():
            _EnvironReads.read.add(key)
        return super().__getitem__(key)


def _read_by_the_project():
    """Whether the code reading ``os.environ`` now is not dbfork's, and reads
    one variable by its name (not a copy of the whole environment, such as
    ``wsgiref`` takes when it is imported)."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_globals.get("__name__") in _MAPPING_MODULES:
        if frame.f_code.co_name not in _KEYED_READS:
            return False
        frame = frame.f_back
    name = frame.f_globals.get("__name__", "") if frame is not None else ""
    return not name.startswith(("dbfork_worker", "dbfork_pytest", "dbfork_django"))


_MAPPING_MODULES = ("os", "collections.abc", "_collections_abc")
_KEYED_READS = ("get", "getenv", "__contains__", "pop", "setdefault")


if os.environ.get(ENV_FORK) == "1" and dbfork_worker.is_controller():
    os.environ.__class__ = _EnvironReads


def pytest_addoption(parser):
    group = parser.getgroup("dbfork", "dbfork (parallel runs, each worker on a clone of one template database)")
    group.addoption(
        "--dbfork",
        action="store",
        nargs="?",
        const="",
        default=None,
        metavar="N",
        help="run this same command under `dbfork run -j N`: N workers (a number or "
        "auto), each on its own clone of the template database; without N, dbfork's "
        "own setting (jobs in [tool.dbfork], DBFORK_JOBS), else auto",
    )
    if not _has_xdist():
        # pytest -n N without pytest-xdist: say what to type instead of
        # pytest's "unrecognized arguments".
        # pytest reserves lowercase short options for itself: _addoption is
        # how pytest-xdist declares its -n.
        add = getattr(group, "_addoption", group.addoption)
        add("-n", "--numprocesses", dest="dbfork_numprocesses", default=None, help=argparse.SUPPRESS)


def _has_xdist():
    import importlib.util

    try:
        return importlib.util.find_spec("xdist") is not None
    except (ImportError, ValueError):
        return False


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config):
    """``pytest --dbfork[=N]`` hands the same command line to ``dbfork run``."""
    if dbfork_worker.handed_off():
        return None
    jobs = config.getoption("dbfork", None)
    processes = config.getoption("dbfork_numprocesses", None)
    if jobs is None and processes is not None:
        raise pytest.UsageError(
            "-n %s is pytest-xdist's option, and pytest-xdist is not installed. To run in "
            "parallel with dbfork (each worker on its own clone of the template "
            "database): `pytest --dbfork=%s`, or `dbfork run -j %s -- pytest ...`"
            % (processes, processes, processes)
        )
    if jobs is None:
        return None
    if not (jobs.isdigit() or jobs == "auto"):
        # `--dbfork tests/`: argparse took the path for N; it stays an argument.
        jobs = ""
    args = dbfork_worker.without_option(list(config.invocation_params.args), "--dbfork")
    command = [sys.executable, "-m", "pytest"] + _without_this_plugin(args)
    try:
        dbfork_worker.hand_off(jobs or None, command, "pytest --dbfork")
    except (RuntimeError, OSError) as e:
        raise pytest.UsageError(str(e))
    return None


def _without_this_plugin(args):
    """``args`` without ``-p dbfork_pytest``: dbfork loads the plugin itself."""
    kept = []
    for arg in args:
        if arg == "dbfork_pytest" and kept and kept[-1] == "-p":
            kept.pop()
        elif arg != "-pdbfork_pytest":
            kept.append(arg)
    return kept


def pytest_configure(config):
    """Registers the worker (or the controller) when dbfork started this
    process; else does nothing."""
    path = dbfork_worker.take_socket_path()
    if not path or config.pluginmanager.has_plugin(_PLUGIN_NAME):
        return
    if dbfork_worker.is_controller():
        controller = Controller(config, path)
        config.pluginmanager.register(controller, _PLUGIN_NAME)
        # The controller collects as the serial run does, to the end: a
        # collection error is the workers' to report (see the worker below).
        controller.maxfail = int(getattr(config.option, "maxfail", 0) or 0)
        config.option.maxfail = 0
        if controller.forking and config.pluginmanager.has_plugin("django"):
            # Registered before collection, as in a worker (the tests' fixture
            # closures are resolved then); in the controller itself the
            # fixture is never asked for: it runs no test.
            config.pluginmanager.register(_django_on_clone(), "dbfork-django")
            controller.on_clone = True
        controller.connect()
        return
    worker = Worker(config, path)
    config.pluginmanager.register(worker, _PLUGIN_NAME)
    # -x / --maxfail: a worker sees only part of the run, so stopping is
    # dbfork's decision. Left on, pytest would set session.shouldfail, which
    # cannot be unset and makes pytest (8+) tear every fixture down after
    # every test from then on; and collection would stop at the first error,
    # so workers could disagree on what was collected. pytest has parsed
    # every source of it (-x, -xq, --maxfail, addopts, PYTEST_ADDOPTS):
    # the worker tells dbfork the result in its hello.
    worker.wire.maxfail = int(getattr(config.option, "maxfail", 0) or 0)
    config.option.maxfail = 0
    if config.pluginmanager.has_plugin("django") and dbfork_django.template_is_djangos():
        # Registered now, after pytest-django: a later plugin's fixture of the
        # same name wins (a project's conftest still beats both).
        config.pluginmanager.register(_django_on_clone(), "dbfork-django")
        worker.django = True
    worker.connect()


def _uses_pytest_django(config):
    return config.pluginmanager.has_plugin("django") and dbfork_django.django_configured()


@contextlib.contextmanager
def _database_access(config):
    """pytest-django blocks database access outside tests; the controller's
    template build needs it."""
    try:
        from pytest_django.plugin import blocking_manager_key

        blocker = config.stash[blocking_manager_key]
    except (ImportError, KeyError, AttributeError):
        from pytest_django.plugin import _blocking_manager as blocker
    with blocker.unblock():
        yield


def _disable_migrations():
    """pytest-django's ``--nomigrations``: every app's tables from its models."""
    try:
        from pytest_django.fixtures import _disable_migrations as disable
    except ImportError:
        from django.apps import apps
        from django.conf import settings

        settings.MIGRATION_MODULES = {app.label: None for app in apps.get_app_configs()}
        return
    disable()


def _names_a_database(name):
    """Whether variable ``name`` is one of those dbfork sets to a worker's
    clone (the URL, the name, the client libraries' variables)."""
    return name in ("DATABASE_URL", dbfork_django.ENV_ALIASES) or name.startswith(
        ("DBFORK_DATABASE", "DBFORK_SQLITE", "PG", "MYSQL", "MARIADB")
    )


def _restart_capture(config):
    """pytest's global output capture, started afresh in a forked worker:
    what the controller's capture saved as the original output now is the
    worker's (its stdout and stderr, which dbfork made), and new capture
    files replace the controller's, whose offsets every fork shares."""
    capman = config.pluginmanager.getplugin("capturemanager")
    old = getattr(capman, "_global_capturing", None)
    if old is None:
        return
    parts = [getattr(old, name, None) for name in ("in_", "out", "err")]
    for part in parts:
        if part is not None and hasattr(part, "targetfd_save"):
            os.dup2(part.targetfd, part.targetfd_save)
    old.suspend_capturing(in_=True)
    for part in parts:
        if part is None:
            continue
        try:
            if hasattr(part, "targetfd_save"):
                os.close(part.targetfd_save)
            part.tmpfile.close()
        except (AttributeError, OSError):
            pass
    capman._global_capturing = None
    capman.start_global_capturing()


def _end_forked_worker(worker, session, status=None):
    """The end of a worker forked from the controller, once it said bye: its
    session fixtures are torn down (usually with its last test already), its
    own exit handlers run, and the process ends. pytest's session-finish and
    unconfigure hooks are not run here: they belong to the configuration,
    which happened once, in the controller (as in the serial run), and a
    conftest's ``pytest_unconfigure`` that removes what its
    ``pytest_configure`` made (a per-run data directory) must not run in
    every worker while others still use it. Django's own ``--parallel``
    workers end so too."""
    import atexit
    import traceback

    try:
        session._setupstate.teardown_exact(None)
    except BaseException:
        traceback.print_exc()
    worker.wire.close()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    if status is None:
        status = 1 if session.testsfailed else 0
    os._exit(status)


class _CollectReports:
    """The collection's errors and whole-module skips, as the worker reports
    them to dbfork."""

    def __init__(self):
        self.errors = []
        self.skips = []

    def add(self, report):
        if report.failed:
            self.errors.append({"id": report.nodeid, "longrepr": report.longreprtext})
        elif report.skipped:
            # A whole module skipped at import (allow_module_level=True): pytest
            # counts it as one skipped; so must dbfork.
            longrepr = report.longrepr
            if isinstance(longrepr, tuple) and len(longrepr) == 3:
                path, lineno, reason = longrepr
                text = "%s:%s: %s" % (path, lineno, reason)
            else:
                text = str(longrepr)
            self.skips.append({"id": report.nodeid, "longrepr": text})


class Controller:
    """The run's controller (``DBFORK_ROLE=controller``), as pytest-xdist's
    controller process: pytest configures itself once here (conftest files,
    plugins, pytest-django's settings) and collects the suite as the serial
    run does (importing the test modules registers the models they define),
    then reports the environment that the workers inherit and what the
    template depends on, and builds the template when dbfork asks where the
    serial run makes its test database: in the setup of the first test that
    uses one (see :func:`_as_setup_of`). It runs no test. It lives until the
    run ends, so whatever its configuration made (a temporary directory in the
    environment) lasts as long as the workers need it."""

    SETUP = "create_test_db"

    def __init__(self, config, path):
        self.config = config
        self.wire = dbfork_worker.Worker(path, ADAPTER, __version__, lookahead=1)
        self.first = None  # the first collected test that uses a database
        self.forking = os.environ.get(ENV_FORK) == "1"
        self.on_clone = False  # _django_on_clone is registered
        self.maxfail = 0  # the tool's own, before the controller zeroed it
        self.collected = _CollectReports()

    def connect(self):
        try:
            self.wire.connect()
        except OSError as e:
            raise pytest.UsageError(self.wire.connect_error(e))

    @pytest.hookimpl
    def pytest_collectreport(self, report):
        self.collected.add(report)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session):
        # What configuring and collecting read is known now (the build's
        # fixtures run in the controller alone, and their values are what
        # the workers inherit).
        _EnvironReads.watching = False
        report = {"adapter": ADAPTER, "django": None}
        if _uses_pytest_django(self.config):
            self.first = _first_database_test(session.items)
            report["django"] = dbfork_django.controller_report(
                self.SETUP, self._nomigrations(), self._config_files()
            )
        elif self.config.pluginmanager.has_plugin("django"):
            report["note"] = (
                "pytest-django is installed, but no Django settings are configured "
                "(DJANGO_SETTINGS_MODULE, --ds, the ini file or a conftest.py)"
            )
        forks = dbfork_worker.Forks(self.wire, self._refuse_fork) if self.forking else None
        order = dbfork_worker.serve_as_controller(self.wire, report, self._build, forks)
        if order is None:
            self.wire.bye()
            return True
        return self._run_as_worker(session)

    # -- forked workers ----------------------------------------------------

    def _refuse_fork(self, order):
        """Why this session cannot be forked into the worker ``order`` asks
        for (one sentence), or None. Run in the controller before the fork:
        its Django connections are closed (a worker must not share the
        controller's sockets; it connects to its clone)."""
        env = order.get("env") or {}
        django = _uses_pytest_django(self.config)
        if django and env.get(dbfork_django.ENV_DJANGO) != "1":
            return "the template is not the Django project's test database (--setup)"
        if django and not self.on_clone:
            return "pytest-django was not loaded when the controller was configured"
        gone = set(order.get("unset") or ()) | set(dbfork_worker.CONTROLLER_ONLY)

        def in_worker(name):
            if name in env:
                return env[name]
            return None if name in gone else os.environ.get(name)

        differ = sorted(
            name
            for name in _EnvironReads.read
            if in_worker(name) != os.environ.get(name)
            # The worker points Django at its clone whatever the settings read.
            and not (django and _names_a_database(name))
        )
        if differ:
            return "the configuration read %s, which differs per worker" % ", ".join(differ)
        import threading

        others = [
            t.name
            for t in threading.enumerate()
            if t is not threading.main_thread() and not t.name.startswith("dbfork-")
        ]
        if others:
            return "the session has threads running (%s), which a fork would not take along" % (
                ", ".join(sorted(others)[:3])
            )
        if django:
            from django.db import connections

            connections.close_all()
        return None

    def _run_as_worker(self, session):
        """In a worker forked from this controller: the session as the
        controller configured and collected it runs the tests dbfork hands
        it, as a started worker's would. Its output capture starts afresh
        (the controller's capture files are shared with every fork)."""
        config = self.config
        os.environ.__class__ = _EnvironReads.__bases__[0]
        import faulthandler

        if faulthandler.is_enabled():
            # pytest's faulthandler writes a crash's traceback to a copy of
            # the controller's stderr: now to the worker's own.
            faulthandler.enable(file=os.dup(2), all_threads=True)
        _restart_capture(config)
        pluginmanager = config.pluginmanager
        pluginmanager.unregister(self)
        worker = Worker(config, dbfork_worker.take_socket_path())
        worker.collected = self.collected
        pluginmanager.register(worker, _PLUGIN_NAME)
        worker.wire.maxfail = self.maxfail
        worker.django = self.on_clone and dbfork_django.template_is_djangos()
        worker.connect()
        status = None
        try:
            worker.pytest_runtestloop(session)
        except KeyboardInterrupt:
            status = 2  # pytest's "interrupted"
        except BaseException:
            import traceback

            traceback.print_exc()
            status = 3  # pytest's "internal error"
        _end_forked_worker(worker, session, status)


    def _nomigrations(self):
        return bool(self.config.getvalue("nomigrations"))

    def _config_files(self):
        """The pytest configuration file and the conftest files pytest has
        loaded so far (those that can shape the settings)."""
        files = []
        inipath = getattr(self.config, "inipath", None) or getattr(self.config, "inifile", None)
        if inipath:
            files.append(str(inipath))
        for plugin in self.config.pluginmanager.get_plugins():
            path = getattr(plugin, "__file__", None)
            if path and os.path.basename(path) == "conftest.py":
                files.append(path)
        return files

    def _build(self, target):
        """pytest-django's ``django_db_setup`` for ``default``, on the
        template, as the serial run gets to it: in the context of the first
        database test's setup, after the session fixtures it depends on (the
        project's overrides of ``django_test_environment``,
        ``django_db_modify_db_settings`` and ``django_db_use_migrations``
        included: a conftest that connects a ``pre_migrate`` handler there
        creates a PostgreSQL extension before the migrations). The project's
        own ``django_db_setup`` override runs in each worker, on its clone,
        as it does in each xdist worker."""
        from django.test.utils import (
            setup_databases,
            setup_test_environment,
            teardown_test_environment,
        )

        with _as_setup_of(self.config, self.first):
            # Before unblocking database access: a fixture may block it again
            # (pytest-django 4.7 does), which would hold for the build.
            fixtures = _session_fixtures(self.first)
            use_migrations = fixtures.get("django_db_use_migrations", not self._nomigrations())
            if not use_migrations:
                _disable_migrations()
            own_environment = "django_test_environment" not in fixtures

            def setup():
                if own_environment:
                    setup_test_environment()
                try:
                    setup_databases(
                        verbosity=0,
                        interactive=False,
                        aliases={"default"},
                        serialized_aliases=set(),
                        keepdb=True,
                    )
                finally:
                    if own_environment:
                        teardown_test_environment()

            with _database_access(self.config), dbfork_django.databases_kept():
                return dbfork_django.build_template(target, setup)

    @pytest.hookimpl
    def pytest_unconfigure(self, config):
        self.wire.close()


# The session fixtures pytest-django's django_db_setup depends on that shape
# how the database is made, in the order it requests them.
_SETUP_FIXTURES = ("django_test_environment", "django_db_modify_db_settings", "django_db_use_migrations")


def _session_fixtures(item):
    """The values of :data:`_SETUP_FIXTURES` as ``item``'s setup would get
    them (a conftest's override wins, as in the serial run); ``{}`` without
    an item. They stay set up until the controller's session ends."""
    if item is None:
        return {}
    session = item.session
    state = session._setupstate
    if session not in state.stack:
        # Session-scoped fixtures attach their teardown to the session.
        state.setup(session)
    # The item's request may only compute fixtures while its nodes are set
    # up; they are marked so for the while (their own setup, the test's
    # module and class fixtures, does not run: only session fixtures do).
    marked = [node for node in item.listchain() if node not in state.stack]
    for node in marked:
        state.stack[node] = ([], None)
    values = {}
    try:
        for name in _SETUP_FIXTURES:
            try:
                values[name] = item._request.getfixturevalue(name)
            except pytest.FixtureLookupError:
                pass
    finally:
        for node in marked:
            state.stack.pop(node, None)
    return values


def _first_database_test(items):
    """The test in whose setup the serial run makes its test database: the
    first collected one (pytest-django puts database tests first) that uses
    a database; None when none does."""
    try:
        from pytest_django.fixtures import _get_databases_for_test
    except ImportError:
        _get_databases_for_test = None
    for item in items:
        if _get_databases_for_test is not None:
            try:
                if _get_databases_for_test(item)[0]:
                    return item
                continue
            except Exception:  # a marker pytest-django itself would refuse
                pass
        if django_order_group(item) != 2:
            return item
    return None


@contextlib.contextmanager
def _as_setup_of(config, item):
    """The context pytest gives the setup of ``item``, where pytest-django's
    ``django_db_setup`` runs in the serial run: ``PYTEST_CURRENT_TEST`` names
    it, and the warning filters of the command line, the ini file and the
    test's ``filterwarnings`` marks are in force (a warning that the serial
    run ignores, or turns into an error, does the same to the template's
    build). Nothing changes when ``item`` is None."""
    if item is None:
        yield
        return
    from _pytest.warnings import catch_warnings_for_item

    name = "PYTEST_CURRENT_TEST"
    before = os.environ.get(name)
    os.environ[name] = ("%s (setup)" % item.nodeid).replace("\x00", "(null)")
    try:
        with catch_warnings_for_item(config, ihook=item.ihook, when="runtest", item=item):
            yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def django_order_group(item):
    """pytest-django's order of a test, which dbfork keeps on every worker.

    pytest-django runs database tests first (0), then transactional ones (1),
    then tests without a database (2): a transactional test empties every
    table when it ends, so data the migrations inserted would be gone for any
    database test after it. dbfork hands tests out longest first, so it needs
    the groups to keep that order on each worker.
    """
    try:
        from django.test import TestCase, TransactionTestCase
    except Exception:  # Django not importable or not configured: no order.
        return 0
    cls = getattr(item, "cls", None)
    if cls is not None and isinstance(cls, type) and issubclass(cls, TransactionTestCase):
        return 0 if issubclass(cls, TestCase) else 1
    uses_db = transactional = False
    marker = item.get_closest_marker("django_db")
    if marker is not None:
        uses_db = True
        args = list(marker.args) + [False, False]
        transactional = bool(marker.kwargs.get("transaction", args[0])) or bool(
            marker.kwargs.get("reset_sequences", args[1])
        )
    fixtures = getattr(item, "fixturenames", ())
    transactional = transactional or "transactional_db" in fixtures or "live_server" in fixtures
    uses_db = uses_db or "db" in fixtures
    if transactional:
        return 1
    return 0 if uses_db else 2


def fresh_eligible(item):
    """Whether a pytest-django test takes a fresh clone (--fresh-transactional):
    a transactional test on ``default`` alone, without serialized rollback."""
    if django_order_group(item) != 1:
        return False
    cls = getattr(item, "cls", None)
    if cls is not None:
        return dbfork_django.FreshClones.eligible(cls)
    if "django_db_serialized_rollback" in getattr(item, "fixturenames", ()):
        return False
    marker = item.get_closest_marker("django_db")
    if marker is None:
        return True  # transactional_db or live_server: default only
    # django_db(transaction, reset_sequences, databases, serialized_rollback, ...)
    args = list(marker.args) + [None] * 4
    databases = marker.kwargs.get("databases", args[2])
    if databases is not None and set(databases) - {"default"}:
        return False
    return not marker.kwargs.get("serialized_rollback", args[3])


def _django_on_clone():
    """pytest-django under dbfork: the worker's database is already there.

    dbfork made this worker's clone of the migrated template before pytest
    started, and drops it (ending every session on it) after the worker is
    gone. So instead of pytest-django's ``django_db_setup`` (create
    ``test_<name>``, run the migrations, drop it at the end, which breaks when
    a thread still holds a connection) the worker points Django's connections
    at the clone and creates, migrates and drops nothing. ``--reuse-db`` and
    ``--create-db`` have nothing left to do and are ignored.

    The plugin is a module of its own holding the fixture as a function: a
    session fixture on an instance is deprecated in pytest 9 (a warning that
    ``filterwarnings = error`` turns into an error in every database test).
    """
    plugin = types.ModuleType("dbfork_pytest.django_on_clone", _django_on_clone.__doc__)
    plugin.django_db_setup = pytest.fixture(scope="session", name="django_db_setup")(
        _django_db_setup_on_clone
    )
    return plugin


def _django_db_setup_on_clone(request, django_db_blocker, django_db_use_migrations):
    if not django_db_use_migrations:
        # What pytest-django's setup does besides migrating (--nomigrations):
        # the tests see no migrations, as in the serial run.
        _disable_migrations()
    dbfork_django.point_django_at_clones()
    serialized = _serialized_aliases(request.session.items)
    if serialized:
        # What pytest-django's setup does for serialized_rollback tests
        # after it migrated; here on the clone, as on each xdist worker.
        from django.db import connections

        with django_db_blocker.unblock():
            for alias in sorted(serialized):
                connection = connections[alias]
                connection._test_serialized_contents = (
                    connection.creation.serialize_db_to_string()
                )
    yield


def _serialized_aliases(items):
    """The aliases pytest-django's setup would serialize for this session."""
    try:
        from pytest_django.fixtures import _get_databases_for_setup
    except ImportError:
        # Older pytest-django (4.7, for one) calls setup_databases() without
        # serialized_aliases, and Django then serializes every test database
        # it creates (the first alias of each, mirrors aside) unless its
        # TEST["SERIALIZE"] is false.
        from django.db import connections
        from django.test.utils import get_unique_databases_and_mirrors

        test_databases, _mirrors = get_unique_databases_and_mirrors()
        aliases = set()
        for _name, group in test_databases.values():
            alias = next(iter(group))
            if connections[alias].settings_dict.get("TEST", {}).get("SERIALIZE", True):
                aliases.add(alias)
        return aliases
    return _get_databases_for_setup(items)[1]


class Worker:
    """One pytest process as a dbfork worker (the conversation itself is
    :class:`dbfork_worker.Worker`'s).

    pytest tears module and class fixtures down according to the *next* test
    (``nextitem``), so a test runs only once the test after it is known: the
    wire's lookahead is 2.
    """

    def __init__(self, config, path):
        self.config = config
        self.wire = dbfork_worker.Worker(path, ADAPTER, __version__, lookahead=2)
        # Main thread only:
        self.collected = _CollectReports()
        # Set when pytest-django is loaded: tests then carry its order groups.
        self.django = False
        self.fresh = None  # dbfork_django.FreshClones with --fresh-transactional
        self.reports = None  # the reports of the test being run
        self.items = ()

    def connect(self):
        try:
            self.wire.connect()
        except OSError as e:
            raise pytest.UsageError(self.wire.connect_error(e))

    # -- collection --------------------------------------------------------

    @pytest.hookimpl
    def pytest_collectreport(self, report):
        self.collected.add(report)

    def _send_collected(self, session):
        self.items = list(session.items)
        tests = []
        for item in self.items:
            test = {"id": item.nodeid, "file": item.nodeid.split("::")[0]}
            classes = [n.name for n in item.listchain() if isinstance(n, pytest.Class)]
            if classes:
                test["class"] = "::".join(classes)
            if self.django:
                group = django_order_group(item)
                if group:
                    test["group"] = group
            tests.append(test)
        self.wire.collected(
            tests,
            self.collected.errors,
            self.collected.skips,
            self.config.option.continue_on_collection_errors,
            django_facts=self._django_facts(),
        )

    def _django_facts(self):
        """What this worker's settings say the template is, for dbfork to
        check against the controller's (None without a Django template)."""
        if not self.django:
            return None
        return dbfork_django.template_facts(bool(self.config.getvalue("nomigrations")))

    # -- running -----------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session):
        self._send_collected(session)
        if session.config.option.collectonly:
            # Nothing to run; dbfork has the list.
            self.wire.bye()
            return None  # pytest's own loop returns at once for --collect-only
        continue_on_errors = self.config.option.continue_on_collection_errors
        if (self.collected.errors and not continue_on_errors) or not self.items:
            # dbfork ends the run (and picks the exit status); wait for its word.
            self.wire.wait_for_stop()
            self.wire.bye()
            return True

        # pytest's own loop raises session.Failed / session.Interrupted once
        # session.shouldfail / shouldstop is set. Here dbfork decides what
        # runs: -x / --maxfail are off in workers (see pytest_configure), and
        # if a plugin sets one of the flags anyway (--stepwise, a test calling
        # for it) it is left set and ignored: the worker keeps running what it
        # is given until `stop` (pytest 8+ then tears all fixtures down after
        # each test, which is slower but correct).
        if self.django and self.config.getvalue("nomigrations"):
            # The serial run hides the migrations (pytest-django's
            # django_db_setup) before its first database test, so every test
            # after it sees none; a worker may get tests without a database
            # first, or only those.
            _disable_migrations()
        self._start_fresh_clones()
        while True:
            index, next_index = self.wire.next()
            if index is None:
                break
            item = self.items[index]
            nextitem = None if next_index is None else self.items[next_index]
            self.reports = []
            try:
                with dbfork_django.on_fresh_clone(self.fresh, lambda: fresh_eligible(item)):
                    # As pytest's own loop calls it (config.hook, not item.ihook), so
                    # conftest hooks apply exactly as in a serial run.
                    item.config.hook.pytest_runtest_protocol(item=item, nextitem=nextitem)
                reports = self.reports
            finally:
                self.reports = None
            self._send_result(index, reports)
        self.wire.bye()
        return True

    def _start_fresh_clones(self):
        """With --fresh-transactional: the worker's clone is set now, before
        the first test, so that a fresh clone can stand in for it."""
        if not (self.django and dbfork_worker.fresh_enabled()):
            return
        try:
            dbfork_django.point_django_at_clones()
        except dbfork_django.NoCloneError:
            return  # every database test reports it (django_db_setup)
        self.fresh = dbfork_django.FreshClones(self.wire)

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report):
        if self.reports is not None:
            self.reports.append(report)

    def _send_result(self, index, reports):
        config = self.config
        phases = []
        stdout = []
        stderr = []
        for rep in reports:
            status = config.hook.pytest_report_teststatus(report=rep, config=config)
            category = status[0] if status else ""
            phases.append(
                dbfork_worker.phase(
                    rep.when,
                    rep.outcome,
                    category,
                    getattr(rep, "duration", 0.0),
                    self._longrepr(rep),
                )
            )
            for title, content in rep.sections:
                # A report carries the sections of the earlier phases too.
                if title == "Captured stdout %s" % rep.when:
                    stdout.append(content)
                elif title == "Captured stderr %s" % rep.when:
                    stderr.append(content)
                elif title == "Captured log %s" % rep.when and content:
                    # Log records as lines of their own after the output.
                    if stderr and not stderr[-1].endswith("\n"):
                        stderr.append("\n")
                    stderr.append(content if content.endswith("\n") else content + "\n")
        self.wire.result(index, phases, "".join(stdout), "".join(stderr))

    def _longrepr(self, rep):
        if hasattr(rep, "wasxfail"):
            # xfailed / xpassed: pytest's summary shows the reason only.
            return rep.wasxfail or None
        if rep.skipped:
            return _skip_line(self.config, rep)
        if rep.failed:
            return rep.longreprtext
        return None

    # -- the end -----------------------------------------------------------

    @pytest.hookimpl
    def pytest_unconfigure(self, config):
        self.wire.close()


def _skip_line(config, rep):
    """A skip as pytest's short test summary prints it: ``path:lineno: reason``."""
    longrepr = rep.longrepr
    if not (isinstance(longrepr, tuple) and len(longrepr) == 3):
        return rep.longreprtext or None
    path, lineno, reason = longrepr
    try:
        path = os.path.relpath(str(path), str(config.invocation_params.dir))
    except ValueError:
        path = str(path)
    prefix = "Skipped: "
    if reason.startswith(prefix):
        reason = reason[len(prefix):]
    keywords = getattr(rep, "keywords", {})
    if rep.when == "setup" and "skip" in keywords and "pytestmark" not in keywords:
        # A skip marker: pytest names the file only.
        return "%s: %s" % (path, reason)
    return "%s:%s: %s" % (path, lineno, reason)
