"""Property tests: mutated real messages only ever give ParseError, and whatever is
accepted round-trips; the parser's fast paths accept nothing the grammar refuses."""

from __future__ import annotations

import re
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sipcore.sip import ParseError, StreamParser, parse_message
from sipcore.sip.headers import HEADER_RULES
from sipcore.sip.stream import StreamError

DATA = Path(__file__).resolve().parents[1] / "data"
SEEDS = sorted(DATA.glob("*/*.dat"))
SEED_BYTES = [path.read_bytes() for path in SEEDS]

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\r\n")


@st.composite
def mutated_messages(draw: st.DrawFn) -> bytes:
    data = draw(st.sampled_from(SEED_BYTES))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(
            st.sampled_from(["truncate", "flip", "dup_line", "del_line", "huge", "insert", "swap_crlf"])
        )
        if not data:
            break
        if kind == "truncate":
            data = data[: draw(st.integers(0, len(data)))]
        elif kind == "flip":
            at = draw(st.integers(0, len(data) - 1))
            data = data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1 :]
        elif kind in ("dup_line", "del_line"):
            lines = _lines(data)
            at = draw(st.integers(0, len(lines) - 1))
            lines[at:at + 1] = [lines[at]] * (2 if kind == "dup_line" else 0)  # fmt: skip
            data = b"\r\n".join(lines)
        elif kind == "huge":
            lines = _lines(data)
            at = draw(st.integers(0, len(lines) - 1))
            filler = draw(st.sampled_from([b"9" * 5000, b"a" * 70000, b";x" * 3000, b"[" * 2000, b'"' * 999]))
            lines[at] = lines[at] + filler
            data = b"\r\n".join(lines)
        elif kind == "insert":
            at = draw(st.integers(0, len(data)))
            data = (
                data[:at]
                + draw(
                    st.sampled_from(
                        [
                            b"\r\n",
                            b"\n",
                            b"\r",
                            b" ",
                            b"\t",
                            b":",
                            b";",
                            b",",
                            b"<",
                            b">",
                            b'"',
                            b"\\",
                            b"\x00",
                            b"\r\n ",
                        ]
                    )
                )
                + data[at:]
            )
        else:
            data = data.replace(b"\r\n", b"\n", draw(st.integers(1, 5)))
    return data


@FUZZ
@given(mutated_messages())
@example(b"\r\n")
@example(b"SIP/2.0 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n")
@example(b"INVITE sip:a@b SIP/2.0\r\nCSeq: " + b"1" * 5000 + b" INVITE\r\n\r\n")
def test_mutated_message_is_parsed_or_refused_with_parse_error(data):
    try:
        message = parse_message(data)
    except ParseError as exc:
        assert 400 <= exc.status_code <= 599
        return
    # Accepted: it must round-trip, and every typed view must be readable.
    assert parse_message(bytes(message)) == message
    assert parse_message(message.to_bytes(compact=True)) == message
    for key in HEADER_RULES:
        message.headers.typed(key)
    _ = (message.branch, message.sent_by, message.cseq, message.call_id, message.from_tag, message.to_tag)
    _ = [(via.branch, via.rport, via.ttl, via.received) for via in message.via]
    _ = [address.tag for address in (*message.contact, *message.route, *message.record_route)]


@FUZZ
@given(mutated_messages(), st.integers(1, 64))
def test_mutated_stream_gives_messages_or_stream_errors(data, chunk):
    parser = StreamParser(max_header_size=8192, max_body_size=4096)
    for start in range(0, len(data) + 1, chunk):
        try:
            parser.feed(data[start : start + chunk])
        except StreamError as exc:
            assert 400 <= exc.status_code <= 599
            if exc.fatal:
                return


# --- the fast paths accept a subset of what the checks accept, with the same seed ---

HEADER_VALUE_SAMPLES = {key: [] for key, rule in HEADER_RULES.items() if rule.fast is not None}
for _data in SEED_BYTES:
    for _line in _data.split(b"\r\n\r\n")[0].decode("utf-8", "surrogateescape").split("\r\n")[1:]:
        _name, _, _value = _line.partition(":")
        _key = {
            "v": "via",
            "f": "from",
            "t": "to",
            "i": "call-id",
            "l": "content-length",
            "c": "content-type",
        }.get(_name.strip().lower(), _name.strip().lower())
        if _key in HEADER_VALUE_SAMPLES:
            HEADER_VALUE_SAMPLES[_key].append(_value.strip(" \t"))

_PIECES = st.sampled_from(
    [*"aZ09 \t;:=,<>\"\\@/.[]-+_~%*!'`?&$()\x00\r\né", "sip:", "SIP/2.0/UDP ", "tag=", "65536"]
)


def _same_seed(a, b) -> bool:
    if isinstance(a, re.Match):
        return isinstance(b, re.Match) and a.groups() == b.groups() and a[0] == b[0]
    return a == b


@FUZZ
@given(st.sampled_from(sorted(HEADER_VALUE_SAMPLES)), st.data())
def test_fast_path_never_accepts_what_the_check_refuses(key, data):
    rule = HEADER_RULES[key]
    samples = HEADER_VALUE_SAMPLES[key] or ["x"]
    value = data.draw(
        st.one_of(
            st.sampled_from(samples),
            st.lists(_PIECES, max_size=30).map("".join),
            st.sampled_from(samples).flatmap(
                lambda v: st.integers(0, len(v)).map(lambda i: v[:i] + ";" + v[i:])
            ),
        )
    )
    fast_seed = rule.fast(value)
    if fast_seed is None:
        return
    checked = rule.check(value)  # must not raise
    if rule.multiple:
        assert len(checked) == 1
        checked = checked[0]
    assert _same_seed(fast_seed, checked)
