"""Admin of the orders app: Order with its lines inline, plain admins for the rest."""
from django.apps import apps
from django.contrib import admin

from .models import Order, OrderLine


class OrderLineInline(admin.TabularInline):
    model = OrderLine
    raw_id_fields = ("product",)
    extra = 0


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = ("number", "customer", "status", "total", "placed_at")
    list_filter = ("status",)
    search_fields = ("number", "customer__email")
    list_select_related = ("customer",)
    raw_id_fields = ("customer", "shipping_address", "campaign")
    inlines = [OrderLineInline]
    date_hierarchy = "placed_at"


for model in apps.get_app_config("orders").get_models():
    if not admin.site.is_registered(model):
        admin.site.register(model)
