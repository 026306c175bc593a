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
    repository; this module follows it. In short: the worker sends ``hello``
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

import collections
import json
import os
import socket
import sys
import threading

import pytest

__version__ = "0.1.0"

PROTOCOL_VERSION = 1
ADAPTER = "pytest"

ENV_SOCKET = "DBFORK_SOCKET"
ENV_WORKER_ID = "DBFORK_WORKER_ID"

# The exit status when dbfork goes away or breaks the protocol (EX_SOFTWARE).
EXIT_LOST_RUNNER = 70

# Ask for more work while this many tests or fewer are waiting, so the next
# batch arrives before the worker runs dry.
WANT_THRESHOLD = 2

_PLUGIN_NAME = "dbfork-worker"


def pytest_configure(config):
    """Registers the worker when dbfork started this process; else does nothing."""
    path = os.environ.pop(ENV_SOCKET, None)
    if not path or config.pluginmanager.has_plugin(_PLUGIN_NAME):
        return
    worker = Worker(config, path)
    config.pluginmanager.register(worker, _PLUGIN_NAME)
    # -x / --maxfail: a worker sees only part of the run, so stopping is
    # dbfork's decision. Left on, pytest would set session.shouldfail, which
    # cannot be unset and makes pytest (8+) tear every fixture down after
    # every test from then on; and collection would stop at the first error,
    # so workers could disagree on what was collected.
    config.option.maxfail = 0
    if config.pluginmanager.has_plugin("django"):
        # Registered now, after pytest-django: a later plugin's fixture of the
        # same name wins (a project's conftest still beats both).
        config.pluginmanager.register(DjangoOnClone(), "dbfork-django")
        worker.django = True
    worker.connect()


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


class DjangoOnClone:
    """pytest-django under dbfork: the worker's database is already there.

    dbfork made this worker's clone of the migrated template before pytest
    started, and drops it (ending every session on it) after the worker is
    gone. So instead of pytest-django's ``django_db_setup`` (create
    ``test_<name>``, run the migrations, drop it at the end, which breaks when
    a thread still holds a connection) the worker points Django's connections
    at the clone and creates, migrates and drops nothing. ``--reuse-db`` and
    ``--create-db`` have nothing left to do and are ignored.
    """

    @pytest.fixture(scope="session")
    def django_db_setup(self):
        point_django_at_clone()
        yield


def point_django_at_clone():
    """Sets the default database's NAME (and TEST NAME) to this worker's clone.

    Settings that read ``DATABASE_URL`` already name it; settings that name a
    database of their own on the same server are pointed at the clone here.
    """
    from django.conf import settings
    from django.db import connections

    backend = os.environ.get("DBFORK_BACKEND")
    if backend == "sqlite":
        name = os.environ.get("DBFORK_SQLITE_PATH")
    else:
        name = os.environ.get("DBFORK_DATABASE_NAME")
    if not name or "default" not in settings.DATABASES:
        return
    for settings_dict in (settings.DATABASES["default"], connections["default"].settings_dict):
        settings_dict["NAME"] = name
        test = settings_dict.get("TEST")
        if test is None:
            test = settings_dict["TEST"] = {}
        test["NAME"] = name
    connections["default"].close()


class Worker:
    """One pytest process's side of the conversation with dbfork.

    The main thread runs tests (``pytest_runtestloop``); a reader thread takes
    dbfork's messages. They share the queue of tests not yet started and the
    flags below under one lock, with a condition variable the main thread
    waits on. Socket writes have their own lock, always taken after the state
    lock when both are needed, so the order of ``started`` and ``released``
    on the wire matches the order of the state changes.
    """

    def __init__(self, config, path):
        self.config = config
        self.path = path
        self.sock = None
        self.write_lock = threading.Lock()
        self.cond = threading.Condition(threading.Lock())
        # Guarded by cond:
        self.queue = collections.deque()  # indices given and not started, in order
        self.head_committed = False  # the queue's head is the running test's nextitem
        self.stopped = False
        self.want_outstanding = False
        self.finished = False  # bye sent (or the socket closed by us): EOF is expected
        # Main thread only:
        self.collect_errors = []
        self.collect_skips = []
        # Set when pytest-django is loaded: tests then carry its order groups.
        self.django = False
        self.reports = None  # the reports of the test being run
        self.forked_child = False

    # -- transport ---------------------------------------------------------

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.path)
        except OSError as e:
            sock.close()
            raise pytest.UsageError(
                "dbfork: cannot connect to the dbfork runner at %s (%s); "
                "unset %s to run pytest without dbfork" % (self.path, e, ENV_SOCKET)
            )
        self.sock = sock
        _keep_stderr()
        if hasattr(os, "register_at_fork"):
            # A test that forks must not hold (or write to) the worker's
            # connection: dbfork sees the worker's death by its closing.
            os.register_at_fork(after_in_child=self._after_fork_in_child)
        self.send(
            {
                "type": "hello",
                "worker_id": os.environ.get(ENV_WORKER_ID, ""),
                "pid": os.getpid(),
                "adapter": ADAPTER,
                "adapter_version": __version__,
            }
        )
        reader = threading.Thread(target=self._read, name="dbfork-reader", daemon=True)
        reader.start()

    def _after_fork_in_child(self):
        self.forked_child = True
        sock, self.sock = self.sock, None
        if sock is not None:
            try:
                os.close(sock.detach())
            except OSError:
                pass

    def send(self, message):
        if self.forked_child:
            return
        message = dict({"v": PROTOCOL_VERSION}, **message)
        # Lone surrogates (possible in captured output) are not valid UTF-8.
        line = json.dumps(message, ensure_ascii=False, separators=(",", ":"))
        data = (line + "\n").encode("utf-8", "replace")
        with self.write_lock:
            sock = self.sock
            if sock is None:
                return
            try:
                sock.sendall(data)
            except OSError as e:
                self._lost("cannot write to dbfork (%s)" % e)

    def _lost(self, why):
        # Read without the lock: send() may hold it already.
        if not self.finished:
            _die(why)

    def _read(self):
        sock = self.sock
        try:
            stream = sock.makefile("rb")
            for raw in stream:
                if not raw.endswith(b"\n"):
                    break  # a partial last line: dbfork's end closed mid-message
                self._handle(raw)
        except (OSError, ValueError) as e:
            self._lost("lost the connection to dbfork (%s)" % e)
            return
        self._lost("dbfork closed the connection")

    def _handle(self, raw):
        try:
            message = json.loads(raw.decode("utf-8"))
        except ValueError:
            _die("not a protocol message from dbfork: %r" % raw[:200])
        if not isinstance(message, dict) or message.get("v") != PROTOCOL_VERSION:
            version = message.get("v") if isinstance(message, dict) else None
            _die(
                "dbfork speaks protocol version %r, this dbfork-pytest %s speaks %d; "
                "install matching versions of dbfork and its adapter"
                % (version, __version__, PROTOCOL_VERSION)
            )
        kind = message.get("type")
        if kind == "run":
            tests = self._indices(message)
            with self.cond:
                self.queue.extend(tests)
                self.want_outstanding = False
                self._want_if_low()
                self.cond.notify_all()
        elif kind == "steal":
            asked = set(self._indices(message))
            with self.cond:
                kept = collections.deque()
                released = []
                for position, index in enumerate(self.queue):
                    if index in asked and not (position == 0 and self.head_committed):
                        released.append(index)
                    else:
                        kept.append(index)
                self.queue = kept
                # Sent under the state lock: a `started` for a test cannot
                # overtake the answer that said it was kept.
                self.send({"type": "released", "tests": released})
                self.cond.notify_all()
        elif kind == "stop":
            with self.cond:
                self.stopped = True
                self.cond.notify_all()
        else:
            sys.stderr.write("dbfork-pytest: ignoring unknown message %r\n" % kind)

    def _indices(self, message):
        tests = message.get("tests")
        count = len(self.items)
        if not isinstance(tests, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < count
            for i in tests
        ):
            _die("dbfork sent test indices outside the %d collected: %r" % (count, tests))
        return tests

    # -- collection --------------------------------------------------------

    items = ()

    @pytest.hookimpl
    def pytest_collectreport(self, report):
        if report.failed:
            self.collect_errors.append(
                {"id": report.nodeid, "longrepr": report.longreprtext}
            )
        elif report.skipped:
            # A whole module skipped at import (allow_module_level=True): pytest
            # counts it as one skipped; so must dbfork.
            longrepr = report.longrepr
            if isinstance(longrepr, tuple) and len(longrepr) == 3:
                path, lineno, reason = longrepr
                text = "%s:%s: %s" % (path, lineno, reason)
            else:
                text = str(longrepr)
            self.collect_skips.append({"id": report.nodeid, "longrepr": text})

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
        with self.cond:
            # dbfork answers `collected` with the first `run` unasked.
            self.want_outstanding = True
        self.send(
            {
                "type": "collected",
                "tests": tests,
                "errors": self.collect_errors,
                "skipped": self.collect_skips,
                "continue_on_errors": bool(
                    self.config.option.continue_on_collection_errors
                ),
            }
        )

    # -- running -----------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session):
        self._send_collected(session)
        if session.config.option.collectonly:
            # Nothing to run; dbfork has the list.
            self._bye()
            return None  # pytest's own loop returns at once for --collect-only
        continue_on_errors = self.config.option.continue_on_collection_errors
        if (self.collect_errors and not continue_on_errors) or not self.items:
            # dbfork ends the run (and picks the exit status); wait for its word.
            with self.cond:
                while not self.stopped:
                    self.cond.wait(1.0)
                self.queue.clear()
            self._bye()
            return True

        # pytest's own loop raises session.Failed / session.Interrupted once
        # session.shouldfail / shouldstop is set. Here dbfork decides what
        # runs: -x / --maxfail are off in workers (see pytest_configure), and
        # if a plugin sets one of the flags anyway (--stepwise, a test calling
        # for it) it is left set and ignored: the worker keeps running what it
        # is given until `stop` (pytest 8+ then tears all fixtures down after
        # each test, which is slower but correct).
        while True:
            index, next_index = self._next()
            if index is None:
                break
            item = self.items[index]
            nextitem = None if next_index is None else self.items[next_index]
            self.reports = []
            try:
                # As pytest's own loop calls it (config.hook, not item.ihook), so
                # conftest hooks apply exactly as in a serial run.
                item.config.hook.pytest_runtest_protocol(item=item, nextitem=nextitem)
                reports = self.reports
            finally:
                self.reports = None
            self.send(self._result(index, reports))
        self._bye()
        return True

    def _next(self):
        """Waits until a test can run; returns its index and its nextitem's.

        Returns (None, None) once stopped with nothing left.
        """
        with self.cond:
            while True:
                self._want_if_low()
                if len(self.queue) >= 2 or (self.stopped and self.queue):
                    index = self.queue.popleft()
                    next_index = self.queue[0] if self.queue else None
                    self.head_committed = next_index is not None
                    self.send({"type": "started", "index": index})
                    self._want_if_low()
                    return index, next_index
                if self.stopped:
                    return None, None
                self.cond.wait(1.0)

    def _want_if_low(self):
        # Called with cond held.
        if (
            not self.stopped
            and not self.want_outstanding
            and len(self.queue) <= WANT_THRESHOLD
        ):
            self.want_outstanding = True
            self.send({"type": "want"})

    def _bye(self):
        with self.cond:
            self.finished = True
        self.send({"type": "bye"})

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report):
        if self.reports is not None:
            self.reports.append(report)

    def _result(self, index, reports):
        config = self.config
        phases = []
        stdout = []
        stderr = []
        for rep in reports:
            status = config.hook.pytest_report_teststatus(report=rep, config=config)
            category = status[0] if status else ""
            phases.append(
                {
                    "when": rep.when,
                    "outcome": rep.outcome,
                    "category": category or "",
                    "duration": float(getattr(rep, "duration", 0.0) or 0.0),
                    "longrepr": self._longrepr(rep),
                }
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
        return {
            "type": "result",
            "index": index,
            "phases": phases,
            "stdout": "".join(stdout),
            "stderr": "".join(stderr),
        }

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
        with self.cond:
            self.finished = True
        with self.write_lock:
            sock, self.sock = self.sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


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


# A copy of the process's stderr, taken before any test runs: while a test
# runs, pytest's output capture has fd 2, and a message written there would be
# lost with the process.
_stderr_fd = 2


def _keep_stderr():
    global _stderr_fd
    try:
        _stderr_fd = os.dup(2)
    except OSError:
        pass


def _die(why):
    try:
        line = "dbfork-pytest: %s; exiting\n" % why
        os.write(_stderr_fd, line.encode("utf-8", "replace"))
    except OSError:
        pass
    os._exit(EXIT_LOST_RUNNER)
