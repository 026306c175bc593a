"""A small JSON API over the catalog and orders (example views)."""
from decimal import Decimal, InvalidOperation

from django.db import connection
from django.http import JsonResponse
from django.views.decorators.http import require_GET

from catalog.models import Category, Product
from orders.models import Order

MAX_LIMIT = 100


def _product_json(product, with_tags=False):
    data = {
        "sku": product.sku,
        "name": product.name,
        "price": str(product.price),
        "currency": product.currency,
        "category": product.category.slug,
        "brand": product.brand.slug if product.brand_id else None,
        "is_active": product.is_active,
    }
    if with_tags:
        data["tags"] = sorted(t.slug for t in product.tags.all())
    return data


@require_GET
def health(request):
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        (one,) = cursor.fetchone()
    return JsonResponse({"status": "ok" if one == 1 else "error", "vendor": connection.vendor})


@require_GET
def category_list(request):
    qs = Category.objects.filter(parent__isnull=True, is_active=True).prefetch_related("children")
    return JsonResponse({
        "results": [
            {"slug": c.slug, "name": c.name, "children": [ch.slug for ch in c.children.all()]}
            for c in qs
        ]
    })


@require_GET
def product_list(request):
    qs = Product.objects.active().select_related("category", "brand").order_by("sku")
    if slug := request.GET.get("category"):
        category = Category.objects.filter(slug=slug).first()
        if category is None:
            return JsonResponse({"error": "unknown category"}, status=404)
        qs = qs.in_category(category)
    if brand := request.GET.get("brand"):
        qs = qs.filter(brand__slug=brand)
    if q := request.GET.get("q"):
        qs = qs.filter(name__icontains=q)
    try:
        if "min_price" in request.GET:
            qs = qs.filter(price__gte=Decimal(request.GET["min_price"]))
        if "max_price" in request.GET:
            qs = qs.filter(price__lte=Decimal(request.GET["max_price"]))
        limit = min(int(request.GET.get("limit", 20)), MAX_LIMIT)
    except (InvalidOperation, ValueError):
        return JsonResponse({"error": "bad parameter"}, status=400)
    if limit < 1:
        return JsonResponse({"error": "bad parameter"}, status=400)
    return JsonResponse({"count": qs.count(), "results": [_product_json(p) for p in qs[:limit]]})


@require_GET
def product_detail(request, sku):
    product = (
        Product.objects.select_related("category", "brand").prefetch_related("tags").filter(sku=sku).first()
    )
    if product is None:
        return JsonResponse({"error": "not found"}, status=404)
    return JsonResponse(_product_json(product, with_tags=True))


@require_GET
def order_detail(request, number):
    if not request.user.is_authenticated:
        return JsonResponse({"error": "authentication required"}, status=401)
    order = Order.objects.select_related("customer").filter(number=number).first()
    if order is None:
        return JsonResponse({"error": "not found"}, status=404)
    owner = getattr(order.customer, "user_id", None) == request.user.pk
    if not (owner or request.user.is_staff):
        return JsonResponse({"error": "forbidden"}, status=403)
    return JsonResponse({
        "number": order.number,
        "status": order.status,
        "customer": order.customer.email,
        "total": str(order.total),
        "lines": [
            {"sku": line.sku, "quantity": line.quantity, "line_total": str(line.line_total)}
            for line in order.lines.all()
        ],
    })
