"""The parser runs in time linear in its input: one packet never holds a core.

For every place the grammar reads (tests/sipcore/sip/adversarial.py: each checked
header at each point of its rule, the start lines, the URIs in them) and every
character class and troublesome pair the grammar uses, a run of about 60 KB must
parse, or fail with ParseError, in at most 100 times the CPU time of a 2 KB run
(linear is 30 times; the 2 KB message's fixed costs make it less).

Times are CPU time of this process, best of a few repeats, so load on a shared
machine does not make the test flaky. A size in between (8 KB) is checked first
against the same bound scaled down, so a super-linear case fails in seconds
instead of spending minutes on its 60 KB input.
"""

from __future__ import annotations

import pytest

from sipcore.sip import StreamParser
from sipcore.sip.stream import StreamError
from tests.sipcore.sip.adversarial import PLACES, TAILS, UNITS, Case, build, cpu_seconds

SMALL, MIDDLE, LARGE = 2_000, 8_000, 60_000
MAX_RATIO = 100  # t(LARGE) <= MAX_RATIO * t(SMALL); scaled by size for MIDDLE


def _bound(size: int) -> float:
    return MAX_RATIO * size / LARGE


def violation(case: Case) -> str | None:
    """None if ``case`` scales linearly, else a description of how it does not."""
    small = build(case, SMALL)
    t_small = cpu_seconds(small, repeats=3)
    for size in (MIDDLE, LARGE):
        big = build(case, size)
        t_big = cpu_seconds(big, repeats=1)
        if t_big <= _bound(size) * t_small:
            continue
        # Looks super-linear: measure both again, carefully, before saying so.
        t_small = cpu_seconds(small, repeats=5, at_least=0.002)
        t_big = cpu_seconds(big, repeats=3)
        if t_big > _bound(size) * t_small:
            return (
                f"{case}: {len(big)} bytes take {t_big * 1e3:.2f} ms CPU, "
                f"{t_big / t_small:.0f}x the {t_small * 1e3:.3f} ms of {len(small)} bytes "
                f"(bound {_bound(size):.0f}x)"
            )
    return None


# A control character at the end fails every checked rule only after the run: the
# case that makes a backtracking engine retry. Runs that end the value are slow-marked
# to keep `make test` short; CI runs both.
_TAIL_MARKS = {"\x01": (), "": (pytest.mark.slow,)}
assert set(_TAIL_MARKS) == set(TAILS)


@pytest.mark.parametrize(
    ("where", "template", "tail"),
    [
        pytest.param(where, template, tail, marks=_TAIL_MARKS[tail], id=f"{where}:{template}+{tail!r}")
        for where, template in PLACES
        for tail in TAILS
    ],
)
def test_parse_time_is_linear_in_the_input(where, template, tail):
    failures = []
    for unit in UNITS:
        found = violation(Case(where, template, unit, tail))
        if found is not None:
            failures.append(found)
            if len(failures) == 3:
                break
    assert not failures, "\n".join(failures)


# The three inputs first reported, at the size of one datagram: each must be
# refused in milliseconds (they took minutes), on a datagram and on a stream.
REPORTED = [
    Case("Content-Type", "application/sdp;a={}@", ":", ""),
    Case("Reply-To", "<sip:a@b>;x={}", ":", "@"),
    Case("Via", "SIP/2.0/UDP [{}", ":", ""),
]


@pytest.mark.parametrize("case", REPORTED, ids=str)
def test_reported_backtracking_inputs_are_refused_quickly(case):
    data = build(case, 64_000)
    assert len(data) <= 65_535
    assert cpu_seconds(data) < 0.05
    stream = StreamParser(max_header_size=len(data))
    with pytest.raises(StreamError) as caught:
        stream.feed(data)
    assert caught.value.status_code == 400
