"""The conformance suite for the pytest adapter (see conformance/harness.py)."""

import os
import time

import pytest


def test_passes():
    assert True


def test_fails():
    assert 1 == 2, "fails on purpose"


def test_skipped():
    pytest.skip("skipped on purpose")


def test_slow():
    time.sleep(1)


def test_crashes():
    if os.environ.get("DBFORK_CONFORMANCE_CRASH") == "1":
        os._exit(3)
