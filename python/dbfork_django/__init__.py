"""dbfork's Django adapter: Django's test runner as a dbfork worker, and what
dbfork needs to know of a Django project.

``dbfork run -j N -- python manage.py test [labels] [options]`` (also
``django-admin test`` and ``runtests.py`` scripts) starts N processes of the
command, each on its own clone of the template. dbfork's ``sitecustomize``
(``_sitecustomize.py``) makes ``django.test.utils.get_runner`` return the
project's own test runner class (``TEST_RUNNER``, Django's ``DiscoverRunner``
by default) with :class:`DbforkRunnerMixin` in front. Each worker then finds
the tests as Django does (labels, ``--tag``/``--exclude-tag``, ``-k``,
``--reverse``, ``--shuffle``), reports them to dbfork and runs the
``TestCase`` classes dbfork hands it, on its clone: no test database is
created, migrated, cloned or dropped by Django (dbfork drops the clones,
forcefully, after the workers are gone). ``--failfast`` stops the whole run at
the first failure; ``--buffer`` and ``--debug-sql`` work per test as usual;
``--keepdb`` and ``--parallel`` have nothing to do under dbfork.

The run's controller (``DBFORK_ROLE=controller``, the command started once
before the workers) reports what the template depends on
(:func:`controller_report`: settings facts, input files, each alias's
settings) and builds it with the runner's own ``setup_databases``
(:func:`build_template`); the pytest plugin does the same with pytest-django's
setup.

For projects that prefer settings, ``TEST_RUNNER = "dbfork_django.DiscoverRunner"``
is Django's runner with the mixin; outside dbfork (no ``DBFORK_SOCKET`` in the
environment) it is exactly Django's.

The pytest plugin (``dbfork_pytest``) uses :func:`point_django_at_clones` from
here too. Only Django and the standard library are used.
"""

import contextlib
import hashlib
import os
import sys
import time
import unittest

import dbfork_worker

__version__ = dbfork_worker.__version__

ADAPTER = "django"

# The environment variable naming each extra alias's clone (a JSON object).
ENV_ALIASES = "DBFORK_DATABASES"
# "1" when the template is the Django project's own (made by the controller
# with Django's test database setup, or by --setup for a Django project): the
# workers then point Django at their clones instead of making test databases.
ENV_DJANGO = "DBFORK_DJANGO"


def template_is_djangos():
    return os.environ.get(ENV_DJANGO) == "1"


class NoCloneError(Exception):
    """A database alias that dbfork made no clone for."""


_pointed = False


def server_settings(url):
    """``HOST``, ``PORT``, ``USER`` and ``PASSWORD`` of a database URL as dbfork
    writes them (``postgres://user:pw@host:port/db?host=/socket/dir``,
    ``mysql://...?socket=/path``); empty for SQLite."""
    from urllib.parse import parse_qs, unquote, urlsplit

    parts = urlsplit(url)
    if parts.scheme.startswith("sqlite"):
        return {}
    query = parse_qs(parts.query)
    host = parts.hostname or ""
    socket_path = (query.get("host") or query.get("socket") or [None])[0]
    if socket_path:
        host = socket_path
    port = parts.port or (query.get("port") or [""])[0]
    return {
        "HOST": host,
        "PORT": str(port or ""),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
    }


def point_django_at_clones(used=None):
    """Points every alias in ``DATABASES`` at this worker's clone of it.

    ``default`` gets the clone dbfork names in ``DBFORK_DATABASE_NAME`` (or
    ``DBFORK_SQLITE_PATH``); every other alias the clone named for it in
    ``DBFORK_DATABASES``; ``TEST: MIRROR`` aliases follow their primary, as in
    Django's own test setup. Each alias also gets the server dbfork uses
    (``HOST``, ``PORT``, ``USER``, ``PASSWORD``), whatever its settings read
    them from. An alias that has no clone is an error (when ``used``, the
    aliases the tests use, is given: when one of those): the tests would
    otherwise write to (and flush) the real database the settings name.
    """
    import json

    from django.conf import settings
    from django.db import connections

    global _pointed
    backend, default_name = dbfork_worker.clone_databases()
    if not default_name or _pointed:
        return
    _pointed = True
    server = server_settings(os.environ.get("DBFORK_DATABASE_URL", ""))
    names = {"default": default_name}
    extra = os.environ.get(ENV_ALIASES)
    if extra:
        names.update(json.loads(extra))
    mirrors = {}
    # Aliases whose settings name the same database share one test database
    # in Django's setup (the same test_db_signature): they follow the alias
    # that got the clone, as Django points them at the first one's.
    cloned = {}
    for alias in names:
        if alias in settings.DATABASES:
            cloned.setdefault(connections[alias].creation.test_db_signature(), alias)
    for alias, settings_dict in settings.DATABASES.items():
        mirror = (settings_dict.get("TEST") or {}).get("MIRROR")
        shares = None
        if not mirror and alias not in names:
            shares = cloned.get(connections[alias].creation.test_db_signature())
        if mirror or shares:
            mirrors[alias] = mirror or shares
        elif alias not in names and (used is None or alias in used):
            raise NoCloneError(
                "dbfork: the database alias %r in DATABASES has no clone, and its "
                "tests would use the real database %r: run with `dbfork run --alias %s` "
                "so every worker gets its own clone of it too, or make it a "
                "TEST MIRROR of another alias"
                % (alias, settings_dict.get("NAME"), alias)
            )
    for alias, name in names.items():
        if alias in settings.DATABASES:
            if backend == "sqlite" and _in_memory_when_serial(settings.DATABASES[alias]):
                name = _load_into_memory(alias, name)
            _use_database(alias, name, server)
    for alias, mirror in mirrors.items():
        connections[alias].close()
        connections[alias].creation.set_as_test_mirror(connections[mirror].settings_dict)
    if backend == "sqlite":
        from django.db.backends.signals import connection_created

        connection_created.connect(_disposable_sqlite, weak=False)
    if os.environ.get("RUNNING_DJANGOS_TEST_SUITE") == "true":
        # Django's own suite: what create_test_db (and each parallel worker)
        # does for it, on the clones.
        for alias in names:
            if alias in settings.DATABASES and (used is None or alias in used):
                connections[alias].creation.mark_expected_failures_and_skips()


# "0": SQLite clones stay files even where the serial run tests in memory.
ENV_SQLITE_MEMORY = "DBFORK_SQLITE_IN_MEMORY"

# The connections that keep each in-memory copy alive (it lives as long as one
# connection to it is open): one per alias, for the worker's life.
_memory_keepers = []


def _in_memory_when_serial(settings_dict):
    """Whether Django's own test database for this SQLite alias would be in
    memory: ``TEST['NAME']`` unset, ``:memory:`` or a ``mode=memory`` URI
    (the alias's ``NAME`` does not matter to Django's test setup)."""
    if os.environ.get(ENV_SQLITE_MEMORY) == "0":
        return False
    name = str((settings_dict.get("TEST") or {}).get("NAME") or "")
    return name in ("", ":memory:") or "mode=memory" in name


def _load_into_memory(alias, path):
    """Copies this worker's clone file into a private in-memory database
    (SQLite's backup API) and returns its URI, so the tests run in memory as
    Django's own test database would: the same locking between threads and
    connections (shared cache, which LiveServerTestCase relies on), and no
    journal or file I/O for each transaction."""
    import sqlite3
    from urllib.parse import quote

    uri = "file:dbfork_%s_%d?mode=memory&cache=shared" % (quote(alias, safe=""), os.getpid())
    keeper = sqlite3.connect(uri, uri=True, check_same_thread=False)
    source = sqlite3.connect("file:%s?mode=ro" % quote(path), uri=True)
    try:
        source.backup(keeper)
    finally:
        source.close()
    _memory_keepers.append(keeper)
    return uri


def _disposable_sqlite(sender, connection, **kwargs):
    """A clone lives for one run and is thrown away, so a worker's SQLite
    connection neither waits for the disk at each commit nor keeps a journal
    file (as Django's own test databases on SQLite, which are in memory):
    measured on the example project, the file journal and its syncs were most
    of the workers' system CPU (pread/pwrite, fdatasync, unlink per
    transaction), twice pytest-xdist's on in-memory databases."""
    if connection.vendor != "sqlite":
        return
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA synchronous = OFF")
        cursor.execute("PRAGMA journal_mode = MEMORY")
        cursor.execute("PRAGMA mmap_size = 268435456")


def _use_database(alias, name, server=None):
    """Points ``alias`` (and the mirrors that share its settings) at database
    ``name``, on ``server`` (connection settings) when given."""
    from django.conf import settings
    from django.db import connections

    shared = connections[alias].settings_dict
    for settings_dict in (settings.DATABASES[alias], shared):
        settings_dict.update(server or {})
        settings_dict["NAME"] = name
        if settings_dict.get("TEST") is None:
            settings_dict["TEST"] = {}
        settings_dict["TEST"]["NAME"] = name
    for connection in connections.all(initialized_only=True):
        if connection.settings_dict is shared or connection.alias == alias:
            connection.close()


# -- the template ----------------------------------------------------------


# Connection options that only say where the database lives (a socket
# directory from a URL's `?host=`, as dj-database-url puts it in OPTIONS):
# not what shapes the schema, and they differ between the user's URL and the
# one dbfork hands each worker.
_WHERE_IT_LIVES = frozenset(
    ("host", "port", "user", "password", "passwd", "dbname", "database", "db", "service",
     "passfile", "unix_socket", "socket")
)


def _database_facts(settings_dict):
    """An alias's settings that shape its test database, without where it
    lives (NAME, HOST, PORT, USER, PASSWORD, and the same in OPTIONS)."""
    test = dict(settings_dict.get("TEST") or {})
    test.pop("NAME", None)
    options = {
        k: v for k, v in (settings_dict.get("OPTIONS") or {}).items() if k not in _WHERE_IT_LIVES
    }
    return "ENGINE=%s OPTIONS=%s TEST=%s TIME_ZONE=%s" % (
        settings_dict.get("ENGINE"),
        _stable(options),
        _stable(test),
        settings_dict.get("TIME_ZONE"),
    )


def _stable(value):
    """A text for ``value`` that is the same in every process: Django's
    migration serializer where it can, else a repr without addresses."""
    import re

    from django.db.migrations.serializer import serializer_factory

    if isinstance(value, dict):
        return "{%s}" % ", ".join(
            "%s: %s" % (_stable(k), _stable(value[k])) for k in sorted(value, key=str)
        )
    try:
        return serializer_factory(value).serialize()[0]
    except Exception:
        return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(value))


# Field arguments that never reach the database schema, and may hold what
# differs between processes (a storage on a temporary directory, a callable's
# address, a lazily translated text): left out of the facts.
_NOT_SCHEMA = frozenset(
    (
        "blank",
        "choices",
        "default",
        "editable",
        "error_messages",
        "help_text",
        "limit_choices_to",
        "related_name",
        "related_query_name",
        "serialize",
        "storage",
        "unique_for_date",
        "unique_for_month",
        "unique_for_year",
        "upload_to",
        "validators",
        "verbose_name",
        "auto_now",
        "auto_now_add",
        "width_field",
        "height_field",
        "path",  # FilePathField: a path on this machine, a varchar all the same
        "match",
        "recursive",
        "allow_files",
        "allow_folders",
    )
)


def _field_fact(field):
    """A field as makemigrations would write it, without what does not shape
    the schema."""
    _name, path, args, kwargs = field.deconstruct()
    kwargs = {k: v for k, v in kwargs.items() if k not in _NOT_SCHEMA}
    return _stable((path, args, kwargs))


def _model_facts(app_configs):
    """The models of apps whose tables ``migrate --run-syncdb`` makes from
    models.py (no migrations): each field as makemigrations would write it,
    without the arguments that do not shape the schema."""
    from django.db.migrations.state import ModelState

    lines = []
    for app in app_configs:
        for model in app.get_models(include_auto_created=False):
            state = ModelState.from_model(model)
            fields = ", ".join(
                "%s=%s" % (name, _field_fact(field)) for name, field in state.fields.items()
            )
            lines.append(
                "%s.%s(%s) %s bases=%s"
                % (app.label, state.name, fields, _stable(state.options), _stable(state.bases))
            )
    return "\n".join(lines)


def migrations_disabled(nomigrations=False):
    """Why the template's tables come from the models alone, or None:
    pytest-django's ``--nomigrations``, or ``TEST['MIGRATE'] = False`` on
    ``default``."""
    from django.conf import settings

    if nomigrations:
        return "--nomigrations"
    if (settings.DATABASES.get("default", {}).get("TEST") or {}).get("MIGRATE") is False:
        return "TEST['MIGRATE'] = False"
    return None


def _migration_packages():
    """``(app_config, module or None)``: each app's migrations package, None
    for an app whose tables come from its models (Django's own rule)."""
    import importlib

    from django.apps import apps
    from django.db.migrations.loader import MigrationLoader

    found = []
    for app in apps.get_app_configs():
        module_name, _ = MigrationLoader.migrations_module(app.label)
        module = None
        if module_name is not None:
            try:
                module = importlib.import_module(module_name)
            except ImportError:
                module = None
        if module is not None and (
            getattr(module, "__file__", None) is None or not hasattr(module, "__path__")
        ):
            module = None
        found.append((app, module))
    return found


def template_facts(nomigrations=False, setup="create_test_db"):
    """What decides the template's schema, by name: the Django version, the
    apps, where their migrations live, the models of apps without
    migrations, each alias's engine and TEST settings, database caches.
    Workers compute the same to check they are configured like the
    controller that built the template."""
    import django
    from django.conf import settings

    disabled = migrations_disabled(nomigrations)
    packages = _migration_packages()
    facts = {
        "Django version": django.get_version(),
        "template setup": setup,
        "INSTALLED_APPS": "\n".join("%s=%s" % (a.label, a.name) for a, _ in packages),
        "migrations": disabled or "\n".join(
            "%s=%s" % (a.label, m.__name__ if m else "-") for a, m in packages
        ),
        "models without migrations": _model_facts(
            [a for a, m in packages if m is None or disabled]
        ),
        "DATABASES": "\n".join(
            "%s: %s" % (alias, _database_facts(settings.DATABASES[alias]))
            for alias in sorted(settings.DATABASES)
        ),
        "DATABASE_ROUTERS": " ".join(
            r if isinstance(r, str) else "%s.%s" % (type(r).__module__, type(r).__qualname__)
            for r in getattr(settings, "DATABASE_ROUTERS", ())
        ),
        "database caches": " ".join(
            sorted(
                str(c.get("LOCATION"))
                for c in getattr(settings, "CACHES", {}).values()
                if "DatabaseCache" in str(c.get("BACKEND"))
            )
        ),
    }
    return facts


def _input_name(path, root):
    """How an input file is named in fingerprints and messages: relative to
    the project, else to the import path entry it lives in (site-packages), so
    the name is the same on every machine."""
    path = os.path.abspath(path)
    if path.startswith(root + os.sep):
        return os.path.relpath(path, root)
    best = ""
    for entry in sys.path:
        entry = os.path.abspath(entry or ".")
        if path.startswith(entry + os.sep) and len(entry) > len(best):
            best = entry
    return os.path.relpath(path, best) if best else path


def _files_in(directory, suffix=None, recursive=False):
    found = []
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and recursive)
        for name in sorted(filenames):
            if suffix is None or name.endswith(suffix):
                found.append(os.path.join(dirpath, name))
    return found


def template_inputs(extra_files=()):
    """The files the template depends on, as ``{"name", "path"}``: every
    migration file of every installed app (site-packages included), fixture
    files, the settings module's package and ``extra_files`` (conftest and
    pytest configuration files, the script that ran)."""
    from django.conf import settings

    root = os.getcwd()
    paths = []
    for app, module in _migration_packages():
        if module is not None:
            for directory in module.__path__:
                paths.extend(_files_in(directory, ".py"))
        fixtures = os.path.join(app.path, "fixtures")
        if os.path.isdir(fixtures):
            paths.extend(_files_in(fixtures, recursive=True))
    for directory in getattr(settings, "FIXTURE_DIRS", ()):
        if os.path.isdir(str(directory)):
            paths.extend(_files_in(str(directory), recursive=True))
    module_name = getattr(settings, "SETTINGS_MODULE", None) or ""
    settings_file = getattr(sys.modules.get(module_name), "__file__", None)
    if settings_file and "." in module_name:
        # Settings split over a package (base.py, test.py, ...) change together.
        paths.extend(_files_in(os.path.dirname(settings_file), ".py"))
    elif settings_file:
        paths.append(settings_file)
    paths.extend(p for p in extra_files if p and os.path.isfile(p))
    inputs = {}
    for path in paths:
        inputs.setdefault(os.path.abspath(path), _input_name(path, root))
    return [{"name": name, "path": path} for path, name in sorted(inputs.items())]


def databases_report():
    """Each alias's effective settings, for dbfork to find the server (when
    ``--db`` is not given), check the engine and give aliases their clones."""
    from django.conf import settings
    from django.db import connections

    report = {}
    for alias, settings_dict in settings.DATABASES.items():
        connection = connections[alias]
        test = settings_dict.get("TEST") or {}
        report[alias] = {
            "vendor": connection.vendor,
            "engine": settings_dict.get("ENGINE", ""),
            "name": str(settings_dict.get("NAME") or ""),
            "host": str(settings_dict.get("HOST") or ""),
            "port": str(settings_dict.get("PORT") or ""),
            "user": str(settings_dict.get("USER") or ""),
            "password": str(settings_dict.get("PASSWORD") or ""),
            "mirror": test.get("MIRROR") or None,
            "signature": _stable(connection.creation.test_db_signature()),
        }
    return report


def django_configured():
    """Whether Django's settings are configured and its apps loaded."""
    if "django" not in sys.modules:
        return False
    from django.apps import apps
    from django.conf import settings

    return settings.configured and apps.ready


def controller_report(setup, nomigrations=False, extra_files=()):
    """The ``django`` part of the controller's ``configured`` message."""
    from django.conf import settings

    return {
        "settings_module": getattr(settings, "SETTINGS_MODULE", None) or "",
        "facts": template_facts(nomigrations, setup),
        "inputs": template_inputs(extra_files),
        "databases": databases_report(),
    }


@contextlib.contextmanager
def databases_kept():
    """Django's database settings as they were before, after the block (a
    build points ``default`` at the template): workers forked from the
    controller start from the settings the serial run has."""
    import copy

    from django.conf import settings
    from django.db import connections

    dicts = {}
    for alias in settings.DATABASES:
        for settings_dict in (settings.DATABASES[alias], connections[alias].settings_dict):
            dicts.setdefault(id(settings_dict), (settings_dict, copy.deepcopy(settings_dict)))
    try:
        yield
    finally:
        connections.close_all()
        for settings_dict, saved in dicts.values():
            settings_dict.clear()
            settings_dict.update(saved)


def build_template(target, setup_databases):
    """Builds the template dbfork made empty (``target``: its ``url`` and its
    ``name``, the file's path on SQLite) the way the tests' own setup makes a
    test database: ``setup_databases()`` runs with ``default`` pointed at it,
    which Django's ``create_test_db`` keeps (keepdb) and migrates with
    ``run_syncdb``, then ``createcachetable``. Returns facts for dbfork."""
    from django.apps import apps
    from django.conf import settings
    from django.db import connections

    server = server_settings(target["url"])
    _use_database("default", target["name"], server)
    connection = connections["default"]
    if connection.vendor == "mysql" and (
        (settings.DATABASES["default"].get("TEST") or {}).get("CHARSET")
        or (settings.DATABASES["default"].get("TEST") or {}).get("COLLATION")
    ):
        # dbfork created the database; Django would have given it these.
        with connection.cursor() as cursor:
            cursor.execute(
                "ALTER DATABASE %s%s"
                % (
                    connection.ops.quote_name(target["name"]),
                    connection.creation.sql_table_creation_suffix(),
                )
            )
    try:
        setup_databases()
        tables = set(connections["default"].introspection.table_names())
    finally:
        connections.close_all()
    models = [
        m
        for m in apps.get_models()
        if m._meta.managed and not m._meta.proxy and not m._meta.swapped
    ]
    if models and not any(m._meta.db_table in tables for m in models):
        raise RuntimeError(
            "the template has none of the project's %d model tables (%s, ...): nothing "
            "was migrated into the database `default` points at. Check the database "
            "routers (allow_migrate) and the test settings' DATABASES"
            % (len(models), models[0]._meta.db_table)
        )
    return {"tables": len(tables)}


class FreshClones:
    """``dbfork run --fresh-transactional``: a transactional test runs on a
    fresh clone of its own, made ahead by dbfork, instead of emptying every
    table (Django's flush) when it ends; the worker's own clone is untouched
    and the test's clone is dropped by dbfork.

    Only tests whose data lives in ``default`` alone (and its mirrors), without
    ``serialized_rollback``, take a fresh clone; the others flush as usual.
    """

    active = False

    def __init__(self, wire):
        self.wire = wire
        self.base = None
        _patch_flush()

    @staticmethod
    def eligible(cls):
        """Whether tests of TestCase class ``cls`` take a fresh clone."""
        from django.test import TestCase, TransactionTestCase

        if not (isinstance(cls, type) and issubclass(cls, TransactionTestCase)):
            return False
        if issubclass(cls, TestCase) or getattr(cls, "serialized_rollback", False):
            return False
        return set(cls._databases_names(include_mirrors=False)) <= {"default"}

    def enter(self):
        from django.db import connections

        self.base = connections["default"].settings_dict["NAME"]
        _use_database("default", self.wire.fresh())
        FreshClones.active = True

    def leave(self):
        FreshClones.active = False
        _use_database("default", self.base)


def _patch_flush():
    from django.test import TransactionTestCase

    original = TransactionTestCase._fixture_teardown
    if getattr(original, "_dbfork", False):
        return

    def _fixture_teardown(self):
        if FreshClones.active:
            return  # the clone is thrown away: nothing to empty
        return original(self)

    _fixture_teardown._dbfork = True
    TransactionTestCase._fixture_teardown = _fixture_teardown


def order_group(test):
    """Django's order of a test (``DiscoverRunner.reorder_by``), kept by
    dbfork on every worker: tests that failed to load first, then ``TestCase``
    classes, then the other ``SimpleTestCase`` ones (``TransactionTestCase``
    among them: it empties every table when it ends), then the rest."""
    from django.test import SimpleTestCase, TestCase

    if isinstance(test, unittest.loader._FailedTest):
        return 0
    if isinstance(test, TestCase):
        return 1
    if isinstance(test, SimpleTestCase):
        return 2
    return 3


def _describe(test, root):
    """A test as the protocol's ``TestItem``: id, file, class, group."""
    cls = type(test)
    module = sys.modules.get(cls.__module__)
    path = getattr(module, "__file__", None)
    file = cls.__module__.replace(".", "/") + ".py"
    if path:
        relative = os.path.relpath(path, root)
        if not relative.startswith(".."):
            file = relative
    item = {"id": test.id(), "file": file, "class": "%s.%s" % (cls.__module__, cls.__qualname__)}
    group = order_group(test)
    if group:
        item["group"] = group
    return item


@contextlib.contextmanager
def on_fresh_clone(fresh, eligible):
    """Runs the block on a fresh clone when ``fresh`` (a :class:`FreshClones`,
    or None without ``--fresh-transactional``) is given and ``eligible()``."""
    if fresh is None or not eligible():
        yield
        return
    fresh.enter()
    try:
        yield
    finally:
        fresh.leave()


class _Between(object):
    """Stands in as the result's previous test class once a class was torn
    down early, keeping only its module (see ``DistributedSuite``)."""


def _between(module):
    return type("_Between", (_Between,), {"__module__": module})


class DistributedSuite(unittest.TestSuite):
    """The tests of this worker's run, in the order dbfork hands them out.

    ``run`` is unittest's ``TestSuite.run`` with the loop driven by dbfork:
    class and module fixtures (``setUpClass``, ``setUpTestData``,
    ``setUpModule``) are set up when a class's first test arrives, and torn
    down right after a test whose successor (the next test dbfork gave this
    worker, or none at the end) is of another class or module, so an error in
    ``tearDownClass`` belongs to the class's last test.
    """

    def __init__(self, tests, wire):
        super().__init__()
        self._cases = list(tests)
        self._wire = wire
        self._fresh = FreshClones(wire) if dbfork_worker.fresh_enabled() else None

    def countTestCases(self):
        return len(self._cases)

    def __iter__(self):
        return iter(self._cases)

    def run(self, result, debug=False):
        result._testRunEntered = True
        while True:
            index, next_index = self._wire.next()
            if index is None:
                break
            test = self._cases[index]
            following = None if next_index is None else self._cases[next_index]
            started = time.perf_counter()
            before = _Tally(result)
            self._tearDownPreviousClass(test, result)
            self._handleModuleFixture(test, result)
            self._handleClassSetUp(test, result)
            result._previousTestClass = type(test)
            setup = before.since(result)
            if getattr(type(test), "_classSetupFailed", False) or getattr(
                result, "_moduleSetUpFailed", False
            ):
                if not setup:
                    # Not the class's first test here: its fixture failed with
                    # that one, and none of the class's tests run.
                    setup = [("errors", test, NOT_RUN)]
                phases = [_phase("setup", setup)]
            else:
                if setup:
                    phases = [_phase("setup", setup)]
                else:
                    phases = []
                middle = _Tally(result)
                with on_fresh_clone(self._fresh, lambda: FreshClones.eligible(type(test))):
                    test(result)
                phases.append(_phase("call", middle.since(result), time.perf_counter() - started))
            teardown = self._finish_fixtures(test, following, result)
            if teardown:
                phases.append(_phase("teardown", teardown))
            self._wire.result(index, phases)
        self._tearDownPreviousClass(None, result)
        self._handleModuleTearDown(result)
        result._testRunEntered = False
        return result

    def _finish_fixtures(self, test, following, result):
        """Tears the class (and module) down when the next test is elsewhere;
        returns what that added to the result."""
        if following is not None and type(following) is type(test):
            return []
        before = _Tally(result)
        module = type(test).__module__
        self._tearDownPreviousClass(following, result)
        result._previousTestClass = _between(module)
        if following is None or type(following).__module__ != module:
            self._handleModuleTearDown(result)
            result._previousTestClass = None
        return before.since(result)


class _Tally:
    """The lengths of a unittest result's lists, to see what one test added."""

    KINDS = ("errors", "failures", "skipped", "expectedFailures", "unexpectedSuccesses")

    def __init__(self, result):
        self.lengths = {kind: len(getattr(result, kind)) for kind in self.KINDS}

    def since(self, result):
        """``(kind, test, text)`` for every entry added since."""
        added = []
        for kind in self.KINDS:
            for entry in getattr(result, kind)[self.lengths[kind]:]:
                if kind == "unexpectedSuccesses":
                    added.append((kind, entry, "unexpected success"))
                else:
                    added.append((kind, entry[0], entry[1]))
        return added


NOT_RUN = (
    "not run: the setUpClass of its class (or the setUpModule of its module) "
    "failed; the error is reported with the first of its tests on this worker"
)


def _phase(when, added, duration=0.0):
    """What unittest added to the result in one phase of a test, as a
    protocol phase. Counted as pytest counts: an exception in a test is a
    failure (unittest's errors among them), an exception in a class or module
    fixture an error."""
    kinds = {kind for kind, _, _ in added}
    text = "\n".join(t for _, _, t in added if t) or None
    if kinds & {"errors", "failures", "unexpectedSuccesses"}:
        category = "failed" if when == "call" else "error"
        return dbfork_worker.phase(when, "failed", category, duration, text)
    if "skipped" in kinds:
        return dbfork_worker.phase(when, "skipped", "skipped", duration, text)
    if "expectedFailures" in kinds:
        return dbfork_worker.phase(when, "skipped", "xfailed", duration, None)
    return dbfork_worker.phase(when, "passed", "passed" if when == "call" else "", duration)


class DbforkRunnerMixin:
    """Makes a Django test runner (a ``DiscoverRunner``) a dbfork worker when
    dbfork started the process; without ``DBFORK_SOCKET`` it changes nothing."""

    def __init__(self, *args, **kwargs):
        self._dbfork_socket = dbfork_worker.take_socket_path()
        self._dbfork_parallel = kwargs.get("parallel", 0)
        if self._dbfork_socket:
            # dbfork runs the processes: one worker is one Django process.
            kwargs["parallel"] = 0
            if kwargs.get("shuffle", False) is None:
                # --shuffle without a seed: every worker must find the same
                # order, so the seed comes from the run's id.
                run_id = os.environ.get("DBFORK_RUN_ID", "")
                kwargs["shuffle"] = int(hashlib.sha256(run_id.encode()).hexdigest()[:8], 16)
        super().__init__(*args, **kwargs)
        self._dbfork_wire = None

    def run_tests(self, test_labels, **kwargs):
        global _took_part
        if not self._dbfork_socket and _took_part:
            return _run_again(test_labels)
        if not self._dbfork_socket:
            jobs = _handoff_jobs(self._dbfork_parallel)
            if jobs is not None:
                command = [sys.executable] + dbfork_worker.without_option(sys.argv, "--parallel")
                dbfork_worker.hand_off(jobs, command, "manage.py test --parallel")
            return super().run_tests(test_labels, **kwargs)
        wire = dbfork_worker.Worker(self._dbfork_socket, ADAPTER, __version__, lookahead=2)
        wire.maxfail = 1 if self.failfast else 0
        try:
            wire.connect()
        except OSError as e:
            sys.stderr.write(wire.connect_error(e) + "\n")
            sys.exit(dbfork_worker.EXIT_LOST_RUNNER)
        self._dbfork_wire = wire
        if dbfork_worker.is_controller():
            try:
                self._dbfork_control()
            finally:
                wire.close()
                _took_part = "controller"
            return 0
        try:
            return super().run_tests(test_labels, **kwargs)
        except NoCloneError as e:
            # Before any test ran: the run's error, as a collection error.
            wire.collected([], errors=[{"id": "DATABASES", "longrepr": str(e)}])
            wire.wait_for_stop()
            wire.bye()
            return 1
        finally:
            wire.close()
            _took_part = "worker"

    def _dbfork_control(self):
        """The run's controller (``DBFORK_ROLE=controller``), as the main
        process of ``manage.py test --parallel``: configured once, it reports
        what the template depends on and builds it with this runner's own
        ``setup_databases`` (a project's override included), runs no test, and
        stays until dbfork ends the run."""
        report = {"adapter": ADAPTER, "django": controller_report(self._dbfork_setup_name())}
        dbfork_worker.serve_as_controller(self._dbfork_wire, report, self._dbfork_build)
        self._dbfork_wire.bye()

    def _dbfork_setup_name(self):
        """How the template is made: Django's ``create_test_db``, through the
        runner class that overrides ``setup_databases`` if there is one."""
        from django.test.runner import DiscoverRunner

        for cls in type(self).__mro__[1:]:
            if cls is DbforkRunnerMixin or "setup_databases" not in vars(cls):
                continue
            if cls is DiscoverRunner:
                break
            return "create_test_db via %s.%s.setup_databases" % (cls.__module__, cls.__qualname__)
        return "create_test_db"

    def _dbfork_build(self, target):
        # Django's create_test_db keeps the empty database dbfork made (keepdb)
        # and migrates it; no parallel clones, no questions.
        self.keepdb = True
        self.interactive = False
        self.parallel = 0

        def setup():
            self.setup_test_environment()
            try:
                super(DbforkRunnerMixin, self).setup_databases(
                    aliases={"default"}, serialized_aliases=set()
                )
            finally:
                self.teardown_test_environment()

        return build_template(target, setup)

    def setup_databases(self, **kwargs):
        if not self._dbfork_socket:
            return super().setup_databases(**kwargs)
        from django.db import connections

        point_django_at_clones(used=set(kwargs.get("aliases") or ()))
        serialized = kwargs.get("serialized_aliases") or ()
        for alias in serialized:
            connection = connections[alias]
            connection._test_serialized_contents = connection.creation.serialize_db_to_string()
        if self.debug_sql:
            for alias in connections:
                connections[alias].force_debug_cursor = True
        return None

    def teardown_databases(self, old_config, **kwargs):
        if not self._dbfork_socket:
            return super().teardown_databases(old_config, **kwargs)
        # Nothing to drop: dbfork drops the clones once the workers are gone,
        # whatever connections a test left open.
        from django.db import connections

        connections.close_all()

    def run_suite(self, suite, **kwargs):
        if not self._dbfork_socket:
            return super().run_suite(suite, **kwargs)
        from django.test.utils import iter_test_cases

        cases = list(iter_test_cases(suite))
        root = os.getcwd()
        facts = template_facts() if template_is_djangos() else None
        self._dbfork_wire.collected(
            [_describe(test, root) for test in cases], django_facts=facts
        )
        if not cases:
            self._dbfork_wire.wait_for_stop()
            self._dbfork_wire.bye()
            return unittest.TestResult()
        try:
            return super().run_suite(DistributedSuite(cases, self._dbfork_wire), **kwargs)
        finally:
            self._dbfork_wire.bye()


# Whether this process's test run under dbfork is over ("controller" or
# "worker") or not yet (None): a script may call run_tests() again after it.
_took_part = None


def _run_again(test_labels):
    """A later ``run_tests()`` of a process whose dbfork run is over (a
    ``runtests.py`` that runs two label sets one after the other). Run as
    Django would, it would make its own test database on the project's
    server; under dbfork it runs nothing. The controller ends quietly (it runs
    no tests anyway); a worker says which tests were not run and exits with
    ``EXIT_RUN_AGAIN``, which dbfork reports as the run's error."""
    if _took_part == "controller":
        return 0
    sys.stdout.flush()
    script = os.path.basename(sys.argv[0] or "") or "the script"
    sys.stderr.write(
        "dbfork: run_tests(%r) was not run: dbfork runs one test run per process. Give "
        "each label set a dbfork run of its own (e.g. `dbfork run -- python %s <labels>` "
        "where the script takes labels), or run that part serially.\n"
        % (list(test_labels or []), script)
    )
    sys.stderr.flush()
    sys.exit(dbfork_worker.EXIT_RUN_AGAIN)


def _handoff_jobs(parallel):
    """``--parallel`` as dbfork's ``-j`` when this runner (set as
    ``TEST_RUNNER``, outside dbfork) hands the run to dbfork: ``"auto"`` (or
    ``DJANGO_TEST_PROCESSES``) or the number; None to run as Django does
    (``--parallel`` 0 or 1, or already under dbfork)."""
    if dbfork_worker.handed_off():
        return None
    if parallel == "auto":
        return os.environ.get("DJANGO_TEST_PROCESSES") or "auto"
    try:
        parallel = int(parallel or 0)
    except (TypeError, ValueError):
        return None
    return str(parallel) if parallel > 1 else None


_MIXED = {}


def runner_class(base):
    """``base`` (a test runner class) with :class:`DbforkRunnerMixin` in front,
    one class per base."""
    if isinstance(base, type) and issubclass(base, DbforkRunnerMixin):
        return base
    mixed = _MIXED.get(base)
    if mixed is None:
        mixed = type(base.__name__, (DbforkRunnerMixin, base), {"__module__": __name__})
        _MIXED[base] = mixed
    return mixed


def __getattr__(name):
    # `manage.py test --testrunner dbfork_django.Runner`: the project's own
    # TEST_RUNNER with the mixin in front, made when Django asks for it.
    if name == "Runner":
        from django.conf import settings
        from django.test.utils import get_runner

        if settings.TEST_RUNNER.startswith(__name__ + "."):
            # TEST_RUNNER names this module's runner already.
            from django.test.runner import DiscoverRunner as base
        else:
            base = get_runner(settings)
        runner = runner_class(base)
        globals()["Runner"] = runner
        return runner
    if name == "DiscoverRunner":
        from django.test.runner import DiscoverRunner as Base

        runner = runner_class(Base)
        globals()["DiscoverRunner"] = runner
        return runner
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
