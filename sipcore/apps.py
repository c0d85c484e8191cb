from django.apps import AppConfig


class SipcoreConfig(AppConfig):
    name = "sipcore"
    verbose_name = "SIP"
