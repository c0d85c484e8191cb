"""The web front door: / and the admin's "View site", HTTPS redirects and their exemptions."""

from __future__ import annotations

import pytest

from callops.config import parse_networks


@pytest.mark.smoke
@pytest.mark.django_db
def test_the_bare_address_leads_to_the_console(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"] == "/admin/"
    assert client.get("/", follow=True).status_code == 200  # the admin's login page


@pytest.mark.django_db
def test_view_site_leads_somewhere_real(admin_client):
    page = admin_client.get("/admin/").content.decode()
    assert '<a href="/healthz">View site</a>' in page
    target = admin_client.get("/healthz")
    assert target.status_code in (200, 503)  # the health report, in full for staff
    assert "versions" in target.json()


@pytest.mark.django_db
def test_https_only_redirects_people_but_not_probes(client, settings):
    settings.SECURE_SSL_REDIRECT = True
    assert client.get("/admin/login/")["Location"] == "https://testserver/admin/login/"
    assert client.get("/healthz").status_code in (200, 503)  # load balancers probe over HTTP
    assert client.get("/metrics").status_code == 200  # Prometheus on loopback, over HTTP


@pytest.mark.django_db
def test_behind_a_tls_proxy_the_forwarded_scheme_counts(client, settings):
    # One way of overriding only (the settings fixture): mixing it with
    # override_settings would leave these on for the tests that follow.
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.TRUSTED_PROXIES = parse_networks("TRUSTED_PROXIES", ["127.0.0.1"])
    assert client.get("/admin/login/", HTTP_X_FORWARDED_PROTO="https").status_code == 200
    assert client.get("/admin/login/", HTTP_X_FORWARDED_PROTO="http").status_code == 301
