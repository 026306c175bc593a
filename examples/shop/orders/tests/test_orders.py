"""Hand-written tests of the orders app: model methods, signals, querysets."""
from decimal import Decimal

import pytest
from django.db import IntegrityError, transaction
from django.test import TestCase

from accounts.models import Customer
from catalog.models import Product
from orders.models import Order, OrderLine, OrderStatusHistory
from shop.testing import make


class OrderTests(TestCase):
    @classmethod
    def setUpTestData(cls):
        cls.customer = Customer.objects.create(email="o@t.test", first_name="O", last_name="T")
        cls.p1 = make(Product, sku="T-O-1", price=Decimal("10.00"))
        cls.p2 = make(Product, sku="T-O-2", price=Decimal("2.50"))
        cls.order = Order.objects.create(number="T-O-1", customer=cls.customer, subtotal=0, total=0)
        OrderLine.objects.create(order=cls.order, product=cls.p1, quantity=2, unit_price=cls.p1.price)
        OrderLine.objects.create(order=cls.order, product=cls.p2, quantity=4, unit_price=cls.p2.price)

    def test_signal_fills_sku(self):
        self.assertEqual(sorted(self.order.lines.values_list("sku", flat=True)), ["T-O-1", "T-O-2"])

    def test_signal_computes_line_total(self):
        self.assertEqual(sorted(self.order.lines.values_list("line_total", flat=True)), [Decimal("10.00"), Decimal("20.00")])

    def test_signal_keeps_explicit_line_total(self):
        line = OrderLine.objects.create(order=self.order, product=self.p1, quantity=1, unit_price=10, line_total=7)
        self.assertEqual(line.line_total, 7)

    def test_status_history_written_on_create(self):
        self.assertEqual(OrderStatusHistory.objects.filter(order=self.order).count(), 1)

    def test_status_history_not_written_on_update(self):
        self.order.notes = "x"
        self.order.save()
        self.assertEqual(OrderStatusHistory.objects.filter(order=self.order).count(), 1)

    def test_recalculate(self):
        self.assertEqual(self.order.recalculate(), Decimal("35.70"))
        self.order.refresh_from_db()
        self.assertEqual((self.order.subtotal, self.order.tax_total, self.order.total),
                         (Decimal("30.00"), Decimal("5.70"), Decimal("35.70")))

    def test_recalculate_without_lines(self):
        empty = Order.objects.create(number="T-O-E", customer=self.customer, subtotal=5, total=5)
        self.assertEqual(empty.recalculate(), Decimal("0.00"))

    def test_recalculate_custom_rate_no_save(self):
        self.assertEqual(self.order.recalculate(tax_rate=Decimal("0.07"), save=False), Decimal("32.10"))
        self.order.refresh_from_db()
        self.assertEqual(self.order.total, Decimal("0"))

    def test_quantity_check_constraint(self):
        with self.assertRaises(IntegrityError), transaction.atomic():
            OrderLine.objects.create(order=self.order, product=self.p1, quantity=0, unit_price=1)

    def test_number_unique(self):
        with self.assertRaises(IntegrityError), transaction.atomic():
            Order.objects.create(number="T-O-1", customer=self.customer, subtotal=0, total=0)

    def test_delete_cascades_lines(self):
        self.order.delete()
        self.assertFalse(OrderLine.objects.filter(sku__startswith="T-O-").exists())

    def test_lines_prefetch(self):
        with self.assertNumQueries(2):
            orders = list(Order.objects.filter(number__startswith="T-O").prefetch_related("lines"))
            self.assertEqual(sum(len(o.lines.all()) for o in orders), 2)


STATUSES = ["pending", "paid", "shipped", "delivered", "cancelled", "refunded"]


@pytest.mark.parametrize("status", STATUSES)
def test_is_open(status):
    assert Order(status=status).is_open == (status in ("pending", "paid"))


@pytest.mark.django_db
@pytest.mark.parametrize("status", STATUSES)
def test_cancel(status):
    order = make(Order, status=status, subtotal=1, total=1)
    if status in ("shipped", "delivered"):
        with pytest.raises(ValueError):
            order.cancel()
        order.refresh_from_db()
        assert order.status == status
    else:
        order.cancel()
        order.refresh_from_db()
        assert order.status == "cancelled"


@pytest.mark.django_db
def test_open_and_revenue():
    customer = make(Customer)
    for i, (status, total) in enumerate([("pending", "10"), ("paid", "20"), ("cancelled", "40"), ("delivered", "80")]):
        Order.objects.create(number=f"T-R-{i}", customer=customer, status=status, subtotal=total, total=total)
    mine = Order.objects.filter(customer=customer)
    assert mine.open().count() == 2
    assert mine.revenue() == Decimal("110.00")
    assert Order.objects.none().revenue() == Decimal("0.00")


@pytest.mark.django_db
def test_order_list_select_related_queries(django_assert_num_queries):
    customer = make(Customer)
    for i in range(5):
        Order.objects.create(number=f"T-Q-{i}", customer=customer, subtotal=1, total=1)
    with django_assert_num_queries(1):
        emails = {o.customer.email for o in Order.objects.filter(number__startswith="T-Q-").select_related("customer")}
    assert emails == {customer.email}


@pytest.mark.django_db
def test_order_list_without_select_related_is_n_plus_one(django_assert_num_queries):
    customer = make(Customer)
    for i in range(3):
        Order.objects.create(number=f"T-N-{i}", customer=customer, subtotal=1, total=1)
    with django_assert_num_queries(4):
        [o.customer.email for o in Order.objects.filter(number__startswith="T-N-")]
