"""Signal receivers of the orders app (example code, not from the benchmark schema).

* pre_save on OrderLine fills `sku` from the product and computes
  `line_total = unit_price * quantity` when they are left empty;
* post_save on Order writes an OrderStatusHistory row when an order is created.
"""
from django.db.models.signals import post_save, pre_save
from django.dispatch import receiver

from .models import Order, OrderLine, OrderStatusHistory


@receiver(pre_save, sender=OrderLine)
def fill_order_line(sender, instance, raw=False, **kwargs):
    if raw:  # loaddata: keep the fixture's values
        return
    if not instance.sku and instance.product_id:
        instance.sku = instance.product.sku
    if instance.line_total is None and instance.unit_price is not None:
        instance.line_total = instance.unit_price * instance.quantity


@receiver(post_save, sender=Order)
def record_order_created(sender, instance, created, raw=False, **kwargs):
    if created and not raw:
        OrderStatusHistory.objects.create(order=instance, currency=instance.currency, quantity=instance.lines.count())
