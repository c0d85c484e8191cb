"""Demo data for a first run: a few clients and jobs, and a staff user."""

from __future__ import annotations

import secrets
from datetime import date, timedelta

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from callops.models import Client, Job, JobStatus
from sipcore.models import DialPlanRule

DEMO_CLIENTS = [
    ("1001", "Hospital Santa Fe", "+525550001001"),
    ("1002", "Aceros del Norte", "+525550001002"),
    ("2001", "Northwind Logistics", "+15550002001"),
]
DEMO_JOBS = [
    ("1001", "501", "Replace rooftop compressor", "Av. Reforma 120, CDMX", JobStatus.SCHEDULED, 1),
    ("1001", "502", "Quarterly generator test", "Av. Reforma 120, CDMX", JobStatus.PENDING, 7),
    ("1002", "601", "Repair conveyor motor", "Parque Industrial 4, Monterrey", JobStatus.IN_PROGRESS, 0),
    ("1002", "602", "Install safety sensors", "Parque Industrial 4, Monterrey", JobStatus.ON_HOLD, 3),
    ("2001", "701", "Dock door maintenance", "12 Harbor Rd, Oakland", JobStatus.SCHEDULED, 2),
    ("2001", "702", "Forklift charger inspection", "12 Harbor Rd, Oakland", JobStatus.PENDING, 5),
]


class Command(BaseCommand):
    help = "Load demo clients and jobs (idempotent) and (re)set the demo staff user's password."

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("--username", default="staff", help="staff user to create or update")
        parser.add_argument("--password", default="", help="password to set (default: a new random one)")

    @transaction.atomic
    def handle(self, *args, username: str, password: str, **options):  # type: ignore[no-untyped-def]
        clients = {}
        for code, name, phone in DEMO_CLIENTS:
            clients[code], _ = Client.objects.get_or_create(
                code=code, defaults={"name": name, "phone": phone}
            )
        created_jobs = 0
        for client_code, number, title, address, status, in_days in DEMO_JOBS:
            _, created = Job.objects.get_or_create(
                client=clients[client_code],
                number=number,
                defaults={
                    "title": title,
                    "address": address,
                    "status": status,
                    "scheduled_for": date.today() + timedelta(days=in_days),
                },
            )
            created_jobs += created

        created_rules = DialPlanRule.seed()

        password = password or secrets.token_urlsafe(12)
        user, _ = get_user_model().objects.get_or_create(username=username)
        user.is_staff = user.is_superuser = True
        user.set_password(password)
        user.save()

        self.stdout.write(
            f"demo data: {len(clients)} clients, {created_jobs} new jobs, {created_rules} new dial plan rules"
        )
        self.stdout.write(self.style.SUCCESS(f"staff login: username={username} password={password}"))
