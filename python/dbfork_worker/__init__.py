"""The worker side of dbfork's protocol, for any Python test tool.

``dbfork run -j N -- <command>`` starts N processes of the command, each on its
own clone of the template database. A tool adapter in each of them (the pytest
plugin ``dbfork_pytest``, the Django test runner ``dbfork_django``) uses this
module to talk to dbfork: it reports what the tool collected, then runs the
tests dbfork hands it, in the order given, and sends back each result, while
dbfork balances the work between the workers (handing out batches, stealing
tests a worker has not started) and writes the run's summary and reports.

The protocol (line-delimited JSON over the Unix socket named by
``DBFORK_SOCKET``, every message with ``"v": 1`` and a ``"type"``) is defined
in one place, ``crates/dbfork-protocol/src/lib.rs`` in the dbfork repository;
this module follows it. In short: the worker sends ``hello`` when it starts,
``collected`` after collection, then ``started`` and ``result`` for every test
it runs and ``want`` when it is running low; dbfork sends ``run`` (more
tests), ``steal`` (give back tests, answered by ``released``) and ``stop``. On
``stop`` the worker runs what it holds, sends ``bye`` and finishes as usual. If
dbfork's end of the socket closes, the worker exits at once with status 70.

Only the standard library is used; Python 3.9+.
"""

import collections
import gc
import json
import os
import socket
import sys
import threading
import time
import traceback

__version__ = "0.1.0"

PROTOCOL_VERSION = 1

ENV_SOCKET = "DBFORK_SOCKET"
ENV_WORKER_ID = "DBFORK_WORKER_ID"
ENV_FRESH = "DBFORK_FRESH"
# "controller": this process configures the test tool once, reports its
# environment and what the template depends on, builds the template when
# asked, and runs no test (as pytest-xdist's controller process).
ENV_ROLE = "DBFORK_ROLE"

# The exit status when dbfork goes away or breaks the protocol (EX_SOFTWARE).
EXIT_LOST_RUNNER = 70
# The exit status, after ``bye``, of a worker whose tool started another test
# run in the same process (a script that calls Django's run_tests() twice):
# dbfork runs one test run per process, so that run's tests were not run; the
# process's last output says which.
EXIT_RUN_AGAIN = 71

# The controller's own variables: a worker forked from it drops them.
CONTROLLER_ONLY = (ENV_ROLE, "DBFORK_FORKING")

# Ask for more work while this many tests or fewer are waiting, so the next
# batch arrives before the worker runs dry.
WANT_THRESHOLD = 2


# Set in the environment of a command re-run under ``dbfork run`` by
# :func:`hand_off`, so it is never handed off twice.
ENV_HANDED_OFF = "DBFORK_HANDED_OFF"


def dbfork_command():
    """The ``dbfork`` command: the one installed beside this Python (the
    wheel's), else the first on ``PATH``; None when there is none."""
    import shutil

    beside = os.path.join(os.path.dirname(sys.executable), "dbfork")
    if os.path.isfile(beside) and os.access(beside, os.X_OK):
        return beside
    return shutil.which("dbfork")


def hand_off(jobs, command, asked_by):
    """Replaces this process with ``dbfork run [-j jobs] -- command``: the
    same test command, run in parallel by dbfork (``jobs`` None: dbfork's own
    setting, ``jobs`` in ``[tool.dbfork]`` or ``DBFORK_JOBS``, else auto).
    ``asked_by`` names the option that asked for it, for the note and the
    error. Returns only when there is no dbfork to hand off to (raises
    RuntimeError with what to do)."""
    binary = dbfork_command()
    if binary is None:
        raise RuntimeError(
            "%s runs the suite under dbfork, but the dbfork command is neither beside "
            "this Python (%s) nor on PATH: install it (`pip install dbfork`) or put it on "
            "PATH" % (asked_by, sys.executable)
        )
    argv = [binary, "run"]
    if jobs:
        argv += ["-j", str(jobs)]
    argv += ["--"] + list(command)
    sys.stderr.write(
        "dbfork: %s: running `dbfork run%s -- ...` (each worker on its own clone of the "
        "template database)\n" % (asked_by, " -j %s" % jobs if jobs else "")
    )
    sys.stderr.flush()
    os.environ[ENV_HANDED_OFF] = "1"
    os.execv(binary, argv)


def without_option(args, name):
    """``args`` without option ``name`` (``--name``, ``--name=N`` and
    ``--name N`` where N is a number or auto): the command line handed to
    dbfork, which runs the workers itself."""
    kept = []
    skip_value = False
    for arg in args:
        if skip_value:
            skip_value = False
            if arg.isdigit() or arg == "auto":
                continue
        if arg == name:
            skip_value = True
            continue
        if arg.startswith(name + "="):
            continue
        kept.append(arg)
    return kept


# Whether dbfork started this process (its socket was taken from the
# environment).
_started_by_dbfork = False


def handed_off():
    """Whether this process already runs under dbfork, or was handed to it:
    a runner or a pytest that a test makes in a worker never hands off."""
    return bool(
        _started_by_dbfork or os.environ.get(ENV_SOCKET) or os.environ.get(ENV_HANDED_OFF)
    )


def take_socket_path():
    """The runner's socket when dbfork started this process, else None.

    It is removed from the environment, so a test tool that a test runs (in a
    subprocess, or in-process) does not become a second worker.
    """
    global _started_by_dbfork
    path = os.environ.pop(ENV_SOCKET, None) or None
    if path:
        _started_by_dbfork = True
    return path


class Worker:
    """One process's side of the conversation with dbfork.

    The tool's main thread runs tests (asking :meth:`next` for each); a reader
    thread takes dbfork's messages. They share the queue of tests not yet
    started and the flags below under one lock, with a condition variable the
    main thread waits on. Socket writes have their own lock, always taken after
    the state lock when both are needed, so the order of ``started`` and
    ``released`` on the wire matches the order of the state changes.

    ``lookahead`` is how many tests must be known before one runs: 2 for a
    tool that tears fixtures down according to the *next* test (pytest's
    ``nextitem``): the head of the queue then becomes the committed next test
    of the running one and can no longer be stolen, and the last test held runs
    once more work or ``stop`` arrives. 1 for a tool that decides when the next
    test starts (unittest).
    """

    def __init__(self, path, adapter, adapter_version, lookahead):
        self.path = path
        self.adapter = adapter
        self.adapter_version = adapter_version
        self.lookahead = lookahead
        self.sock = None
        self.count = 0  # tests collected: valid indices are below it
        self.write_lock = threading.Lock()
        self.cond = threading.Condition(threading.Lock())
        # Guarded by cond:
        self.queue = collections.deque()  # indices given and not started, in order
        self.head_committed = False  # the queue's head is the running test's next
        self.stopped = False
        self.want_outstanding = False
        self.finished = False  # bye sent (or the socket closed by us): EOF is expected
        self.fresh_database = None  # the answer to `fresh`
        self.orders = collections.deque()  # a controller's `build` and `fork` requests
        self.forked_child = False
        # The tool's own "stop after N failures" as the tool resolved it
        # (pytest's -x / --maxfail from the command line, addopts or
        # PYTEST_ADDOPTS; Django's --failfast); None: not known. Set before
        # connect(): it goes in the hello, and dbfork then stops the run.
        self.maxfail = None
        # Its own test failed and the tool stops at the first failure: it
        # runs nothing more (see result()).
        self.failed_out = False

    # -- transport ---------------------------------------------------------

    def connect(self):
        """Connects and says hello; raises OSError when the socket is not there."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
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
                "adapter": self.adapter,
                "adapter_version": self.adapter_version,
                "maxfail": self.maxfail,
            }
        )
        reader = threading.Thread(target=self._read, name="dbfork-reader", daemon=True)
        reader.start()

    def connect_error(self, error):
        """The one-paragraph message for a failed :meth:`connect`."""
        return (
            "dbfork: cannot connect to the dbfork runner at %s (%s); "
            "unset %s to run the tests without dbfork" % (self.path, error, ENV_SOCKET)
        )

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
            die(why)

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
            die("not a protocol message from dbfork: %r" % raw[:200])
        if not isinstance(message, dict) or message.get("v") != PROTOCOL_VERSION:
            version = message.get("v") if isinstance(message, dict) else None
            die(
                "dbfork speaks protocol version %r, this %s adapter %s speaks %d; "
                "install matching versions of dbfork and its adapter"
                % (version, self.adapter, self.adapter_version, PROTOCOL_VERSION)
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
        elif kind == "fresh":
            with self.cond:
                self.fresh_database = message.get("database")
                self.cond.notify_all()
        elif kind in ("build", "fork"):
            with self.cond:
                self.orders.append(message)
                self.cond.notify_all()
        elif kind == "stop":
            with self.cond:
                self.stopped = True
                self.cond.notify_all()
        else:
            sys.stderr.write("dbfork: ignoring unknown message %r\n" % kind)

    def _indices(self, message):
        tests = message.get("tests")
        count = self.count
        if not isinstance(tests, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < count
            for i in tests
        ):
            die("dbfork sent test indices outside the %d collected: %r" % (count, tests))
        return tests

    # -- the conversation --------------------------------------------------

    def collected(
        self, tests, errors=(), skipped=(), continue_on_errors=False, django_facts=None
    ):
        """Sends the collected tests: dicts with ``id``, ``file`` and
        optionally ``class`` and ``group`` (see the protocol's ``TestItem``).
        ``django_facts``: what this worker's settings say the template is."""
        self.count = len(tests)
        with self.cond:
            # dbfork answers `collected` with the first `run` unasked.
            self.want_outstanding = True
        message = {
            "type": "collected",
            "tests": list(tests),
            "errors": list(errors),
            "skipped": list(skipped),
            "continue_on_errors": bool(continue_on_errors),
        }
        if django_facts is not None:
            message["django_facts"] = django_facts
        self.send(message)

    def next(self):
        """Waits until a test can run; returns its index and the next one's.

        The next index is None when unknown (always, with a lookahead of 1).
        Returns (None, None) once stopped with nothing left.
        """
        with self.cond:
            while True:
                if self.failed_out:
                    # What it holds, the committed next test included, goes
                    # back to dbfork with the bye and is not run.
                    self.queue.clear()
                    return None, None
                self._want_if_low()
                if len(self.queue) >= self.lookahead or (self.stopped and self.queue):
                    index = self.queue.popleft()
                    next_index = None
                    if self.lookahead > 1 and self.queue:
                        next_index = self.queue[0]
                    self.head_committed = next_index is not None
                    self.send({"type": "started", "index": index})
                    self._want_if_low()
                    return index, next_index
                if self.stopped:
                    return None, None
                self.cond.wait(1.0)

    def fresh(self):
        """A fresh clone of the template for the next test alone (its name, or
        its path on SQLite); dbfork drops the one asked for before. Only when
        :func:`fresh_enabled`."""
        with self.cond:
            self.fresh_database = None
        self.send({"type": "fresh"})
        with self.cond:
            while self.fresh_database is None:
                self.cond.wait(1.0)
            return self.fresh_database

    def wait_for_stop(self):
        """Waits for dbfork's ``stop`` (when it ends the run without tests)."""
        with self.cond:
            while not self.stopped:
                self.cond.wait(1.0)
            self.queue.clear()

    def next_order(self):
        """A controller's next order: a ``build`` or ``fork`` message, or
        None on ``stop`` (orders that came before it are carried out first)."""
        with self.cond:
            while not self.orders and not self.stopped:
                self.cond.wait(1.0)
            return self.orders.popleft() if self.orders else None

    def _want_if_low(self):
        # Called with cond held.
        if (
            not self.stopped
            and not self.want_outstanding
            and len(self.queue) <= WANT_THRESHOLD
        ):
            self.want_outstanding = True
            self.send({"type": "want"})

    def result(self, index, phases, stdout="", stderr=""):
        """Sends a finished test: phases are dicts with ``when``, ``outcome``,
        ``category``, ``duration`` and ``longrepr`` (see the protocol's ``Phase``).

        A failure when the tool stops at the first one (``maxfail`` 1: pytest's
        ``-x``, Django's ``--failfast``) is this worker's last test, as in a
        serial run: it does not run the test already committed as pytest's
        next one, so a parallel run stops after at most one failure per
        worker, as pytest-xdist's does."""
        if self.maxfail == 1 and any(p.get("outcome") == "failed" for p in phases):
            with self.cond:
                self.failed_out = True
        self.send(
            {
                "type": "result",
                "index": index,
                "phases": phases,
                "stdout": stdout,
                "stderr": stderr,
            }
        )

    def bye(self):
        with self.cond:
            self.finished = True
        self.send({"type": "bye"})

    def close(self):
        """The end of the conversation, when the test process is done. What
        the session made (Django's app registry, the collected items) then
        lives until the process exits, so it is frozen out of the garbage
        collector: the interpreter's last collections over it took most of a
        Django worker's exit (0.85 s of it on the example project; 0.15 s
        frozen). Nothing is skipped: atexit handlers and finalizers still run."""
        gc.freeze()
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


def phase(when, outcome, category, duration=0.0, longrepr=None):
    """One phase of a test result, as the protocol's ``Phase``."""
    return {
        "when": when,
        "outcome": outcome,
        "category": category or "",
        "duration": float(duration or 0.0),
        "longrepr": longrepr,
    }


def is_controller():
    """Whether dbfork started this process as the run's controller."""
    return os.environ.get(ENV_ROLE) == "controller"


def serve_as_controller(wire, report, build, fork=None):
    """The controller's side of the conversation: sends ``configured`` (the
    ``report``, with this process's whole environment added, which dbfork
    passes on to the workers as a pytest-xdist controller does), then carries
    out dbfork's orders until ``stop``: ``build`` (``build(database)`` builds
    the template and returns a dict of facts about the result; answered by
    ``built``) and ``fork`` (see :class:`Forks`; ``fork`` is the adapter's
    ``Forks`` or None when it cannot fork).

    Returns None in the controller once dbfork said ``stop`` and every
    worker forked from it has exited; in a forked worker, at once, the
    ``fork`` order it was made for.

    A failed build is answered with its traceback; the exception is not raised
    further, so the tool still ends normally.
    """
    message = dict(report)
    message["type"] = "configured"
    message["env"] = dict(os.environ)
    message["python"] = sys.executable
    wire.send(message)
    while True:
        order = wire.next_order()
        if order is None:
            if fork is not None:
                fork.wait_all()
            return None
        if order.get("type") == "fork":
            if fork is None:
                wire.send(forked(order, error="this adapter does not fork its workers"))
            elif fork.fork(order) == 0:
                return order
            continue
        started = time.perf_counter()
        try:
            answer = dict(build(order.get("database") or {}) or {})
        except BaseException as e:  # a SystemExit from a command counts too
            answer = {"error": _exception_first(e, traceback.format_exc())}
        answer["type"] = "built"
        answer["seconds"] = time.perf_counter() - started
        wire.send(answer)


def forked(order, pid=None, error=None):
    """The answer to a ``fork`` order: the worker's pid, or why there is none
    (dbfork then starts that worker as a process of its own)."""
    message = {"type": "forked", "slot": order.get("slot"), "generation": order.get("generation")}
    if pid is not None:
        message["pid"] = pid
    if error is not None:
        message["error"] = error
    return message


class ForkRefused(Exception):
    """Why this session cannot be forked into a worker (one sentence)."""


class Forks:
    """Workers forked from the controller, after it configured and collected
    the suite (and built the template): each is the controller's session as
    it stands, turned into a worker by the adapter (``become_worker`` in the
    adapter's child). Every worker then has exactly the controller's settings,
    apps and collected tests, and N workers cost one import and one collection
    instead of N. Linux only (dbfork asks for forks only there).

    ``refuse()`` (the adapter's) returns why this session must not be forked,
    or None; it runs before each fork, with the connections and threads the
    session has at that moment.

    In the child: its own process group (dbfork signals the worker's group),
    killed by the kernel if the controller dies, its output on the FIFO dbfork
    made for it (``output``), its environment the worker's (``env``,
    ``unset``), and the controller's exit handlers dropped (a directory the
    controller's configuration made and cleans up at exit is shared by every
    worker, as with pytest-xdist, and must outlive each of them).

    In the controller: a thread per worker waits for it to exit and tells
    dbfork (``exited``, with the raw wait status).
    """

    def __init__(self, wire, refuse):
        self.wire = wire
        self.refuse = refuse
        self.waiters = []
        self._prctl = None
        try:
            import ctypes

            self._prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            pass

    def fork(self, order):
        """Forks a worker for ``order``: its pid in the controller (after
        answering ``forked``), 0 in the worker."""
        why = None if hasattr(os, "fork") else "this platform cannot fork"
        if why is None:
            try:
                why = self.refuse(order)
            except Exception as e:
                why = "checking whether the session can be forked failed (%s: %s)" % (
                    type(e).__name__,
                    e,
                )
        if why:
            self.wire.send(forked(order, error=why))
            return None
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            try:
                stream.flush()
            except (AttributeError, OSError, ValueError):
                pass
        parent = os.getpid()
        # No gc.freeze() here, though it would spare copying pages: frozen
        # objects are hidden from gc.get_objects(), which tests use
        # (django-extensions' list_signals finds the signals through it).
        import warnings

        with warnings.catch_warnings():
            # Python 3.12+ warns of a fork with threads running: the only ones
            # here are dbfork's own (the reader, the exit waiters), which hold
            # nothing the worker needs.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:
            self._in_child(order, parent)
            return 0
        try:
            os.setpgid(pid, pid)  # as the child does: whichever runs first
        except OSError:
            pass
        self.wire.send(forked(order, pid=pid))
        waiter = threading.Thread(
            target=self._wait, args=(order, pid), name="dbfork-exit-%d" % pid, daemon=True
        )
        waiter.start()
        self.waiters.append(waiter)
        return pid

    def _wait(self, order, pid):
        while True:
            try:
                _pid, status = os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
            except ChildProcessError:
                status = None
                break
        message = {"type": "exited", "slot": order.get("slot"), "generation": order.get("generation")}
        if status is not None:
            message["status"] = status
        self.wire.send(message)

    def wait_all(self):
        """Waits until every forked worker has exited (and dbfork was told)."""
        for waiter in self.waiters:
            waiter.join()

    def _in_child(self, order, parent):
        try:
            os.setpgid(0, 0)
        except OSError:
            pass
        if self._prctl is not None:
            self._prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
        if os.getppid() != parent:
            os._exit(EXIT_LOST_RUNNER)  # the controller died before prctl
        try:
            fd = os.open(order["output"], os.O_WRONLY)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            if fd > 2:
                os.close(fd)
        except (KeyError, OSError) as e:
            die("cannot open the output dbfork made for this worker (%s)" % e)
        for name in tuple(order.get("unset") or ()) + CONTROLLER_ONLY:
            os.environ.pop(name, None)
        os.environ.update(order.get("env") or {})
        _drop_inherited_exit_handlers()


def _drop_inherited_exit_handlers():
    """In a forked worker: the controller's exit handlers and ``atexit``
    finalizers are the controller's (it runs them when the run ends); the
    worker runs only its own, and logging's flush."""
    import atexit
    import weakref

    atexit._clear()
    if "logging" in sys.modules:
        atexit.register(sys.modules["logging"].shutdown)
    _save_coverage_at_exit()
    try:
        for finalizer in list(weakref.finalize._registry):
            finalizer.atexit = False
        weakref.finalize._registered_with_atexit = False
    except AttributeError:
        pass


def _save_coverage_at_exit():
    """``dbfork run --cov`` in a forked worker: the coverage measurement it
    inherited (started in the controller by dbfork's ``sitecustomize``, with
    what the controller ran before the fork) is saved when it exits, to a
    data file of its own (coverage.py names it by the process)."""
    if not os.environ.get("DBFORK_COV") or "coverage" not in sys.modules:
        return
    import atexit

    cov = sys.modules["coverage"].Coverage.current()
    if cov is not None:

        def save():
            cov.stop()
            cov.save()

        atexit.register(save)


def _exception_first(error, trace):
    """A failure as people read it: the exception line, then its traceback."""
    line = "".join(traceback.format_exception_only(type(error), error)).strip()
    return "%s\n\n%s" % (line, trace.rstrip())


def fresh_enabled():
    """Whether dbfork makes fresh clones for transactional tests
    (``dbfork run --fresh-transactional``)."""
    return os.environ.get(ENV_FRESH) == "1"


def clone_databases():
    """This worker's clone: ``(backend, name)`` from dbfork's environment.

    The name is the SQLite file's path for SQLite and the database's name on
    the server otherwise; ``(backend, None)`` outside dbfork.
    """
    backend = os.environ.get("DBFORK_BACKEND")
    if backend == "sqlite":
        return backend, os.environ.get("DBFORK_SQLITE_PATH")
    return backend, os.environ.get("DBFORK_DATABASE_NAME")


# A copy of the process's stderr, taken before any test runs: while a test
# runs, a tool's output capture may have fd 2, and a message written there
# would be lost with the process.
_stderr_fd = 2


def _keep_stderr():
    global _stderr_fd
    try:
        _stderr_fd = os.dup(2)
    except OSError:
        pass


def die(why):
    """Writes why to the real stderr and exits at once with status 70."""
    try:
        line = "dbfork worker: %s; exiting\n" % why
        os.write(_stderr_fd, line.encode("utf-8", "replace"))
    except OSError:
        pass
    os._exit(EXIT_LOST_RUNNER)
