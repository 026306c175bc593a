"""Minimal DATABASE_URL parser (stdlib only) for the shop example project.

Accepted forms:

    postgres://user:pass@host:5432/name        (also postgresql://, pgsql://)
    postgres:///name?host=/var/run/postgresql&port=5433   unix socket dir
    postgres://%2Fvar%2Frun%2Fpostgresql/name  unix socket dir in the netloc
    mysql://user:pass@host:3306/name           (also mariadb://)
    mysql://user@localhost/name?socket=/run/mysqld/mysqld.sock
    sqlite:///abs/path/db.sqlite3              absolute path /abs/path/db.sqlite3
    sqlite:////abs/path/db.sqlite3             (the same, SQLAlchemy style)
    sqlite://rel/path/db.sqlite3               relative to the current directory
    sqlite://:memory:                          in-memory

Other query parameters end up in OPTIONS (e.g. ?sslmode=require for
PostgreSQL, ?charset=utf8mb4 for MySQL).  User, password, host and path parts
are percent-decoded.
"""
import os
from urllib.parse import parse_qsl, unquote, urlsplit

POSTGRES_SCHEMES = {"postgres", "postgresql", "pgsql", "psql"}
MYSQL_SCHEMES = {"mysql", "mariadb", "mysql2"}
SQLITE_SCHEMES = {"sqlite", "sqlite3"}


def _split_netloc(netloc):
    """Return (user, password, host, port) from a URL netloc, all decoded."""
    userinfo, _, hostport = netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    if hostport.startswith("["):  # [ipv6]:port
        host, _, rest = hostport[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif hostport.count(":") == 1:
        host, _, port = hostport.partition(":")
    else:
        host, port = hostport, ""
    return unquote(user), unquote(password), unquote(host), port


def _base(engine, name, user, password, host, port):
    return {
        "ENGINE": engine,
        "NAME": name,
        "USER": user,
        "PASSWORD": password,
        "HOST": host,
        "PORT": str(port) if port else "",
        "OPTIONS": {},
        "CONN_MAX_AGE": 0,
    }


def parse_database_url(url):
    """Turn a DATABASE_URL into a Django DATABASES entry."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError("DATABASE_URL has no scheme: %r" % url)
    scheme = scheme.lower()

    if scheme in SQLITE_SCHEMES:
        path, _, query = rest.partition("?")
        path = unquote(path)
        if path in ("", ":memory:", "/:memory:"):
            name = ":memory:"
        elif path.startswith("/"):
            name = "/" + path.lstrip("/")  # sqlite:///abs and sqlite:////abs alike
        else:
            name = os.path.abspath(path)
        db = _base("django.db.backends.sqlite3", name, "", "", "", "")
        db["OPTIONS"].update(parse_qsl(query))
        return db

    parts = urlsplit(url)
    user, password, host, port = _split_netloc(parts.netloc)
    name = unquote(parts.path.lstrip("/"))
    query = dict(parse_qsl(parts.query, keep_blank_values=True))

    if scheme in POSTGRES_SCHEMES:
        host = query.pop("host", host)
        port = query.pop("port", port)
        user = query.pop("user", user)
        password = query.pop("password", password)
        name = query.pop("dbname", name)
        db = _base("django.db.backends.postgresql", name, user, password, host, port)
        db["OPTIONS"].update(query)
        return db

    if scheme in MYSQL_SCHEMES:
        # Django's MySQL backend treats a HOST starting with "/" as a socket.
        socket = query.pop("socket", None) or query.pop("unix_socket", None)
        if socket:
            host = socket
        port = query.pop("port", port)
        user = query.pop("user", user)
        password = query.pop("password", password)
        db = _base("django.db.backends.mysql", name, user, password, host, port)
        db["OPTIONS"]["charset"] = query.pop("charset", "utf8mb4")
        db["OPTIONS"].update(query)
        return db

    raise ValueError("unsupported DATABASE_URL scheme %r" % scheme)
