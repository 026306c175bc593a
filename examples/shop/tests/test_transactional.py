"""TransactionTestCase and transactional_db tests: real commits, on_commit, rollbacks."""
import pytest
from django.db import IntegrityError, connection, transaction
from django.test import TransactionTestCase

from accounts.models import Customer
from catalog.models import Brand, Tag
from orders.models import Order, OrderStatusHistory
from shop.testing import make


class CommitTests(TransactionTestCase):
    def test_on_commit_runs_after_commit(self):
        calls = []
        with transaction.atomic():
            Tag.objects.create(name="tx-a", slug="tx-a")
            transaction.on_commit(lambda: calls.append("done"))
            self.assertEqual(calls, [])
        self.assertEqual(calls, ["done"])

    def test_on_commit_dropped_on_rollback(self):
        calls = []
        with self.assertRaises(RuntimeError):
            with transaction.atomic():
                transaction.on_commit(lambda: calls.append("done"))
                raise RuntimeError("boom")
        self.assertEqual(calls, [])

    def test_rollback_discards_rows(self):
        try:
            with transaction.atomic():
                Brand.objects.create(name="tx-brand", slug="tx-brand")
                Brand.objects.create(name="tx-brand", slug="tx-brand-2")
        except IntegrityError:
            pass
        self.assertFalse(Brand.objects.filter(name="tx-brand").exists())

    def test_savepoint_keeps_outer_work(self):
        with transaction.atomic():
            Tag.objects.create(name="tx-outer", slug="tx-outer")
            try:
                with transaction.atomic():
                    Tag.objects.create(name="tx-outer", slug="tx-inner")
            except IntegrityError:
                pass
        self.assertEqual(list(Tag.objects.filter(slug__startswith="tx-").values_list("slug", flat=True)), ["tx-outer"])

    def test_autocommit_outside_atomic(self):
        self.assertTrue(connection.get_autocommit())
        self.assertFalse(connection.in_atomic_block)


class SignalInTransactionTests(TransactionTestCase):
    def test_history_created_with_order(self):
        order = make(Order, subtotal=0, total=0)
        self.assertEqual(OrderStatusHistory.objects.filter(order=order).count(), 1)

    def test_select_for_update(self):
        customer = make(Customer)
        with transaction.atomic():
            locked = Customer.objects.select_for_update().get(pk=customer.pk)
            locked.loyalty_points = 42
            locked.save()
        customer.refresh_from_db()
        self.assertEqual(customer.loyalty_points, 42)


@pytest.mark.django_db(transaction=True)
def test_bulk_create_is_committed():
    Tag.objects.bulk_create([Tag(name=f"bulk-{i}", slug=f"bulk-{i}") for i in range(20)])
    assert Tag.objects.filter(slug__startswith="bulk-").count() == 20


def test_atomic_durable(transactional_db):
    with transaction.atomic(durable=True):
        Tag.objects.create(name="durable", slug="durable")
    assert Tag.objects.filter(slug="durable").exists()
