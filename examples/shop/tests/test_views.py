"""The JSON API and the admin, through pytest-django's `client` and `admin_client`."""
from decimal import Decimal

import pytest
from django.apps import apps
from django.contrib import admin
from django.contrib.auth.models import User
from django.urls import reverse

from accounts.models import Customer
from catalog.models import Brand, Category, Product, Tag
from orders.models import Order, OrderLine


@pytest.fixture
def catalog(db):
    root = Category.objects.create(name="V Root", slug="v-root", position=900)
    sub = Category.objects.create(name="V Sub", slug="v-sub", parent=root)
    brand = Brand.objects.create(name="V Brand", slug="v-brand")
    tag = Tag.objects.create(name="v-tag", slug="v-tag")
    products = [
        Product.objects.create(sku=f"V-{i}", name=f"Vase {i}", slug=f"v-{i}", category=sub if i % 2 else root,
                               brand=brand if i < 3 else None, price=Decimal(10 * (i + 1)), is_active=i != 4)
        for i in range(5)
    ]
    products[0].tags.add(tag)
    return {"root": root, "sub": sub, "products": products}


def test_health(client, db):
    response = client.get(reverse("health"))
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_health_rejects_post(client, db):
    assert client.post(reverse("health")).status_code == 405


def test_product_list_by_category(client, catalog):
    data = client.get(reverse("product-list"), {"category": "v-root"}).json()
    assert data["count"] == 4
    assert [p["sku"] for p in data["results"]] == ["V-0", "V-1", "V-2", "V-3"]


def test_product_list_subcategory(client, catalog):
    data = client.get(reverse("product-list"), {"category": "v-sub"}).json()
    assert [p["sku"] for p in data["results"]] == ["V-1", "V-3"]


@pytest.mark.parametrize(
    "params, skus",
    [
        ({"brand": "v-brand"}, ["V-0", "V-1", "V-2"]),
        ({"min_price": "20", "max_price": "30"}, ["V-1", "V-2"]),
        ({"q": "vase 3"}, ["V-3"]),
        ({"limit": "2"}, ["V-0", "V-1"]),
    ],
)
def test_product_list_filters(client, catalog, params, skus):
    data = client.get(reverse("product-list"), {"category": "v-root", **params}).json()
    assert [p["sku"] for p in data["results"]] == skus


@pytest.mark.parametrize("params", [{"limit": "x"}, {"limit": "0"}, {"min_price": "cheap"}])
def test_product_list_bad_parameters(client, catalog, params):
    assert client.get(reverse("product-list"), params).status_code == 400


def test_product_list_unknown_category(client, catalog):
    assert client.get(reverse("product-list"), {"category": "nope"}).status_code == 404


def test_product_list_query_count(client, catalog, django_assert_max_num_queries):
    # category lookup, two levels of descendant_ids(), count, page
    with django_assert_max_num_queries(5):
        client.get(reverse("product-list"), {"category": "v-root"})


def test_product_detail(client, catalog):
    data = client.get(reverse("product-detail", args=["V-0"])).json()
    assert data == {"sku": "V-0", "name": "Vase 0", "price": "10.00", "currency": "EUR", "category": "v-root",
                    "brand": "v-brand", "is_active": True, "tags": ["v-tag"]}


def test_product_detail_404(client, db):
    assert client.get(reverse("product-detail", args=["NOPE"])).status_code == 404


def test_category_list_contains_children(client, catalog):
    results = {c["slug"]: c["children"] for c in client.get(reverse("category-list")).json()["results"]}
    assert results["v-root"] == ["v-sub"]


@pytest.fixture
def order(catalog):
    user = User.objects.create_user("buyer", password="pw")
    customer = Customer.objects.create(email="buyer@v.test", first_name="B", last_name="V", user=user)
    order = Order.objects.create(number="V-ORD-1", customer=customer, subtotal=30, total=35.7)
    OrderLine.objects.create(order=order, product=catalog["products"][2], quantity=1, unit_price=30)
    return order


def test_order_detail_requires_login(client, order):
    assert client.get(reverse("order-detail", args=["V-ORD-1"])).status_code == 401


def test_order_detail_owner(client, order):
    client.force_login(order.customer.user)
    data = client.get(reverse("order-detail", args=["V-ORD-1"])).json()
    assert data["lines"] == [{"sku": "V-2", "quantity": 1, "line_total": "30.00"}]


def test_order_detail_other_user_forbidden(client, order, django_user_model):
    client.force_login(django_user_model.objects.create_user("other", password="pw"))
    assert client.get(reverse("order-detail", args=["V-ORD-1"])).status_code == 403


def test_order_detail_staff(admin_client, order):
    assert admin_client.get(reverse("order-detail", args=["V-ORD-1"])).json()["customer"] == "buyer@v.test"


def test_order_detail_404(admin_client, db):
    assert admin_client.get(reverse("order-detail", args=["NOPE"])).status_code == 404


def test_admin_requires_login(client, db):
    response = client.get("/admin/")
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_admin_index(admin_client):
    response = admin_client.get("/admin/")
    assert response.status_code == 200
    assert b"Catalog" in response.content


@pytest.mark.parametrize("app_label", ["accounts", "catalog", "inventory", "orders", "payments", "shipping",
                                       "support", "events", "marketing"])
def test_every_model_registered_in_admin(app_label):
    missing = [m.__name__ for m in apps.get_app_config(app_label).get_models() if not admin.site.is_registered(m)]
    assert missing == []


@pytest.mark.parametrize("model", ["catalog.product", "catalog.category", "catalog.brand", "orders.order",
                                   "accounts.customer", "accounts.address", "inventory.warehouse",
                                   "payments.payment", "shipping.shipment", "support.ticket",
                                   "events.event", "marketing.campaign"])
def test_admin_changelist(admin_client, model):
    app_label, model_name = model.split(".")
    response = admin_client.get(reverse(f"admin:{app_label}_{model_name}_changelist"))
    assert response.status_code == 200


def test_admin_product_search(admin_client, catalog):
    response = admin_client.get(reverse("admin:catalog_product_changelist"), {"q": "V-3"})
    assert response.status_code == 200
    assert response.context["cl"].result_count == 1


def test_admin_order_change_page_with_inline(admin_client, order):
    response = admin_client.get(reverse("admin:orders_order_change", args=[order.pk]))
    assert response.status_code == 200
    assert b"V-2" in response.content
