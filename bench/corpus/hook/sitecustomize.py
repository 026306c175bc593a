"""Outcome recorder for the *serial* reference runs of Django's-runner suites
(bench/corpus.py puts this directory first on PYTHONPATH of those runs only,
never of a dbfork run).

When CORPUS_OUTCOMES names a file, every unittest result (Django's
DiscoverRunner uses unittest's TextTestRunner, so this covers `manage.py test`,
`django-admin test` and `runtests.py` scripts whatever their verbosity or
argument parser) is recorded as `{test.id(): outcome}` and written there as
JSON when the process exits. Several `run_tests()` calls in one process (a
runtests.py that runs two suites) add to the same file.
"""

import atexit
import json
import os

_path = os.environ.get("CORPUS_OUTCOMES")

if _path:
    import unittest.result

    _outcomes = {}
    _rank = {"passed": 0, "skipped": 1, "xfailed": 1, "xpassed": 2, "failed": 3, "error": 4}

    def _record(test, outcome):
        try:
            key = test.id()
        except Exception:  # an _ErrorHolder or something odd
            key = str(test)
        old = _outcomes.get(key)
        if old is None or _rank.get(outcome, 0) >= _rank.get(old, 0):
            _outcomes[key] = outcome

    R = unittest.result.TestResult

    def _wrap(name, outcome):
        original = getattr(R, name)

        def method(self, test, *args, **kwargs):
            _record(test, outcome)
            return original(self, test, *args, **kwargs)

        setattr(R, name, method)

    _wrap("addSuccess", "passed")
    _wrap("addFailure", "failed")
    _wrap("addError", "error")
    _wrap("addSkip", "skipped")
    _wrap("addExpectedFailure", "xfailed")
    _wrap("addUnexpectedSuccess", "xpassed")

    _sub_original = R.addSubTest

    def _add_sub_test(self, test, subtest, err):
        if err is not None:
            failure = issubclass(err[0], test.failureException)
            _record(test, "failed" if failure else "error")
        return _sub_original(self, test, subtest, err)

    R.addSubTest = _add_sub_test

    # A TestCase whose subtests all passed still gets addSuccess: nothing more to do.

    def _write():
        try:
            with open(_path, "w") as f:
                json.dump(_outcomes, f, indent=0, sort_keys=True)
        except OSError:
            pass

    atexit.register(_write)
