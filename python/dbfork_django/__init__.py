"""dbfork's Django adapter: ``manage.py test`` as a dbfork worker.

``dbfork run -j N -- python manage.py test [labels] [options]`` starts N
processes of the command, each on its own clone of the migrated template, and
adds ``--testrunner dbfork_django.Runner``: the project's own test runner class
(``TEST_RUNNER``, Django's ``DiscoverRunner`` by default) with
:class:`DbforkRunnerMixin` in front. Each worker then finds the tests as Django
does (labels, ``--tag``/``--exclude-tag``, ``-k``, ``--reverse``,
``--shuffle``), reports them to dbfork and runs the ``TestCase`` classes dbfork
hands it, on its clone: no test database is created, migrated, cloned or
dropped by Django (dbfork drops the clones, forcefully, after the workers are
gone). ``--failfast`` stops the whole run at the first failure; ``--buffer``
and ``--debug-sql`` work per test as usual; ``--keepdb`` and ``--parallel``
have nothing to do under dbfork.

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


class NoCloneError(Exception):
    """A database alias that dbfork made no clone for."""


_pointed = False


def point_django_at_clones(used=None):
    """Points every alias in ``DATABASES`` at this worker's clone of it.

    ``default`` gets the clone dbfork names in ``DBFORK_DATABASE_NAME`` (or
    ``DBFORK_SQLITE_PATH``); every other alias the clone named for it in
    ``DBFORK_DATABASES`` (``dbfork run --alias NAME``); ``TEST: MIRROR``
    aliases follow their primary, as in Django's own test setup. An alias that
    is neither is an error (when ``used``, the aliases the tests use, is
    given: when one of those): the tests would otherwise write to (and flush)
    the real database the settings name.
    """
    import json

    from django.conf import settings
    from django.db import connections

    global _pointed
    backend, default_name = dbfork_worker.clone_databases()
    if not default_name or _pointed:
        return
    _pointed = True
    names = {"default": default_name}
    extra = os.environ.get(ENV_ALIASES)
    if extra:
        names.update(json.loads(extra))
    mirrors = {}
    for alias, settings_dict in settings.DATABASES.items():
        mirror = (settings_dict.get("TEST") or {}).get("MIRROR")
        if mirror:
            mirrors[alias] = mirror
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
            _use_database(alias, name)
    for alias, mirror in mirrors.items():
        connections[alias].close()
        connections[alias].creation.set_as_test_mirror(connections[mirror].settings_dict)


def _use_database(alias, name):
    """Points ``alias`` (and the mirrors that share its settings) at ``name``."""
    from django.conf import settings
    from django.db import connections

    shared = connections[alias].settings_dict
    for settings_dict in (settings.DATABASES[alias], shared):
        settings_dict["NAME"] = name
        if settings_dict.get("TEST") is None:
            settings_dict["TEST"] = {}
        settings_dict["TEST"]["NAME"] = name
    for connection in connections.all(initialized_only=True):
        if connection.settings_dict is shared or connection.alias == alias:
            connection.close()


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
        if not self._dbfork_socket:
            return super().run_tests(test_labels, **kwargs)
        wire = dbfork_worker.Worker(self._dbfork_socket, ADAPTER, __version__, lookahead=2)
        try:
            wire.connect()
        except OSError as e:
            sys.stderr.write(wire.connect_error(e) + "\n")
            sys.exit(dbfork_worker.EXIT_LOST_RUNNER)
        self._dbfork_wire = wire
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
        self._dbfork_wire.collected([_describe(test, root) for test in cases])
        if not cases:
            self._dbfork_wire.wait_for_stop()
            self._dbfork_wire.bye()
            return unittest.TestResult()
        try:
            return super().run_suite(DistributedSuite(cases, self._dbfork_wire), **kwargs)
        finally:
            self._dbfork_wire.bye()


def _runner_class(base):
    if isinstance(base, type) and issubclass(base, DbforkRunnerMixin):
        return base
    return type(base.__name__, (DbforkRunnerMixin, base), {"__module__": __name__})


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
        runner = _runner_class(base)
        globals()["Runner"] = runner
        return runner
    if name == "DiscoverRunner":
        from django.test.runner import DiscoverRunner as Base

        runner = _runner_class(Base)
        globals()["DiscoverRunner"] = runner
        return runner
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
