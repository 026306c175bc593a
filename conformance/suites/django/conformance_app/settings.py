"""The conformance suite for the Django adapter (see conformance/harness.py):
SimpleTestCase only, so no database is touched."""

SECRET_KEY = "conformance"
INSTALLED_APPS = ["conformance_app"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
USE_TZ = True
