"""Tests generated from the models of the inventory app (see shop/testing.py)."""
from shop.testing import schema_test_cases

for _case in schema_test_cases("inventory"):
    globals()[_case.__name__] = _case
del _case
