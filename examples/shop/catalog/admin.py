"""Admin of the catalog app: custom admins for the core models, plain ones for the rest."""
from django.apps import apps
from django.contrib import admin

from .models import Brand, Category, Product


@admin.register(Category)
class CategoryAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "parent", "position", "is_active")
    list_filter = ("is_active",)
    search_fields = ("name", "slug")
    prepopulated_fields = {"slug": ("name",)}


@admin.register(Brand)
class BrandAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "country", "score")
    search_fields = ("name",)


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):
    list_display = ("sku", "name", "category", "brand", "price", "is_active")
    list_filter = ("is_active", "currency")
    search_fields = ("sku", "name")
    list_select_related = ("category", "brand")
    raw_id_fields = ("category", "brand", "default_tax_rate")
    filter_horizontal = ("tags",)


for model in apps.get_app_config("catalog").get_models():
    if not admin.site.is_registered(model):
        admin.site.register(model)
