"""The grammar's fast patterns read a value exactly as the general patterns do.

A fast pattern (sipcore.sip.grammar) must accept a subset of its rule and give
the same groups: the parser and Headers.add keep its match as the header's seed.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipcore.sip import ParseError
from sipcore.sip.grammar import FAST_NAME_ADDR_RE, NAME_ADDR_PARAMS_RE
from sipcore.sip.headers import HEADER_RULES

NAME_ADDRS = [
    "sip:sipp@127.0.0.1:5070",
    "sip:alice@atlanta.example.com;tag=1928301774",
    "sips:bob@biloxi.example.com:5061;expires=60;q=0.5",
    "tel:+1-212-555-1212;tag=x",
    "sipp <sip:sipp@127.0.0.1:5070>;tag=1",
    '"Alice Liddell" <sip:alice@example.com;transport=tcp>;tag=a',
    "<sip:p1.example.com;lr>",
    "Bob<sip:bob@example.com>",
    "sip:a@b?subject=x",
    "sip:a@b,sip:c@d",
    'sip:a"b@c',
    "sip:a@b c",
    "sip:a@b;",
    "a b c <sip:x@y>",
    "<sip:a@b> ;tag=1",
    "sip:<a@b>",
    "mailto:someone@example.com",
]


@pytest.mark.parametrize("value", NAME_ADDRS)
def test_the_fast_name_addr_reads_as_the_general_one(value):
    fast = FAST_NAME_ADDR_RE.fullmatch(value)
    general = NAME_ADDR_PARAMS_RE.fullmatch(value)
    if fast is not None:
        assert general is not None
        assert fast.groups() == general.groups()


def test_a_bare_addr_spec_takes_the_fast_pattern():
    m = FAST_NAME_ADDR_RE.fullmatch("sip:sipp@127.0.0.1:5070;tag=9")
    assert m is not None
    assert m.groups() == (None, None, "sip:sipp@127.0.0.1:5070", ";tag=9")


PIECES = st.sampled_from([*"aZ09 \t;:=,<>\"\\@/.[]-+_~%*!'`?&$()#é", "sip:", "tag=", "<sip:", ">"])


@settings(max_examples=3000, deadline=None)
@given(st.lists(PIECES, max_size=24).map("".join))
def test_any_value_the_fast_name_addr_takes_reads_as_the_general_one(value):
    fast = FAST_NAME_ADDR_RE.fullmatch(value)
    if fast is not None:
        general = NAME_ADDR_PARAMS_RE.fullmatch(value)
        assert general is not None, value
        assert fast.groups() == general.groups(), value


@pytest.mark.parametrize(
    ("value", "fast"),
    [
        ("<sip:a@b>;expires=60", False),
        ("<sip:a@b>;EXPIRES=4294967296", False),
        ("sip:a@b;q=1;eXpIrEs=2", False),
        ("<sip:a@b>;expires", False),
        ("<sip:a@b>;x-expires=1", True),
        ("<sip:a@b>;expiresx=1", True),
        ("<sip:a@b;expires=1>", True),  # a URI parameter, not the header's
        ("sip:a@b;q=1", True),
    ],
)
def test_a_contact_with_an_expires_parameter_takes_the_check(value, fast):
    rule = HEADER_RULES["contact"]
    assert (rule.fast(value) is not None) is fast
    if fast:
        assert rule.fast(value).groups() == rule.check(value)[0].groups()


def test_a_contact_expires_past_32_bits_is_refused():
    with pytest.raises(ParseError, match="expires"):
        HEADER_RULES["contact"].check("<sip:a@b>;EXPIRES=4294967296")
