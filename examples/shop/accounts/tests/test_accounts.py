"""Hand-written tests of the accounts app."""
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.db import DataError, IntegrityError, transaction
from django.test import TestCase

from accounts.models import Address, Customer, CustomerGroup
from orders.models import Order


class CustomerTests(TestCase):
    @classmethod
    def setUpTestData(cls):
        cls.group = CustomerGroup.objects.create(name="T Group", discount_percent=Decimal("5.00"))
        cls.ann = Customer.objects.create(email="ann@t.test", first_name="Ann", last_name="Lee", group=cls.group)
        cls.bob = Customer.objects.create(email="bob@t.test", first_name="Bob", last_name="Ray", is_active=False)
        Address.objects.create(customer=cls.ann, line1="Old 1", city="Oslo", postal_code="0150", is_default=True,
                               created_at="2024-01-01T00:00:00Z")
        cls.home = Address.objects.create(customer=cls.ann, line1="New 2", city="Oslo", postal_code="0151",
                                          is_default=True, created_at="2024-06-01T00:00:00Z")
        for i, total in enumerate(["10.00", "32.50"]):
            Order.objects.create(number=f"T-A-{i}", customer=cls.ann, subtotal=total, total=total)

    def ours(self):
        return Customer.objects.filter(email__endswith="@t.test")

    def test_str_is_email(self):
        self.assertEqual(str(self.ann), "ann@t.test")

    def test_full_name(self):
        self.assertEqual(self.ann.full_name, "Ann Lee")

    def test_default_address_is_newest_default(self):
        self.assertEqual(self.ann.default_address(), self.home)

    def test_default_address_none(self):
        self.assertIsNone(self.bob.default_address())

    def test_active_queryset(self):
        self.assertEqual(list(self.ours().active()), [self.ann])

    def test_order_stats(self):
        stats = {c.email: (c.order_count, c.order_total) for c in self.ours().with_order_stats()}
        self.assertEqual(stats["ann@t.test"], (2, Decimal("42.50")))
        self.assertEqual(stats["bob@t.test"], (0, None))

    def test_email_unique(self):
        with self.assertRaises(IntegrityError), transaction.atomic():
            Customer.objects.create(email="ann@t.test", first_name="X", last_name="Y")

    def test_group_delete_sets_null(self):
        self.group.delete()
        self.ann.refresh_from_db()
        self.assertIsNone(self.ann.group_id)

    def test_group_reverse_relation(self):
        self.assertEqual(list(self.group.customers.all()), [self.ann])

    def test_addresses_ordered_newest_first(self):
        self.assertEqual([a.line1 for a in self.ann.addresses.all()], ["New 2", "Old 1"])

    def test_user_one_to_one(self):
        user = User.objects.create_user("ann", password="pw")
        self.ann.user = user
        self.ann.save()
        self.assertEqual(User.objects.get(username="ann").customer, self.ann)

    def test_user_delete_sets_null(self):
        user = User.objects.create_user("bob", password="pw")
        Customer.objects.filter(pk=self.bob.pk).update(user=user)
        user.delete()
        self.bob.refresh_from_db()
        self.assertIsNone(self.bob.user_id)

    def test_metadata_json(self):
        Customer.objects.filter(pk=self.bob.pk).update(metadata={"source": "test", "tags": ["a", "b"]})
        self.assertEqual(self.ours().get(metadata__source="test"), self.bob)


@pytest.mark.parametrize(
    "first, last, expected",
    [("Ann", "Lee", "Ann Lee"), ("Ann", "", "Ann"), ("", "Lee", "Lee"), ("Jean-Luc", "Picard", "Jean-Luc Picard")],
)
def test_full_name_formats(first, last, expected):
    assert Customer(first_name=first, last_name=last).full_name == expected


class CustomerFixtureTests(TestCase):
    fixtures = ["customers.json"]

    def test_fixture_customers(self):
        self.assertEqual(Customer.objects.filter(email__endswith="@fixture.example").count(), 3)

    def test_fixture_group_members(self):
        group = CustomerGroup.objects.get(name="Fixture Members")
        self.assertEqual(sorted(group.customers.values_list("first_name", flat=True)), ["Alice", "Bob"])
        self.assertEqual(group.discount_percent, Decimal("7.50"))

    def test_fixture_default_address(self):
        alice = Customer.objects.get(email="alice@fixture.example")
        self.assertEqual(alice.default_address().city, "Uppsala")
        self.assertEqual(alice.addresses.count(), 2)


@pytest.mark.django_db
@pytest.mark.parametrize("points, expected", [(0, 0), (99, 0), (100, 1), (1000, 1), (5000, 1)])
def test_loyalty_points_filter(points, expected):
    Customer.objects.create(email=f"p{points}@pts.test", first_name="P", last_name="Q", loyalty_points=points)
    assert Customer.objects.filter(email__endswith="@pts.test", loyalty_points__gte=100).count() == expected


@pytest.mark.django_db
def test_positive_loyalty_points_enforced():
    # A CHECK constraint on SQLite and PostgreSQL (IntegrityError); an UNSIGNED
    # column on MySQL and MariaDB, whose strict mode rejects it as out of range.
    with pytest.raises((IntegrityError, DataError)):
        Customer.objects.create(email="neg@pts.test", first_name="N", last_name="P", loyalty_points=-1)
