from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from callops import views

# The admin's "View site" link: there is no public site, so it shows staff the
# platform's health in full (what /healthz tells staff).
admin.site.site_url = "/healthz"

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("metrics", views.metrics, name="metrics"),  # Prometheus scrapers only (see views.metrics)
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("twilio/", include("callops.ivr.urls")),  # Twilio voice webhooks (signed)
]
