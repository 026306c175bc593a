"""Tests generated from the models of the support app (see shop/testing.py)."""
from shop.testing import schema_test_cases

for _case in schema_test_cases("support"):
    globals()[_case.__name__] = _case
del _case
