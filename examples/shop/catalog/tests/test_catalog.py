"""Hand-written tests of the catalog app: model methods, querysets, aggregates, fixtures."""
from decimal import Decimal

import pytest
from django.db import IntegrityError, transaction
from django.db.models import Avg, Count, Max, Min
from django.db.models.deletion import ProtectedError
from django.test import TestCase

from catalog.models import Brand, Category, Product, Tag
from orders.models import Order, OrderLine
from shop.testing import make


class CategoryTreeTests(TestCase):
    @classmethod
    def setUpTestData(cls):
        cls.root = Category.objects.create(name="Kitchen", slug="t-kitchen")
        cls.child = Category.objects.create(name="Knives", slug="t-knives", parent=cls.root)
        cls.leaf = Category.objects.create(name="Chef Knives", slug="t-chef", parent=cls.child)
        cls.other = Category.objects.create(name="Garden", slug="t-garden")

    def test_full_path_of_root(self):
        self.assertEqual(self.root.full_path(), "Kitchen")

    def test_full_path_of_leaf(self):
        self.assertEqual(self.leaf.full_path(), "Kitchen / Knives / Chef Knives")

    def test_full_path_custom_separator(self):
        self.assertEqual(self.leaf.full_path(separator=">"), "Kitchen>Knives>Chef Knives")

    def test_descendant_ids(self):
        self.assertCountEqual(self.root.descendant_ids(), [self.root.pk, self.child.pk, self.leaf.pk])
        self.assertEqual(self.leaf.descendant_ids(), [self.leaf.pk])

    def test_children_related_name(self):
        self.assertEqual(list(self.root.children.all()), [self.child])

    def test_ordering_by_position_then_name(self):
        a = Category.objects.create(name="B", slug="t-b", position=5, parent=self.other)
        b = Category.objects.create(name="A", slug="t-a", position=5, parent=self.other)
        c = Category.objects.create(name="Z", slug="t-z", position=1, parent=self.other)
        self.assertEqual(list(self.other.children.all()), [c, b, a])

    def test_slug_is_unique(self):
        with self.assertRaises(IntegrityError), transaction.atomic():
            Category.objects.create(name="Again", slug="t-kitchen")

    def test_delete_cascades_to_children(self):
        self.root.delete()
        self.assertFalse(Category.objects.filter(slug__in=["t-knives", "t-chef"]).exists())

    def test_category_with_products_is_protected(self):
        make(Product, category=self.leaf)
        with self.assertRaises(ProtectedError):
            self.leaf.delete()


class ProductTests(TestCase):
    @classmethod
    def setUpTestData(cls):
        cls.category = Category.objects.create(name="Audio", slug="t-audio")
        cls.sub = Category.objects.create(name="Speakers", slug="t-speakers", parent=cls.category)
        cls.brand = Brand.objects.create(name="T Brand", slug="t-brand")
        cls.cheap = Product.objects.create(sku="T-1", name="Tiny Speaker", slug="tiny", category=cls.sub,
                                           brand=cls.brand, price=Decimal("20.00"), cost=Decimal("15.00"))
        cls.mid = Product.objects.create(sku="T-2", name="Room Speaker", slug="room", category=cls.sub,
                                         price=Decimal("150.00"), cost=Decimal("90.00"))
        cls.dear = Product.objects.create(sku="T-3", name="Studio Monitor", slug="studio", category=cls.category,
                                          brand=cls.brand, price=Decimal("900.00"), cost=Decimal("400.00"))
        cls.hidden = Product.objects.create(sku="T-4", name="Old Speaker", slug="old", category=cls.sub,
                                            price=Decimal("5.00"), is_active=False)

    def ours(self):
        return Product.objects.filter(sku__startswith="T-")

    def test_margin(self):
        self.assertEqual(self.cheap.margin, Decimal("5.00"))

    def test_margin_percent(self):
        self.assertEqual(self.dear.margin_percent, Decimal("55.56"))

    def test_margin_percent_of_free_product(self):
        p = Product(price=Decimal("0.00"), cost=Decimal("0.00"))
        self.assertEqual(p.margin_percent, Decimal("0.00"))

    def test_active_excludes_inactive(self):
        self.assertNotIn(self.hidden, self.ours().active())
        self.assertEqual(self.ours().active().count(), 3)

    def test_in_category_includes_subcategories(self):
        self.assertCountEqual(Product.objects.in_category(self.category), [self.cheap, self.mid, self.dear, self.hidden])

    def test_in_leaf_category(self):
        self.assertCountEqual(Product.objects.in_category(self.sub), [self.cheap, self.mid, self.hidden])

    def test_priced_between(self):
        self.assertEqual(list(self.ours().priced_between(10, 200).order_by("price")), [self.cheap, self.mid])

    def test_negative_price_violates_check_constraint(self):
        with self.assertRaises(IntegrityError), transaction.atomic():
            Product.objects.create(sku="T-neg", name="Neg", slug="neg", category=self.sub, price=Decimal("-0.01"))

    def test_sku_is_unique(self):
        with self.assertRaises(IntegrityError), transaction.atomic():
            Product.objects.create(sku="T-1", name="Dup", slug="dup", category=self.sub, price=1)

    def test_brand_delete_sets_null(self):
        self.brand.delete()
        self.cheap.refresh_from_db()
        self.assertIsNone(self.cheap.brand)

    def test_aggregates(self):
        agg = self.ours().active().aggregate(lo=Min("price"), hi=Max("price"), avg=Avg("price"), n=Count("id"))
        self.assertEqual((agg["lo"], agg["hi"], agg["n"]), (Decimal("20.00"), Decimal("900.00"), 3))
        self.assertAlmostEqual(float(agg["avg"]), 356.6667, places=3)

    def test_count_per_category(self):
        rows = dict(self.ours().values_list("category__slug").annotate(n=Count("id")).order_by())
        self.assertEqual(rows, {"t-speakers": 3, "t-audio": 1})

    def test_units_sold_annotation(self):
        order = make(Order, subtotal=0, total=0)
        OrderLine.objects.create(order=order, product=self.mid, quantity=3, unit_price=self.mid.price)
        OrderLine.objects.create(order=order, product=self.dear, quantity=1, unit_price=self.dear.price)
        sold = dict(self.ours().with_units_sold().values_list("sku", "units_sold"))
        self.assertEqual(sold, {"T-1": 0, "T-2": 3, "T-3": 1, "T-4": 0})

    def test_tags_many_to_many(self):
        t1, t2 = Tag.objects.create(name="t-loud", slug="t-loud"), Tag.objects.create(name="t-small", slug="t-small")
        self.cheap.tags.add(t1, t2)
        self.mid.tags.add(t1)
        self.assertEqual(set(t1.products.values_list("sku", flat=True)), {"T-1", "T-2"})
        self.assertEqual(self.ours().filter(tags=t2).get(), self.cheap)

    def test_json_attribute_lookup(self):
        Product.objects.filter(pk=self.mid.pk).update(attributes={"color": "teal", "watts": 40})
        self.assertEqual(self.ours().filter(attributes__color="teal").get(), self.mid)
        self.assertEqual(self.ours().filter(attributes__watts__gte=30).count(), 1)

    def test_select_related_uses_one_query(self):
        with self.assertNumQueries(1):
            names = [(p.category.name, p.brand and p.brand.name) for p in self.ours().select_related("category", "brand")]
        self.assertEqual(len(names), 4)

    def test_prefetch_related_tags_two_queries(self):
        tag = Tag.objects.create(name="t-pref", slug="t-pref")
        for p in (self.cheap, self.mid, self.dear):
            p.tags.add(tag)
        with self.assertNumQueries(2):
            counts = [len(p.tags.all()) for p in self.ours().prefetch_related("tags")]
        self.assertEqual(sorted(counts), [0, 1, 1, 1])


@pytest.mark.parametrize(
    "price, rate, expected",
    [
        ("100.00", "0.19", "119.00"),
        ("100.00", "0.07", "107.00"),
        ("19.99", "0.19", "23.79"),
        ("0.01", "0.19", "0.01"),
        ("59.90", "0.00", "59.90"),
        ("1234.56", "0.20", "1481.47"),
    ],
)
def test_price_with_tax(price, rate, expected):
    """No database needed: the method is pure arithmetic on an unsaved instance."""
    assert Product(price=Decimal(price)).price_with_tax(Decimal(rate)) == Decimal(expected)


@pytest.mark.parametrize("price, cost, percent", [("10", "5", "50.00"), ("3", "2", "33.33"), ("8", "8", "0.00"), ("4", "5", "-25.00")])
def test_margin_percent_values(price, cost, percent):
    assert Product(price=Decimal(price), cost=Decimal(cost)).margin_percent == Decimal(percent)


class FixtureCatalogTests(TestCase):
    """Data loaded with `fixtures = [...]` (catalog/fixtures/*.json)."""

    fixtures = ["categories.json", "products.json"]

    def test_fixture_categories_loaded(self):
        self.assertEqual(Category.objects.filter(slug__startswith="fx-").count(), 5)

    def test_fixture_tree(self):
        leaf = Category.objects.get(slug="fx-ultralight-tents")
        self.assertEqual(leaf.full_path(), "Outdoor / Tents / Ultralight Tents")

    def test_fixture_products_in_outdoor(self):
        outdoor = Category.objects.get(slug="fx-outdoor")
        self.assertEqual(Product.objects.in_category(outdoor).count(), 6)
        self.assertEqual(Product.objects.in_category(outdoor).active().count(), 5)

    def test_fixture_tags(self):
        self.assertEqual(
            sorted(Product.objects.filter(tags__slug="fx-waterproof").values_list("sku", flat=True)),
            ["FX-TENT-1", "FX-TENT-2"],
        )

    def test_fixture_brand_revenue_potential(self):
        totals = dict(
            Product.objects.filter(sku__startswith="FX-").values_list("brand__slug").annotate(n=Count("id")).order_by()
        )
        self.assertEqual(totals, {"fx-peak": 3, "fx-trail": 2, None: 1})
