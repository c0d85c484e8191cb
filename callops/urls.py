from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from callops import views

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("twilio/", include("callops.ivr.urls")),  # Twilio voice webhooks (signed)
    path("", include("django_prometheus.urls")),  # GET /metrics
]
