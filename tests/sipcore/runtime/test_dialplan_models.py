"""The dial plan and peers as staff edit them: seeding, loading, matching, the admin."""

from __future__ import annotations

import pytest
from django.core.management import call_command

from sipcore.dialplan import FALLBACK_RULE, DialPlan, Rule
from sipcore.models import DialPlanRule, SipPeer


@pytest.mark.django_db
def test_seed_demo_writes_the_demo_dial_plan_once_and_keeps_staff_edits():
    call_command("seed_demo", password="x" * 12)
    assert list(DialPlanRule.objects.values_list("name", flat=True)) == [
        "busy",
        "unavailable",
        "noanswer",
        "answer",
    ]
    DialPlanRule.objects.filter(name="busy").update(final_status=600, reason="Busy Everywhere")
    call_command("seed_demo", password="x" * 12)
    assert DialPlanRule.objects.count() == 4
    assert DialPlanRule.objects.get(name="busy").final_status == 600  # not overwritten


@pytest.mark.django_db
def test_the_plan_matches_by_priority_and_skips_disabled_rules():
    DialPlanRule.seed()
    DialPlanRule.objects.create(name="vip", priority=1, user_pattern="busy", final_status=200)
    plan = DialPlanRule.load_plan()
    assert plan.match("INVITE", "busy").name == "vip"
    DialPlanRule.objects.filter(name="vip").update(enabled=False)
    plan = DialPlanRule.load_plan()
    assert plan.match("INVITE", "busy").final_status == 486
    assert plan.match("INVITE", "unavailable").retry_after == 60
    assert plan.match("INVITE", "noanswer").final_status is None
    assert plan.match("INVITE", "anyone").final_status == 200
    assert plan.match("OPTIONS", "busy") is None  # the demo rules are for INVITE


def test_rules_refuse_what_cannot_be_served():
    with pytest.raises(ValueError, match="final status 100"):
        Rule("bad", final_status=100)
    with pytest.raises(ValueError, match="user pattern"):
        Rule("bad", user_pattern="(")
    assert DialPlan().match("INVITE", "x") is None
    assert FALLBACK_RULE.matches("INVITE", "anyone")


@pytest.mark.django_db
def test_admin_lists_and_edits_dial_plan_rules_and_peers(admin_client):
    DialPlanRule.seed()
    SipPeer.objects.create(name="pbx", uri="sip:pbx@127.0.0.1:5060", last_rtt_ms=1.5, status="up")
    page = admin_client.get("/admin/sipcore/dialplanrule/")
    assert page.status_code == 200
    assert b"noanswer" in page.content
    page = admin_client.get("/admin/sipcore/sippeer/")
    assert page.status_code == 200
    assert b"pbx" in page.content
    rule = DialPlanRule.objects.get(name="busy")
    response = admin_client.post(
        f"/admin/sipcore/dialplanrule/{rule.pk}/change/",
        {
            "name": "busy",
            "priority": 10,
            "enabled": "on",
            "method": "INVITE",
            "user_pattern": "(",
            "ring_delay": "",
            "final_status": 486,
            "reason": "",
            "answer_delay": 0,
            "retry_after": "",
        },
    )
    assert response.status_code == 200  # the form again, with the error
    assert b"not a regular expression" in response.content
