"""Every sentence exists in Spanish and English and renders with what the machine gives it."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from callops.ivr import prompts
from callops.ivr.machine import (
    ActionDone,
    ClientFound,
    Digits,
    JobFound,
    JobSummary,
    Language,
    Line,
    MachineConfig,
    PromptKey,
    Silence,
    start_call,
    step,
)

NOW = datetime(2026, 11, 23, 12, tzinfo=UTC)


def test_every_prompt_key_is_in_both_languages():
    for language in Language:
        assert set(prompts.CATALOGUE[language]) == set(PromptKey), language


@pytest.mark.parametrize("language", list(Language))
def test_every_line_renders_with_any_arguments_the_machine_passes(language):
    args = (("name", "Hospital"), ("client_id", "1 0 0 1"), ("job_number", "5 0 1"), ("title", "T"),
            ("address", "A"), ("status", "on_hold"), ("date", "2026-12-01"), ("key", "3"))  # fmt: skip
    for key in PromptKey:
        text, spoken_in = prompts.render(Line(key, args), language)
        assert text
        assert "{" not in text, (key, text)
        assert spoken_in is language


def test_statuses_and_dates_are_spoken_in_the_call_language():
    line = Line(PromptKey.RESCHEDULE_DONE, (("job_number", "5 0 1"), ("date", "2026-12-01")))
    assert (
        prompts.render(line, Language.SPANISH)[0]
        == "Listo. El trabajo 5 0 1 quedó programado para el 1 de diciembre de 2026."
    )
    assert (
        prompts.render(line, Language.ENGLISH)[0] == "Done. Job 5 0 1 is now scheduled for December 1, 2026."
    )
    status = Line(PromptKey.STATUS_DONE, (("job_number", "5 0 1"), ("status", "on_hold")))
    assert prompts.render(status, Language.SPANISH)[0].endswith("quedó en espera.")
    assert prompts.render(status, Language.ENGLISH)[0].endswith("is now on hold.")


def test_a_line_in_another_language_says_so():
    hint = Line(PromptKey.LANGUAGE_HINT, (), Language.ENGLISH)
    assert prompts.render(hint, Language.SPANISH) == (
        "For English, press star or say English.",
        Language.ENGLISH,
    )


def test_a_walk_through_the_machine_renders_in_both_languages():
    job = JobSummary(
        "1001", "501", "Compressor", "Reforma 120", "scheduled", ("in_progress",), date(2026, 11, 30)
    )
    for language in Language:
        transition = start_call("CA1", now=NOW, language=language)
        lines = list(transition.prompt.lines)
        state = transition.state
        for event in (Silence(), Digits("1001"), ClientFound("1001", "H"), Digits("501"), JobFound(job),
                      Digits("1"), Digits("1"), Digits("2"), ActionDone(job), Digits("0")):  # fmt: skip
            transition = step(state, event, now=NOW, config=MachineConfig())
            state = transition.state
            lines += transition.prompt.lines if transition.prompt else []
        rendered = [prompts.render(line, language)[0] for line in lines]
        assert len(rendered) > 12
        assert all(rendered)
