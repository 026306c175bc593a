#!/usr/bin/env python3
"""The worker-protocol conformance harness: plays dbfork's side of the
protocol (crates/dbfork-protocol) against one adapter, with no database and
no dbfork, and says which of the scenarios below the adapter gets right.

    python3 conformance/harness.py [--only a,b] [--timeout S] -- COMMAND...

COMMAND starts the adapter's test tool on a *conformance suite* in the
working directory, as dbfork would start one worker (the harness sets
``DBFORK_SOCKET``, ``DBFORK_WORKER_ID``, ``DBFORK_WORKER``, ``DBFORK_WORKERS``,
``DBFORK_RUN_ID`` and ``PYTEST_XDIST_WORKER``; the environment is otherwise
the harness's own). Exit status: 0 when every scenario passed, 1 when one
failed (each failure says what was expected and what came, with the
worker's output), 4 on bad usage. Written with the standard library only,
for adapters in any language (pytest and Django's runner today).

The conformance suite is the adapter author's: tests whose ids contain these
names, each once, written in the tool's own way:

    test_passes    passes
    test_fails     fails in its body
    test_skipped   is skipped
    test_slow      sleeps about one second, then passes
    test_crashes   passes; but when DBFORK_CONFORMANCE_CRASH=1 is set, the
                   process dies inside the test (exit status 3, no clean-up)

Scenarios (each starts the command afresh):

    collect   hello (worker_id as given, pid of the process, adapter named),
              then collected: every test above once, each with its file;
              stop: bye, then the process exits.
    run       run {all}: started then result for each, in the order given;
              at most one `want` outstanding; stop: bye and exit 0-1. The
              outcomes: passed, failed, skipped, passed, passed.
    steal     run {slow first, then the rest}; on `started` of the slow test,
              steal {the rest}: `released` names a subset of them, none of
              which ever starts; every other test has its result.
    stop      run {all}, then stop at once: the worker still runs everything
              it holds, then bye.
    crash     DBFORK_CONFORMANCE_CRASH=1, run {passes, crashes, fails}:
              passes has its result, crashes is started and has none, the
              connection ends without bye, the process exits non-zero.
    lost      the harness closes its end after `collected`: the process exits
              by itself.
    version   a message of another protocol version: the process exits
              non-zero.
    fresh     only for a suite with a sixth test, test_fresh: a test that
              wants a database of its own (Django: a TransactionTestCase).
              DBFORK_FRESH=1, run {test_fresh}: the worker starts it, asks
              `fresh`, gets a new SQLite file's path (also in
              DBFORK_CONFORMANCE_FRESH, so the test can check it runs there),
              and the test passes. Skipped for a suite without test_fresh.
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

VERSION = 1
NAMES = ["test_passes", "test_fails", "test_skipped", "test_slow", "test_crashes"]
EXPECTED = {
    "test_passes": "passed",
    "test_fails": "failed",
    "test_skipped": "skipped",
    "test_slow": "passed",
    "test_crashes": "passed",
}
SCENARIOS = ["collect", "run", "steal", "stop", "crash", "lost", "version", "fresh"]
# Optional: the fresh scenario runs only for a suite that has it.
OPTIONAL = "test_fresh"


class Failed(Exception):
    pass


class Skipped(Exception):
    pass


def outcome_of(result):
    """A result's outcome: its ``outcome``, or as dbfork derives it from
    pytest-shaped phases (crates/dbfork-runner/src/model.rs)."""
    if result.get("outcome"):
        return result["outcome"]
    phases = result.get("phases") or []

    def failed_in(when):
        return any(p.get("when") == when and p.get("outcome") == "failed" for p in phases)

    if failed_in("call"):
        return "failed"
    if failed_in("setup") or failed_in("teardown"):
        return "error"
    main = next((p for p in phases if p.get("when") == "call"), None) or next(
        (p for p in phases if p.get("when") == "setup"), None
    )
    category = (main or {}).get("category", "")
    if category in ("xfailed", "xpassed", "skipped", "failed", "error"):
        return category
    if main is not None and main.get("outcome") == "skipped":
        return "skipped"
    return "passed"


class Worker:
    """One start of the command, and its connection."""

    def __init__(self, command, timeout, extra_env=None):
        self.timeout = timeout
        self.dir = tempfile.mkdtemp(prefix="dbfork-conformance-")
        path = os.path.join(self.dir, "socket")
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(path)
        self.server.listen(1)
        self.output = open(os.path.join(self.dir, "output"), "w+b")
        env = dict(os.environ)
        env.update(
            {
                "DBFORK_SOCKET": path,
                "DBFORK_WORKER_ID": "0.0",
                "DBFORK_WORKER": "0",
                "DBFORK_WORKERS": "1",
                "DBFORK_RUN_ID": "conformance",
                "PYTEST_XDIST_WORKER": "gw0",
                "PYTEST_XDIST_WORKER_COUNT": "1",
                "DBFORK_FRESH": "0",
            }
        )
        env.update(extra_env or {})
        # The "clone" a fresh request gets: a new SQLite file.
        self.fresh_database = None
        if env["DBFORK_FRESH"] == "1":
            self.fresh_database = os.path.join(self.dir, "fresh.sqlite3")
            env["DBFORK_CONFORMANCE_FRESH"] = self.fresh_database
        self.process = subprocess.Popen(
            command, env=env, stdout=self.output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        self.conn = None
        self.buffer = b""
        self.pending = []  # messages read ahead by arrived()
        self.asked_fresh = False
        self.closed = False

    def accept(self):
        self.server.settimeout(self.timeout)
        try:
            self.conn, _ = self.server.accept()
        except socket.timeout:
            raise Failed("the worker did not connect to DBFORK_SOCKET within %ss" % self.timeout)

    def send(self, message, version=VERSION):
        """Sends a message; a worker that is gone already shows as a close
        on the next receive."""
        line = json.dumps(dict({"v": version}, **message)) + "\n"
        try:
            self.conn.sendall(line.encode())
        except (BrokenPipeError, ConnectionResetError):
            pass

    def arrived(self):
        """The messages already sent, without waiting for more."""
        self.conn.setblocking(False)
        try:
            while not self.closed:
                data = self.conn.recv(65536)
                if not data:
                    self.closed = True
                self.buffer += data
        except BlockingIOError:
            pass
        except ConnectionResetError:
            self.closed = True
        finally:
            self.conn.setblocking(True)
        messages = []
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            messages.append(json.loads(line))
        self.pending.extend(messages)
        return messages

    def receive(self, timeout=None):
        """The next message, or None once the worker closed its end."""
        if self.pending:
            return self.pending.pop(0)
        deadline = time.monotonic() + (timeout or self.timeout)
        while b"\n" not in self.buffer:
            if self.closed:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise Failed("no message from the worker within %ss" % (timeout or self.timeout))
            self.conn.settimeout(left)
            try:
                data = self.conn.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                # The worker died with our last message unread: a close.
                data = b""
            if not data:
                self.closed = True
                if self.buffer:
                    raise Failed("the worker closed mid-line: %r" % self.buffer[:200])
                return None
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        try:
            message = json.loads(line)
        except ValueError:
            raise Failed("not JSON: %r" % line[:200])
        if message.get("v") != VERSION:
            raise Failed("a message without \"v\": %d: %r" % (VERSION, line[:200]))
        return message

    def expect(self, kind):
        message = self.receive()
        if message is None:
            raise Failed("expected `%s`, but the worker closed its connection" % kind)
        if message.get("type") != kind:
            raise Failed("expected `%s`, got %s" % (kind, json.dumps(message)[:300]))
        return message

    def wait(self):
        """The process's exit status (it must exit within the timeout)."""
        try:
            return self.process.wait(self.timeout)
        except subprocess.TimeoutExpired:
            raise Failed("the process did not exit within %ss" % self.timeout)

    def close(self):
        """Ends the process and returns its output (again on a second call)."""
        if self.output.closed:
            return self.text
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for s in (self.conn, self.server):
            if s is not None:
                s.close()
        self.output.seek(0)
        self.text = self.output.read().decode("utf-8", "replace")
        self.output.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        return self.text

    # -- steps every scenario shares ------------------------------------

    def start(self):
        """hello and collected; returns {name: index} of the suite's tests."""
        self.accept()
        hello = self.expect("hello")
        if hello.get("worker_id") != "0.0":
            raise Failed("hello's worker_id is %r, not DBFORK_WORKER_ID (0.0)" % hello.get("worker_id"))
        if hello.get("pid") != self.process.pid:
            raise Failed("hello's pid is %r, not the process's %d" % (hello.get("pid"), self.process.pid))
        if not hello.get("adapter"):
            raise Failed("hello names no adapter")
        maxfail = hello.get("maxfail")
        if maxfail is not None and not (isinstance(maxfail, int) and maxfail >= 0):
            raise Failed("hello's maxfail is %r, not a whole number" % maxfail)
        collected = self.expect("collected")
        tests = collected.get("tests")
        if not isinstance(tests, list):
            raise Failed("collected has no list of tests")
        self.ids = []
        found = {}
        for index, test in enumerate(tests):
            if not isinstance(test, dict) or not test.get("id") or not test.get("file"):
                raise Failed("collected test %d lacks an id or file: %r" % (index, test))
            self.ids.append(test["id"])
            for name in NAMES:
                if name in test["id"]:
                    if name in found:
                        raise Failed("two tests are named %s: %s and %s" % (name, self.ids[found[name]], test["id"]))
                    found[name] = index
        for index, test_id in enumerate(self.ids):
            if OPTIONAL in test_id:
                found[OPTIONAL] = index
        missing = [n for n in NAMES if n not in found]
        if missing:
            raise Failed("the suite lacks %s (collected: %s)" % (", ".join(missing), self.ids))
        if collected.get("errors"):
            raise Failed("collection errors: %r" % collected["errors"])
        self.count = len(tests)
        return found

    def run_until_bye(self, given, on_message=None, answer_want=True):
        """Takes messages until `bye`; checks each test is started once,
        then has one result, and that at most one `want` is outstanding.
        Returns ({index: result}, [released indices], [started order])."""
        results, started, released = {}, [], []
        # `collected` counted as the first want, and the caller's `run`
        # answered it.
        want_out = False
        while True:
            message = self.receive()
            if message is None:
                raise Failed("the connection ended without `bye` (results so far: %s)" % sorted(results))
            kind = message.get("type")
            if on_message is not None and on_message(message):
                pass
            if kind == "started":
                index = message.get("index")
                if index not in given:
                    raise Failed("started %r, which it was not given" % index)
                if index in started or index in released:
                    raise Failed("started %r twice, or after releasing it" % index)
                if started and started[-1] not in results:
                    raise Failed("started %r before the result of %r" % (index, started[-1]))
                started.append(index)
            elif kind == "result":
                index = message.get("index")
                if not started or started[-1] != index or index in results:
                    raise Failed("a result for %r, which is not the test it started last (%s)" % (index, started))
                results[index] = message
            elif kind == "released":
                tests = message.get("tests")
                if not isinstance(tests, list) or any(t in started for t in tests):
                    raise Failed("released %r, including a started test (started: %s)" % (tests, started))
                released.extend(tests)
            elif kind == "want":
                if want_out:
                    raise Failed("a second `want` before the first was answered")
                want_out = True
                if answer_want:
                    # Answered a little later: a second `want` sent before
                    # the answer could arrive breaks the rule for sure.
                    time.sleep(0.2)
                    if any(m.get("type") == "want" for m in self.arrived()):
                        raise Failed("a second `want` before the first was answered")
                    self.send({"type": "stop"})
                    want_out = False
            elif kind == "fresh":
                if not self.fresh_database:
                    raise Failed("asked for a fresh clone, but DBFORK_FRESH is not 1")
                if not started or started[-1] in results:
                    raise Failed("asked for a fresh clone outside a test (it belongs to the started one)")
                self.send({"type": "fresh", "database": self.fresh_database})
                self.asked_fresh = True
            elif kind == "bye":
                break
            else:
                raise Failed("unexpected message %s" % json.dumps(message)[:300])
        order = [i for i in given if i not in released]
        if started != order:
            raise Failed("ran %s; expected the order given, without the released: %s" % (started, order))
        return results, released, started


def check_outcomes(worker, found, results):
    for name, index in found.items():
        if index in results:
            got = outcome_of(results[index])
            if got != EXPECTED.get(name, "passed"):
                raise Failed("%s (%s) was %s, expected %s" % (name, worker.ids[index], got, EXPECTED.get(name, "passed")))


def scenario_collect(w):
    w.start()
    w.send({"type": "stop"})
    message = w.receive()
    if message is None or message.get("type") != "bye":
        raise Failed("after stop, expected bye, got %r" % message)
    w.wait()


def scenario_run(w):
    found = w.start()
    given = list(range(w.count))
    w.send({"type": "run", "tests": given})
    results, _, _ = w.run_until_bye(given)
    check_outcomes(w, found, results)
    missing = [w.ids[i] for i in given if i not in results]
    if missing:
        raise Failed("no result for %s" % missing)
    status = w.wait()
    if status not in (0, 1):
        raise Failed("the process exited %d after a run with failures (expected 0 or 1)" % status)


def scenario_steal(w):
    found = w.start()
    slow = found["test_slow"]
    rest = [i for i in range(w.count) if i != slow]
    given = [slow] + rest
    stolen = {"asked": False}

    def on_message(message):
        if message.get("type") == "started" and message.get("index") == slow and not stolen["asked"]:
            stolen["asked"] = True
            w.send({"type": "steal", "tests": rest})

    w.send({"type": "run", "tests": given})
    results, released, started = w.run_until_bye(given, on_message)
    if not stolen["asked"]:
        raise Failed("test_slow never started")
    if not set(released) <= set(rest):
        raise Failed("released %s, which were not asked for" % released)
    if len(released) < len(rest) - 1:
        raise Failed(
            "released only %s of %s while test_slow ran (all but the committed next test should go)"
            % (released, rest)
        )
    check_outcomes(w, found, results)
    if sorted(list(results) + released) != sorted(given):
        raise Failed("results %s and released %s do not cover %s once each" % (sorted(results), released, given))
    w.wait()


def scenario_stop(w):
    found = w.start()
    given = list(range(w.count))
    w.send({"type": "run", "tests": given})
    w.send({"type": "stop"})
    results, _, _ = w.run_until_bye(given, answer_want=False)
    check_outcomes(w, found, results)
    if sorted(results) != given:
        raise Failed("after stop, ran %s of the %s it held" % (sorted(results), given))
    w.wait()


def scenario_crash(w):
    found = w.start()
    given = [found["test_passes"], found["test_crashes"], found["test_fails"]]
    w.send({"type": "run", "tests": given})
    seen = []
    while True:
        message = w.receive()
        if message is None:
            break
        seen.append(message)
        if message.get("type") == "bye":
            raise Failed("sent bye although test_crashes killed the process")
        if message.get("type") == "want":
            w.send({"type": "stop"})
    results = {m["index"] for m in seen if m.get("type") == "result"}
    started = [m["index"] for m in seen if m.get("type") == "started"]
    if found["test_passes"] not in results:
        raise Failed("no result for test_passes before the crash: %s" % seen)
    if found["test_crashes"] not in started or found["test_crashes"] in results:
        raise Failed("test_crashes should be started and have no result: %s" % seen)
    status = w.wait()
    if status == 0:
        raise Failed("the process exited 0 after dying in a test")


def scenario_lost(w):
    w.start()
    w.conn.shutdown(socket.SHUT_RDWR)
    w.conn.close()
    w.conn = None
    w.wait()


def scenario_version(w):
    w.start()
    w.send({"type": "stop"}, version=VERSION + 998)
    status = w.wait()
    if status == 0:
        raise Failed("the process exited 0 after a message of protocol version %d" % (VERSION + 998))


def scenario_fresh(w):
    found = w.start()
    if OPTIONAL not in found:
        raise Skipped("the suite has no %s" % OPTIONAL)
    given = [found[OPTIONAL]]
    w.send({"type": "run", "tests": given})
    results, _, _ = w.run_until_bye(given)
    asked = w.asked_fresh
    if not asked:
        raise Failed("%s ran without asking for a fresh clone (DBFORK_FRESH=1)" % OPTIONAL)
    check_outcomes(w, {OPTIONAL: given[0]}, results)
    w.wait()


# What a scenario adds to the worker's environment (the fresh clone's file
# is made in the worker's own temporary directory).
ENV = {"crash": {"DBFORK_CONFORMANCE_CRASH": "1"}, "fresh": {"DBFORK_FRESH": "1"}}


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Play dbfork's side of the worker protocol against an adapter.",
        usage="%(prog)s [--only a,b] [--timeout S] -- COMMAND...",
    )
    parser.add_argument("--only", default=",".join(SCENARIOS), help="scenarios: " + ", ".join(SCENARIOS))
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds for each wait (default 60)")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SCENARIOS]
    if not command or unknown:
        parser.print_usage(sys.stderr)
        sys.stderr.write("unknown scenarios: %s\n" % ", ".join(unknown) if unknown else "give the command after --\n")
        return 4
    failed = skipped = 0
    for name in chosen:
        started = time.monotonic()
        worker = Worker(command, args.timeout, ENV.get(name))
        try:
            globals()["scenario_" + name](worker)
        except Skipped as e:
            skipped += 1
            print("skip %-8s %s" % (name, e))
        except Failed as e:
            failed += 1
            print("FAIL %-8s %s" % (name, e))
            output = worker.close().rstrip()
            if output:
                print("     the worker's output:\n" + "\n".join("     | " + l for l in output.splitlines()[-40:]))
        else:
            print("ok   %-8s (%.1fs)" % (name, time.monotonic() - started))
        finally:
            worker.close()
        sys.stdout.flush()
    ran = len(chosen) - skipped
    print("%d of %d scenarios passed%s" % (ran - failed, ran, " (%d skipped)" % skipped if skipped else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
