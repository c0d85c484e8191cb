"""``/twilio/...``: point the Twilio number's voice URL, fallback URL and status callback here."""

from django.urls import path

from callops.ivr import views

urlpatterns = [
    path("voice/", views.voice, name="twilio-voice"),
    path("gather/", views.gather, name="twilio-gather"),
    path("status/", views.status, name="twilio-status"),
    path("fallback/", views.fallback, name="twilio-fallback"),
]
