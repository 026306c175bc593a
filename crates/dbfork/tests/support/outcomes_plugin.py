"""A pytest plugin for dbfork's tests: writes each test's outcome, as dbfork's
JSON report names it, to the JSON file ``$OUTCOMES_FILE`` (node id ->
outcome), for the runs dbfork is compared with (serial pytest, pytest-xdist,
whose controller receives every worker's reports).

Load it with ``-p outcomes_plugin`` and this directory on ``PYTHONPATH``.
"""

import json
import os

_phases = {}


def pytest_runtest_logreport(report):
    _phases.setdefault(report.nodeid, []).append(report)


def _outcome(reports):
    # dbfork's Outcome::from_phases, for pytest's reports.
    by_when = {r.when: r for r in reports}
    call = by_when.get("call")
    if call is not None and call.failed:
        return "failed"
    if any(r.failed for r in reports):
        return "error"
    main = call or by_when.get("setup")
    if main is None:
        return "not_run"
    if hasattr(main, "wasxfail"):
        return "x_failed" if main.skipped else "x_passed"
    if main.skipped:
        return "skipped"
    return "passed"


def pytest_sessionfinish(session):
    if hasattr(session.config, "workerinput"):
        return  # a pytest-xdist worker: its controller writes the file
    path = os.environ.get("OUTCOMES_FILE")
    if path:
        with open(path, "w") as f:
            json.dump({nodeid: _outcome(r) for nodeid, r in _phases.items()}, f, indent=1)
