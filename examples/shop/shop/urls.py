"""URLconf of the shop example project: the admin plus a small JSON API."""
from django.contrib import admin
from django.urls import path

from . import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("health/", views.health, name="health"),
    path("api/categories/", views.category_list, name="category-list"),
    path("api/products/", views.product_list, name="product-list"),
    path("api/products/<str:sku>/", views.product_detail, name="product-detail"),
    path("api/orders/<str:number>/", views.order_detail, name="order-detail"),
]
