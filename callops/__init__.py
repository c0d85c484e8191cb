"""callops: the Django project and its call-operations app."""

from callops.celery import app as celery_app

__all__ = ("celery_app",)
