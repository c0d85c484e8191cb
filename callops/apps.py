from django.apps import AppConfig


class CallopsConfig(AppConfig):
    name = "callops"
    verbose_name = "Call operations"
