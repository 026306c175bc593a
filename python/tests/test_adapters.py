"""The Python adapters' own tests, run by pytest (scripts/test):

- both adapters (pytest's plugin, Django's runner) pass the worker-protocol
  conformance harness (conformance/harness.py), and so does the hand-written
  minimal adapter, while each protocol bug it can be made to have is caught;
- what a worker says in its hello of the tool's own options;
- the worker's steal and stop handling, over a real socket pair.

Real processes and sockets throughout: the adapters run as dbfork starts
them (the packages and dbfork's sitecustomize on PYTHONPATH), with the
harness in dbfork's place.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HARNESS = ROOT / "conformance" / "harness.py"
SUITES = ROOT / "conformance" / "suites"
PACKAGES = ["dbfork_worker", "dbfork_pytest", "dbfork_django"]

sys.path.insert(0, str(ROOT / "conformance"))
sys.path.insert(0, str(ROOT / "python"))

import dbfork_worker  # noqa: E402
import harness  # noqa: E402


@pytest.fixture(scope="module")
def pythonpath(tmp_path_factory):
    """The directory dbfork puts first on its workers' PYTHONPATH (see
    crates/dbfork-runner/src/plugin.rs): the adapters and sitecustomize."""
    root = tmp_path_factory.mktemp("adapters")
    for name in PACKAGES:
        shutil.copytree(ROOT / "python" / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "python" / "dbfork_django" / "_sitecustomize.py", root / "sitecustomize.py")
    return str(root)


def conformance(command, cwd, env, *scenarios):
    args = [sys.executable, str(HARNESS), "--timeout", "60"]
    if scenarios:
        args += ["--only", ",".join(scenarios)]
    return subprocess.run(args + ["--"] + command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def adapter_env(pythonpath, **extra):
    env = dict(os.environ, PYTHONPATH=pythonpath, PYTHONDONTWRITEBYTECODE="1")
    for name in ("PYTEST_ADDOPTS", "DJANGO_SETTINGS_MODULE", "DBFORK_SOCKET", "DBFORK_ROLE", "MINIMAL_ADAPTER_BUG"):
        env.pop(name, None)
    env.update(extra)
    return env


PYTEST_COMMAND = [sys.executable, "-m", "pytest", "-p", "dbfork_pytest", "-q"]
DJANGO_COMMAND = [sys.executable, "manage.py", "test"]


@pytest.mark.parametrize(
    "suite, command, summary",
    [
        # pytest's suite has no test_fresh: its fresh clones are pytest-django's.
        ("pytest", PYTEST_COMMAND, "7 of 7 scenarios passed (1 skipped)"),
        ("django", DJANGO_COMMAND, "8 of 8 scenarios passed"),
    ],
)
def test_adapter_passes_the_conformance_harness(pythonpath, suite, command, summary):
    done = conformance(command, SUITES / suite, adapter_env(pythonpath))
    assert done.returncode == 0, done.stdout + done.stderr
    assert summary in done.stdout, done.stdout


def test_the_minimal_adapter_passes():
    command = [sys.executable, str(ROOT / "conformance" / "minimal_adapter.py")]
    done = conformance(command, ROOT, adapter_env(""))
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    "bug, scenario, said",
    [
        ("no-bye", "stop", "ended without `bye`"),
        ("wrong-pid", "collect", "hello's pid is"),
        ("double-want", "run", "a second `want`"),
        ("skip-start", "run", "which is not the test it started last"),
        ("keep-stolen", "steal", "after releasing it"),
        ("wrong-outcome", "run", "test_fails (minimal::test_fails) was passed, expected failed"),
        ("ignore-version", "version", "exited 0 after a message of protocol version"),
    ],
)
def test_the_harness_catches_each_protocol_bug(bug, scenario, said):
    command = [sys.executable, str(ROOT / "conformance" / "minimal_adapter.py")]
    done = conformance(command, ROOT, adapter_env("", MINIMAL_ADAPTER_BUG=bug), scenario)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL " + scenario in done.stdout and said in done.stdout, done.stdout


def hello_of(command, cwd, env):
    """The hello a worker sends, then stops it."""
    worker = harness.Worker(command, 60, env)
    try:
        worker.accept()
        hello = worker.expect("hello")
        worker.expect("collected")
        worker.send({"type": "stop"})
        worker.wait()
        return hello
    finally:
        worker.close()


@pytest.mark.parametrize(
    "args, env, maxfail",
    [
        ([], {}, 0),
        (["-x"], {}, 1),
        (["-xq"], {}, 1),
        (["--maxfail", "3"], {}, 3),
        ([], {"PYTEST_ADDOPTS": "--exitfirst"}, 1),
        ([], {"PYTEST_ADDOPTS": "--maxfail=2"}, 2),
    ],
)
def test_the_pytest_worker_reports_maxfail_as_pytest_parsed_it(pythonpath, monkeypatch, args, env, maxfail):
    monkeypatch.chdir(SUITES / "pytest")
    hello = hello_of(PYTEST_COMMAND + args, SUITES / "pytest", adapter_env(pythonpath, **env))
    assert hello["maxfail"] == maxfail, hello


def test_the_pytest_worker_reports_maxfail_from_the_ini_file(pythonpath, tmp_path, monkeypatch):
    suite = tmp_path / "suite"
    shutil.copytree(SUITES / "pytest", suite)
    (suite / "pytest.ini").write_text("[pytest]\naddopts = -p no:cacheprovider -x\n")
    monkeypatch.chdir(suite)
    hello = hello_of(PYTEST_COMMAND, suite, adapter_env(pythonpath))
    assert hello["maxfail"] == 1, hello


@pytest.mark.parametrize("args, maxfail", [([], 0), (["--failfast"], 1)])
def test_the_django_worker_reports_failfast(pythonpath, monkeypatch, args, maxfail):
    monkeypatch.chdir(SUITES / "django")
    hello = hello_of(DJANGO_COMMAND + args, SUITES / "django", adapter_env(pythonpath))
    assert hello["maxfail"] == maxfail, hello


MADE_DIRECTLY = """
import django
from django.conf import settings
settings.configure()
django.setup()
from django.test.runner import DiscoverRunner
import dbfork_django


class Seeding(DiscoverRunner):
    def setup_databases(self, **kwargs):
        return "seeded"


plain, seeding, again = DiscoverRunner(verbosity=0), Seeding(verbosity=0), DiscoverRunner(failfast=True)
print(type(plain).__mro__[1].__name__, type(plain).__mro__[2] is DiscoverRunner)
print(type(seeding).__mro__[1].__name__, type(seeding).__mro__[2] is Seeding)
print(type(again) is type(plain), again.failfast, plain.verbosity)
# One a test makes in a worker (the socket already taken) never hands off.
import dbfork_worker
print(dbfork_worker.handed_off(), dbfork_django._handoff_jobs(4))
"""


def test_a_runner_the_script_makes_itself_gets_the_mixin_in_front(pythonpath, tmp_path):
    """A DiscoverRunner (or subclass) made directly, not through get_runner
    (django-simple-history's runtests.py), is made as the class with dbfork's
    mixin in front, its own overrides after it, one class per base."""
    out = subprocess.run(
        [sys.executable, "-c", MADE_DIRECTLY],
        cwd=tmp_path,
        env=adapter_env(pythonpath, DBFORK_SOCKET=str(tmp_path / "none.sock")),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:4] == [
        "DbforkRunnerMixin True",
        "DbforkRunnerMixin True",
        "True True 0",
        "True None",
    ], out.stdout


class Runner:
    """dbfork's end of a socket pair with a dbfork_worker.Worker on the other."""

    def __init__(self, lookahead):
        self.ours, theirs = socket.socketpair()
        self.worker = dbfork_worker.Worker("(socketpair)", "test", "0", lookahead=lookahead)
        self.worker.sock = theirs
        self.reader = threading.Thread(target=self.worker._read, daemon=True)
        self.reader.start()
        self.stream = self.ours.makefile("rb")

    def send(self, **message):
        self.ours.sendall((json.dumps(dict({"v": dbfork_worker.PROTOCOL_VERSION}, **message)) + "\n").encode())

    def receive(self):
        """The next message but `want` (asked for whenever the queue is low)."""
        self.ours.settimeout(10)
        while True:
            message = json.loads(self.stream.readline())
            if message["type"] != "want":
                return message

    def close(self):
        self.worker.finished = True
        self.ours.close()


def test_steal_gives_back_all_but_the_committed_next_test():
    runner = Runner(lookahead=2)
    try:
        runner.worker.collected([{"id": "t%d" % i, "file": "f"} for i in range(5)])
        assert runner.receive()["type"] == "collected"
        runner.send(type="run", tests=[0, 1, 2, 3, 4])
        index, following = runner.worker.next()
        assert (index, following) == (0, 1)
        assert runner.receive() == {"v": 1, "type": "started", "index": 0}
        runner.send(type="steal", tests=[1, 2, 4])
        # 1 is test 0's nextitem: it stays; 2 and 4 go back; 3 was not asked.
        assert runner.receive() == {"v": 1, "type": "released", "tests": [2, 4]}
        runner.send(type="stop")
        assert runner.worker.next() == (1, 3)
        assert runner.receive()["index"] == 1
        assert runner.worker.next() == (3, None)
        assert runner.worker.next() == (None, None)
    finally:
        runner.close()


def test_a_worker_without_lookahead_keeps_nothing_back():
    runner = Runner(lookahead=1)
    try:
        runner.worker.collected([{"id": "t%d" % i, "file": "f"} for i in range(3)])
        runner.receive()
        runner.send(type="run", tests=[0, 1, 2])
        assert runner.worker.next() == (0, None)
        assert runner.receive()["type"] == "started"
        runner.send(type="steal", tests=[1, 2])
        assert runner.receive() == {"v": 1, "type": "released", "tests": [1, 2]}
    finally:
        runner.close()


def test_a_command_handed_to_dbfork_loses_only_the_option_that_asked():
    strip = dbfork_worker.without_option
    assert strip(["-q", "--dbfork", "2", "tests"], "--dbfork") == ["-q", "tests"]
    assert strip(["--dbfork=auto", "-x"], "--dbfork") == ["-x"]
    # Without N the next word is the suite's own argument.
    assert strip(["--dbfork", "tests/", "-k", "2"], "--dbfork") == ["tests/", "-k", "2"]
    assert strip(["manage.py", "test", "--parallel", "--noinput"], "--parallel") == [
        "manage.py",
        "test",
        "--noinput",
    ]
    assert strip(["manage.py", "test", "--parallel=4", "shop"], "--parallel") == ["manage.py", "test", "shop"]

