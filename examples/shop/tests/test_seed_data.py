"""Tests that read the rows the data migrations inserted (catalog/0003, accounts/0003, orders/0004).

They need the migrated data, so they are TestCases (each runs in a transaction
that is rolled back).  Note: a TransactionTestCase or transactional_db test
empties every table when it ends; pytest-django and Django both run the
TestCases first, so these pass as long as a runner keeps that order within
each worker.
"""
from decimal import Decimal

from django.db.models import Count, Sum
from django.test import TestCase

from accounts.models import Address, Customer, CustomerGroup
from catalog.models import Brand, Category, Product, Tag
from orders.models import Order, OrderLine


class SeedCountTests(TestCase):
    def test_categories(self):
        self.assertEqual(Category.objects.filter(slug__startswith="cat-").count(), 40)
        self.assertEqual(Category.objects.filter(slug__startswith="cat-", parent__isnull=True).count(), 8)

    def test_brands_and_tags(self):
        self.assertEqual(Brand.objects.filter(slug__startswith="brand-").count(), 60)
        self.assertEqual(Tag.objects.filter(slug__startswith="tag-").count(), 50)

    def test_products(self):
        self.assertEqual(Product.objects.filter(sku__startswith="SKU-").count(), 2000)

    def test_customers(self):
        self.assertEqual(Customer.objects.filter(email__endswith="@example.com").count(), 1500)
        self.assertEqual(Address.objects.filter(customer__email__endswith="@example.com").count(), 1500)

    def test_groups(self):
        self.assertEqual(
            dict(CustomerGroup.objects.filter(name__in=["Retail", "VIP"]).values_list("name", "discount_percent")),
            {"Retail": Decimal("0.00"), "VIP": Decimal("5.00")},
        )

    def test_orders(self):
        self.assertEqual(Order.objects.filter(number__startswith="ORD-").count(), 1000)
        self.assertEqual(OrderLine.objects.filter(order__number__startswith="ORD-").count(), 2000)


class SeedConsistencyTests(TestCase):
    def test_every_order_has_two_lines(self):
        counts = set(Order.objects.filter(number__startswith="ORD-").annotate(n=Count("lines")).values_list("n", flat=True))
        self.assertEqual(counts, {2})

    def test_order_subtotals_match_lines(self):
        mismatched = [
            o.number for o in Order.objects.filter(number__startswith="ORD-").annotate(s=Sum("lines__line_total"))
            if o.s != o.subtotal
        ]
        self.assertEqual(mismatched, [])

    def test_order_totals_include_tax(self):
        order = Order.objects.get(number="ORD-0100000")
        self.assertEqual(order.total, order.subtotal + order.tax_total)

    def test_products_only_in_leaf_categories(self):
        self.assertFalse(Product.objects.filter(sku__startswith="SKU-", category__parent__isnull=True).exists())

    def test_electronics_tree(self):
        electronics = Category.objects.get(slug="cat-0")
        self.assertEqual(electronics.name, "Electronics")
        self.assertEqual(len(electronics.descendant_ids()), 5)
