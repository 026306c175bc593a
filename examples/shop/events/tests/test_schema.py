"""Tests generated from the models of the events app (see shop/testing.py)."""
from shop.testing import schema_test_cases

for _case in schema_test_cases("events"):
    globals()[_case.__name__] = _case
del _case
