"""Admin registration of the marketing app: every model gets a plain ModelAdmin."""
from django.apps import apps
from django.contrib import admin

for model in apps.get_app_config("marketing").get_models():
    if not admin.site.is_registered(model):
        admin.site.register(model)
