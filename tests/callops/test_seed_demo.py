from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth import authenticate
from django.core.management import call_command

from callops.models import Client, Job


@pytest.mark.smoke
@pytest.mark.django_db
def test_seed_demo_is_idempotent_and_prints_a_working_login():
    first, second = StringIO(), StringIO()
    call_command("seed_demo", stdout=first)
    call_command("seed_demo", stdout=second)
    assert Client.objects.count() == 3
    assert Job.objects.count() == 6
    assert "0 new jobs" in second.getvalue()

    password = second.getvalue().split("password=")[1].split()[0]
    user = authenticate(username="staff", password=password)
    assert user is not None
    assert user.is_staff
    # The first run's password no longer works: each run prints the one that does.
    assert authenticate(username="staff", password=first.getvalue().split("password=")[1].split()[0]) is None


@pytest.mark.django_db
def test_admin_pages_render_for_staff(admin_client):
    call_command("seed_demo", stdout=StringIO())
    for url in ("/admin/", "/admin/callops/job/", "/admin/callops/client/"):
        response = admin_client.get(url)
        assert response.status_code == 200, url
    assert b"callops" in admin_client.get("/admin/").content
    assert b"Replace rooftop compressor" in admin_client.get("/admin/callops/job/").content
