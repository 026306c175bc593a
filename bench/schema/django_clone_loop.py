#!/usr/bin/env python3
"""Time Django's own test-database cloning (the baseline dbfork competes with).

`manage.py test --parallel N` creates (or keeps) one migrated test database
and then, one after another, calls

    connection.creation.clone_test_db(suffix=str(i), verbosity=..., keepdb=False)

for i in 1..N (django/test/utils.py: setup_databases).  This script does the
same against the already-migrated database that DATABASE_URL points at, prints

    {"clones": N, "seconds": <wall time of the N clone_test_db calls>}

on stdout, checks that every clone really holds the schema (outside the timed
part), and then destroys the clones with destroy_test_db(suffix=str(i)), just
as the test runner's teardown does.

What Django 5.2 does per backend (django/db/backends/*/creation.py):
  * SQLite:     shutil.copy of the database file to <root>_<i><ext>
                (NAME must be a file; in-memory databases are refused here).
  * PostgreSQL: CREATE DATABASE "<name>_<i>" WITH TEMPLATE "<name>"
                (no other session may be connected to <name>).
  * MySQL/MariaDB: CREATE DATABASE `<name>_<i>`, then
                mysqldump --routines --events <name> | mysql <name>_<i>
                (the mysqldump and mysql client programs must be on PATH).

The Django project is examples/shop (settings shop.settings, DATABASE_URL read by
shop/dburl.py).

Usage (venv from bench/setup-venv.sh, database migrated with examples/shop's
manage.py migrate):

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/benchtmp_x \\
        .venv/bin/python bench/schema/django_clone_loop.py -n 4
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent.parent / "examples" / "shop"


def fail(msg: str) -> None:
    sys.stderr.write(f"django_clone_loop: {msg}\n")
    raise SystemExit(2)


def snapshot(conn) -> tuple[int, int]:
    """(number of tables, number of applied migrations) of a connection."""
    try:
        tables = conn.introspection.table_names()
        if "django_migrations" not in tables:
            return len(tables), 0
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM django_migrations")
            return len(tables), cur.fetchone()[0]
    finally:
        conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--clones", type=int, required=True, help="number of clones (like --parallel N)")
    ap.add_argument("-v", "--verbosity", type=int, default=0,
                    help="verbosity passed to clone_test_db/destroy_test_db (Django logs to stderr)")
    ap.add_argument("--keep", action="store_true", help="leave the clones in place instead of destroying them")
    ap.add_argument("--no-verify", action="store_true", help="skip checking the clones' table counts")
    args = ap.parse_args()
    if args.clones < 1:
        fail("-n must be >= 1")
    if not os.environ.get("DATABASE_URL"):
        fail("set DATABASE_URL to the already-migrated database to clone")

    sys.path.insert(0, str(PROJECT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")
    import django

    django.setup()
    from django.db import DEFAULT_DB_ALIAS, connections

    connection = connections[DEFAULT_DB_ALIAS]  # the wrapper itself, not the proxy

    creation = connection.creation
    name = connection.settings_dict["NAME"]
    if connection.vendor == "sqlite":
        if creation.is_in_memory_db(name):
            fail("SQLite cloning needs a database file, not an in-memory database")
        if not os.path.isfile(name):
            fail(f"SQLite database file {name} does not exist (run manage.py migrate first)")

    source = snapshot(connection)
    if source[1] == 0:
        fail(f"{connection.vendor} database {name!r} is not migrated (no django_migrations rows)")

    # The timed part: exactly the loop of django.test.utils.setup_databases.
    started = time.perf_counter()
    for i in range(1, args.clones + 1):
        creation.clone_test_db(suffix=str(i), verbosity=args.verbosity, keepdb=False)
    seconds = time.perf_counter() - started

    problems = []
    if not args.no_verify:
        for i in range(1, args.clones + 1):
            settings = creation.get_test_db_clone_settings(str(i))
            clone = type(connection)(settings, alias=f"clone_{i}")  # separate, unregistered
            try:
                got = snapshot(clone)
            except Exception as exc:  # noqa: BLE001 - report and go on to cleanup
                got = f"error: {type(exc).__name__}: {exc}"
            if got != source:
                problems.append(f"clone {settings['NAME']!r}: expected (tables, migrations) {source}, got {got}")

    if not args.keep:
        destroy_started = time.perf_counter()
        for i in range(1, args.clones + 1):
            creation.destroy_test_db(suffix=str(i), verbosity=args.verbosity, keepdb=False)
        sys.stderr.write(f"django_clone_loop: destroyed {args.clones} clones in "
                         f"{time.perf_counter() - destroy_started:.3f}s\n")

    if problems:
        fail("clones are incomplete:\n  " + "\n  ".join(problems))
    print(json.dumps({"clones": args.clones, "seconds": round(seconds, 4)}))


if __name__ == "__main__":
    main()
