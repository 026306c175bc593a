"""URLconf of the dbfork benchmark project (no views: only the schema matters)."""
urlpatterns = []
