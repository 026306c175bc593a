"""The tests that make parallel runners' lives hard.

* test_thread_keeps_connection_open: leaves a daemon thread holding a database
  connection for 30 s after the test has passed.  On PostgreSQL, plain
  pytest-django then fails at session teardown with "database ... is being
  accessed by other users" when it drops the test database.
* test_write_through_second_connection_*: a second, raw connection to the same
  database commits a row that the ORM then reads back (needs transactional_db
  so the other connection's commit is visible).
* test_live_server_*: a real HTTP request against live_server with urllib.
"""
import json
import sqlite3
import threading
import time
import urllib.request

import pytest
from django.db import connection, connections

from catalog.models import Tag

HOLD_SECONDS = 30


def _hold_connection(started):
    conn = connections["default"]  # this thread's own connection
    with conn.cursor() as cursor:
        cursor.execute("SELECT 1")
    started.set()
    time.sleep(HOLD_SECONDS)  # never closes it


@pytest.mark.django_db
def test_thread_keeps_connection_open():
    started = threading.Event()
    thread = threading.Thread(target=_hold_connection, args=(started,), daemon=True, name="hold-db-connection")
    thread.start()
    assert started.wait(10)
    assert thread.is_alive()


def _insert_with_raw_connection(name):
    """Insert a Tag through a connection that Django does not manage, and commit."""
    settings_dict = connection.settings_dict
    table = Tag._meta.db_table
    if connection.vendor == "sqlite":
        db_name = settings_dict["NAME"]  # the test database, e.g. file:memorydb_default?mode=memory&cache=shared
        raw = sqlite3.connect(str(db_name), uri=str(db_name).startswith("file:"))
        sql = f"INSERT INTO {table} (name, slug) VALUES (?, ?)"
    elif connection.vendor == "postgresql":
        import psycopg

        raw = psycopg.connect(
            dbname=settings_dict["NAME"], user=settings_dict["USER"] or None,
            password=settings_dict["PASSWORD"] or None, host=settings_dict["HOST"] or None,
            port=settings_dict["PORT"] or None,
        )
        sql = f"INSERT INTO {table} (name, slug) VALUES (%s, %s)"
    else:
        raw = connection.get_new_connection(connection.get_connection_params())
        sql = f"INSERT INTO {table} (name, slug) VALUES (%s, %s)"
    try:
        cursor = raw.cursor()
        cursor.execute(sql, [name, name])
        raw.commit()
    finally:
        raw.close()


def test_write_through_second_connection_driver(transactional_db):
    _insert_with_raw_connection("second-conn-driver")
    assert Tag.objects.get(slug="second-conn-driver").name == "second-conn-driver"


def test_write_through_second_connection_backend(transactional_db):
    """The same through Django's backend: a new raw DB-API connection with the same parameters."""
    raw = connection.get_new_connection(connection.get_connection_params())
    try:
        placeholder = "?" if connection.vendor == "sqlite" else "%s"
        cursor = raw.cursor()
        cursor.execute(f"INSERT INTO {Tag._meta.db_table} (name, slug) VALUES ({placeholder}, {placeholder})",
                       ["second-conn-backend", "second-conn-backend"])
        raw.commit()
    finally:
        raw.close()
    assert Tag.objects.filter(slug="second-conn-backend").count() == 1


def _get_json(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return json.loads(response.read())


def test_live_server_health(live_server):
    assert _get_json(live_server.url + "/health/")["status"] == "ok"


def test_live_server_sees_test_data(live_server):
    Tag.objects.create(name="live-tag", slug="live-tag")
    from catalog.models import Category, Product

    cat = Category.objects.create(name="Live", slug="live-cat")
    product = Product.objects.create(sku="LIVE-1", name="Live Product", slug="live-1", category=cat, price=5)
    product.tags.add(Tag.objects.get(slug="live-tag"))
    data = _get_json(live_server.url + "/api/products/LIVE-1/")
    assert data["tags"] == ["live-tag"]
    assert data["category"] == "live-cat"
