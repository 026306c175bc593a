"""Tests generated from the models of the shipping app (see shop/testing.py)."""
from shop.testing import schema_test_cases

for _case in schema_test_cases("shipping"):
    globals()[_case.__name__] = _case
del _case
