"""SimpleTestCase tests (no database): the DATABASE_URL parser, URLs, settings, model metadata."""
from django.apps import apps
from django.test import SimpleTestCase
from django.urls import resolve, reverse

from shop.dburl import parse_database_url


class DatabaseUrlTests(SimpleTestCase):
    def test_postgres(self):
        d = parse_database_url("postgres://u:p@db.example:5433/shopdb")
        self.assertEqual((d["ENGINE"], d["NAME"], d["USER"], d["PASSWORD"], d["HOST"], str(d["PORT"])),
                         ("django.db.backends.postgresql", "shopdb", "u", "p", "db.example", "5433"))

    def test_postgresql_scheme(self):
        self.assertEqual(parse_database_url("postgresql://u@h/n")["ENGINE"], "django.db.backends.postgresql")

    def test_postgres_socket_query(self):
        d = parse_database_url("postgres://postgres@/n?host=/var/run/postgresql&port=5432")
        self.assertEqual(d["HOST"], "/var/run/postgresql")

    def test_postgres_socket_netloc(self):
        self.assertEqual(parse_database_url("postgres://postgres@%2Fvar%2Frun%2Fpostgresql/n")["HOST"], "/var/run/postgresql")

    def test_postgres_options(self):
        self.assertEqual(parse_database_url("postgres://u@h/n?sslmode=require")["OPTIONS"], {"sslmode": "require"})

    def test_mysql(self):
        d = parse_database_url("mysql://root@127.0.0.1:3306/shop")
        self.assertEqual((d["ENGINE"], d["NAME"]), ("django.db.backends.mysql", "shop"))
        self.assertEqual(d["OPTIONS"].get("charset"), "utf8mb4")

    def test_mariadb_scheme(self):
        self.assertEqual(parse_database_url("mariadb://root@h/n")["ENGINE"], "django.db.backends.mysql")

    def test_sqlite_absolute(self):
        self.assertEqual(parse_database_url("sqlite:////tmp/x.sqlite3")["NAME"], "/tmp/x.sqlite3")

    def test_sqlite_absolute_three_slashes(self):
        self.assertEqual(parse_database_url("sqlite:///tmp/x.sqlite3")["NAME"], "/tmp/x.sqlite3")

    def test_sqlite_engine(self):
        self.assertEqual(parse_database_url("sqlite:////tmp/x.sqlite3")["ENGINE"], "django.db.backends.sqlite3")

    def test_percent_decoding(self):
        self.assertEqual(parse_database_url("postgres://u:p%40ss@h/n")["PASSWORD"], "p@ss")

    def test_unknown_scheme(self):
        with self.assertRaises(ValueError):
            parse_database_url("oracle://u@h/n")


class UrlTests(SimpleTestCase):
    def test_reverse_product_detail(self):
        self.assertEqual(reverse("product-detail", args=["SKU-1"]), "/api/products/SKU-1/")

    def test_resolve_order_detail(self):
        match = resolve("/api/orders/ORD-1/")
        self.assertEqual((match.url_name, match.kwargs), ("order-detail", {"number": "ORD-1"}))

    def test_health_url(self):
        self.assertEqual(reverse("health"), "/health/")


class ModelMetaTests(SimpleTestCase):
    def test_project_model_count(self):
        labels = ["accounts", "catalog", "inventory", "orders", "payments", "shipping", "support", "events", "marketing"]
        self.assertEqual(sum(len(list(apps.get_app_config(a).get_models())) for a in labels), 181)

    def test_product_has_check_constraint(self):
        product = apps.get_model("catalog", "Product")
        self.assertIn("cat_product_price_gte_0", [c.name for c in product._meta.constraints])

    def test_order_default_ordering(self):
        self.assertEqual(apps.get_model("orders", "Order")._meta.ordering, ["-placed_at"])

    def test_orders_signals_connected(self):
        from django.db.models.signals import pre_save

        self.assertTrue(pre_save.has_listeners(apps.get_model("orders", "OrderLine")))
