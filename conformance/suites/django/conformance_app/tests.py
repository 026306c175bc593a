import os
import time
import unittest

from django.test import SimpleTestCase


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
