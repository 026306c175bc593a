#!/usr/bin/env python3
"""The smallest adapter that passes conformance/harness.py: a made-up test
tool with five built-in tests, speaking the worker protocol by hand (no
dbfork_worker, standard library only) and reporting outcomes with the
tool-neutral `outcome` field instead of pytest's phases. It shows what an
adapter for another language has to do, and the harness's own tests use it:
``MINIMAL_ADAPTER_BUG=<name>`` makes it break one rule of the protocol
(see BUGS), which the harness must catch.

    python3 conformance/harness.py -- python3 conformance/minimal_adapter.py
"""

import json
import os
import socket
import sys
import time

TESTS = ["test_passes", "test_fails", "test_skipped", "test_slow", "test_crashes"]
BUGS = {
    "no-bye": "closes without bye after stop",
    "wrong-pid": "says another pid in hello",
    "double-want": "sends want twice without an answer",
    "skip-start": "sends a result without started",
    "keep-stolen": "says it released the stolen tests, then runs them anyway",
    "wrong-outcome": "reports test_fails as passed",
    "ignore-version": "goes on after a message of another protocol version",
}
BUG = os.environ.get("MINIMAL_ADAPTER_BUG", "")


def run_test(name):
    """(outcome, longrepr) of one built-in test."""
    if name == "test_fails":
        return ("passed" if BUG == "wrong-outcome" else "failed"), "expected 1, got 2"
    if name == "test_skipped":
        return "skipped", "skipped on purpose"
    if name == "test_slow":
        time.sleep(1)
    if name == "test_crashes" and os.environ.get("DBFORK_CONFORMANCE_CRASH") == "1":
        os._exit(3)
    return "passed", None


class Connection:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.buffer = b""

    def send(self, **message):
        self.sock.sendall((json.dumps(dict({"v": 1}, **message)) + "\n").encode())

    def receive(self, block=True):
        """The next message from dbfork; None when nothing is waiting
        (block=False); exits when dbfork's end closed."""
        self.sock.setblocking(block)
        try:
            while b"\n" not in self.buffer:
                data = self.sock.recv(65536)
                if not data:
                    sys.stderr.write("minimal adapter: dbfork closed the connection\n")
                    sys.exit(2)
                self.buffer += data
        except BlockingIOError:
            return None
        finally:
            self.sock.setblocking(True)
        line, self.buffer = self.buffer.split(b"\n", 1)
        message = json.loads(line)
        if message.get("v") != 1 and BUG != "ignore-version":
            sys.stderr.write("minimal adapter: protocol version %r, not 1\n" % message.get("v"))
            sys.exit(2)
        return message


def main():
    conn = Connection(os.environ["DBFORK_SOCKET"])
    pid = os.getpid() + (1 if BUG == "wrong-pid" else 0)
    conn.send(type="hello", worker_id=os.environ.get("DBFORK_WORKER_ID", ""), pid=pid, adapter="minimal")
    conn.send(type="collected", tests=[{"id": "minimal::" + t, "file": "minimal"} for t in TESTS])
    queue, stopped, want_out = [], False, True  # `collected` asks for the first work

    def take(message):
        nonlocal stopped, want_out
        kind = message.get("type")
        if kind == "run":
            queue.extend(message["tests"])
            want_out = False
        elif kind == "steal":
            asked = set(message["tests"])
            # The head of the queue stays: it is the next test (a tool
            # that needs no lookahead could give it back too).
            given_back = [i for i in queue[1:] if i in asked]
            if BUG == "keep-stolen":
                conn.send(type="released", tests=given_back)
                return
            queue[:] = [i for i in queue if i not in given_back]
            conn.send(type="released", tests=given_back)
        elif kind == "stop":
            stopped = True

    while True:
        while True:
            message = conn.receive(block=not queue and not stopped)
            if message is None:
                break
            take(message)
        if not queue:
            if stopped:
                break
            continue
        if len(queue) <= 1 and not stopped and not want_out:
            conn.send(type="want")
            if BUG == "double-want":
                conn.send(type="want")
            want_out = True
        index = queue.pop(0)
        if BUG != "skip-start":
            conn.send(type="started", index=index)
        started = time.monotonic()
        outcome, longrepr = run_test(TESTS[index])
        conn.send(type="result", index=index, outcome=outcome, longrepr=longrepr,
                  duration=time.monotonic() - started)
    if BUG != "no-bye":
        conn.send(type="bye")
    return 0


if __name__ == "__main__":
    sys.exit(main())
