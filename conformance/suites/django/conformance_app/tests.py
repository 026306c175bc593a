import os
import time
import unittest

from django.db import connection
from django.test import SimpleTestCase, TransactionTestCase


class ConformanceTests(SimpleTestCase):
    def test_passes(self):
        self.assertTrue(True)

    def test_fails(self):
        self.assertEqual(1, 2, "fails on purpose")

    @unittest.skip("skipped on purpose")
    def test_skipped(self):
        pass

    def test_slow(self):
        time.sleep(1)

    def test_crashes(self):
        if os.environ.get("DBFORK_CONFORMANCE_CRASH") == "1":
            os._exit(3)


class FreshTests(TransactionTestCase):
    """The optional sixth test: a transactional test, which takes a fresh
    clone of its own under DBFORK_FRESH=1."""

    def test_fresh(self):
        expected = os.environ.get("DBFORK_CONFORMANCE_FRESH")
        if expected:
            self.assertEqual(connection.settings_dict["NAME"], expected)
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            self.assertEqual(cursor.fetchone(), (1,))
